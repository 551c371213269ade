"""A Flux call whose replies come from the fake LLM checking requests as the real API does."""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony.demo import run_offline_call
from telephony.sim.deepgram_server import Script, ScriptedTurn

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

NUMBERS = """\
numbers:
  "+15550001000": reasoning
profiles:
  reasoning:
    mode: flux
    greeting: "Thanks for calling Acme."
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: o4-mini
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
      max_tokens: 200
"""


async def test_a_reasoning_model_behind_a_strict_template_answers_every_turn(
    tmp_path: Path,
) -> None:
    """o4-mini refuses max_tokens and temperature; a strict template refuses the greeting as
    the first turn after the system prompt. Every request must pass, so no turn apologises."""
    numbers = tmp_path / "numbers.yaml"
    numbers.write_text(NUMBERS)
    result = await run_offline_call(
        number="+15550001000",
        script=Script(
            turns=[
                ScriptedTurn(start_ms=2500, end_ms=3200, text="What are your hours?"),
                ScriptedTurn(start_ms=7000, end_ms=7600, text="Thanks."),
            ]
        ),
        config_path=numbers,
        max_call_ms=11_000,
        deepgram_options={"speak_ms_per_char": 30},
        llm_options={"first_token_delay_ms": 50, "tokens_per_s": 400, "strict_roles": True},
    )
    assert [r["status"] for r in result.llm.requests] == [200, 200]
    bot = [t["text"] for t in result.as_json()["turns"] if t["role"] == "bot"]
    assert bot == [
        "Thanks for calling Acme.",
        "You said: What are your hours?. How else can I help?",
        "You said: Thanks.. How else can I help?",
    ]
    messages = result.llm.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "Thanks for calling Acme." in messages[0]["content"]
