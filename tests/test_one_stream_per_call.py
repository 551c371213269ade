"""One answer per call SID and one live stream per call (and continuation), on one instance.

A signed webhook can be replayed (Twilio signs nothing that expires) and Twilio retries one
with the same CallSid; the media upgrade's signature is the same for every call. So: a repeat
gets the first answer (the same one-time token, no new one) until the stream has started, and
409 after; a second stream for a call already streaming here is refused, never put in the
first one's place. The registry counts
every stream, so neither capacity nor health nor the drain can be fooled by duplicates.
Across instances: tests/test_one_stream_per_call_scale.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from websockets.asyncio.client import ClientConnection

from telephony.session.media_socket import CLOSE_POLICY
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.twilio import messages as tm
from tests.conftest import RunningApp, finished, served_with_fakes
from tests.test_routes_twilio import (
    call_params,
    closed_with,
    open_media,
    post_webhook,
    stream_params,
)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)


async def open_stream(
    app: RunningApp, sid: str, params: dict[str, str]
) -> tuple[ClientConnection, tm.InboundBuilder]:
    ws = await open_media(app)
    b = tm.InboundBuilder(
        "MZ" + sid + params["call_token"][-6:], sid, "AC1", custom_parameters=params
    )
    await ws.send(b.connected())
    await ws.send(b.start())
    return ws, b


async def live_stream_of(app: RunningApp, sid: str) -> object:
    registry = app.app.state.services.registry
    for _ in range(500):
        if sid in registry.live:
            return registry.live[sid]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{sid} never went live")


async def live_calls(app: RunningApp) -> int:
    async with app.http() as client:
        return int((await client.get("/healthz")).json()["live_calls"])


async def test_a_repeated_webhook_gets_the_same_answer_and_no_new_token(
    running_app: RunningApp,
) -> None:
    answers = [(await post_webhook(running_app, call_params("CArep"))).text for _ in range(5)]
    assert len(set(answers)) == 1  # same TwiML, same token
    registry = running_app.app.state.services.registry
    assert registry.load() == 1  # one reservation, not five
    # A genuine retry's answer still connects: its token was never used.
    _, params = stream_params(answers[-1])
    ws, b = await open_stream(running_app, "CArep", params)
    await live_stream_of(running_app, "CArep")
    # ...once: the same answer's token cannot open a second stream.
    ws2, _ = await open_stream(running_app, "CArep", params)
    code, reason = await closed_with(ws2)
    assert (code, reason) == (CLOSE_POLICY, "stream token already used")
    # Its stream has started, so Twilio will not retry: a repeat now is a replay, refused.
    late = await post_webhook(running_app, call_params("CArep"))
    assert (late.status_code, late.text) == (409, "call already answered")
    await ws.send(b.stop())
    assert (await closed_with(ws))[0] == 1000


async def test_a_second_stream_for_a_live_call_is_refused_and_the_first_goes_on(
    running_app: RunningApp,
) -> None:
    _, params = stream_params((await post_webhook(running_app, call_params("CAdup"))).text)
    first_ws, b = await open_stream(running_app, "CAdup", params)
    first = await live_stream_of(running_app, "CAdup")
    # A second stream with its own valid token (as a replayed webhook minted before the fix).
    services = running_app.app.state.services
    second = {**params, "call_token": services.tokens.mint("CAdup", params["profile"])}
    ws2, _ = await open_stream(running_app, "CAdup", second)
    assert await closed_with(ws2) == (CLOSE_POLICY, "call already has a live stream")
    assert services.registry.live["CAdup"] is first  # not replaced
    assert ("CAdup", "call already has a live stream") in services.registry.refused
    assert await live_calls(running_app) == 1
    for i in range(25):
        await first_ws.send(b.media(b"\xff" * 160, i * 20))
    await first_ws.send(b.stop())
    assert await closed_with(first_ws) == (1000, "stream stopped")
    summary = await finished(running_app, "CAdup")
    assert (summary.end_reason, summary.stats.media_frames) == ("caller-hangup", 25)


@pytest.fixture
async def two_call_app(
    numbers_yaml: Path, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> AsyncIterator[RunningApp]:
    async with served_with_fakes(
        numbers_yaml, fake_deepgram, fake_rest, TELEPHONY_MAX_CALLS=2
    ) as running:
        yield running


async def test_duplicates_cannot_exceed_capacity(two_call_app: RunningApp) -> None:
    app = two_call_app
    services = app.app.state.services
    _, params = stream_params((await post_webhook(app, call_params("CAone"))).text)
    ws, b = await open_stream(app, "CAone", params)
    await live_stream_of(app, "CAone")
    for _ in range(3):  # replays: refused, no reservation each
        assert (await post_webhook(app, call_params("CAone"))).status_code == 409
    dupes = []
    for _ in range(3):  # streams with tokens of their own: each refused
        token = services.tokens.mint("CAone", params["profile"])
        dupes.append((await open_stream(app, "CAone", {**params, "call_token": token}))[0])
    for dupe in dupes:
        assert (await closed_with(dupe))[0] == CLOSE_POLICY
    assert await live_calls(app) == 1 and services.registry.load() == 1
    # Room for exactly one more call, then busy.
    assert "<Stream" in (await post_webhook(app, call_params("CAtwo"))).text
    busy = (await post_webhook(app, call_params("CAthree"))).text
    assert "<Stream" not in busy and "<Hangup" in busy
    await ws.send(b.stop())
    await closed_with(ws)


def test_registry_counts_every_stream_of_a_call() -> None:
    from telephony.session.registry import CallRegistry, StreamTaken

    registry = CallRegistry()
    bot = SimpleNamespace(call_sid="CAx", summary=None)
    person = SimpleNamespace(call_sid="CAx", summary=None)  # a transfer's transcription
    registry.add(bot)  # type: ignore[arg-type]
    registry.add(person, "continues|5000|4")  # type: ignore[arg-type]
    assert registry.load() == 2 and len(registry.live) == 2  # capacity, health and drain
    assert registry.current("CAx") is person and registry.live["CAx"] is bot
    with pytest.raises(StreamTaken):
        registry.add(SimpleNamespace(call_sid="CAx", summary=None))  # type: ignore[arg-type]
    registry.done(bot)  # type: ignore[arg-type]
    assert registry.current("CAx") is person and registry.load() == 1
