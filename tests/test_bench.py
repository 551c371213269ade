"""`telephony bench` end to end at a tiny size: the report's shape and that real traffic flowed.

Speed targets are the benchmark's business (README, Performance); this only checks that both
phases ran, measured something and saw no errors.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from telephony.bench_report import REPORT_KEYS, percentile


def test_tiny_bench_reports_every_figure(tmp_path: Path) -> None:
    """Both modes in one run (`--mode both`: one service, a server phase per mode, one relay
    phase), each report checked whole."""
    out = tmp_path / "report.json"
    # Two calls need no 1 s ramp nor 1 s settles: the window ends where it did with those
    # (3.5 s into the first call, past its first reply and the barge-in that ends it, which
    # the jitter probe needs), and is longer.
    argv = [sys.executable, "-m", "telephony.cli", "bench", "--calls", "2", "--seconds", "3"]
    argv += ["--ramp", "0.1", "--settle", "0.4", "--mode", "both", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = json.loads(out.read_text())
    assert sorted(reports) == ["agent", "flux"]
    for mode, report in reports.items():
        assert report["mode"] == mode
        check_report(report)
    assert done.stdout.count("CPU s per call-minute") == 2  # the human-readable tables too


def test_tiny_sweep_reports_each_count_and_the_knee(tmp_path: Path) -> None:
    """`--calls 2,3`: a service and a relay per count, each count's report whole, the table and
    the knee (its shape only: whether a count is within the targets is the host's business)."""
    out = tmp_path / "sweep.json"
    argv = [sys.executable, "-m", "telephony.cli", "bench", "--calls", "2,3", "--seconds", "1"]
    argv += ["--ramp", "0.1", "--settle", "0.4", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [run["calls"] for run in result["sweep"]] == [2, 3]
    for run in result["sweep"]:
        report = run["reports"]["flux"]
        assert set(REPORT_KEYS) <= set(report)
        assert report["calls"] == run["calls"] and report["mode"] == "flux"
        assert isinstance(report["generator_ok"], bool)
        assert report["generator_ok"] == (not report["generator_problems"])
    knee = result["knee"]["flux"]
    assert set(knee) == {"service", "relay", "criteria"}
    assert knee["service"] in (None, 2, 3) and knee["relay"] in (None, 2, 3)
    assert done.stdout.count("CPU s per call-minute") == 2  # each count's report
    assert "knee (flux): service" in done.stdout  # then the table and the knee


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
    for key in REPORT_KEYS:
        value = report[key]
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
    assert report["server_cpu_s_per_call_minute"] > 0 and report["relay_cpu_s_per_call_minute"] > 0
    assert 0 < report["inbound_latency_p50_ms"] <= report["inbound_latency_p99_ms"]
    # The fakes answer after their own delay; the bridge can only add to it. (Less a
    # millisecond: the fakes' timers and the kernel's receive stamps are different clocks.)
    assert report["eot_to_first_audio_p50_ms"] >= report["fake_upstream_delay_ms"] - 1
    assert report["samples"]["jitter"] > 0 and report["samples"]["outbound"] > 0
    # Each mode's own: its two calls and its warm-up, all hung up.
    assert report["end_reasons"] == {"caller-hangup": 3}


def test_percentile_is_nearest_rank() -> None:
    samples = list(range(1, 101))
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile([7.0], 99) == 7.0
