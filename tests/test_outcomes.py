"""How a call ended (issue 19): the outcome a `Call` decides, from its own REST actions first
and from how its stream ended otherwise (through a real `Call` with a scripted socket), and
refused streams stored as such (through the app)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from telephony.config import load_config
from telephony.drain import DRAIN_REASON
from telephony.outcome import LABELS, Outcome, label
from telephony.session.call import Call
from telephony.session.engine import CallContext
from telephony.session.fallback import fail_over
from telephony.session.handshake import CallSetup, Continuation
from telephony.session.media_socket import FrameHandler, StreamEnd
from telephony.store.engine import make_engine
from telephony.store.queries import get_call
from telephony.twilio import messages as tm
from tests.conftest import NUMBERS_YAML, RunningApp
from tests.test_routes_twilio import (
    call_params,
    closed_with,
    open_media,
    post_webhook,
    start_stream,
    stream_params,
)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

SID = "CAoutcome"


class QueueSocket:
    """A media socket fed by the test: `feed` a frame, `gone()` for the peer leaving."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed: tuple[int, str] | None = None

    async def receive(self) -> str | bytes | None:
        return await self.frames.get()

    async def pump(self, handler: FrameHandler) -> StreamEnd | None:
        while (frame := await self.frames.get()) is not None:
            if (end := handler(frame)) is not None:
                return end
        return None

    async def send_text(self, text: str) -> None:
        pass

    async def send_many(self, texts: list[str]) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.frames.put_nowait(None)  # the peer sees the close and goes

    def gone(self) -> None:
        self.frames.put_nowait(None)


class ScriptEngine:
    """Runs `script(ctx)` as its conversation: the REST actions an engine would take."""

    def __init__(self, ctx: CallContext, script: Callable[[CallContext], Awaitable[None]]):
        self.ctx = ctx
        self.script = script
        self.closed = asyncio.Event()

    async def run(self) -> None:
        await self.script(self.ctx)
        await self.closed.wait()

    def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        pass

    def on_dtmf(self, ms: int, digit: str) -> None:
        pass

    async def close(self) -> None:
        self.closed.set()


@pytest.fixture
def setup(tmp_path: Path) -> CallSetup:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS_YAML)
    profile = load_config(path).profiles["support"]
    start = tm.parse_inbound(tm.InboundBuilder("MZo", SID, "AC1").start())
    assert isinstance(start, tm.Start)
    return CallSetup(start=start, profile_name="support", profile=profile)


STOP = tm.InboundBuilder("MZo", SID, "AC1").stop()


async def nothing(ctx: CallContext) -> None:
    pass


def make_call(
    setup: CallSetup,
    script: Callable[[CallContext], Awaitable[None]] = nothing,
    *,
    hang_up: Callable[[str], Awaitable[None]] | None = None,
    redirect: Callable[[str, str], Awaitable[None]] | None = None,
) -> tuple[Call, QueueSocket]:
    async def ok(*_: str) -> None:
        pass

    socket = QueueSocket()
    call = Call(
        socket,
        setup,
        engine_factory=lambda ctx: ScriptEngine(ctx, script),
        hang_up=hang_up or ok,
        transfer=ok,
        redirect=redirect or ok,
    )
    return call, socket


async def run(call: Call) -> tuple[str, str]:
    summary = await asyncio.wait_for(call.run(), 5)
    return summary.end_reason, summary.end_detail


def test_every_outcome_has_a_label() -> None:
    assert set(LABELS) == set(Outcome)
    assert [str(o) for o in Outcome] == [
        *("caller-hangup", "bot-hangup", "idle-hangup", "transferred", "failover"),
        "max-duration",
        *("drained", "refused", "error", "restart"),
    ]
    assert label("bot-hangup") == "Bot hung up" and label("stop") == "stop" and label("") == ""
    assert label(None) == ""  # a row read without an end_reason


async def test_stop_without_our_action_is_the_caller_hanging_up(setup: CallSetup) -> None:
    call, socket = make_call(setup)
    socket.frames.put_nowait(STOP)
    assert await run(call) == ("caller-hangup", "stop")


async def test_stream_lost_without_stop_is_an_error(setup: CallSetup) -> None:
    call, socket = make_call(setup)
    socket.gone()
    assert await run(call) == ("error", "twilio closed the socket")


async def test_bot_hang_up_is_decided_before_twilio_answers(setup: CallSetup) -> None:
    """Twilio's `stop` for our hang-up may come before the REST answer; the pending request
    is then cancelled with the engine. It is still the bot's hang-up."""
    asked = asyncio.Event()

    async def slow_rest(call_sid: str) -> None:
        asked.set()
        await asyncio.Event().wait()  # the answer never comes before the stream ends

    async def script(ctx: CallContext) -> None:
        ctx.transcript.event(ctx.now_ms(), "hangup")  # as BotSpeech._act writes it
        await ctx.hang_up()

    call, socket = make_call(setup, script, hang_up=slow_rest)
    task = asyncio.create_task(run(call))
    await asyncio.wait_for(asked.wait(), 5)
    socket.frames.put_nowait(STOP)
    assert await task == ("bot-hangup", "stop")
    assert [e.kind for e in call.transcript.events] == ["hangup"]


