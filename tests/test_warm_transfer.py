"""Warm transfer end to end: the person who answers hears a whisper built from the conversation.

The real app on loopback with the fakes: the bot transfers, the fake Twilio runs the REST
update's `<Dial><Number url>`, fetches the whisper URL for the new leg (signed, as Twilio does
when the person answers) and records what that person alone heard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from telephony.demo import OfflineCall, run_offline_call
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import AgentStep, Script, ScriptedFunctionCall, ScriptedTurn
from telephony.sim.webhook import read_twiml

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

MS_PER_CHAR = 30
PERSON = "+15557770000"

NUMBERS = f"""\
numbers:
  "+15550001000": warm
  "+15550002000": cold
  "+15550003000": agent
  "+15550004000": voiced
  "+15550005000": kept
  "+15550006000": writer
profiles:
  warm:
    mode: flux
    greeting: "Hi."
    transfer: {{number: "{PERSON}", whisper: true}}
    responder:
      type: scripted
      rules:
        - {{pattern: "refund", reply: "Refunds take five days."}}
        - {{pattern: "human", reply: "Transferring you now.", action: transfer}}
      fallback: "Sorry?"
  cold:
    mode: flux
    transfer_number: "{PERSON}"
    responder:
      type: scripted
      rules: [{{pattern: "human", reply: "Transferring you now.", action: transfer}}]
      fallback: "Sorry?"
  voiced:
    mode: flux
    transfer:
      number: "{PERSON}"
      whisper: true
      whisper_template: "Caller told {{told}}. {{reason}}"
      whisper_voice: Polly.Joanna
      whisper_language: en-US
    responder:
      type: scripted
      rules:
        - {{pattern: "refund", reply: "Refunds take five days."}}
        - {{pattern: "human", reply: "Transferring you now.", action: transfer}}
      fallback: "Sorry?"
  kept:
    mode: flux
    transfer: {{number: "{PERSON}", whisper: true}}
    transcribe_after_transfer: true
    responder:
      type: scripted
      rules: [{{pattern: "human", reply: "Transferring you now.", action: transfer}}]
      fallback: "Sorry?"
  writer:
    mode: flux
    transfer: {{number: "{PERSON}", whisper: true, whisper_source: llm, whisper_llm_ms: 1500}}
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: test-model
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
  agent:
    mode: agent
    greeting: "Hi there."
    transfer: {{number: "{PERSON}", whisper: true}}
    agent:
      think_prompt: "You are a test agent."
