"""`telephony bench`'s sweep over call counts (`--calls 100,200,...`): the knee (the largest
count within the targets, for the service and for the relay) and the table of every count's
report, service and relay side by side. Apart from bench_report.py because it only reads
finished reports (dicts), never a phase's samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KNEE_JITTER_P99_MS = 5.0
KNEE_BRIDGE_P99_MS = 2.0


def _phase_ok(r: dict[str, Any], phase: str) -> bool:
    return not any(p.startswith(f"{phase}:") for p in r["generator_problems"])


def service_ok(r: dict[str, Any]) -> bool:
    """Within the targets at this N: jitter, bridge-added inbound latency, no errors, and a
    generator that kept up in both phases (the bridge-added figure needs the relay's too)."""
    jitter, bridge = r["pacing_jitter_p99_ms"], r["bridge_inbound_latency_p99_ms"]
    return (
        jitter is not None
        and jitter <= KNEE_JITTER_P99_MS
        and bridge is not None
        and bridge <= KNEE_BRIDGE_P99_MS
        and r["server_errors"] == 0
        and r["generator_ok"]
    )


def relay_ok(r: dict[str, Any]) -> bool:
    jitter = r["relay_pacing_jitter_p99_ms"]
    return (
        jitter is not None
        and jitter <= KNEE_JITTER_P99_MS
        and r["relay_errors"] == 0
        and _phase_ok(r, "relay")
    )


def knee(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The largest call count within the targets, for the service and for the relay (None:
    none was)."""
    return {
        "service": max((r["calls"] for r in reports if service_ok(r)), default=None),
        "relay": max((r["calls"] for r in reports if relay_ok(r)), default=None),
        "criteria": f"jitter p99 <= {KNEE_JITTER_P99_MS:g} ms, bridge-added inbound p99 <= "
        f"{KNEE_BRIDGE_P99_MS:g} ms (service), 0 errors, generator valid",
    }


_SWEEP_COLUMNS = (
    ("calls", lambda r: f"{r['calls']}"),
    ("CPU % svc/relay", lambda r: f"{r['server_cpu_percent']}/{r['relay_cpu_percent']}"),
    ("ratio", lambda r: f"{r['cpu_ratio_vs_relay']}"),
    ("RSS MiB/call", lambda r: f"{r['rss_mib_per_call']}/{r['relay_rss_mib_per_call']}"),
    (
        "jitter p99",
        lambda r: f"{r['pacing_jitter_p99_ms']}/{r['relay_pacing_jitter_p99_ms']}",
    ),
    ("bridge in p99", lambda r: f"{r['bridge_inbound_latency_p99_ms']}"),
    (
        "EoT audio p50/p99",
        lambda r: (
            f"{r['eot_to_first_audio_p50_ms']}/{r['eot_to_first_audio_p99_ms']}"
            f" (-{r['fake_upstream_delay_ms']})"
        ),
    ),
    (
        "tax fakes/svc",
        lambda r: (
            f"p50 {r['eot_tax_fakes_ms']}/{r['eot_tax_service_ms']}"
            f", p99 {r['eot_tax_fakes_p99_ms']}/{r['eot_tax_service_p99_ms']}"
        ),
    ),
    ("errors", lambda r: f"{r['server_errors']}/{r['relay_errors']}"),
    (
        "gen send/read p99",
        lambda r: (
            f"{r['caller_send_lag_p99_ms']}/{r['relay_caller_send_lag_p99_ms']} "
            f"{r['caller_read_lag_p99_ms']}/{r['relay_caller_read_lag_p99_ms']}"
        ),
    ),
    ("gen CPU %", lambda r: f"{r['load_cpu_percent']}/{r['relay_load_cpu_percent']}"),
    (
        "others % core0/1",
        lambda r: "/".join(
            str((r["host_other_cpu_percent"] or {}).get(k))
            for k in ("server_core", "load_core", "relay_server_core", "relay_load_core")
        ),
    ),
    ("gen ok", lambda r: "yes" if r["generator_ok"] else "NO"),
)


def format_sweep(reports: Sequence[dict[str, Any]], found: dict[str, Any]) -> str:
    """One line per call count, service/relay side by side, then the knee."""
    rows = [[name for name, _ in _SWEEP_COLUMNS]]
    rows += [[cell(r) for _, cell in _SWEEP_COLUMNS] for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    mode = reports[0]["mode"] if reports else "?"
    lines.append(
        f"knee ({mode}): service {found['service']}, relay {found['relay']}  ({found['criteria']};"
        " pairs are service/relay, lags and CPU the generator's in each phase)"
    )
    invalid = [r for r in reports if not r["generator_ok"]]
    for r in invalid:
        lines.append(
            f"  {r['calls']} calls, generator not valid: {'; '.join(r['generator_problems'])}"
        )
    return "\n".join(lines)
