"""Flux-mode reply latency against the fakes (a benchmark, not a test).

EndOfTurn -> first reply audio handed to the Twilio playout, with a fake LLM of 300 ms
first-token delay and fake Aura of 100 ms first-byte delay; once with model end-of-turn only,
once with EagerEndOfTurn 200 ms before EndOfTurn. Run: .venv/bin/python scripts/flux_latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from telephony.demo import run_offline_call
from telephony.sim.deepgram_server import Script, ScriptedTurn

LLM_FIRST_TOKEN_MS = 300
TTS_FIRST_BYTE_MS = 100

NUMBERS = """\
numbers:
  "+15550001000": plain
  "+15550002000": eager
profiles:
  plain:
    mode: flux
    responder: {type: llm, base_url: "https://llm.example.com/v1", model: m,
                api_key_env: K, system_prompt: "Be brief."}
  eager:
    mode: flux
    responder: {type: llm, base_url: "https://llm.example.com/v1", model: m,
                api_key_env: K, system_prompt: "Be brief."}
    flux: {eot_threshold: 0.7, eager_eot_threshold: 0.5}
"""


def script(turns: int, eager: bool) -> Script:
    out = []
    for i in range(turns):
        start = 1000 + i * 4000
        end = start + 1000
        out.append(
            ScriptedTurn(start, end, f"question number {i}", eager_ms=end - 200 if eager else None)
        )
    return Script(turns=out)


async def measure(config: Path, number: str, eager: bool, calls: int, turns: int) -> list[float]:
    results = await asyncio.gather(
        *(
            run_offline_call(
                number=number,
                script=script(turns, eager),
                config_path=config,
                max_call_ms=1000 + turns * 4000 + 1000,
                deepgram_options={
                    "speak_first_byte_ms": TTS_FIRST_BYTE_MS,
                    "speak_ms_per_char": 20,
                },
                llm_options={"first_token_delay_ms": LLM_FIRST_TOKEN_MS, "tokens_per_s": 100_000},
            )
            for _ in range(calls)
        )
    )
    return [
        (t.meta["eot_to_audio_ms"], t.meta["eot_to_text_ms"], t.meta["text_to_audio_ms"])
        for r in results
        for t in r.summary.transcript.turns
        if "eot_to_audio_ms" in t.meta
    ]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    config = Path(tempfile.mkdtemp()) / "numbers.yaml"
    config.write_text(NUMBERS)
    report = {}
    for label, number, eager in (
        ("model_eot", "+15550001000", False),
        ("eager", "+15550002000", True),
    ):
        rows = await measure(config, number, eager, args.calls, args.turns)
        total = [r[0] for r in rows]
        llm = [r[1] for r in rows]
        tts = [r[2] for r in rows]
        report[label] = {
            "samples": len(rows),
            "eot_to_first_audio_p50_ms": statistics.median(total),
            "eot_to_first_audio_p99_ms": pct(total, 0.99),
            "responder_stage_p50_ms": statistics.median(llm),
            "aura_stage_p50_ms": statistics.median(tts),
        }
        if not eager:
            # What is left after the fakes' configured delays: our code, loopback, the fakes.
            report[label]["bridge_share_p50_ms"] = round(
                statistics.median(total) - LLM_FIRST_TOKEN_MS - TTS_FIRST_BYTE_MS, 1
            )
    saving = report["model_eot"]["eot_to_first_audio_p50_ms"]
    saving -= report["eager"]["eot_to_first_audio_p50_ms"]
    report["eager_saving_p50_ms"] = round(saving, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
