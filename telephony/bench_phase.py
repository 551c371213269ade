"""One phase of `telephony bench` (telephony/bench.py: how a run is made): the run's options,
the warm-up call, the calls dialled over the ramp, the measurement window (the process's CPU,
RSS and GC pauses, the probes recording) and, with `--churn`, the calls hung up and redialled
through it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path

from telephony.bench_process import (
    LOOP_LAG_METRIC,
    Process,
    core_busy_seconds,
    read_histogram,
    tree_cpu_seconds,
    tree_rss_mib,
)
from telephony.bench_report import Phase
from telephony.sim.lean_call import Dialer, LeanCall, hang_up_all
from telephony.sim.load import Probes

WARMUP_MAX_S = 8.0
FREEZE_SETTLE_S = 0.5  # the collection before the window holds the callers up ~0.1-0.25 s


@dataclass
class BenchOptions:
    calls: int = 50
    seconds: float = 30.0
    mode: str = "flux"  # flux | agent
    pin: bool = True  # server and relay on core 0, this process on core 1 (2+ cores)
    ramp_s: float | None = None  # default: 20 ms per call, 1..10 s
    settle_s: float = 1.0  # after the warm-up (idle RSS) and after the last call is dialled
    llm_first_token_ms: int = 300
    tts_first_byte_ms: int = 100
    speak_ms_per_char: int = 60
    workdir: Path | None = None
    samples_dir: Path | None = None  # raw samples of both phases as JSON (for analysis)
    workers: int = 1  # `telephony serve --workers`: more than 1 needs DATABASE_ENV (PostgreSQL)
    churn_per_s: float = 0.0  # calls hung up, each replaced by a new one, per second of window

    @property
    def ramp(self) -> float:
        if self.ramp_s is not None:
            return self.ramp_s
        return min(10.0, max(1.0, self.calls * 0.02))

    @property
    def churn_slots(self) -> int:
        """Probe slots for the calls `--churn` dials in the window: each a fresh index, so no
        reply of an ended call is taken for its successor's."""
        return math.ceil(self.churn_per_s * self.seconds) + 1 if self.churn_per_s > 0 else 0

    @property
    def capacity(self) -> int:
        """Probe slots: the calls, the warm-up call (index `calls`), then the churn's."""
        return self.calls + 1 + self.churn_slots


# --- one phase --------------------------------------------------------------------------------


async def warm_up(dialer: Dialer, index: int) -> None:
    """One call until its first bot audio (lazy imports, pools, caches), then hang up."""
    call = await dialer.dial(index)
    for _ in range(int(WARMUP_MAX_S / 0.05)):  # polled: the lean caller keeps no event for it
        if call.player.queued or call.closed.done():
            break
        await asyncio.sleep(0.05)
    await hang_up_all([call])


class Churn:
    """`--churn`: through the window, every 1/rate s the longest-running call hangs up and a
    new one is dialled in its place (a fresh probe slot from `first_index`), so the window
    sees calls end and start — their setup, their records written, the garbage an ended call
    leaves — at a steady number of live calls. Dials are made one after the other: when the
    service is slower to answer than the rate, fewer are made, and `placed` says how many."""

    def __init__(
        self, dialer: Dialer, live: list[LeanCall], first_index: int, slots: int, per_s: float
    ) -> None:
        self.dialer = dialer
        self.live = live  # oldest first; the phase hangs up whatever is in it at its end
        self.ended: list[LeanCall] = []
        self.first_index = first_index
        self.slots = slots
        self.interval = 1.0 / per_s
        self.dialled = 0
        self.placed = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval
        while self.dialled < self.slots:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += self.interval
            if self.live:
                old = self.live.pop(0)
                old.hang_up()
                self.ended.append(old)
            index = self.first_index + self.dialled
            self.dialled += 1
            try:
                self.live.append(await self.dialer.dial(index))
            except Exception as exc:
                self.dialer.probes.errors[f"dial_failed: {type(exc).__name__}"] += 1
            else:
                self.placed += 1


async def run_phase(
    name: str,
    process: Process,
    dialer: Dialer,
    probes: Probes,
    opts: BenchOptions,
    metrics_urls: list[str] | None = None,
) -> Phase:
    """One phase's calls; `metrics_urls` (the service's): its GC pauses in the window too."""
    phase = Phase(name, probes=probes)
    warm_probes = dialer.probes
    await warm_up(dialer, opts.calls)  # index `calls`: the probes' spare slot
    warm_probes.errors.clear()
    await asyncio.sleep(opts.settle_s)  # the warm-up call wound down: the idle RSS
    phase.rss_idle_mib = tree_rss_mib(process.pid)
    calls: list[LeanCall] = await dialer.dial_all(range(opts.calls), opts.ramp)
    await asyncio.sleep(opts.settle_s)  # the last calls past their handshake
    phase.calls = sum(1 for c in calls if not c.closed.done())
    churn = (
        Churn(dialer, calls, opts.calls + 1, opts.churn_slots, opts.churn_per_s)
        if opts.churn_per_s > 0
        else None
    )
    # The calls' objects leave the collector's view for the window: a full collection of
    # hundreds of calls' objects stalled the generator's loop for ~100 ms (timed at 300 calls).
    # And the collector is off in the window: even then, at 400 calls its 165 collections
    # stalled the callers' clocks for 244 ms in 20 s (one full one 44 ms, the middle ones 5-9
    # ms), the generator's lateness, not the service's. Its garbage waits for the window's end.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        await asyncio.sleep(FREEZE_SETTLE_S)  # the frames that collection held up are out
        gc0 = await read_histogram(metrics_urls) if metrics_urls else None
        lag0 = await read_histogram(metrics_urls, LOOP_LAG_METRIC) if metrics_urls else None
        probes.recording = True
        cpu0, load0, t0 = tree_cpu_seconds(process.pid), time.process_time(), time.monotonic()
        busy0 = core_busy_seconds()
        peak = tree_rss_mib(process.pid)
        churning = asyncio.create_task(churn.run()) if churn else None
        end = t0 + opts.seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            peak = max(peak, tree_rss_mib(process.pid))
        cpu1, load1, t1 = tree_cpu_seconds(process.pid), time.process_time(), time.monotonic()
        if churning is not None:
            churning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await churning
        busy1 = core_busy_seconds()
        phase.core_busy_s = {core: busy1[core] - busy0.get(core, 0.0) for core in busy1}
        probes.recording = False
        if gc0 is not None and metrics_urls:
            phase.gc = (await read_histogram(metrics_urls)).since(gc0)
        if lag0 is not None and metrics_urls:
            lag = await read_histogram(metrics_urls, LOOP_LAG_METRIC)
            phase.loop_lag = {
                "ticks": lag.count.get("", 0.0) - lag0.count.get("", 0.0),
                "p99_ms_at_most": lag.quantile_bound_ms(lag0, "", 0.99),
                "max_ms_at_most": lag.quantile_bound_ms(lag0, "", 1.0),
            }
    finally:
        gc.enable()
        gc.unfreeze()  # what the phase leaves behind is the collector's again
    phase.window_s, phase.cpu_s, phase.load_cpu_s = t1 - t0, cpu1 - cpu0, load1 - load0
    phase.rss_peak_mib = peak
    if churn is not None:
        phase.redialled = churn.placed
        calls += churn.ended  # hung up already: waited for with the rest
    await hang_up_all(calls)
    phase.errors.update(probes.errors)
    if len(calls) < opts.calls:
        phase.errors["calls_not_placed"] += opts.calls - len(calls)
    return phase
