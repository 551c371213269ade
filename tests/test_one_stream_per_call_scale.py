"""One answer per call SID and one stream per call across two instances sharing PostgreSQL.

Both instances serve one public URL (the load balancer's), so a signed webhook or media
upgrade is valid on either. A repeat of the webhook on the other instance gets the first
answer (the database has it), and a stream replayed to the other instance with that answer's
token (which that instance has never seen redeemed) is closed there once its claim on the
call fails, without touching the call's row; the call goes on where it started.

Needs PostgreSQL: the session's server (tests/pg_server.py), on which a fresh database is
created and dropped per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect

from routes.app import create_app
from telephony.demo import settings_for_fakes
from telephony.inprocess import bind_loopback, serve_app
from telephony.session.media_socket import CLOSE_POLICY
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.schema import calls
from telephony.twilio import messages as tm
from telephony.twilio.security import sign
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY, RunningApp, finished
from tests.pg_server import PgServer, fresh_database
from tests.test_one_stream_per_call import live_stream_of
from tests.test_routes_twilio import call_params, closed_with, stream_params


@pytest.fixture
async def shared_database(postgres_server: PgServer) -> AsyncIterator[str]:
    async with fresh_database(postgres_server, "claims") as url:
        yield url


@pytest.fixture
async def two_instances(
    numbers_yaml: Path,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
    shared_database: str,
) -> AsyncIterator[tuple[RunningApp, RunningApp]]:
    socks = [bind_loopback(), bind_loopback()]
    public = f"http://127.0.0.1:{socks[0].getsockname()[1]}"  # what Twilio signs, for both
    apps = []
    async with contextlib.AsyncExitStack() as stack:
        for sock in socks:
            settings = settings_for_fakes(
                numbers_yaml,
                public,
                fake_deepgram,
                fake_rest,
                AUTH_TOKEN,
                DEEPGRAM_KEY,
                TELEPHONY_DATABASE_URL=shared_database,
            )
            app = create_app(settings)
            await stack.enter_async_context(serve_app(app, sock))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            apps.append(RunningApp(url, settings, app, numbers_yaml))
        yield apps[0], apps[1]


async def webhook_at(app: RunningApp, params: dict[str, str], status: int = 200) -> str:
    """The webhook posted to `app`'s own address, signed (as Twilio signs) for the public URL."""
    signature = sign(AUTH_TOKEN, app.settings.public_url + "/twilio/voice", params)
    async with app.http() as client:
        resp = await client.post(
            "/twilio/voice", data=params, headers={"X-Twilio-Signature": signature}
        )
    assert resp.status_code == status
    return resp.text


async def stream_at(
    app: RunningApp, sid: str, params: dict[str, str]
) -> tuple[ClientConnection, tm.InboundBuilder]:
    """A media stream opened at `app`'s own address, its upgrade signed for the public URL."""
    signature = sign(AUTH_TOKEN, app.settings.media_stream_url, {})
    own = app.url.replace("http://", "ws://") + "/twilio/media"
    ws = await connect(own, additional_headers={"X-Twilio-Signature": signature})
    b = tm.InboundBuilder("MZ" + sid, sid, "AC1", custom_parameters=params)
    await ws.send(b.connected())
    await ws.send(b.start())
    return ws, b


async def test_two_instances_cannot_both_carry_a_call(
    two_instances: tuple[RunningApp, RunningApp],
) -> None:
    a, b = two_instances
    sid = "CAshared"
    first = await webhook_at(a, call_params(sid))
    # The webhook repeated at B (a retry through the load balancer, or a replay): A's answer.
    assert await webhook_at(b, call_params(sid)) == first
    _, params = stream_params(first)
    ws_a, builder = await stream_at(a, sid, params)
    call_a = await live_stream_of(a, sid)
    # The same token at B, which never saw it redeemed: B starts, loses the claim, closes.
    ws_b, _ = await stream_at(b, sid, params)
    assert await closed_with(ws_b) == (CLOSE_POLICY, "stream already carried by another instance")
    services_a, services_b = a.app.state.services, b.app.state.services
    # A's stream has claimed the call: a repeat at B now is a replay (Twilio took an answer).
    assert await webhook_at(b, call_params(sid), status=409) == "call already answered"
    assert (sid, "stream already carried by another instance") in services_b.registry.refused
    dropped = await finished(b, sid)  # wound down at B (its summary stays B's own)
    assert dropped.end_reason == "refused" and sid not in services_b.registry.live
    assert services_a.registry.live[sid] is call_a  # A's call goes on
    for i in range(25):
        await ws_a.send(builder.media(b"\xff" * 160, i * 20))
    await ws_a.send(builder.stop())
    assert await closed_with(ws_a) == (1000, "stream stopped")
    summary = await finished(a, sid)
    assert (summary.end_reason, summary.stats.media_frames) == ("caller-hangup", 25)
    # The call's row is A's alone: B's duplicate wrote nothing to it.
    query = select(calls.c.instance_id, calls.c.end_reason, calls.c.duration_ms).where(
        calls.c.sid == sid
    )
    for _ in range(100):
        async with services_a.db.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is not None and row.end_reason:
            break
        await asyncio.sleep(0.05)
    assert row is not None
    assert tuple(row) == (services_a.transcripts.instance.id, "caller-hangup", 500)
