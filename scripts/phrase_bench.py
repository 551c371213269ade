"""How soon a fixed phrase is heard once it is due: cached vs through Aura (a benchmark, not a
test).

Calls run concurrently through the real app and the fakes. Each caller asks one question the
(fake) LLM is slow to answer, so a filler is due `after_ms` after the end of turn, then stays
silent, so a reprompt is due after the reply. Due: the `filler` / `nudge` event, on the call
clock. Heard: the start of the first audio the fake caller played after it (its playout,
with Twilio's pacing). The call clock is the end of the last caller frame the server has
received, which trails the caller's own clock by most of a 20 ms frame: figures a few ms below
zero mean "at once". The uncached run has Aura's socket answer after the fake's default 100 ms
to first byte.

    .venv/bin/python scripts/phrase_bench.py              # 20 calls, cached and not
    .venv/bin/python scripts/phrase_bench.py --calls 40 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from telephony.demo import OfflineCall, run_offline_call
from telephony.sim.deepgram_server import Script, ScriptedTurn

NUMBERS = """\
numbers:
  "+15550001000": desk
profiles:
  desk:
    mode: flux
    filler: {after_ms: 400, phrases: ["One moment."]}
    idle: {reprompt_after_s: 1, reprompts: 1, messages: ["Are you still there?"]}
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: bench
      api_key_env: BENCH_LLM_KEY
      system_prompt: "Be brief."
"""


def due_to_heard(result: OfflineCall) -> list[float]:
    data = result.as_json()
    starts = sorted(seg.start_ms for seg in result.caller.heard_segments)
    out = []
    for event in data["events"]:
        if event["kind"] not in ("filler", "nudge"):
            continue
        after = [s for s in starts if s >= event["ms"] - 20]
        if after:
            out.append(after[0] - event["ms"])
    return out


async def one_call(config: Path, cached: bool, cache_dir: Path) -> list[float]:
    result = await run_offline_call(
        number="+15550001000",
        script=Script(turns=[ScriptedTurn(start_ms=600, end_ms=1300, text="What is my balance?")]),
        config_path=config,
        # Without the fake's REST endpoint nothing can be synthesised: every phrase goes
        # through Aura's socket (100 ms to its first byte, as the fake's default).
        deepgram_options={"speak_ms_per_char": 30, "serve_read": cached},
        llm_options={"first_token_delay_ms": 900, "tokens_per_s": 100},
        max_call_ms=6_000,
        # A fresh cache for the cached run (warmed at start), none for the other.
        settings_overrides={"TELEPHONY_PHRASE_CACHE_DIR": str(cache_dir) if cached else ""},
    )
    return due_to_heard(result)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))], 1)


async def bench(calls: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "numbers.yaml"
        config.write_text(NUMBERS)
        for cached in (True, False):
            dirs = [Path(tmp) / f"phrases-{i}" for i in range(calls)]
            runs = await asyncio.gather(*(one_call(config, cached, d) for d in dirs))
            values = [v for run in runs for v in run]
            report["cached" if cached else "aura"] = {
                "n": len(values),
                "p50_ms": percentile(values, 0.5),
                "p99_ms": percentile(values, 0.99),
                "max_ms": round(max(values), 1),
            }
    return report


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("BENCH_LLM_KEY", "sk-bench")
    report = asyncio.run(bench(args.calls))
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