"""


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


async def flux_call(
    numbers: Path, number: str, turns: list[ScriptedTurn], **kw: Any
) -> OfflineCall:
    kw.setdefault("max_call_ms", 12_000)
    return await run_offline_call(
        number=number,
        script=Script(turns=turns),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        llm_options={"first_token_delay_ms": 100, "tokens_per_s": 400},
        **kw,
    )


REFUND_THEN_HUMAN = [
    ScriptedTurn(start_ms=800, end_ms=1600, text="I want a refund for my order"),
    ScriptedTurn(start_ms=3600, end_ms=4200, text="a human please"),
]


def whisper_events(result: OfflineCall) -> list[dict[str, Any]]:
    return [e for e in result.as_json()["events"] if e["kind"] == "whisper"]


def transfer_twiml(result: OfflineCall) -> str:
    assert len(result.rest.requests) == 1, result.rest.requests
    return result.rest.requests[0].form["Twiml"]


async def test_whisper_from_the_conversation_reaches_the_person_only(numbers: Path) -> None:
    result = await flux_call(numbers, "+15550001000", REFUND_THEN_HUMAN)
    twiml = transfer_twiml(result)
    answer = read_twiml(twiml)
    # <Dial><Number url="…/twilio/whisper?call=…">: the URL names this call and is signed.
    assert answer.dialled == [PERSON]
    [(number, url, method)] = answer.number_urls
    assert (number, method) == (PERSON, "POST")
    parts = urlsplit(url)
    assert parts.path == "/twilio/whisper"
    query = parse_qs(parts.query)
    assert query["call"] == [result.caller.call_sid] and query["sig"] and query["exp"]
    # The fake Twilio fetched it for the person's leg, with a valid signature, and got a <Say>.
    [fork] = result.caller.forks
    [heard] = fork.whispers
    assert heard.http_status == 200 and heard.error is None
    expected = (
        "Transferring a caller. They said: I want a refund for my order. They asked for a person."
    )
    assert heard.said == [expected]
    # ... which the caller never heard: they heard the bot, then the ring.
    assert "refund for my order. They" not in tts_text(result.caller.heard, MS_PER_CHAR)
    assert result.caller.said == []
    # The timeline records what the person was told.
    [event] = whisper_events(result)
    assert event["text"] == expected and event["source"] == "template"
    kinds = [e["kind"] for e in result.as_json()["events"]]
    assert kinds.index("transfer") < kinds.index("whisper")
    assert result.as_json()["end_reason"] == "transferred"


async def test_whisper_never_reads_out_a_card_number(numbers: Path) -> None:
    turns = [
        ScriptedTurn(
            start_ms=800, end_ms=2600, text="my card is 4111 1111 1111 1111 and I want a human"
        )
    ]
    result = await flux_call(numbers, "+15550001000", turns)
    [heard] = result.caller.forks[0].whispers
    [said] = heard.said
    assert "4111" not in said and "1111" not in said
    assert "a card number" in said
    assert whisper_events(result)[0]["text"] == said


async def test_whisper_off_dials_plainly_as_before(numbers: Path) -> None:
    result = await flux_call(
        numbers, "+15550002000", [ScriptedTurn(start_ms=800, end_ms=1400, text="a human please")]
    )
    assert f"<Dial>{PERSON}</Dial>" in transfer_twiml(result)
    assert "Number" not in transfer_twiml(result)
    assert whisper_events(result) == []
    assert all(not f.whispers for f in result.caller.forks)


async def test_template_voice_and_language(numbers: Path) -> None:
    result = await flux_call(numbers, "+15550004000", REFUND_THEN_HUMAN)
    [heard] = result.caller.forks[0].whispers
    assert heard.said == ["Caller told Refunds take five days. They asked for a person."]
    # The route said it with the profile's voice and language.
    fork_twiml = read_twiml(transfer_twiml(result))
    assert fork_twiml.number_urls
    event = whisper_events(result)[0]
    assert event["voice"] == "Polly.Joanna" and event["language"] == "en-US"


async def test_whisper_with_transcription_after_the_transfer(numbers: Path) -> None:
    result = await flux_call(
        numbers,
        "+15550005000",
        [ScriptedTurn(start_ms=800, end_ms=1400, text="a human please")],
        max_call_ms=8_000,
    )
    answer = read_twiml(transfer_twiml(result))
    assert answer.fork and answer.dialled == [PERSON] and answer.number_urls
    fork = result.caller.forks[0]
    assert fork.stream_url  # the transcription stream opened, and the person heard the whisper
    assert fork.whispers[0].said == [
        "Transferring a caller. They said: a human please. They asked for a person."
    ]


async def test_whisper_written_by_the_llm(numbers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "demo-llm-key")
    result = await run_offline_call(
        number="+15550006000",
        script=Script(
            turns=[
                ScriptedTurn(start_ms=800, end_ms=1600, text="refund on card 4111 1111 1111 1111")
            ]
        ),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        llm_options={
            "first_token_delay_ms": 100,
            "tokens_per_s": 400,
            # The call's replies transfer; the whisper request (the conversation as text) gets
            # a sentence that repeats the card number, which must not be read out.
            "replies": [
                ("^Caller:", "Wants a refund on card 4111 1111 1111 1111, told five days."),
                ("refund", "Let me put you through."),
            ],
            "tools": [("refund", "transfer_call")],
        },
        max_call_ms=10_000,
    )
    [event] = whisper_events(result)
    assert event["source"] == "llm"
    assert event["text"] == "Wants a refund on card a card number, told five days."
    assert result.caller.forks[0].whispers[0].said == [event["text"]]


async def test_agent_transfer_call_gets_the_same_whisper(numbers: Path) -> None:
    result = await run_offline_call(
        mode="agent",
        number="+15550003000",
        script=Script(
            agent=[
                AgentStep(at_ms=1000, user_text="I need a refund.", reply_text="Sure."),
                AgentStep(
                    at_ms=2500,
                    user_text="Can I talk to a real person?",
                    reply_text="",
                    function_call=ScriptedFunctionCall("transfer_call", "{}"),
                    reply_after_function="Connecting you now.",
                ),
            ]
        ),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR, "agent_latency_s": 0.1},
        max_call_ms=8_000,
    )
    answer = read_twiml(transfer_twiml(result))
    assert answer.dialled == [PERSON] and answer.number_urls
    [heard] = result.caller.forks[0].whispers
    assert heard.said == [
        "Transferring a caller. They said: I need a refund. They asked for a person."
    ]
    assert whisper_events(result)[0]["text"] == heard.said[0]


async def test_a_failing_whisper_never_stops_the_transfer(
    numbers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("whisper builder bug")

    monkeypatch.setattr("telephony.session.whisper.build_whisper", broken)
    result = await flux_call(numbers, "+15550001000", REFUND_THEN_HUMAN)
    assert f"<Dial>{PERSON}</Dial>" in transfer_twiml(result)  # dialled plainly
    assert whisper_events(result) == []
    assert result.as_json()["end_reason"] == "transferred"
