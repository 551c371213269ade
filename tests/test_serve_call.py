"""`serve_call` without a web framework: `Services` built by hand (no app, no lifespan) and a
media socket that is the test's own queue. The call lifecycle (handshake, registry, store,
metrics, outcome) needs nothing of the route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from telephony.config import ConfigStore
from telephony.demo import settings_for_fakes
from telephony.http_pool import make_http_client
from telephony.metrics import Metrics
from telephony.outcome import Outcome
from telephony.session.media_socket import CLOSE_NORMAL, CLOSE_POLICY
from telephony.session.registry import CallRegistry
from telephony.session.serve import serve_call
from telephony.session.services import DrainState, Services
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.queries import get_call
from telephony.store.transcripts import TranscriptStore
from telephony.twilio import messages as tm
from telephony.twilio.calls import TwilioCalls
from telephony.twilio.security import StreamTokens
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY
from tests.media_sockets import ListSocket


@pytest.fixture
async def services(
    numbers_yaml: Path, database: str, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> AsyncIterator[Services]:
    settings = settings_for_fakes(
        numbers_yaml, "http://127.0.0.1:9", fake_deepgram, fake_rest, AUTH_TOKEN, DEEPGRAM_KEY
    )
    await upgrade(database)
    transcripts = TranscriptStore(database)
    await transcripts.start()
    registry = CallRegistry()
    built = Services(
        settings=settings,
        config=ConfigStore(numbers_yaml),
        tokens=StreamTokens(settings.token_secret(), ttl_s=settings.stream_token_ttl_s),
        registry=registry,
        drain=DrainState(),
        transcripts=transcripts,
        metrics=Metrics.for_app(transcripts, registry),
        db=make_engine(database),
        llm_http=make_http_client(),
        twilio_calls=TwilioCalls(
            account_sid=fake_rest.account_sid, auth_token=AUTH_TOKEN, api_url=fake_rest.url
        ),
    )
    try:
        yield built
    finally:
        await built.twilio_calls.aclose()
        await built.llm_http.aclose()
        await transcripts.stop()
        await built.db.dispose()


def stream(services: Services, sid: str, profile: str = "support") -> list[str]:
    """What Twilio sends for a call the webhook answered: connected, start, 0.5 s, stop."""
    params = {
        "call_token": services.tokens.mint(sid, profile),
        "profile": profile,
        "from": "+15557654321",
        "to": "+15550001000",
    }
    b = tm.InboundBuilder("MZ" + sid, sid, "AC1", custom_parameters=params)
    media = [b.media(b"\xff" * 160, i * 20) for i in range(25)]
    return [b.connected(), b.start(), *media, b.stop()]


async def test_a_call_is_served_counted_and_stored_without_the_route(services: Services) -> None:
    services.registry.reserve("CAserve", ttl_s=30)
    socket = ListSocket(stream(services, "CAserve"))
    await asyncio.wait_for(serve_call(socket, services), 10)
    assert socket.closed == (CLOSE_NORMAL, "stream stopped")
    summary = services.registry.find_finished("CAserve")
    assert summary is not None and summary.end_reason is Outcome.CALLER_HANGUP
    assert summary.stats.media_frames == 25
    assert not services.registry.live and not services.registry.reserved
    exposed = services.metrics.exposition()[0].decode()
    assert 'telephony_calls_ended_total{reason="caller-hangup"} 1.0' in exposed
    await services.transcripts.stop()  # flushed: the row is in the database
    row = await get_call(services.db, "CAserve")
    assert row is not None and row["end_reason"] == "caller-hangup" and row["mode"] == "flux"


async def test_a_refused_stream_of_our_call_is_closed_and_stored(services: Services) -> None:
    # The token is ours, so the call is; the profile went away since the webhook answered.
    socket = ListSocket(stream(services, "CAgone", profile="retired"))
    await asyncio.wait_for(serve_call(socket, services), 10)
    assert socket.closed == (CLOSE_POLICY, "unknown profile 'retired'")
    assert list(services.registry.refused) == [("CAgone", "unknown profile 'retired'")]
    assert not services.registry.finished  # never became a call
    await services.transcripts.stop()
    row = await get_call(services.db, "CAgone")
    assert row is not None and row["end_reason"] == "refused"
