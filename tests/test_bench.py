"""`telephony bench` end to end at a tiny size: the report's shape and that real traffic flowed.

Speed targets are the benchmark's business (README, Performance); this only checks that both
phases ran, measured something and saw no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from telephony import bench_main, bench_report
from telephony.bench_phase import BenchOptions, Churn
from telephony.bench_process import HistogramReading
from telephony.bench_report import REPORT_KEYS, Phase, _gc_line, format_report, percentile
from telephony.bench_sweep import knee
from telephony.sim.load import Probes, reply_of

if TYPE_CHECKING:
    from telephony.sim.lean_call import LeanCall


def test_tiny_bench_reports_every_figure(tmp_path: Path) -> None:
    """Both modes in one run (`--mode both`: one service, a server phase per mode, one relay
    phase), each report checked whole."""
    out = tmp_path / "report.json"
    # Two calls need no 1 s ramp nor 1 s settles: the window ends where it did with those
    # (3.5 s into the first call, past its first reply and the barge-in that ends it, which
    # the jitter probe needs), and is longer.
    argv = [sys.executable, "-m", "telephony.cli", "bench", "--calls", "2", "--seconds", "3"]
    argv += ["--ramp", "0.1", "--settle", "0.4", "--mode", "both", "--json", str(out)]
    argv += ["--churn", "0.5"]  # one call hung up and redialled in each window
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = json.loads(out.read_text())
    assert sorted(reports) == ["agent", "flux"]
    for mode, report in reports.items():
        assert report["mode"] == mode
        check_report(report)
    assert done.stdout.count("CPU s per call-minute") == 2  # the human-readable tables too


class _ChurnCall:
    def __init__(self, index: int) -> None:
        self.index = index
        self.hung_up = False

    def hang_up(self) -> None:
        self.hung_up = True


class _ChurnDialer:
    """Dials instantly; the dial of index 12 fails."""

    def __init__(self) -> None:
        self.probes = SimpleNamespace(errors=Counter())
        self.dialled: list[int] = []

    async def dial(self, index: int) -> _ChurnCall:
        self.dialled.append(index)
        if index == 12:
            raise ConnectionError("refused")
        return _ChurnCall(index)


async def test_churn_hangs_up_the_oldest_call_and_dials_a_fresh_slot_at_the_rate() -> None:
    dialer = _ChurnDialer()
    first = [_ChurnCall(i) for i in range(3)]
    live = list(first)
    churn = Churn(cast(Any, dialer), cast(Any, live), first_index=10, slots=4, per_s=100)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await churn.run()
    assert loop.time() - began >= 4 * 0.01 - 0.002  # one every 10 ms, the first after 10 ms
    assert dialer.dialled == [10, 11, 12, 13]  # fresh slots, the failed one used up too
    assert [c.index for c in churn.ended] == [0, 1, 2, 10]  # the longest-running first
    assert all(c.hung_up for c in churn.ended)
    assert [c.index for c in live] == [11, 13] and not any(c.hung_up for c in live)
    assert churn.placed == 3 and dialer.probes.errors == {"dial_failed: ConnectionError": 1}
    assert BenchOptions(seconds=20, churn_per_s=2).churn_slots == 41
    assert BenchOptions(calls=5, seconds=20).capacity == 6  # no churn: the calls and the warm-up


class _Figures(dict):
    """A report's figures: those a test does not name read 1.0 (the tables print them all)."""

    def __missing__(self, key: str) -> float:
        return 1.0


def _report(calls: int, jitter: float, relay_jitter: float, **extra: object) -> dict:
    """A report in run_modes' shape whose figures are given (the rest are 1.0)."""
    report: dict = _Figures(dict.fromkeys(REPORT_KEYS, 1.0))
    report.update(
        calls=calls,
        mode="flux",
        pacing_jitter_p99_ms=jitter,
        relay_pacing_jitter_p99_ms=relay_jitter,
        bridge_inbound_latency_p99_ms=0.5,
        server_errors=0,
        relay_errors=0,
        generator_ok=True,
        generator_problems=[],
        host_other_cpu_percent={},
        eot_unjoined_why={},
    )
    report.update(extra)
    return report


# What each count measured: the service is within the targets up to 200 (then jitter), the
# relay up to 300; at 250 the generator fell behind in the service's phase.
SWEEP = {
    100: _report(100, 2.0, 1.5, eot_tax_fakes_p99_ms=7.5, eot_tax_service_p99_ms=2.25),
    200: _report(200, 4.6, 3.2),
    250: _report(250, 4.0, 3.9, generator_ok=False, generator_problems=["server: send lag"]),
    300: _report(300, 24.0, 4.9),
    400: _report(400, 52.0, 35.0, server_errors=3),
}


