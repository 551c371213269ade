"""Every Deepgram link under one supervisor (telephony/session/link.py), through the fakes.

A refused start (HTTP 429: Deepgram's concurrency limit) is retried like a reconnect in every
mode, and a link that cannot be kept hands the call over (Twilio's own apology, then transfer
or hang-up) instead of closing the stream on the caller.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from telephony.audio import silence
from telephony.demo import OfflineCall, run_offline_call
from telephony.logs import call_logger
from telephony.retry import Backoff, FailureBudget
from telephony.session.link import Link
from telephony.sim.deepgram_server import FakeDeepgram, Fault, Script
from telephony.sim.twilio_caller import FakeTwilioCaller
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.transcript import Transcript
from tests.conftest import AUTH_TOKEN, RunningApp, finished

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

CLOSE_ERROR = 1011


def events(result: OfflineCall, kind: str) -> list[dict[str, Any]]:
    return [e for e in result.as_json()["events"] if e["kind"] == kind]


def assert_handed_over(result: OfflineCall, endpoint: str) -> None:
    """The call was redirected to the apology and a hand-over, never closed with 1011."""
    assert result.caller.close_code != CLOSE_ERROR
    assert result.as_json()["end_reason"] == "failover"
    [failed] = events(result, "upstream-failed")
    assert failed["endpoint"] == endpoint
    twiml = [r.form["Twiml"] for r in result.rest.requests if "Twiml" in r.form]
    assert len(twiml) == 1, result.rest.requests  # one hand-over, however many links failed
    root = ET.fromstring(twiml[0])
    say, then = (child.tag for child in root)
    assert say == "Say" and then in ("Dial", "Hangup")
    assert "technical trouble" in (root.find("Say").text or "")  # type: ignore[union-attr]


@pytest.mark.parametrize("mode,endpoint", [("flux", "flux"), ("flux", "speak"), ("agent", "agent")])
async def test_refused_start_hands_the_call_over(mode: str, endpoint: str) -> None:
    # Deepgram refuses every socket of this endpoint: after the link's attempts the caller
    # hears Twilio's apology and is handed over, instead of dead air and a 1011.
    result = await run_offline_call(
        mode=mode, deepgram_options={"refuse": {endpoint: 1000}}, max_call_ms=15_000
    )
    assert_handed_over(result, endpoint)
    refused = [r for r in result.deepgram.rejections if r.status == 429]
    assert len(refused) == 6  # the default backoff's attempts, then the hand-over
    assert result.summary is not None
    assert f"{endpoint} unreachable at call start" in result.summary.end_detail


@pytest.mark.parametrize("mode,endpoint", [("flux", "flux"), ("flux", "speak"), ("agent", "agent")])
async def test_briefly_refused_start_is_retried(mode: str, endpoint: str) -> None:
    result = await run_offline_call(mode=mode, deepgram_options={"refuse": {endpoint: 2}})
    assert result.as_json()["end_reason"] != "failover"
    assert not events(result, "upstream-failed")
    [start] = [e for e in events(result, f"{endpoint}-connection") if e["reason"] == "start"]
    assert start["attempts"] == 3  # two refused, the third taken
    assert any(t["role"] == "bot" for t in result.as_json()["turns"])  # the call went on


async def test_transcribe_sides_briefly_refused_are_retried() -> None:
    # Both sides start together: four refusals are the first two attempts of each.
    result = await run_offline_call(mode="transcribe", deepgram_options={"refuse": {"listen": 4}})
    starts = [e for e in events(result, "listen-connection") if e["reason"] == "start"]
    assert sorted((e["track"], e["attempts"]) for e in starts) == [("caller", 3), ("staff", 3)]
    assert not events(result, "transcription-failed")
    assert {t["role"] for t in result.as_json()["turns"]} == {"caller", "staff"}


async def test_transcribe_sides_refused_for_good_are_recorded_and_the_call_untouched() -> None:
    result = await run_offline_call(
        mode="transcribe", deepgram_options={"refuse": {"listen": 1000}}
    )
    failed = events(result, "transcription-failed")
    assert sorted(e["track"] for e in failed) == ["caller", "staff"]
    assert all("listen unreachable at call start" in e["reason"] for e in failed)
    assert not [r for r in result.rest.requests if "Twiml" in r.form]  # people talk on: no apology


async def test_aura_failing_again_and_again_spends_its_budget_and_hands_over() -> None:
    # Every Aura socket drops 300 ms after it opens. Before the supervisor, an 8 s call
    # opened 26 Aura sockets and never handed the call over.
    faults = [Fault(endpoint="speak", at_ms=300, kind="drop", connection=i) for i in range(40)]
    result = await run_offline_call(mode="flux", faults=faults, max_call_ms=15_000)
    assert_handed_over(result, "speak")
    assert len(result.deepgram.logs("speak")) == 6  # the first socket + 5 tolerated failures
    assert "speak failed 6 times in 60 s" in result.as_json()["end_detail"]


# --- the Voice Agent's held audio -------------------------------------------------------------

AGENT_NUMBERS = """\
numbers:
  "+15550003000": agent
