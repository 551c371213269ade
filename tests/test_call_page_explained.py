"""The call page explains itself (routes/explain.py): a reply's latency stage by stage, events
in words, failures and unanswered caller turns marked."""

from __future__ import annotations

from pathlib import Path

import pytest

from routes.explain import event_sentence, latency_steps, unanswered
from telephony.demo import run_offline_call
from telephony.outcome import Outcome
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.store.export import Item
from telephony.transcript import Event, Turn
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts, store_call
from tests.test_staff_ui import client_as

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)


LLM_NUMBERS = """\
numbers:
  "+15550001000": llm
profiles:
  llm:
    mode: flux
    greeting: "Hello."
    flux: {eager_eot_threshold: null}
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: m
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
"""


async def test_a_flux_reply_records_each_stage_in_order(tmp_path: Path) -> None:
    config = tmp_path / "numbers.yaml"
    config.write_text(LLM_NUMBERS)
    result = await run_offline_call(
        number="+15550001000",
        script=Script(turns=[ScriptedTurn(start_ms=1500, end_ms=2200, text="Your hours?")]),
        config_path=config,
        max_call_ms=6_000,
        deepgram_options={"speak_ms_per_char": 30},
        llm_options={"first_token_delay_ms": 300, "tokens_per_s": 400},
    )
    assert result.summary is not None
    [reply] = [t for t in result.summary.transcript.turns if t.role == "bot" and "said" in t.text]
    meta = reply.meta
    # The fake LLM's first token comes 300 ms after its request; the sentence once complete.
    assert 300 <= meta["eot_to_token_ms"] <= meta["eot_to_text_ms"] <= meta["eot_to_audio_ms"]
    assert meta["audio_to_played_ms"] >= 0
    steps = [what for what, _ in latency_steps(meta)]
    assert steps == [
        "caller's end of speech → the LLM's first token",
        "→ the first sentence sent to Aura",
        "→ Aura's first audio",
        "→ playing on the caller's line (Twilio's mark)",
    ]


def test_latency_steps_per_mode() -> None:
    flux = {"eot_to_token_ms": 310.2, "eot_to_text_ms": 352.0, "text_to_audio_ms": 121.4,
            "eot_to_audio_ms": 473.4, "audio_to_played_ms": 35}  # fmt: skip
    assert latency_steps(flux) == [
        ("caller's end of speech → the LLM's first token", "310 ms"),
        ("→ the first sentence sent to Aura", "42 ms"),
        ("→ Aura's first audio", "121 ms"),
        ("→ playing on the caller's line (Twilio's mark)", "35 ms"),
    ]
    fixed = {"eot_to_text_ms": 2.0, "text_to_audio_ms": 90.0, "eot_to_audio_ms": 92.0}
    assert latency_steps(fixed)[0] == ("caller's end of speech → the reply's text sent to Aura",
                                       "2 ms")  # fmt: skip
    agent = {"latency_report": {"stt_ms": 80.0, "ttt_token_ms": 300.0, "tts_ms": 150.0,
                                "total_ms": 560.0}}  # fmt: skip
    assert latency_steps(agent) == [
        ("speech to text", "80 ms"),
        ("LLM's first token", "300 ms"),
        ("text to speech's first audio", "150 ms"),
        ("end of speech to first audio, in all", "560 ms"),
    ]
    assert latency_steps({}) == [] and latency_steps(None) == []


def test_events_in_words() -> None:
    lost = {"connection": 1, "reason": "Flux closed: 1006", "reconnect_ms": 22.4,
            "replayed_ms": 1000, "dropped_ms": 0}  # fmt: skip
    assert event_sentence("flux-connection", lost, 2000) == (
        "Deepgram Flux (speech recognition) connection lost (Flux closed: 1006), back in 22 ms, "
        "1.0 s of the caller's audio replayed."
    )
    assert event_sentence("speak-connection", {"reason": "start", "attempts": 3}, 0) == (
        "Deepgram Aura (text to speech) connected after 3 attempts."
    )
    failed = {"endpoint": "agent", "reason": "agent unreachable at call start"}
    assert "could not be kept" in event_sentence("upstream-failed", failed, 10)
    assert event_sentence("dtmf", {"digit": "1"}, 10) == ""


def test_an_llm_fallback_in_words() -> None:
    switch = {"from": "gpt-4o@api.openai.com", "to": "llama-3.3@api.groq.com", "from_backend": 0,
              "to_backend": 1, "reason": "server-error", "status": 503, "after_ms": 84}  # fmt: skip
    assert event_sentence("llm-fallback", switch, 5000) == (
        "The LLM gpt-4o@api.openai.com failed (HTTP 503) after 84 ms: llama-3.3@api.groq.com "
        "was asked for the same reply instead."
    )
    silent = switch | {"reason": "timeout", "after_ms": 3001.2}
    del silent["status"]
    assert event_sentence("llm-fallback", silent, 5000) == (
        "The LLM gpt-4o@api.openai.com gave no first token in time after 3001 ms: "
        "llama-3.3@api.groq.com was asked for the same reply instead."
    )
    for reason, words in [("rate-limited", "was rate-limited"), ("connection", "could not be "
                          "reached"), ("stream", "broke off its reply")]:  # fmt: skip
        assert words in event_sentence("llm-fallback", switch | {"reason": reason}, 0)


def _items(*roles: str) -> list[Item]:
    return [Item(i * 1000, "turn", turn={"idx": i, "role": r}) for i, r in enumerate(roles)]


def test_unanswered_caller_turns() -> None:
    items = _items("bot", "caller", "bot", "caller", "caller", "bot", "caller")
    assert unanswered(items, "flux") == {3, 6}  # spoke again, and the call ended
    assert unanswered(items, "agent") == {3, 6}
    assert unanswered(items, "transcribe") == set()  # people answer there, not the bot


async def test_the_call_page_shows_it(running_app: RunningApp, database: str) -> None:
    await add_accounts(database)
    sid = "CA" + "4" * 32
    meta = {"eot_to_token_ms": 310.0, "eot_to_text_ms": 352.0, "text_to_audio_ms": 121.0,
            "eot_to_audio_ms": 473.0}  # fmt: skip
    turns = [
        Turn(0, "caller", "what are your hours", 0, 900),
        Turn(1, "bot", "Nine to five.", 1400, 2400, heard="Nine to five.", latency_ms=500,
             meta=meta),
        Turn(2, "caller", "and on sunday", 3000, 3800),
    ]  # fmt: skip
    events = [
        Event(2000, "flux-connection", {"connection": 1, "reason": "Flux closed: 1006",
                                        "reconnect_ms": 22.0, "replayed_ms": 1000}),
        Event(4000, "upstream-failed", {"endpoint": "speak", "reason": "speak failed 6 times"}),
        Event(3900, "llm-fallback", {"from": "m1@a.example", "to": "m2@b.example",
                                     "reason": "timeout", "after_ms": 3000}),
    ]  # fmt: skip
    await store_call(database, sid, turns=turns, events=events, outcome=Outcome.FAILOVER)
    async with client_as(running_app, STAFF) as client:
        page = await client.get(f"/calls/{sid}")
    html = page.text
    assert "caller&#39;s end of speech → the LLM&#39;s first token: 310 ms" in html
    assert "→ Aura&#39;s first audio: 121 ms" in html
    assert "back in 22 ms, 1.0 s of the caller&#39;s audio replayed." in html
    assert 'class="event upstream-failed failure"' in html
    assert "The LLM m1@a.example gave no first token in time after 3000 ms: m2@b.example" in html
    assert html.count('<span class="badge failure">no answer</span>') == 1  # "and on sunday"
