"""`telephony bench`'s report: the figures of both phases, as JSON and as a table.

Apart from the runner (bench.py) because it only reads what the phases measured (`Phase`, with
its raw samples in `Probes`) and the options, never a process or a socket: percentiles, CPU per
call-minute, the relay's floor subtracted, other processes' share of the pinned cores.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telephony.bench_process import LOAD_CORE, SERVER_CORE, can_pin
from telephony.sim.load import Probes
from telephony.sim.stamped import kernel_stamps_available

if TYPE_CHECKING:
    from telephony.bench_phase import BenchOptions

REPORT_KEYS = (
    "calls",
    "seconds",
    "server_cpu_s_per_call_minute",
    "relay_cpu_s_per_call_minute",
    "cpu_ratio_vs_relay",
    "rss_mib_per_call",
    "inbound_latency_p50_ms",
    "inbound_latency_p99_ms",
    "outbound_latency_p99_ms",
    "pacing_jitter_p99_ms",
    "eot_to_first_audio_p50_ms",
    "eot_to_first_audio_p99_ms",
    "errors",
)


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    calls: int = 0
    redialled: int = 0  # `--churn`: calls dialled in the window in place of ones hung up
    window_s: float = 0.0
    cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    core_busy_s: dict[int, float] = field(default_factory=dict)  # every process, per core
    probes: Probes | None = None
    errors: Counter[str] = field(default_factory=Counter)
    end_reasons: dict[str, float] = field(default_factory=dict)
    # The service's garbage collections in the window, by generation
    # (bench_process.HistogramReading)
    gc: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # How late the service's loop ran its 100 ms timer in the window: ticks, the p99's and the
    # longest's bucket bounds (ms)
    loop_lag: dict[str, float | None] = field(default_factory=dict)

    @property
    def call_minutes(self) -> float:
        return self.calls * self.window_s / 60

    @property
    def cpu_s_per_call_minute(self) -> float:
        return self.cpu_s / self.call_minutes if self.call_minutes else math.nan

    @property
    def rss_mib_per_call(self) -> float:
        return (self.rss_peak_mib - self.rss_idle_mib) / self.calls if self.calls else math.nan


def percentile(samples: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


SAMPLE_SETS = (
    "inbound",
    "inbound_all",
    "outbound",
    "jitter",
    "eot_to_audio",
    "send_lag",
    "read_lag",
    "llm_hold",
    "llm_stream",
    "aura_hold",
    "eot_to_flush",
    "aura_to_caller",
    "replies",  # per joined reply: its pieces (sim/load.py ReplySplit)
)

# The load generator is healthy when its callers' frames leave on time and its core has room:
# past either, the figures describe the generator, not what it drives.
GENERATOR_SEND_LAG_MAX_MS = 5.0
GENERATOR_READ_LAG_MAX_MS = 5.0  # only without kernel receive times (they keep it out)
CORE_FULL_PERCENT = 95.0


def dump_samples(directory: Path, phases: dict[str, Phase]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, phase in phases.items():
        assert phase.probes is not None
        data = {k: list(getattr(phase.probes, k)) for k in SAMPLE_SETS}
        (directory / f"{name}.json").write_text(json.dumps(data))


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def _other(phase: Phase, core: int, ours_s: float) -> float | None:
    busy = phase.core_busy_s.get(core)
    if busy is None or not phase.window_s:
        return None
    return _r(max(0.0, busy - ours_s) / phase.window_s * 100, 1)


def _other_all(phase: Phase, ours_s: float) -> float | None:
    if not phase.core_busy_s or not phase.window_s:
        return None
    return _r(max(0.0, sum(phase.core_busy_s.values()) - ours_s) / phase.window_s * 100, 1)


def generator_problems(phase: Phase, pinned: bool) -> list[str]:
    """Why this phase's figures may be the load generator's own (empty: they are not)."""
    probes = phase.probes
    assert probes is not None
    problems = []
    send = percentile(probes.send_lag, 99)
    if send is None or send > GENERATOR_SEND_LAG_MAX_MS:
        problems.append(f"{phase.name}: send lag p99 {send} ms > {GENERATOR_SEND_LAG_MAX_MS:g}")
    read = percentile(probes.read_lag, 99)
    if not kernel_stamps_available() and read is not None and read > GENERATOR_READ_LAG_MAX_MS:
        problems.append(f"{phase.name}: read lag p99 {read} ms > {GENERATOR_READ_LAG_MAX_MS:g}")
    busy = load_core_busy_percent(phase, pinned)
    if busy is not None and busy >= CORE_FULL_PERCENT:
        where = "its core" if pinned else "its CPU"
        problems.append(f"{phase.name}: {where} {busy:.0f} % busy (>= {CORE_FULL_PERCENT:g})")
    return problems


def load_core_busy_percent(phase: Phase, pinned: bool) -> float | None:
    """The generator's core, every process on it (pinned), else the generator's own CPU."""
    if not phase.window_s:
        return None
    if pinned and LOAD_CORE in phase.core_busy_s:
        return _r(100 * phase.core_busy_s[LOAD_CORE] / phase.window_s, 1)
    return _r(100 * phase.load_cpu_s / phase.window_s, 1)


def eot_split(opts: BenchOptions, sp: Probes, eot_p50: float | None) -> dict[str, Any]:
    """Flux's EndOfTurn -> first audio over the fakes' delay, split into the fakes' own part
    (their holds past the delays they were asked for, and the fake LLM streaming the rest of
    the sentence) and the rest (the service, the loopback hops and the generator's lateness
    reading the service's requests): at p50 from the pieces' own distributions, at p99 from
    the replies whose pieces joined (`Probes.replies`), each split on its own."""
    p = percentile
    llm, aura, stream = p(sp.llm_hold, 50), p(sp.aura_hold, 50), p(sp.llm_stream, 50)
    flux = opts.mode == "flux"
    out: dict[str, Any] = {
        "llm_hold_p50_ms": llm,
        "llm_stream_p50_ms": stream,
        "aura_hold_p50_ms": aura,
        "eot_to_aura_flush_p50_ms": p(sp.eot_to_flush, 50),
        "aura_to_caller_p50_ms": p(sp.aura_to_caller, 50),
        "eot_tax_ms": None,
        "eot_tax_fakes_ms": None,
        "eot_tax_service_ms": None,
        **reply_split(opts, sp),
        "eot_replies_joined": len(sp.replies) if flux else None,
        "eot_replies_unjoined": sum(sp.unjoined.values()) if flux else None,
        "eot_unjoined_why": dict(sp.unjoined) if flux else {},
    }
    if not flux or llm is None or aura is None or stream is None or eot_p50 is None:
        return out
    tax = eot_p50 - opts.llm_first_token_ms - opts.tts_first_byte_ms
    fakes = (llm - opts.llm_first_token_ms) + stream + (aura - opts.tts_first_byte_ms)
    out.update(eot_tax_ms=_r(tax), eot_tax_fakes_ms=_r(fakes), eot_tax_service_ms=_r(tax - fakes))
    return out


def reply_split(opts: BenchOptions, sp: Probes) -> dict[str, float | None]:
    """p99s of each joined reply's tax, its fakes' part and the service's (the rest). The
    parts' p99s need not add up to the tax's: each is its own reply's."""
    asked_llm, asked_tts = opts.llm_first_token_ms, opts.tts_first_byte_ms
    tax, fakes = [], []
    for reply in sp.replies if opts.mode == "flux" else ():
        tax.append(reply.eot_to_audio - asked_llm - asked_tts)
        fakes.append(reply.llm_hold - asked_llm + reply.llm_stream + reply.aura_hold - asked_tts)
    replies = sp.replies if opts.mode == "flux" else []
    return {
        "eot_tax_p99_ms": percentile(tax, 99),
        "eot_tax_fakes_p99_ms": percentile(fakes, 99),
        "eot_tax_service_p99_ms": percentile([t - f for t, f in zip(tax, fakes, strict=True)], 99),
        # The service's part, hop by hop (each hop's own p99): which one the tail is in.
        "eot_to_llm_p99_ms": percentile([r.eot_to_llm for r in replies], 99),
        "llm_to_flush_p99_ms": percentile([r.llm_to_flush for r in replies], 99),
        "aura_to_caller_p99_ms": percentile([r.aura_to_caller for r in replies], 99),
    }


def report(opts: BenchOptions, server: Phase, relay: Phase) -> dict[str, Any]:
    sp, rp = server.probes, relay.probes
    assert sp is not None and rp is not None
    p = percentile
    ratio = server.cpu_s_per_call_minute / relay.cpu_s_per_call_minute if relay.cpu_s else None
    in50, in99 = p(sp.inbound, 50), p(sp.inbound, 99)
    pinned = opts.pin and can_pin()
    problems = generator_problems(server, pinned) + generator_problems(relay, pinned)
    rin50, rin99 = p(rp.inbound, 50), p(rp.inbound, 99)
    out: dict[str, Any] = {
        "calls": server.calls,
        "seconds": round(server.window_s, 2),
        "mode": opts.mode,
        "churn_per_s": opts.churn_per_s,
        "calls_redialled": server.redialled,
        "relay_calls_redialled": relay.redialled,
        "server_cpu_s_per_call_minute": _r(server.cpu_s_per_call_minute, 4),
        "relay_cpu_s_per_call_minute": _r(relay.cpu_s_per_call_minute, 4),
        "cpu_ratio_vs_relay": _r(ratio, 2),
        "server_cpu_percent": _r(100 * server.cpu_s / server.window_s, 1),
        "relay_cpu_percent": _r(100 * relay.cpu_s / relay.window_s, 1),
        "rss_mib_per_call": _r(server.rss_mib_per_call),
        "relay_rss_mib_per_call": _r(relay.rss_mib_per_call),
        "server_rss_idle_mib": _r(server.rss_idle_mib, 1),
        "server_rss_peak_mib": _r(server.rss_peak_mib, 1),
        "inbound_latency_p50_ms": in50,
        "inbound_latency_p99_ms": in99,
        "relay_inbound_latency_p50_ms": rin50,
        "relay_inbound_latency_p99_ms": rin99,
        "bridge_inbound_latency_p50_ms": _r(in50 - rin50) if in50 and rin50 else None,
        "bridge_inbound_latency_p99_ms": _r(in99 - rin99) if in99 and rin99 else None,
        "inbound_latency_with_chunking_p50_ms": p(sp.inbound_all, 50),
        "inbound_latency_with_chunking_p99_ms": p(sp.inbound_all, 99),
        "outbound_latency_p50_ms": p(sp.outbound, 50),
        "outbound_latency_p99_ms": p(sp.outbound, 99),
        "pacing_jitter_p50_ms": p(sp.jitter, 50),
        "pacing_jitter_p99_ms": p(sp.jitter, 99),
        "relay_pacing_jitter_p99_ms": p(rp.jitter, 99),
        "eot_to_first_audio_p50_ms": p(sp.eot_to_audio, 50),
        "eot_to_first_audio_p99_ms": p(sp.eot_to_audio, 99),
        "fake_upstream_delay_ms": (opts.llm_first_token_ms if opts.mode == "flux" else 0)
        + opts.tts_first_byte_ms,
        **eot_split(opts, sp, p(sp.eot_to_audio, 50)),
        "caller_send_lag_p99_ms": p(sp.send_lag, 99),
        "relay_caller_send_lag_p99_ms": p(rp.send_lag, 99),
        "caller_read_lag_p99_ms": p(sp.read_lag, 99),
        "relay_caller_read_lag_p99_ms": p(rp.read_lag, 99),
        "kernel_receive_times": kernel_stamps_available(),
        # Whether the figures are the service's: the generator kept its frames on time and
        # its core had room, in both phases (else the reasons).
        "generator_ok": not problems,
        "generator_problems": problems,
        "load_core_busy_percent": load_core_busy_percent(server, pinned),
        "relay_load_core_busy_percent": load_core_busy_percent(relay, pinned),
        "load_cpu_percent": _r(100 * server.load_cpu_s / server.window_s, 1),
        "relay_load_cpu_percent": _r(100 * relay.load_cpu_s / relay.window_s, 1),
        "bot_frames": sp.bot_frames,
        "relay_bot_frames": rp.bot_frames,
        "caller_turns": sp.turns,
        "relay_caller_turns": rp.turns,
        "samples": {
            "inbound": len(sp.inbound),
            "outbound": len(sp.outbound),
            "jitter": len(sp.jitter),
            "eot_to_first_audio": len(sp.eot_to_audio),
        },
        "end_reasons": server.end_reasons,
        # Every collection stops the service's loop, and every call's audio, for its length.
        "server_gc": server.gc,
        "server_gc_pause_percent": _r(
            100 * sum(g["pause_ms"] or 0.0 for g in server.gc.values()) / 1000 / server.window_s, 2
        )
        if server.gc and server.window_s
        else None,
        # What any call's audio or reply waited for the service's loop (its busyness, pauses).
        "server_loop_lag": server.loop_lag,
        "errors": sum(server.errors.values()) + sum(relay.errors.values()),
        "server_errors": sum(server.errors.values()),
        "relay_errors": sum(relay.errors.values()),
        "error_detail": {
            **{f"server: {k}": v for k, v in server.errors.items()},
            **{f"relay: {k}": v for k, v in relay.errors.items()},
        },
        # Other processes' CPU on the measured core and on the load generator's core during
        # the windows (busy time minus ours): a shared host skews latencies, not CPU seconds.
        # Unpinned (--no-pin, --workers above 1): over every core, in % of one core.
        "host_other_cpu_percent": {
            "server_core": _other(server, SERVER_CORE, server.cpu_s),
            "load_core": _other(server, LOAD_CORE, server.load_cpu_s),
            "relay_server_core": _other(relay, SERVER_CORE, relay.cpu_s),
            "relay_load_core": _other(relay, LOAD_CORE, relay.load_cpu_s),
        }
        if pinned
        else {
            "all_cores": _other_all(server, server.cpu_s + server.load_cpu_s),
            "relay_all_cores": _other_all(relay, relay.cpu_s + relay.load_cpu_s),
        },
        "pinned": pinned,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "options": {k: str(v) for k, v in asdict(opts).items()},
    }
    return out


def _gc_line(r: dict[str, Any]) -> str:
    """Per generation: collections, summed pause, the longest's upper bound."""
    if not r.get("server_gc"):
        return "not read"
    parts = [
        f"gen{gen} {g['collections']:g} x, {g['pause_ms']} ms"
        + (f" (longest <= {g['longest_ms']:g})" if g["longest_ms"] is not None else "")
        for gen, g in r["server_gc"].items()
    ]
    return "  ".join(parts) + f"  = {r['server_gc_pause_percent']} % of the window"


def _lag_line(r: dict[str, Any]) -> str:
    lag = r.get("server_loop_lag")
    if not lag:
        return "not read"
    return (
        f"p99 <= {lag['p99_ms_at_most']}  max <= {lag['max_ms_at_most']}"
        f"  ({lag['ticks']:g} ticks of a 100 ms timer; bucket bounds)"
    )


def _churn(r: dict[str, Any]) -> str:
    if not r.get("churn_per_s"):
        return ""
    return (
        f", churn {r['churn_per_s']:g}/s: {r['calls_redialled']} / {r['relay_calls_redialled']}"
        " calls hung up and redialled"
    )


def _why(reasons: dict[str, int]) -> str:
    return f": {', '.join(f'{k} {n}' for k, n in reasons.items())}" if reasons else ""


def format_report(r: dict[str, Any]) -> str:
    rows = [
        ("calls x seconds", f"{r['calls']} x {r['seconds']} s ({r['mode']})" + _churn(r)),
        (
            "CPU s per call-minute",
            f"server {r['server_cpu_s_per_call_minute']}  relay {r['relay_cpu_s_per_call_minute']}"
            f"  ratio {r['cpu_ratio_vs_relay']}",
        ),
        (
            "CPU % of one core",
            f"server {r['server_cpu_percent']}  relay {r['relay_cpu_percent']}"
            f"  (load generator {r['load_cpu_percent']} / {r['relay_load_cpu_percent']})",
        ),
        (
            "RSS MiB per call",
            f"server {r['rss_mib_per_call']}  relay {r['relay_rss_mib_per_call']}",
        ),
        (
            "inbound ms p50/p99",
            f"server {r['inbound_latency_p50_ms']}/{r['inbound_latency_p99_ms']}  relay "
            f"{r['relay_inbound_latency_p50_ms']}/{r['relay_inbound_latency_p99_ms']}  bridge "
            f"{r['bridge_inbound_latency_p50_ms']}/{r['bridge_inbound_latency_p99_ms']}",
        ),
        (
            "outbound ms p50/p99",
            f"{r['outbound_latency_p50_ms']}/{r['outbound_latency_p99_ms']}",
        ),
        (
            "pacing jitter ms p50/p99",
            f"server {r['pacing_jitter_p50_ms']}/{r['pacing_jitter_p99_ms']}"
            f"  relay p99 {r['relay_pacing_jitter_p99_ms']}",
        ),
        (
            "EndOfTurn -> audio ms",
            f"p50 {r['eot_to_first_audio_p50_ms']}  p99 {r['eot_to_first_audio_p99_ms']}"
            f"  (fakes' own delay {r['fake_upstream_delay_ms']})",
        ),
        (
            "EndOfTurn tax ms p50",
            f"{r['eot_tax_ms']} = fakes {r['eot_tax_fakes_ms']} + service {r['eot_tax_service_ms']}"
            f"  (LLM hold {r['llm_hold_p50_ms']} + stream {r['llm_stream_p50_ms']},"
            f" EoT->Flush {r['eot_to_aura_flush_p50_ms']},"
            f" Aura hold {r['aura_hold_p50_ms']}, Aura->caller {r['aura_to_caller_p50_ms']})",
        ),
        (
            "EndOfTurn tax ms p99",
            f"{r['eot_tax_p99_ms']}, fakes {r['eot_tax_fakes_p99_ms']}, service"
            f" {r['eot_tax_service_p99_ms']}  (each reply split on its own: the parts' p99s"
            f" need not add up; {r['eot_replies_joined']} replies joined,"
            f" {r['eot_replies_unjoined']} not{_why(r['eot_unjoined_why'])})",
        ),
        (
            "service's hops ms p99",
            f"EoT->LLM request {r['eot_to_llm_p99_ms']}, LLM end->Flush"
            f" {r['llm_to_flush_p99_ms']}, Aura->caller {r['aura_to_caller_p99_ms']}"
            "  (the joined replies; each hop's own p99)",
        ),
        (
            "generator lag ms p99",
            f"send {r['caller_send_lag_p99_ms']}/{r['relay_caller_send_lag_p99_ms']}  read "
            f"{r['caller_read_lag_p99_ms']}/{r['relay_caller_read_lag_p99_ms']}"
            f"  (kernel receive times: {r['kernel_receive_times']})",
        ),
        (
            "generator valid",
            f"{r['generator_ok']}  (its core busy {r['load_core_busy_percent']} / "
            f"{r['relay_load_core_busy_percent']} %)"
            + (f"  {'; '.join(r['generator_problems'])}" if r["generator_problems"] else ""),
        ),
        ("server GC pauses", _gc_line(r)),
        ("server loop lag ms", _lag_line(r)),
        ("other processes' CPU %", str(r["host_other_cpu_percent"])),
        ("errors", f"{r['errors']} {r['error_detail'] or ''}".rstrip()),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
