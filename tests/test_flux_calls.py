"""Flux mode end to end: the real app on loopback with fake Deepgram, LLM, Twilio and REST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator  # noqa: F401  (documents the REST auth)

from telephony.demo import OfflineCall, run_offline_call
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.sim.twilio_caller import SendDtmf
from tests import fast_clock

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

MS_PER_CHAR = 30  # fake Aura speech: 30 ms per character keeps calls short

NUMBERS = """\
numbers:
  "+15550001000": scripted
  "+15550002000": eager
  "+15550003000": pcm
  "+15550004000": strict
  "+15550008000": multi
profiles:
  scripted:
    mode: flux
    greeting: "Hi."
    transfer_number: "+15557770000"
    responder:
      type: scripted
      rules:
        - {pattern: "hours", reply: "We are open. Nine to five on weekdays, closed weekends."}
        - {pattern: "human", reply: "Transferring you now.", action: transfer}
        - {pattern: "long goodbye", reply: "Goodbye, and thank you so much for calling us today.",
           action: hangup}
        - {pattern: "bye", reply: "Goodbye!", action: hangup}
        - {pattern: "^12$", reply: "You pressed twelve."}
      fallback: "Sorry?"
  eager:
    mode: flux
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: test-model
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
    flux: {eot_threshold: 0.7, eager_eot_threshold: 0.5}
  strict:
    mode: flux
    greeting: "This call may be recorded for quality purposes."
    greeting_interruptible: false
    responder: {type: scripted, rules: [], fallback: "How can I help?"}
  multi:
    mode: flux
    responder: {type: scripted, rules: [], fallback: "Okay."}
    flux: {model: flux-general-multi}
  pcm:
    mode: flux
    responder: {type: scripted, rules: [{pattern: "bye", reply: "Bye.", action: hangup}],
                fallback: "Okay."}
    flux: {encoding: linear16}
