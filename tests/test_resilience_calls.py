"""Reconnects under load: every call keeps its turns on the call clock (voiced fake Flux).

The fake Flux finds turns from the audio itself, as real Flux does, so audio replayed on a new
connection is heard where its speech really is: a wrong clock anchor shows up as a wrong time.
"""

from __future__ import annotations

import asyncio

import pytest

from telephony.audio import silence, tone
from telephony.session.tasks import Timer
from telephony.sim.deepgram_server import FakeDeepgram, Fault, Script, ScriptedTurn
from telephony.sim.twilio_caller import FakeTwilioCaller
from tests.conftest import AUTH_TOKEN, RunningApp, finished

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

SPEECH_START_MS, SPEECH_END_MS = 600, 1800
DROP_AT_MS = 1200  # mid-turn, in the first connection's audio time (= call time)
CALLS = 100


def caller_audio() -> bytes:
    """Silence, 1.2 s of "speech" (a tone), then silence."""
    speech = SPEECH_END_MS - SPEECH_START_MS
    return silence(SPEECH_START_MS) + tone(440, speech) + silence(1200)


# 100 calls open their sockets at once: CPU-bound for a moment, which a 4x clock reads as 4x
# longer (a connect attempt timed out on a loaded CI machine, and the fault went with it).
@pytest.mark.clock(2)
async def test_flux_drop_mid_turn_keeps_every_turn_on_the_call_clock(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    # Flux connections carry tag=<call SID>: each call gets its own script, whose fault breaks
    # that call's first Flux socket mid-turn.
    for i in range(CALLS):
        script = Script(
            turns=[ScriptedTurn.said("hello there")],
            voiced=True,
            faults=[Fault(endpoint="flux", at_ms=DROP_AT_MS, kind="drop")],
        )
        fake_deepgram.set_script(f"CAload{i:04d}", script)
    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        results = await asyncio.gather(
            *(
                caller.dial(
                    "+15550001000",
                    call_sid=f"CAload{i:04d}",
                    audio=caller_audio(),
                    tail_ms=0,
                    keep_audio=False,
                )
                for i in range(CALLS)
            )
        )
    assert all(r.close_code == 1000 for r in results), {r.close_reason for r in results}
    worst, reconnect_ms = 0, []
    for i in range(CALLS):
        summary = await finished(running_app, f"CAload{i:04d}")
        connections = [e for e in summary.transcript.events if e.kind == "flux-connection"]
        assert len(connections) == 2, (i, connections)
        assert connections[1].data["dropped_ms"] == 0  # nothing lost beyond the bound
        reconnect_ms.append(connections[1].data["reconnect_ms"])
        caller_turns = [t for t in summary.transcript.turns if t.role == "caller"]
        assert [t.text for t in caller_turns] == ["hello there"], (i, caller_turns)
        turn = caller_turns[0]
        worst = max(worst, abs(turn.start_ms - SPEECH_START_MS), abs(turn.end_ms - SPEECH_END_MS))
    assert worst <= 20, f"worst timestamp error {worst} ms"
    reconnect_ms.sort()
    p50, p99 = reconnect_ms[len(reconnect_ms) // 2], reconnect_ms[int(len(reconnect_ms) * 0.99)]
    print(f"\n{CALLS} calls: reconnect p50 {p50} ms, p99 {p99} ms; worst time error {worst} ms")


async def one_call(app: RunningApp, fake: FakeDeepgram, sid: str, fault: Fault) -> None:
    fake.set_script(
        sid, Script(turns=[ScriptedTurn.said("hello there")], voiced=True, faults=[fault])
    )
    async with app.http() as http:
        caller = FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN, http=http)
        audio = silence(SPEECH_START_MS) + tone(440, 1200) + silence(6000)
        await caller.dial("+15550002000", call_sid=sid, audio=audio, tail_ms=0)


async def test_stuck_turn_is_released_by_force_end_turn(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    # Flux never ends the turn by itself; eot_timeout_ms is 1000 for this profile, so 2 s after
    # the words stopped we send ForceEndTurn, which the fake answers.
    await one_call(
        running_app, fake_deepgram, "CAstuck", Fault(endpoint="flux", at_ms=1000, kind="stuck")
    )
    summary = await finished(running_app, "CAstuck")
    caller = [t for t in summary.transcript.turns if t.role == "caller"]
    assert [(t.text, t.meta["trigger"]) for t in caller] == [("hello there", "manual")]
    steps = [e.data["step"] for e in summary.transcript.events if e.kind == "turn-watchdog"]
    assert steps == ["force-end"]
    released_at = next(t.end_ms for t in summary.transcript.turns if t.role == "caller")
    assert abs(released_at - SPEECH_END_MS) <= 20  # ForceEndTurn keeps the real speech times
    assert any(t.role == "bot" and t.text == "Sales here." for t in summary.transcript.turns)


async def test_the_watchdog_sleeps_until_a_turn_could_be_stuck(
    running_app: RunningApp, fake_deepgram: FakeDeepgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No clock ticks per call: over ~8 s with one healthy turn the watchdog wakes a handful of
    times (each when something could first be due), not four times a second."""
    sleeps: list[float] = []  # how long the watchdog's timer was armed for, each time
    real_start = Timer.start

    def counted(timer: Timer, after_s: float) -> None:
        if timer._name == "turn-watchdog":
            sleeps.append(after_s)
        real_start(timer, after_s)

    monkeypatch.setattr(Timer, "start", counted)
    calm = Script(turns=[ScriptedTurn.said("hello there")], voiced=True)
    fake_deepgram.set_script("CAcalm", calm)
    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        audio = silence(SPEECH_START_MS) + tone(440, 1200) + silence(6000)
        await caller.dial("+15550002000", call_sid="CAcalm", audio=audio, tail_ms=0)
    summary = await finished(running_app, "CAcalm")
    assert not [e for e in summary.transcript.events if e.kind == "turn-watchdog"]
    assert 1 <= len(sleeps) <= 6, sleeps  # a 0.25 s clock would have slept ~30 times
    assert min(sleeps) > 0.25


async def test_silent_socket_is_detected_and_replaced(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    # Mid-turn the socket stops sending anything: ForceEndTurn goes unanswered, so the turn
    # is ended from the last Update and the socket replaced; the caller is answered.
    await one_call(
        running_app, fake_deepgram, "CAsilent", Fault(endpoint="flux", at_ms=1000, kind="silent")
    )
    summary = await finished(running_app, "CAsilent")
    steps = [e.data["step"] for e in summary.transcript.events if e.kind == "turn-watchdog"]
    assert steps == ["force-end", "ended-from-update"]
    connections = [e for e in summary.transcript.events if e.kind == "flux-connection"]
    assert len(connections) == 2
    caller = [t for t in summary.transcript.turns if t.role == "caller"]
    assert caller and caller[0].meta["trigger"] == "watchdog" and caller[0].text
    assert any(t.role == "bot" and t.text == "Sales here." for t in summary.transcript.turns)


async def test_mid_call_configure_survives_a_reconnect(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    sid = "CAconfigure"
    fake_deepgram.set_script(
        sid,
        Script(
            turns=[ScriptedTurn.said("hello there")],
            voiced=True,
            faults=[Fault(endpoint="flux", at_ms=2500, kind="drop")],
        ),
    )

    async def configure_when_live() -> None:
        registry = running_app.app.state.services.registry
        for _ in range(300):
            call = registry.live.get(sid)
            link = call.engine.link if call is not None else None
            if link is not None and link.connected and link.client.first_audio_ms is not None:
                await call.engine.configure(eot_threshold=0.85, keyterms=["Zebulon"])
                return
            await asyncio.sleep(0.01)

    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        audio = silence(3000) + tone(440, 800) + silence(1500)
        await asyncio.gather(
            caller.dial("+15550001000", call_sid=sid, audio=audio, tail_ms=0),
            configure_when_live(),
        )
    flux = [c for c in fake_deepgram.connections if c.endpoint == "flux" and c.tag == sid]
    assert len(flux) == 2
    assert flux[0].query["eot_threshold"] == ["0.7"]  # the profile's default
    assert flux[1].query["eot_threshold"] == ["0.85"]  # the reconnect carries the Configure
    assert flux[1].query["keyterm"] == ["Zebulon"]


# ±500 ms of watchdog slack is 125 ms of real time on a 4x clock: CI's two busy workers once
# took 680 ms of call time of it.
@pytest.mark.clock(2)
async def test_stuck_turn_threshold_follows_a_mid_call_configure(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    # The support profile leaves eot_timeout_ms at Flux's 5000 (stuck after 6 s); a Configure
    # to 1000 ms early in the call must move the watchdog to 2 s after the words stop.
    sid = "CAreconfigured"
    fault = Fault(endpoint="flux", at_ms=1000, kind="stuck")
    fake_deepgram.set_script(
        sid, Script(turns=[ScriptedTurn.said("hello there")], voiced=True, faults=[fault])
    )

    async def configure_when_live() -> None:
        registry = running_app.app.state.services.registry
        for _ in range(300):
            call = registry.live.get(sid)
            link = call.engine.link if call is not None else None
            if link is not None and link.connected and link.client.first_audio_ms is not None:
                await call.engine.configure(eot_timeout_ms=1000)
                return
            await asyncio.sleep(0.01)

    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        audio = silence(SPEECH_START_MS) + tone(440, 1200) + silence(6000)
        await asyncio.gather(
            caller.dial("+15550001000", call_sid=sid, audio=audio, tail_ms=0),
            configure_when_live(),
        )
    summary = await finished(running_app, sid)
    assert any(e.kind == "flux-configured" for e in summary.transcript.events)
    forced = [e.ms for e in summary.transcript.events if e.kind == "turn-watchdog"]
    assert forced, "the stuck turn was never forced to end"
    # 1 s eot_timeout + 1 s margin after the last words, not the 6 s of the profile's value.
    assert forced[0] - SPEECH_END_MS <= 2500, forced