profiles:
  agent:
    mode: agent
    agent: {think_prompt: "You are terse."}
"""


@pytest.fixture
def numbers_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(AGENT_NUMBERS)
    return path


async def test_agent_reconnect_keeps_the_audio_held_through_failed_attempts(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    # The first agent socket drops 1 s into its audio; the next three handshakes are refused.
    # Caller audio of the whole gap must reach the socket that finally takes over.
    fake_deepgram.set_script(
        None, Script(faults=[Fault(endpoint="agent", at_ms=1000, kind="drop")])
    )
    audio_ms, tail_ms = 4000, 500
    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        call = asyncio.create_task(
            caller.dial("+15550003000", audio=silence(audio_ms), tail_ms=tail_ms)
        )
        await fake_deepgram.wait_for_connection("agent", 0)
        fake_deepgram.refuse("agent", 3)
        result = await call
    summary = await finished(running_app, result.call_sid)
    first, second = fake_deepgram.logs("agent")
    assert len(fake_deepgram.rejections) == 3
    # Lost at most what was in flight when the socket dropped: one 80 ms chunk and the frames
    # the dropped socket took before its close was seen.
    sent_ms = audio_ms + tail_ms
    assert first.audio_ms + second.audio_ms >= sent_ms - 200, (first.audio_ms, second.audio_ms)
    [reconnect] = [
        e
        for e in summary.transcript.events
        if e.kind == "agent-connection" and e.data["reason"] != "start"
    ]
    assert reconnect.data["attempts"] == 4 and reconnect.data["dropped_ms"] == 0
    assert reconnect.data["reconnect_ms"] >= 250  # backoff 0 + 0.1 + 0.2 (±20 %) at least


async def test_when_the_hand_over_itself_fails_twilio_still_apologises(
    running_app: RunningApp, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> None:
    # The agent refuses every socket and Twilio's REST API fails the redirect too: our stream
    # ends with an error, and Twilio runs the apology the webhook put after </Connect>.
    fake_deepgram.refuse("agent", 1000)
    fake_rest.fail_next, fake_rest.fail_status = 10, 500
    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        result = await caller.dial("+15550003000", tail_ms=None, max_call_ms=15_000)
    assert result.closed_by == "server" and result.ran_after_stream
    assert any("technical trouble" in said for said in result.said) and result.hung_up
    summary = await finished(running_app, result.call_sid)
    assert summary.end_reason == "failover"
    assert len(fake_rest.requests) == 1  # a redirect is not repeated after a 500


class _StubSocket:
    """A socket that connects at once and has sent `keepalives` KeepAlives."""

    def __init__(self, keepalives: int) -> None:
        self.keepalives_sent = keepalives
        self.aborted = False

    async def connect(self) -> None:
        pass

    async def abort(self) -> None:
        self.aborted = True


async def test_keepalives_are_counted_once_across_replaced_and_given_up_sockets() -> None:
    ctx = SimpleNamespace(log=call_logger("CAstub"), transcript=Transcript(), now_ms=lambda: 0)
    sockets = iter([_StubSocket(3), _StubSocket(5)])
    given_up: list[str] = []

    async def give_up(endpoint: str, reason: str) -> None:
        given_up.append(reason)

    link = Link(
        ctx,  # type: ignore[arg-type]
        "listen",
        lambda: next(sockets),
        give_up=give_up,
        backoff=Backoff(attempts=1),
        budget=FailureBudget(limit=1),
    )
    assert await link.start() and link.keepalives_sent == 3
    assert await link.replace("dropped") and link.keepalives_sent == 3 + 5
    # The budget is spent: the link gives up, and the last socket is still counted once.
    assert not await link.replace("dropped again") and given_up
    assert link.keepalives_sent == 3 + 5 and link.client.aborted
    kinds = [(e.kind, e.data["reason"]) for e in ctx.transcript.events]
    assert kinds == [("listen-connection", "start"), ("listen-connection", "dropped")]
