"""Smart barge-in on a scripted corpus (a benchmark, not a test).

Each call asks a question whose answer is long, then, while the bot talks, cycles through a
backchannel ("mm-hmm", "okay, I see", ...) and a real interruption ("wait, ...", "okay but
...", "no, ..."); every interruption is answered with the long reply again, so the next cycle
is over the bot too. Calls run concurrently through the real app and the fakes (Flux, Aura,
Twilio); Flux reports words every 250 ms of audio, as the real service does.

Reported: false interruptions (a backchannel that cleared the bot), missed interruptions (an
interruption that did not), and how long after Flux's StartOfTurn the clear was decided
(p50/p95/max, ms of the event loop's clock) for interruptions whose first word is not a
backchannel (`decision_ms`) and for those that open with one (`led_ms`: "Okay but ..." waits,
by design, for the first other word), and by what it was decided (words, deadline, end of
turn).

    .venv/bin/python scripts/barge_in_bench.py                 # 4 calls x 10 cycles: 40 + 40
    .venv/bin/python scripts/barge_in_bench.py --calls 8 --cycles 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from telephony.config.barge_in import BargeInConfig
from telephony.demo import OfflineCall, run_offline_call
from telephony.session.barge_in import Backchannels, Verdict
from telephony.sim.deepgram_server import Script, ScriptedTurn

MS_PER_CHAR = 30  # fake Aura: 30 ms of speech per character
LONG = (
    "Our return policy is simple. You can bring back any item within thirty days, with the "
    "receipt and the original packaging, and refunds go back to the card you paid with."
)  # ~4.7 s of speech
BACKCHANNELS = [
    "Mm-hmm.", "Uh-huh.", "Yeah.", "Okay.", "Right.", "Sure.", "I see.", "Okay, I see.",
    "Yeah, yeah.", "Mhm.", "Got it.", "Right, right.", "Alright.", "Uh huh, okay.",
]  # fmt: skip
INTERRUPTIONS = [
    "Wait, what about Sunday?", "Okay but how much is it?", "No, that's not what I asked.",
    "Stop, I need a person.", "Yeah but I lost the receipt.", "Hold on a second please.",
    "Sorry, can you repeat that?", "Right, and what if it is broken?", "Actually never mind.",
    "Can I talk to someone?", "I see, but my order never arrived.", "Hmm, what about gifts?",
]  # fmt: skip
NUMBERS = f"""\
numbers:
  "+15550001000": smart
profiles:
  smart:
    mode: flux
    barge_in: {{mode: smart}}
    responder: {{type: scripted, rules: [], fallback: "{LONG}"}}
"""


def words_ms(text: str, rng: random.Random) -> int:
    """How long the caller takes to say `text`: 250-400 ms a word."""
    return sum(rng.randint(250, 400) for _ in text.split())


def corpus(cycles: int, rng: random.Random) -> tuple[list[ScriptedTurn], set[int], set[int]]:
    """Turns of one call, and the indexes of its backchannels and its interruptions."""
    turns = [ScriptedTurn(start_ms=500, end_ms=1500, text="Tell me your return policy.")]
    backchannels: set[int] = set()
    interruptions: set[int] = set()
    t = 1500  # the previous caller turn's end: the long reply starts ~100 ms later
    for _ in range(cycles):
        text = rng.choice(BACKCHANNELS)
        start = t + rng.randint(800, 1400)
        end = start + words_ms(text, rng)
        backchannels.add(len(turns))
        turns.append(ScriptedTurn(start_ms=start, end_ms=end, text=text))
        text = rng.choice(INTERRUPTIONS)
        start = end + rng.randint(600, 1200)
        end = start + words_ms(text, rng)
        interruptions.add(len(turns))
        turns.append(ScriptedTurn(start_ms=start, end_ms=end, text=text))
        t = end
    return turns, backchannels, interruptions


async def one_call(config: Path, cycles: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    turns, backchannel_idx, interruption_idx = corpus(cycles, rng)
    result: OfflineCall = await run_offline_call(
        number="+15550001000",
        script=Script(turns=turns),
        config_path=config,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        max_call_ms=turns[-1].end_ms + 3000,
    )
    data = result.as_json()
    caller = [t for t in data["turns"] if t["role"] == "caller"]
    barges = [e for e in data["events"] if e["kind"] == "barge-in"]

    def barged(turn: dict[str, Any]) -> bool:
        return any(abs(b["ms"] - turn["start_ms"]) <= 20 for b in barges)

    def decisions(led: bool) -> list[int]:
        """StartOfTurn -> clear per interruption; `led`: of those opening with a backchannel
        ("Okay but ..."), which wait by design for the first other word."""
        return [
            barge["decided_after_ms"]
            for i in interruption_idx
            if opens_with_backchannel(turns[i]) is led
            for barge in barges
            if abs(barge["ms"] - kinds[i]["start_ms"]) <= 20
        ]

    by_start = {round(s.start_ms / 10): i for i, s in enumerate(turns)}
    kinds: dict[int, dict[str, Any]] = {}
    for turn in caller:
        i = by_start.get(round(turn["start_ms"] / 10))
        if i is None:  # a turn's start moved more than the call clock allows
            raise SystemExit(f"caller turn at {turn['start_ms']} ms matches no scripted turn")
        kinds[i] = turn
    return {
        "backchannels": len(backchannel_idx),
        "interruptions": len(interruption_idx),
        "false": sum(1 for i in backchannel_idx if barged(kinds[i])),
        "stored_as_backchannel": sum(
            1 for i in backchannel_idx if kinds[i]["meta"].get("backchannel")
        ),
        "missed": sum(1 for i in interruption_idx if not barged(kinds[i])),
        # One reply to the question and one to each interruption: any more answered a backchannel.
        "extra_replies": sum(1 for t in data["turns"] if t["role"] == "bot")
        - 1
        - len(interruption_idx),
        # StartOfTurn -> clear per interruption, apart for those that open with a backchannel
        # ("Okay but ..."): those wait, by design, for the first other word.
        "decided_after_ms": decisions(False),
        "led_decided_after_ms": decisions(True),
        "decided_by": [b["decided_by"] for b in barges if "decided_by" in b],
        "violations": sum(len(c.violations) for c in result.deepgram.connections),
    }


EN = Backchannels.for_profile(BargeInConfig())


def opens_with_backchannel(turn: ScriptedTurn) -> bool:
    return EN.verdict(turn.text.split()[0]) is not Verdict.SPEECH


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def bench(calls: int, cycles: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "numbers.yaml"
        config.write_text(NUMBERS)
        results = await asyncio.gather(*(one_call(config, cycles, seed) for seed in range(calls)))
    report = {
        key: sum(r[key] for r in results)
        for key in (
            "backchannels",
            "interruptions",
            "false",
            "missed",
            "stored_as_backchannel",
            "extra_replies",
            "violations",
        )
    }
    report["decided_by"] = dict(Counter(why for r in results for why in r["decided_by"]))
    for key, name in (("decided_after_ms", "decision_ms"), ("led_decided_after_ms", "led_ms")):
        values = [ms for r in results for ms in r[key]]
        if values:
            report[name] = {
                "n": len(values),
                "p50": percentile(values, 0.5),
                "p95": percentile(values, 0.95),
                "max": max(values),
            }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=10, help="backchannel + interruption")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = asyncio.run(bench(args.calls, args.cycles))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>24}: {value}")
    ok = not any(report[k] for k in ("false", "missed", "extra_replies", "violations"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
