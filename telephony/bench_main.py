"""`telephony bench`'s command: one call count (a report per mode) or a sweep of counts (each
count's reports, then a table per mode with the service and the relay side by side, and the
knee), printed and as JSON. How a run is made is telephony/bench.py."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from telephony.bench import (
    BOTH,
    DATABASE_ENV,
    NUMBERS,
    BenchOptions,
    load_run,
    run_modes,
)
from telephony.bench_process import LOAD_CORE, can_pin
from telephony.bench_report import format_report
from telephony.bench_sweep import format_sweep, knee
from telephony.cli_usage import UsageError


async def run_sweep(
    opts: BenchOptions, modes: tuple[str, ...], counts: tuple[int, ...]
) -> list[dict[str, dict[str, Any]]]:
    """`run_modes` once per call count, each with a service and a relay of its own (nothing
    one count leaves behind, a store or a heap, weighs on the next): [{mode: report}]."""
    out = []
    for calls in counts:
        workdir = opts.workdir / f"calls-{calls}" if opts.workdir else None
        samples = opts.samples_dir / f"calls-{calls}" if opts.samples_dir else None
        out.append(
            await run_modes(replace(opts, calls=calls, workdir=workdir, samples_dir=samples), modes)
        )
    return out


def main(args: argparse.Namespace) -> int:
    """`telephony bench` (arguments from telephony.cli): `--calls` one count, or a sweep."""
    modes = tuple(NUMBERS) if args.mode == BOTH else (args.mode,)
    if args.workers > 1 and not os.environ.get(DATABASE_ENV, "").startswith("postgresql"):
        raise UsageError(
            f"--workers needs PostgreSQL: set {DATABASE_ENV}=postgresql+asyncpg://... (a "
            "database the bench may write to)"
        )
    counts: tuple[int, ...] = args.calls
    opts = BenchOptions(
        calls=counts[0],
        seconds=args.seconds,
        mode=modes[0],
        pin=not args.no_pin and args.workers == 1,  # N workers share the cores
        ramp_s=args.ramp,
        settle_s=args.settle,
        workers=args.workers,
        churn_per_s=args.churn,
        samples_dir=Path(os.environ["TELEPHONY_BENCH_SAMPLES"])
        if os.environ.get("TELEPHONY_BENCH_SAMPLES")
        else None,
    )
    if opts.pin and can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})  # the load generator: this process
    if len(counts) > 1:
        return _sweep_main(args, opts, modes, counts)
    reports = load_run(run_modes(opts, modes))
    result = reports if args.mode == BOTH else reports[args.mode]  # both: {mode: report}
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    else:
        if args.json:
            Path(args.json).write_text(text + "\n")
        print("\n\n".join(format_report(r) for r in reports.values()))
    return 0


def _sweep_main(
    args: argparse.Namespace, opts: BenchOptions, modes: tuple[str, ...], counts: tuple[int, ...]
) -> int:
    """Every count's reports, then a table per mode (service/relay side by side) and its knee.
    JSON: {"sweep": [{"calls": N, "reports": {mode: report}}], "knee": {mode: knee}}."""
    runs = load_run(run_sweep(opts, modes, counts))
    per_mode = {m: [run[m] for run in runs] for m in modes}
    knees = {m: knee(reports) for m, reports in per_mode.items()}
    result = {
        "sweep": [{"calls": n, "reports": run} for n, run in zip(counts, runs, strict=True)],
        "knee": knees,
    }
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
        return 0
    if args.json:
        Path(args.json).write_text(text + "\n")
    for n, run in zip(counts, runs, strict=True):
        print(f"=== {n} calls")
        print("\n\n".join(format_report(r) for r in run.values()))
        print()
    print("\n\n".join(format_sweep(per_mode[m], knees[m]) for m in modes))
    return 0
