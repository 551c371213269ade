"""Graceful drain: a real `telephony serve` process gets SIGTERM in the middle of a call.

- /readyz turns 503 at once and the webhook turns new calls away (busy message), while the
  live call goes on: the caller still hears the bot's replies. When the call ends the process
  exits 0, and the database holds the whole transcript with the call ended.
- With a short drain limit a call that would go on is ended with a goodbye (a REST TwiML
  update) and the end reason "server draining"; its transcript is flushed; exit 0.
- A second signal ends the remaining calls at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from telephony.drain import DRAIN_REASON, DRAIN_TWIML, drain
from telephony.session.registry import CallRegistry
from telephony.session.services import DrainState
from telephony.settings import Settings
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller, silence
from telephony.sim.twilio_rest import FakeTwilioRest
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY
from tests.serve_process import (
    Server,
    capture_call_results,
    eventually,
    scripted_yaml,
    serve_process,
)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

MS_PER_CHAR = 30  # fake Aura: 30 ms of speech per character keeps the calls short
NUMBER = "+15550001000"
BUSY = Settings.model_fields["busy_message"].default

YAML = scripted_yaml({"one": "Reply one.", "two": "Reply two."}, goodbye="bye")

TURNS = [
    ScriptedTurn(start_ms=800, end_ms=1200, text="turn one"),
    ScriptedTurn(start_ms=2600, end_ms=3000, text="turn two"),
    ScriptedTurn(start_ms=4200, end_ms=4600, text="okay bye"),
]
FULL_CONVERSATION = [
    ("bot", "Hi."),
    ("caller", "turn one"),
    ("bot", "Reply one."),
    ("caller", "turn two"),
    ("bot", "Reply two."),
    ("caller", "okay bye"),
    ("bot", "Goodbye."),
]


@pytest.fixture
def live_results(monkeypatch: pytest.MonkeyPatch) -> list[CallResult]:
    return capture_call_results(monkeypatch)


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeDeepgram, FakeTwilioRest]]:
    async with (
        FakeDeepgram(
            api_key=DEEPGRAM_KEY, script=Script(turns=TURNS), speak_ms_per_char=MS_PER_CHAR
        ) as dg,
        FakeTwilioRest(auth_token=AUTH_TOKEN) as rest,
    ):
        yield dg, rest


def echoed(result: CallResult) -> set[str]:
    """Bot segments the caller has heard to the end (marks echoed, not by a clear)."""
    return {m.name for m in list(result.marks) if not m.cleared}


async def heard_reply(result: CallResult, n: int, dial: asyncio.Task[Any], server: Server) -> None:
    async def check() -> bool:
        assert not dial.done(), f"call ended early:\n{server.output()}"
        return f"r{n}:s0" in echoed(result)

    await eventually(check, within=15, what=f"reply {n} to be heard")


async def readyz(server: Server) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(server.url + "/readyz")).status_code


async def exit_code(server: Server, within: float) -> int:
    try:
        return await asyncio.wait_for(server.proc.wait(), within)
    except TimeoutError:
        raise AssertionError(f"no exit within {within} s:\n{server.output()}") from None


def stored(db: Path, call_sid: str) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[str]]:
    """(ended_at, end_reason, end_detail), turns, event kinds: read after the process has
    exited."""
    conn = sqlite3.connect(db)
    try:
        call = conn.execute(
            "SELECT ended_at, end_reason, end_detail FROM calls WHERE sid = ?", (call_sid,)
        ).fetchone()
        turns = conn.execute(
            "SELECT role, text, heard FROM turns WHERE call_sid = ? ORDER BY idx", (call_sid,)
        ).fetchall()
        kinds = [
            k for (k,) in conn.execute("SELECT kind FROM events WHERE call_sid = ?", (call_sid,))
        ]
    finally:
        conn.close()
    return call, turns, kinds


async def test_sigterm_mid_call_drains_then_exits_with_the_transcript_flushed(
    tmp_path: Path,
    fakes: tuple[FakeDeepgram, FakeTwilioRest],
    live_results: list[CallResult],
) -> None:
    deepgram, rest = fakes
    hangup = asyncio.Event()

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        if form.get("Status") == "completed":
            hangup.set()  # Twilio ends the media stream when the call is hung up

    rest.on_request = on_rest
    async with serve_process(
        tmp_path,
        YAML,
        deepgram,
        rest,
        TELEPHONY_LOG_LEVEL="INFO",
        TELEPHONY_DRAIN_TIMEOUT_S="30",
    ) as server:
        caller = FakeTwilioCaller(server.url, auth_token=AUTH_TOKEN)
        dial = asyncio.create_task(
            caller.dial(
                NUMBER, audio=silence(15_000), tail_ms=None, hangup=hangup, max_call_ms=15_000
            )
        )
        try:
            await eventually(lambda: _true(live_results), within=10, what="the call to start")
            live = live_results[0]
            await heard_reply(live, 1, dial, server)
            heard_before = echoed(live)
            os.kill(server.proc.pid, signal.SIGTERM)
            signalled = asyncio.get_running_loop().time()

            # Not ready any more, at once...
            async def not_ready() -> bool:
                return await readyz(server) == 503

            await eventually(not_ready, within=2, what="/readyz to answer 503")
            # ...a new call is turned away with the busy message...
            late = await FakeTwilioCaller(server.url, auth_token=AUTH_TOKEN).dial(
                NUMBER, call_sid="CAlate"
            )
            assert late.http_status == 200 and late.stream_url is None, late.twiml
            assert late.said == [BUSY] and late.hung_up
            # ...and the live call goes on to its end (the caller says bye, the bot hangs up).
            result = await asyncio.wait_for(dial, 20)
            call_over = asyncio.get_running_loop().time()
        finally:
            if not dial.done():
                dial.cancel()
        assert await exit_code(server, 10) == 0, server.output()
        exited = asyncio.get_running_loop().time()
        log = server.log.read_text()

    assert result.error is None and result.closed_by == "caller", result
    heard_after = echoed(result) - heard_before
    assert {"r2:s0", "r3:s0"} <= heard_after, (heard_before, echoed(result))
    assert call_over - signalled > 1.0  # the call really ran on after the signal
    assert exited - call_over < 5, "the process lingered after its last call"

    (ended_at, end_reason, detail), turns, kinds = stored(server.db, result.call_sid)
    assert ended_at is not None and (end_reason, detail) == ("bot-hangup", "stop")
    assert [(role, text) for role, text, _ in turns] == FULL_CONVERSATION
    assert all(heard == text for role, text, heard in turns if role == "bot")
    assert "hangup" in kinds and "drain" not in kinds
    for step in ("SIGTERM: draining", "drain started", "drain complete", "shutting down"):
        assert step in log, log[-3000:]
    assert "Application shutdown complete" in log


async def _true(items: list[Any]) -> bool:
    return bool(items)


@pytest.mark.parametrize("how", ["limit", "second-signal"])
async def test_drain_ends_remaining_calls_with_a_goodbye(
    tmp_path: Path,
    fakes: tuple[FakeDeepgram, FakeTwilioRest],
    live_results: list[CallResult],
    how: str,
) -> None:
    deepgram, rest = fakes
    deepgram.set_script(None, Script(turns=TURNS[:1]))  # then silence: the call would go on
    limit_s = 2.0 if how == "limit" else 60.0
    async with serve_process(
        tmp_path,
        YAML,
        deepgram,
        rest,
        TELEPHONY_LOG_LEVEL="INFO",
        TELEPHONY_DRAIN_TIMEOUT_S=str(limit_s),
    ) as server:
        caller = FakeTwilioCaller(server.url, auth_token=AUTH_TOKEN)
        # The caller never hangs up: the line stays open until the server ends the call.
        dial = asyncio.create_task(
            caller.dial(NUMBER, audio=silence(20_000), tail_ms=None, max_call_ms=20_000)
        )
        try:
            await eventually(lambda: _true(live_results), within=10, what="the call to start")
            await heard_reply(live_results[0], 1, dial, server)
            os.kill(server.proc.pid, signal.SIGTERM)
            signalled = asyncio.get_running_loop().time()
            if how == "second-signal":
                await asyncio.sleep(0.5)
                assert not dial.done()
                os.kill(server.proc.pid, signal.SIGTERM)
            result = await asyncio.wait_for(dial, 15)
            ended = asyncio.get_running_loop().time() - signalled
        finally:
            if not dial.done():
                dial.cancel()
        assert await exit_code(server, 10) == 0, server.output()
        log = server.log.read_text()

    # Ended by the server, with the reason, after the limit (or on the second signal).
    assert (result.closed_by, result.close_code, result.close_reason) == (
        "server",
        1000,
        DRAIN_REASON,
    ), result
    if how == "limit":
        assert limit_s - 0.2 < ended < limit_s + 3
        assert "drain limit of 2 s reached" in log
    else:
        assert 0.4 < ended < 3
        assert "second signal" in log
    # The goodbye went to Twilio as TwiML on the live call.
    twiml = [r.form.get("Twiml", "") for r in rest.requests if r.call_sid == result.call_sid]
    assert len(twiml) == 1, twiml
    goodbye = ET.fromstring(twiml[0])
    assert [verb.tag for verb in goodbye] == ["Say", "Hangup"], twiml
    assert "Goodbye" in (goodbye.findtext("Say") or ""), twiml

    (ended_at, end_reason, detail), turns, kinds = stored(server.db, result.call_sid)
    assert ended_at is not None and (end_reason, detail) == ("drained", DRAIN_REASON)
    assert [(role, text) for role, text, _ in turns][:3] == FULL_CONVERSATION[:3]
    assert kinds.count("drain") == 1


# --- the drain policy in-process: what the subprocess tests cannot set up ---------------------


class StandInCall:
    """What the drain uses of a Call: its SID, profile mode, log and `end`."""

    def __init__(self, registry: CallRegistry, sid: str, mode: str = "flux") -> None:
        self.call_sid = sid
        self.profile = SimpleNamespace(mode=mode)
        self.log = logging.getLogger("test")
        self.registry = registry
        self.ended: list[tuple[str, str | None]] = []
        registry.live[sid] = self  # type: ignore[assignment]

    async def end(self, reason: str, twiml: str | None, event: str, **data: object) -> None:
        self.ended.append((reason, twiml))
        self.registry.live.pop(self.call_sid, None)


async def test_drain_with_nothing_live_returns_at_once() -> None:
    state = SimpleNamespace(registry=CallRegistry(), drain=DrainState())
    started = asyncio.get_running_loop().time()
    await drain(state, timeout_s=30)
    assert state.drain.draining and asyncio.get_running_loop().time() - started < 0.5


async def test_drain_waits_for_answered_calls_whose_socket_is_on_its_way() -> None:
    registry = CallRegistry()
    registry.reserve("CAcoming", ttl_s=0.5)
    state = SimpleNamespace(registry=registry, drain=DrainState())
    started = asyncio.get_running_loop().time()
    await drain(state, timeout_s=30)
    assert 0.4 < asyncio.get_running_loop().time() - started < 2  # until the reservation lapsed


async def test_drain_hangs_up_bot_calls_but_only_closes_transcription_streams() -> None:
    registry = CallRegistry()
    bot = StandInCall(registry, "CAbot")
    listened = StandInCall(registry, "CAlisten", mode="transcribe")
    state = SimpleNamespace(registry=registry, drain=DrainState())
    hurry = asyncio.Event()
    hurry.set()  # as on a second signal: end them now
    await drain(state, timeout_s=30, hurry=hurry)
    assert bot.ended == [(DRAIN_REASON, DRAIN_TWIML)]
    assert listened.ended == [(DRAIN_REASON, None)]
    assert not registry.live
