"""LLM fallback end to end: Flux calls through the fakes, one LLM backend made to misbehave.

The demo points every backend at the one fake LLM; they differ by model, and the fake's
`models` scripts the primary's (or both) answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from telephony.demo import OfflineCall, run_offline_call
from telephony.session.flux_replies import APOLOGY
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.sim.fake_llm import ModelScript

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

NUMBERS = """\
numbers:
  "+15550001000": llm
profiles:
  llm:
    mode: flux
    greeting: "Hello."
    flux: {eager_eot_threshold: null}
    responder:
      type: llm
      base_url: "https://primary.example.com/v1"
      model: primary-m
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
      # 2 s of call time is 500 ms of real time on the 4x clock: at 1 s a loaded machine
      # (three test workers on two cores) stalled a healthy fallback's first token past it.
      first_token_timeout_s: 2
      fallbacks:
        - {base_url: "https://backup.example.com/v1", model: backup-m, api_key_env: BACKUP_KEY}
"""
ONE_TURN = [ScriptedTurn(start_ms=1500, end_ms=2200, text="Your hours?")]
TWO_TURNS = [*ONE_TURN, ScriptedTurn(start_ms=6000, end_ms=6600, text="And on Sunday?")]


async def call(tmp_path: Path, scripts: dict[str, ModelScript], turns: list[ScriptedTurn]) -> Any:
    config = tmp_path / "numbers.yaml"
    config.write_text(NUMBERS)
    return await run_offline_call(
        number="+15550001000",
        script=Script(turns=turns),
        config_path=config,
        max_call_ms=6_000 if len(turns) == 1 else 9_500,
        deepgram_options={"speak_ms_per_char": 20},
        llm_options={"first_token_delay_ms": 100, "tokens_per_s": 400, "models": scripts},
    )


def bot_texts(result: OfflineCall) -> list[str]:
    return [t["text"] for t in result.as_json()["turns"] if t["role"] == "bot"]


def events(result: OfflineCall, kind: str) -> list[dict[str, Any]]:
    return [e for e in result.as_json()["events"] if e["kind"] == kind]


def requests(result: OfflineCall) -> list[tuple[str, int]]:
    return [(r["model"], r["status"]) for r in result.llm.requests]


def fallbacks_metric(result: OfflineCall, reason: str) -> float:
    line = f'telephony_llm_fallbacks_total{{reason="{reason}"}} '
    [value] = [
        row.removeprefix(line) for row in result.metrics.splitlines() if row.startswith(line)
    ]
    return float(value)


async def test_a_primary_500_is_answered_by_the_fallback_each_turn(tmp_path: Path) -> None:
    result = await call(tmp_path, {"primary-m": ModelScript(status=500)}, TWO_TURNS)
    assert bot_texts(result) == [
        "Hello.",
        "You said: Your hours?. How else can I help?",
        "You said: And on Sunday?. How else can I help?",
    ]
    # Each turn starts with the primary again; it is not retried when a fallback is there.
    assert requests(result) == [("primary-m", 500), ("backup-m", 200)] * 2
    first, second = (r["messages"] for r in result.llm.requests[:2])
    assert first == second  # the same turn, the same history
    host = result.llm.url.split("/")[2]
    switches = events(result, "llm-fallback")
    assert [{k: e[k] for k in ("from", "to", "from_backend", "to_backend")} for e in switches] == [
        {"from": f"primary-m@{host}", "to": f"backup-m@{host}", "from_backend": 0, "to_backend": 1}
    ] * 2
    assert [(e["reason"], e["status"]) for e in switches] == [("server-error", 500)] * 2
    assert all(0 <= e["after_ms"] < 2000 for e in switches)
    assert events(result, "error") == []
    assert fallbacks_metric(result, "server-error") == 2
    assert fallbacks_metric(result, "timeout") == 0


async def test_a_silent_primary_hands_over_at_first_token_timeout(tmp_path: Path) -> None:
    silent = {"primary-m": ModelScript(first_token_delay_ms=20_000)}
    result = await call(tmp_path, silent, ONE_TURN)
    # The caller hears the fallback's answer, and no apology.
    assert bot_texts(result) == ["Hello.", "You said: Your hours?. How else can I help?"]
    assert not any(APOLOGY in text for text in bot_texts(result))
    assert requests(result) == [("primary-m", 200), ("backup-m", 200)]
    assert result.llm.disconnects == 1  # the silent stream was closed
    [switch] = events(result, "llm-fallback")
    assert switch["reason"] == "timeout" and "status" not in switch
    assert switch["error"] == "LLM gave no first token within 2 s"
    assert 2000 <= switch["after_ms"] < 2500
    [reply] = [t for t in result.as_json()["turns"] if t["text"].startswith("You said")]
    assert reply["meta"]["eot_to_token_ms"] >= 2000  # the wait is in the reply's latency
    assert fallbacks_metric(result, "timeout") == 1


async def test_when_every_backend_fails_the_caller_hears_the_apology(tmp_path: Path) -> None:
    scripts = {"primary-m": ModelScript(status=500), "backup-m": ModelScript(status=503)}
    result = await call(tmp_path, scripts, ONE_TURN)
    assert bot_texts(result) == ["Hello.", APOLOGY]
    # The last backend keeps its one fast retry.
    assert requests(result) == [("primary-m", 500), ("backup-m", 503), ("backup-m", 503)]
    [switch] = events(result, "llm-fallback")
    assert (switch["reason"], switch["status"]) == ("server-error", 500)
    [error] = events(result, "error")
    assert error["source"] == "responder" and "503" in error["detail"]
    assert fallbacks_metric(result, "server-error") == 1


async def test_an_error_after_the_first_token_does_not_switch(tmp_path: Path) -> None:
    """What the primary said may already be with Aura: the turn stays the primary's."""
    result = await call(tmp_path, {"primary-m": ModelScript(break_after_words=3)}, ONE_TURN)
    assert requests(result) == [("primary-m", 200)]
    assert events(result, "llm-fallback") == []
    [error] = events(result, "error")
    assert "ended before the reply was finished" in error["detail"]
    assert bot_texts(result)[-1].endswith(APOLOGY)
    assert fallbacks_metric(result, "stream") == 0