async def test_a_failed_hang_up_leaves_the_call_to_end_another_way(setup: CallSetup) -> None:
    failed = asyncio.Event()

    async def broken_rest(call_sid: str) -> None:
        raise RuntimeError("twilio says no")

    async def script(ctx: CallContext) -> None:
        try:
            await ctx.hang_up()
        except RuntimeError:
            failed.set()

    call, socket = make_call(setup, script, hang_up=broken_rest)
    task = asyncio.create_task(run(call))
    await asyncio.wait_for(failed.wait(), 5)
    socket.frames.put_nowait(STOP)
    assert await task == ("caller-hangup", "stop")


async def test_the_first_action_wins_over_a_later_drain(setup: CallSetup) -> None:
    hung_up = asyncio.Event()

    async def script(ctx: CallContext) -> None:
        await ctx.hang_up()
        hung_up.set()

    call, _ = make_call(setup, script)
    task = asyncio.create_task(run(call))
    await asyncio.wait_for(hung_up.wait(), 5)
    await call.end(DRAIN_REASON, None, "drain", outcome=Outcome.DRAINED)  # closes the stream
    assert await task == ("bot-hangup", DRAIN_REASON)


async def test_drain_and_time_limit(setup: CallSetup) -> None:
    call, _ = make_call(setup)
    task = asyncio.create_task(run(call))
    await asyncio.sleep(0.05)
    await call.end(DRAIN_REASON, "<Response/>", "drain", outcome=Outcome.DRAINED)
    assert await task == ("drained", DRAIN_REASON)

    limited = replace(setup, profile=setup.profile.model_copy(update={"max_call_seconds": 1}))
    call, _ = make_call(limited)
    assert await run(call) == ("max-duration", "max call duration")


async def test_failover_says_why(setup: CallSetup) -> None:
    redirected = asyncio.Event()

    async def redirect(call_sid: str, twiml: str) -> None:
        assert "technical trouble" in twiml
        redirected.set()

    async def script(ctx: CallContext) -> None:
        await fail_over(ctx, "flux failed 6 times in 60 s")

    call, socket = make_call(setup, script, redirect=redirect)
    task = asyncio.create_task(run(call))
    await asyncio.wait_for(redirected.wait(), 5)
    socket.frames.put_nowait(STOP)  # Twilio runs the apology instead of our stream
    assert await task == ("failover", "flux failed 6 times in 60 s")
    assert [e.kind for e in call.transcript.events] == ["upstream-failed"]


async def test_engine_failure_is_an_error(setup: CallSetup) -> None:
    async def script(ctx: CallContext) -> None:
        raise RuntimeError("boom")

    call, _ = make_call(setup, script)
    assert await run(call) == ("error", "engine failed: boom")


async def test_a_transferred_call_that_ends_normally_stays_transferred(setup: CallSetup) -> None:
    """Transcription after the bot's transfer to a person: that stream's `stop` is the end of
    the call the bot transferred, so the call's row keeps `transferred`."""
    call, socket = make_call(replace(setup, continuation=Continuation(5000, 3)))
    socket.frames.put_nowait(STOP)
    assert await run(call) == ("transferred", "stop")


# --- refused streams, through the app ----------------------------------------------------------


async def stored_call(database: str, sid: str, *, until: str = "ended_at") -> dict | None:
    engine = make_engine(database)
    try:
        for _ in range(300):  # write-behind: committed within about a second
            call = await get_call(engine, sid)
            if call is not None and call.get(until) is not None:
                return call
            await asyncio.sleep(0.01)
        return await get_call(engine, sid)
    finally:
        await engine.dispose()


async def test_refused_streams_of_calls_we_answered_are_stored(
    running_app: RunningApp, database: str
) -> None:
    """A stream the token proves is ours but that cannot become a call: staff see a refused
    call. A token that does not verify proves nothing about the SID: no row for it."""
    ws, _ = await start_stream(running_app, "CArefused", sample_rate=16000)
    assert (await closed_with(ws))[0] == 1008
    forged = await open_media(running_app)  # the upgrade's signature is the same every time
    b = tm.InboundBuilder(
        "MZf", "CAforged", "AC1", custom_parameters={"profile": "support", "call_token": "v1.1.a.b"}
    )
    await forged.send(b.connected())
    await forged.send(b.start())
    assert await closed_with(forged) == (1008, "stream token does not match this call")

    call = await stored_call(database, "CArefused")
    assert call is not None
    assert (call["end_reason"], call["end_detail"], call["duration_ms"]) == (
        "refused",
        "unsupported media format audio/x-mulaw 16000 Hz x1",
        0,
    )
    assert (call["profile"], call["to_number"]) == ("support", "+15550001000")
    assert await stored_call(database, "CAforged") is None


async def test_a_replayed_stream_leaves_the_live_call_alone(
    running_app: RunningApp, database: str
) -> None:
    resp = await post_webhook(running_app, call_params("CAlive"))
    _, params = stream_params(resp.text)
    first = await open_media(running_app)
    b = tm.InboundBuilder("MZl", "CAlive", "AC1", custom_parameters=params)
    await first.send(b.connected())
    await first.send(b.start())
    second = await open_media(running_app)
    await second.send(b.connected())
    await second.send(b.start())
    assert await closed_with(second) == (1008, "stream token already used")
    await asyncio.sleep(1.2)  # the refusal's row (if any) is flushed by now
    call = await stored_call(database, "CAlive", until="sid")
    assert call is not None and call["ended_at"] is None and call["end_reason"] == ""
    await first.send(b.stop())
    await closed_with(first)
    call = await stored_call(database, "CAlive")
    assert call is not None and call["end_reason"] == "caller-hangup"
