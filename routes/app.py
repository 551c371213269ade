"""The Starlette application: routes, and the lifespan that owns shared services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from routes import (
    admin,
    admin_users,
    auth,
    dashboard,
    health,
    listen,
    live,
    qa,
    staff,
    twilio,
    whisper,
)
from routes.fast_paths import log_fast_paths
from routes.login_limiter import LoginLimiter
from routes.security_headers import SecurityHeaders
from routes.state import WebState, web_of
from routes.templates import STATIC_DIR
from telephony import collector
from telephony.config import ConfigStore
from telephony.deepgram.read import ReadClient
from telephony.deepgram.speak_rest import SpeakRestClient
from telephony.http_pool import make_http_client
from telephony.insights.metrics import InsightsMetrics
from telephony.insights.worker import InsightsWorker
from telephony.live.bus import LiveBus
from telephony.live.metrics import LiveCollector
from telephony.live.pg import PgNotify
from telephony.metrics import Metrics
from telephony.session.phrases import PhraseCache
from telephony.session.registry import CallRegistry
from telephony.session.services import DrainState, Services
from telephony.settings import Settings
from telephony.startup import check_startup
from telephony.store.engine import make_engine
from telephony.store.hashing import HashPool
from telephony.store.instances import Instance
from telephony.store.migrate import upgrade
from telephony.store.transcripts import TranscriptStore
from telephony.twilio.calls import TwilioCalls
from telephony.twilio.security import StreamTokens

log = logging.getLogger(__name__)


def _install_sighup(store: ConfigStore) -> None:
    """SIGHUP re-reads the YAML (only possible from the main thread's loop)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, store.reload)
    except (NotImplementedError, RuntimeError, ValueError):
        log.info("SIGHUP reload unavailable here; the file watcher still reloads")


def _session_secret(settings: Settings) -> bytes:
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    log.warning("TELEPHONY_SESSION_SECRET unset: staff logins will not survive a restart")
    return secrets.token_bytes(32)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)


def _insights_worker(settings: Settings, config: ConfigStore, services: Services) -> InsightsWorker:
    """Post-call insights for profiles that ask for them, on the services' store."""
    client = ReadClient(
        settings.deepgram_rest_base,
        settings.deepgram_api_key.get_secret_value(),
        timeout_s=settings.insights_timeout_s,
    )
    return InsightsWorker(
        services.db,
        client,
        lambda: config.current.profiles,
        metrics=InsightsMetrics(services.metrics.registry),
        queue_size=settings.insights_queue,
        workers=settings.insights_workers,
        sweep_s=settings.insights_sweep_s,
    )


def _live_bus(instance: str, db: AsyncEngine) -> LiveBus:
    """Live events heard by every instance: through PostgreSQL when the store is PostgreSQL
    (the instances share it), else within this process (SQLite: one instance)."""
    if db.dialect.name != "postgresql":
        return LiveBus(instance)
    transport = PgNotify(db)
    bus = LiveBus(instance, transport)
    transport.on_lost = bus.reset_all
    return bus


def _phrase_cache(settings: Settings) -> tuple[PhraseCache, SpeakRestClient]:
    """Fixed phrases through Aura's REST endpoint, kept under TELEPHONY_PHRASE_CACHE_DIR."""
    client = SpeakRestClient(
        settings.deepgram_rest_base, settings.deepgram_api_key.get_secret_value()
    )
    directory = Path(settings.phrase_cache_dir) if settings.phrase_cache_dir else None
    return PhraseCache(client.synthesize, directory), client