def test_a_sweep_runs_each_count_afresh_and_finds_the_knee(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--calls 100,200,...`: run_modes once per count (its own service and relay: a work
    directory of its own), each count's report whole in the JSON, the table and the knee: the
    largest count within the targets, for the service and the relay apart (tests/test_bench's
    tiny run covers run_modes itself, with real processes)."""
    ran: list[tuple[int, Path | None]] = []

    async def run_modes(opts: BenchOptions, modes: tuple[str, ...]) -> dict[str, dict]:
        ran.append((opts.calls, opts.workdir))
        return {"flux": SWEEP[opts.calls]}

    monkeypatch.setattr(bench_main, "run_modes", run_modes)
    counts = tuple(SWEEP)
    out = tmp_path / "sweep.json"
    opts = BenchOptions(calls=counts[0], workdir=tmp_path)
    args = argparse.Namespace(json=str(out))
    assert bench_main._sweep_main(args, opts, ("flux",), counts) == 0

    assert [calls for calls, _ in ran] == list(counts)
    assert len({workdir for _, workdir in ran}) == len(counts)  # nothing shared between counts
    result = json.loads(out.read_text())
    assert [run["calls"] for run in result["sweep"]] == list(counts)
    assert [run["reports"]["flux"] for run in result["sweep"]] == list(SWEEP.values())
    assert result["knee"]["flux"]["service"] == 200  # 250: its generator did not keep up
    assert result["knee"]["flux"]["relay"] == 300
    printed = capsys.readouterr().out
    assert printed.count("CPU s per call-minute") == len(counts)  # each count's report
    assert "knee (flux): service 200" in printed  # then the table and the knee
    assert "p99 7.5/2.25" in printed  # the EndOfTurn tax's parts at p99 (per reply)
    assert knee([SWEEP[300], SWEEP[400]])["service"] is None  # none within: no knee


def check_report(report: dict) -> None:
    assert set(REPORT_KEYS) <= set(report)
    assert report["errors"] == 0, report["error_detail"]
    assert report["calls"] == 2 and report["seconds"] >= 3
    assert report["generator_ok"] == (not report["generator_problems"])
    if report["mode"] == "flux":  # the EndOfTurn tax, split (its sizes are the host's)
        assert report["llm_hold_p50_ms"] >= 300 - 1 and report["aura_hold_p50_ms"] >= 100 - 1
        assert report["eot_tax_fakes_ms"] is not None and report["eot_tax_service_ms"] is not None
        total = report["eot_tax_fakes_ms"] + report["eot_tax_service_ms"]
        assert math.isclose(total, report["eot_tax_ms"], abs_tol=0.01)
        # ...and per reply: the fake LLM read each reply's tag from the service's request.
        assert report["eot_replies_joined"] > 0, report["eot_unjoined_why"]
        for key in (
            "eot_tax_p99_ms",
            "eot_tax_fakes_p99_ms",
            "eot_tax_service_p99_ms",
            "eot_to_llm_p99_ms",
            "llm_to_flush_p99_ms",
            "aura_to_caller_p99_ms",
        ):
            assert report[key] is not None, key
        assert report["eot_tax_fakes_p99_ms"] >= -2  # the fakes never answer much early
    else:
        assert report["eot_tax_p99_ms"] is None and report["eot_replies_joined"] is None
    for key in REPORT_KEYS:
        value = report[key]
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
    assert report["server_cpu_s_per_call_minute"] > 0 and report["relay_cpu_s_per_call_minute"] > 0
    assert 0 < report["inbound_latency_p50_ms"] <= report["inbound_latency_p99_ms"]
    # The fakes answer after their own delay; the bridge can only add to it. (Less a
    # millisecond: the fakes' timers and the kernel's receive stamps are different clocks.)
    assert report["eot_to_first_audio_p50_ms"] >= report["fake_upstream_delay_ms"] - 1
    assert report["samples"]["jitter"] > 0 and report["samples"]["outbound"] > 0
    # Each mode's own: its two calls, the one the churn dialled and the warm-up, all hung up.
    assert report["calls_redialled"] == 1 and report["relay_calls_redialled"] == 1
    assert report["end_reasons"] == {"caller-hangup": 4}
    # The service's collections in the window, read from its /metrics (none is likely here).
    assert sorted(report["server_gc"]) == ["0", "1", "2"]
    for gen in report["server_gc"].values():
        assert gen["collections"] >= 0 and gen["pause_ms"] >= 0
        assert (gen["longest_ms"] is None) == (gen["collections"] == 0)
    assert report["server_gc_pause_percent"] >= 0
    lag = report["server_loop_lag"]  # the service's 100 ms timer ticked through the window
    assert lag["ticks"] >= report["seconds"] * 5 and lag["p99_ms_at_most"] is not None
    assert lag["p99_ms_at_most"] <= lag["max_ms_at_most"]


def test_gc_pauses_in_the_window_are_the_difference_of_two_readings() -> None:
    """How many collections of each generation fell between two /metrics readings, their
    summed pause, and the longest's bound: the first histogram bucket that holds them all."""
    inf = math.inf
    before = HistogramReading(
        count={"0": 10, "1": 2},
        total_s={"0": 0.010, "1": 0.004},
        buckets={"0": {0.001: 5, 0.005: 10, 0.01: 10, inf: 10}, "1": {0.005: 2, inf: 2}},
    )
    after = HistogramReading(
        count={"0": 13, "1": 2},
        total_s={"0": 0.0275, "1": 0.004},
        # one of the three new ones <= 1 ms, none more up to 5 ms, the other two <= 10 ms
        buckets={"0": {0.001: 6, 0.005: 11, 0.01: 13, inf: 13}, "1": {0.005: 2, inf: 2}},
    )
    got = after.since(before)
    assert got["0"] == {"collections": 3, "pause_ms": 17.5, "longest_ms": 10.0}
    assert got["1"] == {"collections": 0, "pause_ms": 0.0, "longest_ms": None}
    # Past the last bound, or a bucket wider than the sum: the sum bounds the longest.
    beyond = HistogramReading({"2": 1}, {"2": 2.0}, {"2": {1.0: 0, inf: 1}})
    assert beyond.since(HistogramReading({}, {}, {}))["2"]["longest_ms"] == 2000.0
    one = HistogramReading({"2": 1}, {"2": 0.03}, {"2": {0.02: 0, 0.05: 1, inf: 1}})
    assert one.since(HistogramReading({}, {}, {}))["2"]["longest_ms"] == 30.0
    r = {**dict.fromkeys(REPORT_KEYS, 1.0), "server_gc": got, "server_gc_pause_percent": 0.04}
    assert "gen0 3 x, 17.5 ms (longest <= 10)  gen1 0 x, 0.0 ms  = 0.04 %" in _gc_line(r)


def test_a_quantile_of_the_window_is_read_as_its_bucket_bound() -> None:
    """The loop lag's p99 and longest in the window: the first bucket bound under which that
    share of the window's observations fell (the readings' differences, not their totals)."""
    inf = math.inf
    before = HistogramReading({"": 100}, {"": 0.1}, {"": {0.001: 100, 0.005: 100, inf: 100}})
    # 200 ticks in the window: 197 within 1 ms, 2 within 5 ms, one past the last bound
    after = HistogramReading({"": 300}, {"": 0.5}, {"": {0.001: 297, 0.005: 299, inf: 300}})
    assert after.quantile_bound_ms(before, "", 0.98) == 1.0
    assert after.quantile_bound_ms(before, "", 0.99) == 5.0
    assert after.quantile_bound_ms(before, "", 1.0) == inf
    assert before.quantile_bound_ms(before, "", 0.99) is None  # nothing in the window


def test_percentile_is_nearest_rank() -> None:
    samples = list(range(1, 101))
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile([7.0], 99) == 7.0


def _call(index: int) -> LeanCall:
    """What `Probes.end_of_turn` reads and writes of a lean caller."""
    return cast("LeanCall", SimpleNamespace(index=index, replies=0, eot_at=None))


def test_each_reply_is_split_on_its_own_at_p99() -> None:
    """The fake LLM's pieces join the interval of the reply whose tag the service's request
    carried (never the next stream to finish, nor the call's other reply), Aura's hold is
    the one its first audio's tag carries, and the p99s are of per-reply values: here the
    slowest tax (B's), the fakes' slowest (B's) and the service's (A's) are not one reply's,
    so the parts' p99s do not add up to the tax's. Intervals short of a piece are counted."""
    probes = Probes(3)
    probes.recording = True
    opts = BenchOptions(mode="flux", llm_first_token_ms=300, tts_first_byte_ms=100)
    calls = [_call(i) for i in range(3)]
    asked = "I would like to check on my order please"

    def eot(call: LeanCall, at: float) -> str:
        tag = probes.end_of_turn(call)
        call.eot_at = at  # the test's clock, not the monotonic one
        return tag

    def stream(user: str, arrived: float, hold_ms: float, stream_ms: float) -> None:
        first = arrived + hold_ms / 1000
        probes.llm_streamed(user, arrived, first, first + stream_ms / 1000)

    def audio(call: LeanCall, total_ms: float, aura_hold_ms: float | None) -> None:
        assert call.eot_at is not None
        now = call.eot_at + total_ms / 1000
        sent = now - 0.002
        tagged = None if aura_hold_ms is None else (sent - aura_hold_ms / 1000, sent)
        probes.first_audio((call.index, call.replies), call.eot_at, now, tagged)
        call.eot_at = None

    # Replies A (call 0's first), B (call 1's first), D (call 2's first): their streams
    # finish in another order than their audio reaches the callers.
    a, b, d = eot(calls[0], 10.0), eot(calls[1], 10.01), eot(calls[2], 10.02)
    assert (a, b, d) == ("[reply 0.1]", "[reply 1.1]", "[reply 2.1]")
    stream(f"{asked} {b}", 10.012, 340, 10)
    stream(f"{asked} {a}", 10.003, 301, 9)
    audio(calls[0], 415, 100)  # A: tax 15 = fakes 1 + 9 + 0 + service 5
    audio(calls[2], 430, None)  # D: its first audio is not Aura's first: not joined
    audio(calls[1], 455, 102)  # B: tax 55 = fakes 40 + 10 + 2 + service 3
    # Call 0's second reply C: its request holds both caller turns in one message (the
    # newest tag last). Call 1's second (E) streams but its caller speaks again before any
    # audio: its third (G) has no stream of its own. Call 2's second (F) has two streams.
    c, e, f = eot(calls[0], 14.0), eot(calls[1], 14.0), eot(calls[2], 14.0)
    stream(f"{asked} {a}\nActually let me ask about something else {c}", 14.001, 330, 10)
    stream(f"{asked} {e}", 14.001, 300, 10)
    stream(f"{asked} {f}", 14.001, 300, 10)
    stream(f"{asked} {f}", 14.002, 300, 10)
    audio(calls[0], 440, 100)  # C: tax 40 = fakes 30 + 10 + 0 + service 0
    eot(calls[1], 17.0)
    audio(calls[1], 420, 100)  # G: not E's stream
    audio(calls[2], 420, 100)

    assert reply_of(f"{asked} {a}\nmore {c}") == (0, 2)
    assert probes.unjoined == {
        "first audio not Aura's first of a burst": 1,
        "no LLM stream for the reply": 1,
        "several LLM streams for the reply": 1,
    }
    assert list(probes.llm_replies) == [(1, 2)]  # E's: the only stream no interval took
    server = Phase("server", calls=3, window_s=1.0, probes=probes)
    relay = Phase("relay", calls=3, window_s=1.0, probes=Probes(3))
    got = bench_report.report(opts, server, relay)
    assert got["eot_replies_joined"] == 3 and got["eot_replies_unjoined"] == 3
    assert got["eot_tax_p99_ms"] == pytest.approx(55, abs=0.01)
    assert got["eot_tax_fakes_p99_ms"] == pytest.approx(52, abs=0.01)
    assert got["eot_tax_service_p99_ms"] == pytest.approx(5, abs=0.01)
    # The service's part by hop (A: 3 + 0 + 2, B: 2 - 1 + 2, C: 1 - 3 + 2), each its own p99.
    hops = ("eot_to_llm_p99_ms", "llm_to_flush_p99_ms", "aura_to_caller_p99_ms")
    assert [got[k] for k in hops] == [pytest.approx(3, abs=0.01), pytest.approx(0, abs=0.01), 2]
    for r in probes.replies:  # the six pieces are the whole interval
        pieces = r.eot_to_llm + r.llm_hold + r.llm_stream + r.llm_to_flush + r.aura_hold
        assert pieces + r.aura_to_caller == pytest.approx(r.eot_to_audio, abs=1e-6)
    assert got["eot_to_first_audio_p99_ms"] == pytest.approx(455, abs=0.01)  # every interval
    line = next(x for x in format_report(got).splitlines() if x.startswith("EndOfTurn tax ms p99"))
    assert "55.0, fakes 52.0, service 5.0" in line and "3 replies joined, 3 not: " in line
