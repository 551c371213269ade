"""`telephony bench --hostile`: good calls with and without one hostile client beside them.

    telephony bench --hostile all --calls 20 --seconds 20 [--json report.json]

One `telephony serve` (pinned to core 0, as in bench.py), the fakes and the good callers in
this process (core 1), and for each phase after the quiet one an attacker in a process of its
own (telephony/sim/hostile.py; on core 1 at a lower priority, so the good callers' clocks
keep their time). Every phase dials fresh calls, waits until they are up (the attacker starts
meanwhile, and attacks until the window ends), then measures for `--seconds` while the attack
runs: caller end-of-turn -> first bot audio, the pacing jitter of the bot's audio and the
inbound latency (bench.py describes the probes), and the good calls' errors. The report puts
each attack's figures beside the quiet phase's, with what the attack got (its answers and
closes).

The claim it checks (SECURITY.md): one hostile client moves no other call's reply latency or
pacing by more than a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from telephony import bench, bench_phase
from telephony.bench_process import (
    LOAD_CORE,
    SERVER_CORE,
    Process,
    can_pin,
    free_port,
    spawn,
    wait_ready,
)
from telephony.bench_report import percentile
from telephony.http_pool import tls_context
from telephony.sim.hostile import ATTACKS
from telephony.sim.lean_call import Dialer, LeanCall, hang_up_all
from telephony.sim.load import Probes

QUIET = "quiet"
ATTACKER_NICE = 10
SETTLE_S = 1.0  # from the last good call dialled to the window
MIN_ATTACK_S = 1.0
# The attacker connects from here, the good calls from 127.0.0.1: two clients, as two callers
# on the internet are, so a per-client limit (TELEPHONY_HTTP_CLIENT_RATE) can tell them apart.
# Linux routes all of 127/8 to loopback; elsewhere the attacker shares 127.0.0.1.
ATTACKER_SOURCE = "127.0.0.2"


@dataclass
class HostileOptions:
    attacks: tuple[str, ...] = ATTACKS
    calls: int = 20
    seconds: float = 20.0
    pin: bool = True
    workdir: Path | None = None
    ramp_s: float = 1.0  # each phase starts its good calls over this long


@dataclass
class HostilePhase:
    name: str
    calls: int = 0
    eot_to_audio: list[float] = field(default_factory=list)
    jitter: list[float] = field(default_factory=list)
    inbound: list[float] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    attack: dict[str, int] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        p = percentile
        return {
            "calls": self.calls,
            "eot_to_first_audio_p50_ms": p(self.eot_to_audio, 50),
            "eot_to_first_audio_p95_ms": p(self.eot_to_audio, 95),
            "eot_to_first_audio_p99_ms": p(self.eot_to_audio, 99),
            "pacing_jitter_p99_ms": p(self.jitter, 99),
            "inbound_latency_p99_ms": p(self.inbound, 99),
            "caller_send_lag_p99_ms": p(self.send_lag, 99),
            "replies": len(self.eot_to_audio),
            "errors": self.errors,
            "attack": self.attack,
        }


async def _attacker(kind: str, url: str, number: str, until: float, pin: bool) -> Process:
    """The attack, in a process of its own, from its start-up until `until` (monotonic time:
    the end of the window); at least MIN_ATTACK_S if its start-up ran late."""
    prefix: list[str] = []
    if shutil.which("nice"):
        prefix = ["nice", "-n", str(ATTACKER_NICE)]
    argv = [*prefix, sys.executable, "-m", "telephony.sim.hostile"]
    argv += ["--attack", kind, "--url", url, "--number", number]
    argv += ["--seconds", str(MIN_ATTACK_S), "--until", repr(until)]
    if url.startswith("http://127.0.0.1:") and sys.platform.startswith("linux"):
        argv += ["--source", ATTACKER_SOURCE]
    env = {**os.environ, "TWILIO_AUTH_TOKEN": bench.AUTH_TOKEN}
    workdir = Path(tempfile.mkdtemp(prefix="telephony-hostile-"))
    process = await spawn(f"attacker-{kind}", argv, env, workdir, pin=False, port=0)
    if pin and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(process.pid, {LOAD_CORE})  # never on the service's core
    return process


async def _phase(
    name: str, server: Process, dialer: Dialer, probes: Probes, opts: HostileOptions, number: str
) -> HostilePhase:
    phase = HostilePhase(name)
    calls: list[LeanCall] = await dialer.dial_all(range(opts.calls), ramp_s=opts.ramp_s)
    start = time.monotonic() + SETTLE_S  # past their handshakes and first turn events
    end = start + opts.seconds
    attacker = None
    if name != QUIET:  # its start-up (a second or more on a loaded machine) while they settle
        attacker = await _attacker(name, server.url, number, end, opts.pin)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    phase.calls = sum(1 for c in calls if not c.closed.done())
    probes.recording = True
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    probes.recording = False
    await hang_up_all(calls)
    if attacker is not None:
        async with asyncio.timeout(90):
            await attacker.proc.wait()
        output = attacker.log_path.read_text(errors="replace").strip().splitlines()
        try:
            phase.attack = json.loads(output[-1]) if output else {"no report": 1}
        except ValueError:
            phase.attack = {f"attacker failed: {output[-1][:120]}": 1}
    phase.eot_to_audio = list(probes.eot_to_audio)
    phase.jitter = list(probes.jitter)
    phase.inbound = list(probes.inbound)
    phase.send_lag = list(probes.send_lag)
    phase.errors = dict(probes.errors)
    if len(calls) < opts.calls:
        phase.errors["calls_not_placed"] = opts.calls - len(calls)
    return phase


async def _wound_down(server: Process, limit_s: float = 10.0) -> None:
    """Until the service carries no call (the phase's and the attacker's, hung up), plus a
    moment for what follows a call's end (its store rows); at most `limit_s`."""
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=2, verify=tls_context()) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await http.get(server.url + "/healthz")).json()["live_calls"] == 0:
                    break
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)