def create_app(
    settings: Settings | None = None,
    config: ConfigStore | None = None,
    *,
    freeze_heap: bool = False,
) -> Starlette:
    """The service. `freeze_heap` (the `telephony serve` process): once started, the
    process's garbage collection policy applies (telephony/collector.py): what is alive then
    leaves the collector's view, young collections are rarer, full ones are scheduled.

    Raises `telephony.startup.InsecureSettings` without a real Twilio auth token (unless the
    development flag is set): checked here, not only in `telephony serve`, so no way of
    serving the app runs on the public default token."""
    settings = settings or Settings()
    check_startup(settings)
    store = config or ConfigStore(settings.config_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.validate_signatures:
            log.warning("!!! Twilio signature validation is OFF (development only) !!!")
        _install_sighup(store)
        log_fast_paths()
        await upgrade(settings.database_url)  # migrations are applied on start
        # The heartbeat, and closing (outcome `restart`) calls a dead instance left open:
        # telephony/store/instances.py. start() runs the first sweep.
        instance = Instance(name=settings.instance_id, url=settings.internal_url)
        log.info("instance id %s", instance.id)
        transcripts = TranscriptStore(
            settings.database_url, instance=instance, check_s=settings.store_check_s
        )
        # The review queue's thresholds: the profile's in the YAML as it is when a call ends.
        transcripts.review_for = lambda profile: store.current.review_for(profile)
        await transcripts.start()
        registry = CallRegistry()
        phrases, speak_rest = _phrase_cache(settings)
        db = make_engine(settings.database_url)  # the staff UI's reads, audit log
        services = Services(
            live=_live_bus(instance.id, db),
            phrases=phrases,
            settings=settings,
            config=store,
            tokens=StreamTokens(settings.token_secret(), ttl_s=settings.stream_token_ttl_s),
            registry=registry,
            drain=DrainState(),
            transcripts=transcripts,
            metrics=Metrics.for_app(transcripts, registry),
            db=db,
            llm_http=make_http_client(),
            twilio_calls=TwilioCalls(
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token.get_secret_value(),
                api_url=settings.twilio_api_url,
            ),
        )
        app.state.services = services
        services.metrics.registry.register(LiveCollector(services.live))
        # A call this instance answered whose media socket another instance took (a balancer,
        # or `serve --workers`: most calls) is that instance's now: its reservation here
        # would hold capacity and the drain until the stream token's TTL.
        services.live.on_remote("call-started", lambda event: registry.unreserve(event.sid))
        await services.live.start()
        phrases_task = asyncio.create_task(phrases.run(store), name="phrase-cache")
        app.state.insights = insights = _insights_worker(settings, store, services)
        transcripts.on_insights = insights.offer
        await insights.start()
        unwatch_gc = services.metrics.watch_gc()
        unwatch_loop = services.metrics.watch_loop()
        watcher = asyncio.create_task(store.watch(), name="config-watch")
        full_gc: asyncio.Task[None] | None = None
        if freeze_heap:  # when the collector may stall every call: telephony/collector.py
            collector.tune()
            full_gc = asyncio.create_task(collector.full_collections(), name="full-gc")
        try:
            yield
        finally:
            unwatch_gc()
            unwatch_loop()
            if full_gc is not None:
                full_gc.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await services.twilio_calls.aclose()
            await services.llm_http.aclose()
            phrases_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await phrases_task
            await speak_rest.aclose()
            await insights.stop()  # unfinished calls stay pending (the next start's sweep)
            await insights.client.aclose()
            await transcripts.stop()  # flushes every buffered row
            await services.live.stop()
            await services.db.dispose()
            web_of(app).hash_pool.close()

    pages = [*auth.routes, *staff.routes, *dashboard.routes, *admin.routes, *admin_users.routes]
    pages += [*qa.routes, *live.routes]
    static = Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app = Starlette(
        routes=[*health.routes, *twilio.routes, *whisper.routes, *pages, *listen.routes, static],
        middleware=[Middleware(SecurityHeaders), Middleware(twilio.MediaFastPath)],
        # A client gone while its body was read (e.g. cut off by telephony serve's body
        # timeout) is not an error of ours: no traceback, and nobody to answer.
        exception_handlers={ClientDisconnect: _client_gone},
        lifespan=lifespan,
    )
    # What only the web routes keep; the rest (app.state.services) comes with the lifespan.
    app.state.web = WebState(
        session_keys=auth.SessionKeys(_session_secret(settings), settings.session_ttl_s),
        login_limiter=LoginLimiter(
            per_account=settings.login_attempts_per_account,
            per_client=settings.login_attempts_per_client,
            per_minute=settings.login_attempts_per_minute,
            window_s=settings.login_window_s,
        ),
        hash_pool=HashPool(settings.login_hash_workers, settings.login_hash_queue),
    )
    return app