"""


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


async def call(numbers: Path, number: str, turns: list[ScriptedTurn], **kw) -> OfflineCall:
    kw.setdefault("max_call_ms", 15_000)
    return await run_offline_call(
        number=number,
        script=Script(turns=turns),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR, **kw.pop("deepgram_options", {})},
        llm_options={"first_token_delay_ms": 300, "tokens_per_s": 200},
        **kw,
    )


def turns_of(result: OfflineCall) -> list[tuple[str, str]]:
    return [(t["role"], t["text"]) for t in result.as_json()["turns"]]


def flux_log(result: OfflineCall):
    return next(c for c in result.deepgram.connections if c.endpoint == "flux")


def speak_log(result: OfflineCall):
    return next(c for c in result.deepgram.connections if c.endpoint == "speak")


async def test_two_turn_conversation(numbers: Path) -> None:
    result = await call(
        numbers,
        "+15550001000",
        [
            ScriptedTurn(start_ms=1000, end_ms=1800, text="What are your hours?"),
            ScriptedTurn(start_ms=5000, end_ms=5600, text="Okay bye."),
        ],
    )
    assert turns_of(result) == [
        ("bot", "Hi."),
        ("caller", "What are your hours?"),
        ("bot", "We are open. Nine to five on weekdays, closed weekends."),
        ("caller", "Okay bye."),
        ("bot", "Goodbye!"),
    ]
    turns = result.as_json()["turns"]
    for bot in turns[0::2]:
        assert bot["heard"] == bot["text"] and not bot["interrupted"]
    # Caller turns on the call clock: within 20 ms of the scripted audio times.
    assert abs(turns[1]["start_ms"] - 1000) <= 20 and abs(turns[1]["end_ms"] - 1800) <= 20
    assert abs(turns[3]["start_ms"] - 5000) <= 20
    assert turns[2]["latency_ms"] is not None and turns[2]["latency_ms"] >= 0
    # Hang-up: one REST request, Status=completed, only after the goodbye's mark echoed.
    assert [r.form for r in result.rest.requests] == [{"Status": "completed"}]
    # The bot hung up: Twilio's `stop` followed our REST request (issue 19).
    assert result.summary.end_reason == "bot-hangup" and result.summary.end_detail == "stop"
    # No Deepgram rule was broken.
    assert all(not c.violations for c in result.deepgram.connections)
    assert "json:KeepAlive" not in flux_log(result).received_kinds()


async def test_caller_turns_keep_flux_languages_and_the_end_of_turn_trigger(
    numbers: Path,
) -> None:
    result = await call(
        numbers,
        "+15550008000",
        [ScriptedTurn(start_ms=1000, end_ms=1800, text="Hola, what are your hours?")],
        max_call_ms=4_000,
    )
    [caller] = [t for t in result.summary.transcript.turns if t.role == "caller"]  # type: ignore[union-attr]
    assert caller.meta == {"trigger": "model", "languages": ["en"]}  # the fake detects "en"
    assert flux_log(result).query["model"] == ["flux-general-multi"]


async def test_barge_in_clears_everything_and_records_what_was_heard(numbers: Path) -> None:
    result = await call(
        numbers,
        "+15550001000",
        [
            ScriptedTurn(start_ms=1000, end_ms=1800, text="What are your hours?"),
            # Reply audio starts ~1.9 s; "We are open." (360 ms) has played by 2.6 s.
            ScriptedTurn(start_ms=2700, end_ms=3300, text="Sorry, goodbye."),
        ],
    )
    turns = result.as_json()["turns"]
    reply = turns[2]
    assert reply["text"] == "We are open. Nine to five on weekdays, closed weekends."
    assert reply["interrupted"] is True
    # Heard: the first sentence (its mark echoed) and the words of the second that played
    # before the clear, in proportion to its audio: what the caller's play-out decodes to.
    played = tts_text(result.caller.heard, MS_PER_CHAR).removeprefix("Hi.").split("Goodbye!")[0]
    assert reply["heard"].startswith("We are open.") and len(reply["heard"]) < len(reply["text"])
    assert abs(len(reply["heard"].split()) - len(played.replace(".", ". ").split())) <= 1
    assert abs(result.summary.transcript.turns[2].interrupted_at_ms - 2700) <= 20
    # Twilio clear reached the caller, and Aura got Clear.
    assert result.caller.clears, "no Twilio clear"
    assert "json:Clear" in speak_log(result).received_kinds()
    # The caller heard only audio from before the clear: recover the text from the audio.
    heard = tts_text(result.caller.heard, MS_PER_CHAR)
    assert heard.startswith("Hi.We are open.")
    unheard_tail = "on weekdays, closed weekends."
    assert unheard_tail not in heard
    # The first sentence's mark was echoed after playing; the second's never was (its mark
    # was not even sent: it follows all of its audio, and the clear came first).
    played = {m.name for m in result.caller.marks if not m.cleared}
    assert "r1:s0" in played and "r1:s1" not in played
    events = [e["kind"] for e in result.as_json()["events"]]
    assert "barge-in" in events
    assert turns[-1]["text"] == "Goodbye!" and not turns[-1]["interrupted"]


async def test_hang_up_waits_for_goodbye_and_barge_in_cancels_it(numbers: Path) -> None:
    result = await call(
        numbers,
        "+15550001000",
        [
            ScriptedTurn(start_ms=1000, end_ms=1600, text="long goodbye"),
            ScriptedTurn(start_ms=2400, end_ms=3000, text="wait, one more thing"),
        ],
        max_call_ms=5_000,
    )
    turns = result.as_json()["turns"]
    assert turns[2]["text"].startswith("Goodbye, and thank you") and turns[2]["interrupted"]
    assert result.rest.requests == [], "hang-up must be cancelled by the barge-in"
    assert turns_of(result)[-1] == ("bot", "Sorry?")


async def test_hang_up_only_after_the_goodbye_has_played(numbers: Path) -> None:
    result = await call(
        numbers, "+15550001000", [ScriptedTurn(start_ms=1000, end_ms=1600, text="bye now")]
    )
    goodbye_marks = [m for m in result.caller.marks if not m.cleared]
    assert goodbye_marks, "no marks echoed"
    last_echo_ms = max(m.echoed_at_ms for m in goodbye_marks)
    # The fake REST API ends the stream (Twilio sends `stop`) when the hang-up arrives.
    stops = [e for e in result.caller.events if e.kind == "stop"]
    assert stops and stops[0].ms >= last_echo_ms
    assert [r.form for r in result.rest.requests] == [{"Status": "completed"}]
    heard = tts_text(result.caller.heard, MS_PER_CHAR)
    assert heard.endswith("Goodbye!")  # the whole goodbye was heard before the line dropped


async def test_transfer_makes_the_rest_request_after_the_line_played(numbers: Path) -> None:
    result = await call(
        numbers,
        "+15550001000",
        [ScriptedTurn(start_ms=1000, end_ms=1600, text="a human please")],
    )
    assert len(result.rest.requests) == 1
    twiml = result.rest.requests[0].form["Twiml"]
    assert "<Dial>+15557770000</Dial>" in twiml
    assert tts_text(result.caller.heard, MS_PER_CHAR).endswith("Transferring you now.")
    assert "transfer" in [e["kind"] for e in result.as_json()["events"]]
    assert result.as_json()["end_reason"] == "transferred"


async def test_eager_then_resumed_cancels_the_speculative_reply(
    numbers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await call(
        numbers,
        "+15550002000",
        [
            ScriptedTurn(
                start_ms=1000,
                end_ms=2600,
                eager_ms=1600,
                text="I want to cancel",
                resumed=True,
                final_text="I want to cancel my order please",
            )
        ],
        max_call_ms=6_000,
    )
    users = [r["messages"][-1]["content"] for r in result.llm.requests]
    assert users == ["I want to cancel", "I want to cancel my order please"]
    assert result.llm.disconnects >= 1  # the speculative stream was cut
    bot = [t for t in result.as_json()["turns"] if t["role"] == "bot"]
    assert len(bot) == 1 and "I want to cancel my order please" in bot[0]["text"]
    assert "speculation-used" not in [e["kind"] for e in result.as_json()["events"]]


async def test_eager_then_end_reuses_the_speculative_reply(numbers: Path) -> None:
    result = await call(
        numbers,
        "+15550002000",
        [ScriptedTurn(start_ms=1000, end_ms=2400, eager_ms=2000, text="Where is my parcel")],
        max_call_ms=6_000,
    )
    assert len(result.llm.requests) == 1
    assert result.llm.requests[0]["messages"][-1]["content"] == "Where is my parcel"
    assert result.llm.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "speculation-used" in [e["kind"] for e in result.as_json()["events"]]
    bot = [t for t in result.as_json()["turns"] if t["role"] == "bot"]
    assert len(bot) == 1 and "Where is my parcel" in bot[0]["text"]


async def test_linear16_mode_sends_16k_pcm_of_the_right_length(numbers: Path) -> None:
    result = await call(
        numbers, "+15550003000", [ScriptedTurn(start_ms=600, end_ms=1200, text="okay bye")]
    )
    log = flux_log(result)
    assert log.query["encoding"] == ["linear16"] and log.query["sample_rate"] == ["16000"]
    # Every μ-law byte the caller sent becomes 2 samples x 2 bytes at 16 kHz.
    assert log.audio_bytes == result.caller.sent_frames * 160 * 4
    assert turns_of(result)[-1] == ("bot", "Bye.")


async def test_dtmf_ends_the_turn_and_reaches_the_responder(numbers: Path) -> None:
    result = await call(
        numbers,
        "+15550001000",
        [],
        timeline=[SendDtmf(800, "1"), SendDtmf(900, "2"), SendDtmf(1000, "#")],
        max_call_ms=3_000,
    )
    turns = result.as_json()["turns"]
    assert ("caller", "12") in turns_of(result)
    assert ("bot", "You pressed twelve.") in turns_of(result)
    assert [e["digit"] for e in result.as_json()["events"] if e["kind"] == "dtmf"] == [
        "1",
        "2",
        "#",
    ]
    assert turns


async def test_a_non_interruptible_greeting_plays_through_caller_speech(numbers: Path) -> None:
    result = await call(
        numbers,
        "+15550004000",
        [ScriptedTurn(start_ms=400, end_ms=900, text="hello hello")],
        max_call_ms=4_000,
    )
    greeting = result.as_json()["turns"][0]
    assert greeting["text"].startswith("This call may be recorded")
    assert not greeting["interrupted"] and greeting["heard"] == greeting["text"]
    assert not result.caller.clears
    assert "barge-in" not in [e["kind"] for e in result.as_json()["events"]]
    # The caller's words were still taken, and answered after the greeting.
    assert turns_of(result)[1:] == [("caller", "hello hello"), ("bot", "How can I help?")]


def test_call_command_prints_the_json_transcript(
    numbers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from telephony.cli import main

    with fast_clock.scaled_loops(4):
        code = main(
            ["call", "--json", "--number", "+15550001000", "--say", "bye", "--config", str(numbers)]
        )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(out) >= {"call_sid", "mode", "turns", "events"} and out["mode"] == "flux"
    assert [t["role"] for t in out["turns"]] == ["bot", "caller", "bot"]
    assert set(out["turns"][0]) >= {
        "role",
        "text",
        "heard",
        "interrupted",
        "start_ms",
        "end_ms",
        "latency_ms",
    }
    assert out["turns"][2]["text"] == "Goodbye!"
    assert {"ms", "kind"} <= set(out["events"][0])