async def run_hostile(opts: HostileOptions) -> dict[str, Any]:
    """The quiet phase, then one per attack; the report (see `format_hostile`)."""
    unknown = set(opts.attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="telephony-hostile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    number = bench.NUMBERS["flux"]
    load = bench.BenchOptions(calls=opts.calls, seconds=opts.seconds, pin=opts.pin)
    phases: list[HostilePhase] = []
    warm = Probes(opts.calls + 1)
    async with bench.fakes(load, warm) as (deepgram, llm):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = bench.server_env(load, workdir, url, deepgram.url, llm.url)
        # Enough room for every phase's calls: a refused good call would blame the attack.
        env["TELEPHONY_MAX_CALLS"] = str(2 * opts.calls + 10)
        env.pop("TELEPHONY_HTTP_CLIENT_RATE")  # the default budget: the attacker is 127.0.0.2
        argv = [sys.executable, *bench.SERVER_ENTRY, "serve", "--port", str(port)]
        server = await spawn("server", argv, env, workdir, opts.pin, port)
        try:
            await wait_ready(server, http_check=True)
            dialer = Dialer(warm, base_url=url, auth_token=bench.AUTH_TOKEN, number=number)
            await bench_phase.warm_up(dialer, opts.calls)
            await dialer.aclose()
            for name in (QUIET, *opts.attacks):
                probes = Probes(opts.calls + 1)
                deepgram.probes = probes
                dialer = Dialer(probes, base_url=url, auth_token=bench.AUTH_TOKEN, number=number)
                try:
                    phases.append(await _phase(name, server, dialer, probes, opts, number))
                finally:
                    await dialer.aclose()
                await _wound_down(server)  # the last phase's calls, before the next phase
        finally:
            code = await server.stop()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "started": started,
        "calls": opts.calls,
        "seconds": opts.seconds,
        "cores": {"server": SERVER_CORE, "generator_and_attacker": LOAD_CORE} if opts.pin else None,
        "server_exit_status": code,
        "phases": {p.name: p.figures() for p in phases},
    }


def _delta(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "-"
    return f"{value - base:+.1f}"


def format_hostile(report: dict[str, Any]) -> str:
    phases = report["phases"]
    quiet = phases.get(QUIET, {})
    rows = [
        f"{report['calls']} good Flux calls, {report['seconds']} s per phase",
        f"{'phase':<10} {'eot->audio p50/p95':>20} {'Δp95':>7} {'jitter p99':>11} {'Δ':>6}"
        f" {'replies':>8}  errors / what the attack got",
    ]
    for name, f in phases.items():
        p50, p95 = f["eot_to_first_audio_p50_ms"], f["eot_to_first_audio_p95_ms"]
        rows.append(
            f"{name:<10} {p50!s:>9}/{p95!s:<10}"
            f" {_delta(p95, quiet.get('eot_to_first_audio_p95_ms')):>7}"
            f" {f['pacing_jitter_p99_ms']!s:>11}"
            f" {_delta(f['pacing_jitter_p99_ms'], quiet.get('pacing_jitter_p99_ms')):>6}"
            f" {f['replies']:>8}  {f['errors'] or 'none'} / {f['attack'] or '-'}"
        )
    return "\n".join(rows)


def main(attacks: str, calls: int, seconds: float, pin: bool, json_path: str | None) -> int:
    kinds = ATTACKS if attacks == "all" else tuple(a for a in attacks.split(",") if a)
    opts = HostileOptions(attacks=kinds, calls=calls, seconds=seconds, pin=pin)
    if pin and can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})
    result = bench.load_run(run_hostile(opts))
    if json_path == "-":
        print(json.dumps(result, indent=2))
        return 0
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    print(format_hostile(result))
    return 0
