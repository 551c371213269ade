"""A silent caller (telephony/session/idle.py): reprompts after the bot has finished speaking,
then a goodbye and a hang-up (outcome idle-hangup); caller speech or a key press starts the
count again; a barge-in on the goodbye keeps the call. Flux and Voice Agent mode share it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from telephony.config import load_config
from telephony.config.loader import ConfigError
from telephony.demo import OfflineCall, run_offline_call
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import AgentStep, Script, ScriptedTurn
from telephony.sim.twilio_caller import SendDtmf

# 4x, not 8x: the keys and words land inside a reprompt or the goodbye with ~0.5 s of call time
# either side, which a loaded machine's stall overran at 8x (tests/fast_clock.py).
pytestmark = pytest.mark.clock(4)

MS_PER_CHAR = 30
GOODBYE = "Goodbye for now, and thank you for calling."  # ~1.3 s of fake Aura speech
IDLE = f"""{{reprompt_after_s: 1, reprompts: 2, messages: ["Are you there?", "Hello?"],
           goodbye: "{GOODBYE}"}}"""
LONG_REPROMPT = "Are you still there? Say something, or press a key."  # ~1.5 s
NUMBERS = f"""\
numbers:
  "+15550001000": flux
  "+15550002000": agent
  "+15550003000": long
profiles:
  long:
    mode: flux
    greeting: "Hi."
    idle: {{reprompt_after_s: 1, reprompts: 2, messages: ["{LONG_REPROMPT}"]}}
    responder: {{type: scripted, rules: [], fallback: "Okay."}}
  flux:
    mode: flux
    greeting: "Hi."
    idle: {IDLE}
    responder: {{type: scripted, rules: [], fallback: "Okay."}}
  agent:
    mode: agent
    greeting: "Hi."
    idle: {IDLE}
    agent: {{think_prompt: "Test."}}
"""


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


async def flux_call(numbers: Path, turns: list[ScriptedTurn], **kw) -> OfflineCall:
    return await run_offline_call(
        number=kw.pop("number", "+15550001000"),
        script=Script(turns=turns),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        max_call_ms=kw.pop("max_call_ms", 12_000),
        **kw,
    )


def bot_lines(result: OfflineCall) -> list[str]:
    return [t["text"] for t in result.as_json()["turns"] if t["role"] == "bot"]


def reprompts(result: OfflineCall) -> list[int]:
    return [e["reprompt"] for e in result.as_json()["events"] if e["kind"] == "nudge"]


async def test_a_silent_caller_is_reprompted_then_told_goodbye_and_hung_up(numbers: Path) -> None:
    result = await flux_call(numbers, [])
    assert bot_lines(result) == ["Hi.", "Are you there?", "Hello?", GOODBYE]
    assert reprompts(result) == [1, 2]
    turns = [t for t in result.as_json()["turns"] if t["role"] == "bot"]
    # Each reprompt comes a second after the previous line finished playing, not before.
    for before, after in itertools.pairwise(turns):
        assert after["start_ms"] - before["end_ms"] >= 1000 - 20, (before, after)
    assert [r.form for r in result.rest.requests] == [{"Status": "completed"}]
    assert result.summary.end_reason == "idle-hangup"
    assert tts_text(result.caller.heard, MS_PER_CHAR).endswith(GOODBYE)
    kinds = [e["kind"] for e in result.as_json()["events"]]
    assert kinds.count("idle-goodbye") == 1 and "hangup" in kinds


async def test_caller_speech_starts_the_count_again(numbers: Path) -> None:
    # "Hi." ends ~0.1 s; reprompt 1 at ~1.1 s (to ~1.5 s); the caller answers at 2.0 s.
    result = await flux_call(numbers, [ScriptedTurn(start_ms=2000, end_ms=2600, text="I'm here")])
    assert bot_lines(result) == [
        "Hi.", "Are you there?", "Okay.", "Are you there?", "Hello?", GOODBYE
    ]  # fmt: skip
    assert reprompts(result) == [1, 1, 2]
    assert result.summary.end_reason == "idle-hangup"


async def test_a_key_press_during_a_reprompt_starts_the_count_again(numbers: Path) -> None:
    # The first reprompt plays from ~1.3 s to ~2.8 s: the keys are pressed in the middle of it.
    result = await flux_call(
        numbers, [], number="+15550003000", timeline=[SendDtmf(2000, "5"), SendDtmf(2050, "#")]
    )
    events = result.as_json()["events"]
    dtmf = next(i for i, e in enumerate(events) if e["kind"] == "dtmf")
    assert [e["reprompt"] for e in events[:dtmf] if e["kind"] == "nudge"] == [1]
    assert [e["reprompt"] for e in events[dtmf:] if e["kind"] == "nudge"] == [1, 2]
    first = result.as_json()["turns"][1]
    assert first["text"] == LONG_REPROMPT and first["interrupted"]  # the keys cut it short
    assert "Okay." in bot_lines(result)  # the digits were answered like a turn
    assert result.summary.end_reason == "idle-hangup"


async def test_speaking_over_the_goodbye_keeps_the_call(numbers: Path) -> None:
    # "Hi." ends ~0.2 s, the reprompts play from ~1.3 s and ~2.8 s, the goodbye from ~4.1 s to
    # ~5.4 s: the caller speaks into it.
    result = await flux_call(
        numbers, [ScriptedTurn(start_ms=4600, end_ms=5000, text="wait")], max_call_ms=6_500
    )
    assert GOODBYE in bot_lines(result)
    assert result.rest.requests == [], "the hang-up must be cancelled by the barge-in"
    assert "action-cancelled" in [e["kind"] for e in result.as_json()["events"]]
    assert result.summary.end_reason != "idle-hangup"


async def test_the_voice_agent_shares_it(numbers: Path) -> None:
    result = await run_offline_call(
        mode="agent",
        number="+15550002000",
        script=Script(agent=[]),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR, "agent_latency_s": 0.1},
        max_call_ms=12_000,
    )
    assert reprompts(result) == [1, 2]
    heard = tts_text(result.caller.heard, MS_PER_CHAR)
    assert heard.index("Are you there?") < heard.index("Hello?") < heard.index(GOODBYE)
    assert [r.form for r in result.rest.requests] == [{"Status": "completed"}]
    assert result.summary.end_reason == "idle-hangup"


async def test_an_agent_caller_who_speaks_is_not_reprompted_while_the_agent_answers(
    numbers: Path,
) -> None:
    steps = [AgentStep(at_ms=1500, user_text="Tell me something.", reply_text="Here it is.")]
    result = await run_offline_call(
        mode="agent",
        number="+15550002000",
        script=Script(agent=steps),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR, "agent_latency_s": 0.1},
        max_call_ms=12_000,
    )
    assert reprompts(result)[:3] == [1, 1, 2]  # the count started again after the caller spoke
    assert result.summary.end_reason == "idle-hangup"


def test_idle_is_checked_in_the_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "profiles:\n"
        "  desk:\n"
        "    mode: transcribe\n"
        "    transcribe: {dial: '+15550009999'}\n"
        "    idle: {reprompt_after_s: 5}\n"
        "  agent:\n"
        "    mode: agent\n"
        "    agent: {think_prompt: x, silence_nudge_s: 3}\n"
        "    idle: {reprompts: 11, messages: []}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert "profiles.desk.idle: only for flux and agent profiles" in text
    assert "profiles.agent.idle.reprompts: must be between 0 and 10" in text
    assert "profiles.agent.idle.messages" in text
