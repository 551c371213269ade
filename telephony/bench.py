"""`telephony bench`: N concurrent calls through the service, then through a bare relay.

    telephony bench --calls 200 --seconds 60 [--mode flux|agent] [--json report.json]

One run, two phases with the same load:

1. **server**: `telephony serve` in its own process (one uvicorn worker; pinned to core 0 with
   `taskset` where available), its Deepgram and LLM URLs pointed at the fakes in this process.
2. **relay**: `python -m telephony.sim.relay` (telephony/sim/relay.py) in the same place: it
   only parses Twilio's JSON, base64-decodes and forwards the frames to Flux, and plays canned
   audio back on EndOfTurn — the floor any bridge pays for the same traffic.

This process is the load generator (pinned to core 1): the lean callers, fake Deepgram (Flux,
Aura, Voice Agent) and the fake LLM of `telephony.sim.load`. Every call repeats an 8 s
conversation: the caller speaks 1 s, the bot answers (~2.6 s of speech), the caller speaks again
1.5 s into the answer (a barge-in), the bot answers again.

Each phase: start the process, one warm-up call (imports and caches), the idle RSS, then the
calls, started evenly over a ramp; the measurement window (`--seconds`) begins once every call is
up. Within it: the process's CPU (utime + stime from /proc/<pid>/stat, every thread), its RSS
(VmRSS from /proc/<pid>/status, the window's maximum minus the idle RSS, divided by the calls),
and the probes of telephony/sim/load.py (their methods are described there): inbound latency
(caller frame -> its bytes at fake Deepgram, on the frame that completes an 80 ms chunk, and on
every frame with the chunking wait), outbound latency (Aura's first audio of a reply -> its first
Twilio frame at the caller), pacing jitter of the bot audio at the caller, EndOfTurn -> first bot
audio at the caller (the fakes' own delays included: LLM first token + Aura first byte, reported
as `fake_upstream_delay_ms`). "Bridge-added" latency is the service's figure minus the relay's.
Where Linux stamps received packets (`kernel_receive_times`), "at the caller" and "at fake
Deepgram" mean when the bytes reached that socket (telephony/sim/stamped.py), so the
generator's own event-loop lateness stays out of the figures; it is reported apart, as
`caller_read_lag_p99_ms`.

Errors: calls that could not be placed or that the far end closed, malformed frames at the
caller, caller turns that got no bot audio within 5 s, protocol violations the fake Deepgram saw,
calls that ended for any reason but the caller's hang-up, error lines in the service's log.

Speed targets are the benchmark's business, never a unit test's: tests/test_bench.py only runs
a tiny configuration and checks the report's shape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from telephony.session.outcome import Outcome
from telephony.sim import load
from telephony.sim.fake_llm import FakeLLM
from telephony.sim.load import BenchDeepgram, Dialer, LeanCall, Probes
from telephony.sim.stamped import kernel_stamps_available

AUTH_TOKEN = "bench-auth-token"
DEEPGRAM_KEY = "bench-deepgram-key"
LLM_KEY = "bench-llm-key"
LLM_KEY_ENV = "TELEPHONY_BENCH_LLM_KEY"
NUMBERS = {"flux": "+15550009000", "agent": "+15550009001"}
SERVER_CORE, LOAD_CORE = 0, 1
CLEAN_END_REASONS = {str(Outcome.CALLER_HANGUP)}  # the fake callers hang up
WARMUP_MAX_S = 8.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[1]
SERVER_ENTRY = ["-m", "telephony.cli"]  # `telephony serve`

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
class BenchOptions:
    calls: int = 50
    seconds: float = 30.0
    mode: str = "flux"  # flux | agent
    pin: bool = True  # server and relay on core 0, this process on core 1 (2+ cores)
    ramp_s: float | None = None  # default: 20 ms per call, 1..10 s
    llm_first_token_ms: int = 300
    tts_first_byte_ms: int = 100
    speak_ms_per_char: int = 60
    workdir: Path | None = None
    samples_dir: Path | None = None  # raw samples of both phases as JSON (for analysis)

    @property
    def ramp(self) -> float:
        if self.ramp_s is not None:
            return self.ramp_s
        return min(10.0, max(1.0, self.calls * 0.02))


# --- the measured process ---------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, every thread (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def core_busy_seconds() -> dict[int, float]:
    """Busy time of each core so far (all processes: /proc/stat, total minus idle and iowait)."""
    busy: dict[int, float] = {}
    with contextlib.suppress(OSError), open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values]
                busy[int(name[3:])] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK
    return busy


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A measured subprocess (the service or the relay), its log in a file."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode or 0


async def spawn(
    name: str,
    args: Sequence[str],
    env: dict[str, str],
    workdir: Path,
    pin: bool,
    port: int | None = None,
) -> Process:
    """Start `args` ("{port}" replaced by `port`, default a free one), on SERVER_CORE if `pin`."""
    port = port or _free_port()
    argv = [a.replace("{port}", str(port)) for a in args]
    prefix: list[str] = []
    taskset = shutil.which("taskset")
    if pin and taskset:
        prefix = [taskset, "-c", str(SERVER_CORE)]
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *argv,
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    finally:
        log_file.close()
    if pin and not taskset:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, {SERVER_CORE})
    return Process(name, proc, port, log_path)


async def wait_ready(process: Process, http_check: bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            if process.proc.returncode is not None:
                raise RuntimeError(f"{process.name} exited at start:\n{process.log_tail()}")
            with contextlib.suppress(OSError, httpx.HTTPError):
                if http_check:
                    if (await http.get(process.url + "/healthz")).status_code == 200:
                        return
                else:
                    _, writer = await asyncio.open_connection("127.0.0.1", process.port)
                    writer.close()
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} not ready:\n{process.log_tail()}")
            await asyncio.sleep(0.1)


# --- one phase --------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    calls: int = 0
    window_s: float = 0.0
    cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    core_busy_s: dict[int, float] = field(default_factory=dict)  # every process, per core
    probes: Probes | None = None
    errors: Counter[str] = field(default_factory=Counter)
    end_reasons: dict[str, float] = field(default_factory=dict)

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


async def _warm_up(dialer: Dialer, index: int) -> None:
    """One call until its first bot audio (lazy imports, pools, caches), then hang up."""
    call = await dialer.dial(index)
    for _ in range(int(WARMUP_MAX_S / 0.05)):  # polled: the lean caller keeps no event for it
        if call.player.queued or call.closed.done():
            break
        await asyncio.sleep(0.05)
    await load.hang_up_all([call])


async def run_phase(
    name: str,
    process: Process,
    dialer: Dialer,
    probes: Probes,
    opts: BenchOptions,
) -> Phase:
    phase = Phase(name, probes=probes)
    warm_probes = dialer.probes
    await _warm_up(dialer, opts.calls)  # index `calls`: the probes' spare slot
    warm_probes.errors.clear()
    await asyncio.sleep(1.0)
    phase.rss_idle_mib = rss_mib(process.pid)
    calls: list[LeanCall] = await dialer.dial_all(range(opts.calls), opts.ramp)
    await asyncio.sleep(1.0)  # the last calls past their handshake and first turn events
    phase.calls = sum(1 for c in calls if not c.closed.done())
    probes.recording = True
    cpu0, load0, t0 = cpu_seconds(process.pid), time.process_time(), time.monotonic()
    busy0 = core_busy_seconds()
    peak = rss_mib(process.pid)
    end = t0 + opts.seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        peak = max(peak, rss_mib(process.pid))
    cpu1, load1, t1 = cpu_seconds(process.pid), time.process_time(), time.monotonic()
    busy1 = core_busy_seconds()
    phase.core_busy_s = {core: busy1[core] - busy0.get(core, 0.0) for core in busy1}
    probes.recording = False
    phase.window_s, phase.cpu_s, phase.load_cpu_s = t1 - t0, cpu1 - cpu0, load1 - load0
    phase.rss_peak_mib = peak
    await load.hang_up_all(calls)
    phase.errors.update(probes.errors)
    if len(calls) < opts.calls:
        phase.errors["calls_not_placed"] += opts.calls - len(calls)
    return phase


async def _server_end_reasons(process: Process, expected: int) -> dict[str, float]:
    """calls_ended_total by reason from /metrics, once the service has wound the calls down."""
    from prometheus_client.parser import text_string_to_metric_families

    reasons: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            live = (await http.get(process.url + "/healthz")).json()["live_calls"]
            text = (await http.get(process.url + "/metrics")).text
            reasons = {
                s.labels.get("reason", ""): s.value
                for f in text_string_to_metric_families(text)
                if f.name == "telephony_calls_ended"
                for s in f.samples
                if s.name.endswith("_total")
            }
            if live == 0 and sum(reasons.values()) >= expected:
                break
            await asyncio.sleep(0.2)
    return reasons


def _log_errors(process: Process) -> Counter[str]:
    """Error and critical lines in a JSON log (TELEPHONY_LOG_FORMAT=json)."""
    found: Counter[str] = Counter()
    for line in process.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line or line.startswith(("ERROR", "CRITICAL")):
                found["log: unstructured error"] += 1
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            found[f"log: {str(entry.get('msg', ''))[:60]}"] += 1
    return found


# --- the run ----------------------------------------------------------------------------------


def _numbers_yaml(llm_url: str) -> str:
    return yaml.safe_dump(
        {
            "numbers": {NUMBERS["flux"]: "bench-flux", NUMBERS["agent"]: "bench-agent"},
            "profiles": {
                "bench-flux": {
                    "mode": "flux",
                    "responder": {
                        "type": "llm",
                        "base_url": llm_url,
                        "model": "bench",
                        "api_key_env": LLM_KEY_ENV,
                        "system_prompt": "Be brief.",
                    },
                },
                "bench-agent": {"mode": "agent", "agent": {"think_prompt": "Be brief."}},
            },
        },
        sort_keys=False,
    )


def _server_env(opts: BenchOptions, workdir: Path, url: str, dg_url: str, llm_url: str) -> dict:
    config = workdir / "numbers.yaml"
    config.write_text(_numbers_yaml(llm_url))
    return {
        **os.environ,
        "TELEPHONY_CONFIG": str(config),
        "TELEPHONY_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/bench.db",
        "TELEPHONY_RECORDINGS_DIR": str(workdir / "recordings"),
        "TELEPHONY_PUBLIC_URL": url,
        "TELEPHONY_MAX_CALLS": str(opts.calls + 10),
        "TELEPHONY_SESSION_SECRET": secrets.token_urlsafe(32),
        "TELEPHONY_LOG_FORMAT": "json",
        "TELEPHONY_LOG_LEVEL": "WARNING",
        "TELEPHONY_DRAIN_TIMEOUT_S": "5",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_API_URL": "http://127.0.0.1:9",  # the script never hangs up through REST
        "DEEPGRAM_API_KEY": DEEPGRAM_KEY,
        "DEEPGRAM_URL": dg_url,
        "DEEPGRAM_AGENT_URL": dg_url,
        LLM_KEY_ENV: LLM_KEY,
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.asynccontextmanager
async def _fakes(
    opts: BenchOptions, probes: Probes
) -> AsyncIterator[tuple[BenchDeepgram, FakeLLM]]:
    total_ms = round((2 * (WARMUP_MAX_S + opts.ramp + opts.seconds) + 60) * 1000)
    deepgram = BenchDeepgram(
        probes,
        api_key=DEEPGRAM_KEY,
        script=load.bench_script(total_ms),
        speak_first_byte_ms=opts.tts_first_byte_ms,
        speak_ms_per_char=opts.speak_ms_per_char,
        agent_latency_s=0.0,
        tick_s=0.5,
    )
    llm = FakeLLM(
        api_key=LLM_KEY,
        first_token_delay_ms=opts.llm_first_token_ms,
        tokens_per_s=1000,
        replies=[(".", load.REPLY_TEXT)],
    )
    await deepgram.start()
    await llm.start()
    try:
        yield deepgram, llm
    finally:
        await llm.stop()
        await deepgram.stop()


async def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Both phases; the report (see REPORT_KEYS and `report`)."""
    if opts.mode not in NUMBERS:
        raise ValueError(f"mode must be one of {sorted(NUMBERS)}")
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="telephony-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    capacity = opts.calls + 1  # the warm-up call takes the last slot
    probes = Probes(capacity)
    phases: dict[str, Phase] = {}
    async with _fakes(opts, probes) as (deepgram, llm):
        # The generator's long-lived objects leave the garbage collector's view (as the
        # service's do): full collections of them stalled the callers' clocks for 20-60 ms.
        gc.collect()
        gc.freeze()
        # --- the service
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = _server_env(opts, workdir, url, deepgram.url, llm.url)
        argv = [sys.executable, *SERVER_ENTRY, "serve", "--port", str(port)]
        server = await spawn("server", argv, env, workdir, opts.pin, port)
        dialer = Dialer(probes, base_url=url, auth_token=AUTH_TOKEN, number=NUMBERS[opts.mode])
        try:
            await wait_ready(server, http_check=True)
            phase = await run_phase("server", server, dialer, probes, opts)
            phase.end_reasons = await _server_end_reasons(server, phase.calls + 1)
            unclean = {r: n for r, n in phase.end_reasons.items() if r not in CLEAN_END_REASONS}
            for reason, n in unclean.items():
                phase.errors[f"call ended: {reason}"] += int(n)
        finally:
            await dialer.aclose()
            code = await server.stop()
        if code != 0:
            phase.errors[f"server exit status {code}"] += 1
        phase.errors.update(_log_errors(server))
        phase.errors.update({f"deepgram: {v}": 1 for v in deepgram.violations()})
        phases["server"] = phase

        # --- the bare relay, same load
        probes = Probes(capacity)
        deepgram.probes = probes
        relay_argv = [
            sys.executable,
            "-m",
            "telephony.sim.relay",
            "--port",
            "{port}",
            "--deepgram-url",
            deepgram.url,
            "--api-key",
            DEEPGRAM_KEY,
            "--reply-ms",
            str(load.reply_ms(opts.speak_ms_per_char)),
        ]
        relay = await spawn("relay", relay_argv, dict(os.environ), workdir, opts.pin)
        media_url = f"ws://127.0.0.1:{relay.port}/twilio/media"
        dialer = Dialer(
            probes,
            base_url=relay.url,
            auth_token=AUTH_TOKEN,
            number=NUMBERS[opts.mode],
            webhook=False,
            media_url=media_url,
        )
        try:
            await wait_ready(relay, http_check=False)
            phases["relay"] = await run_phase("relay", relay, dialer, probes, opts)
        finally:
            await dialer.aclose()
            await relay.stop()
    if opts.samples_dir is not None:
        dump_samples(opts.samples_dir, phases)
    return report(opts, phases["server"], phases["relay"])


SAMPLE_SETS = (
    "inbound",
    "inbound_all",
    "outbound",
    "jitter",
    "eot_to_audio",
    "send_lag",
    "read_lag",
)


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


def report(opts: BenchOptions, server: Phase, relay: Phase) -> dict[str, Any]:
    sp, rp = server.probes, relay.probes
    assert sp is not None and rp is not None
    p = percentile
    ratio = server.cpu_s_per_call_minute / relay.cpu_s_per_call_minute if relay.cpu_s else None
    in50, in99 = p(sp.inbound, 50), p(sp.inbound, 99)
    rin50, rin99 = p(rp.inbound, 50), p(rp.inbound, 99)
    out: dict[str, Any] = {
        "calls": server.calls,
        "seconds": round(server.window_s, 2),
        "mode": opts.mode,
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
        "caller_send_lag_p99_ms": p(sp.send_lag, 99),
        "relay_caller_send_lag_p99_ms": p(rp.send_lag, 99),
        "caller_read_lag_p99_ms": p(sp.read_lag, 99),
        "relay_caller_read_lag_p99_ms": p(rp.read_lag, 99),
        "kernel_receive_times": kernel_stamps_available(),
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
        "errors": sum(server.errors.values()) + sum(relay.errors.values()),
        "error_detail": {
            **{f"server: {k}": v for k, v in server.errors.items()},
            **{f"relay: {k}": v for k, v in relay.errors.items()},
        },
        # Other processes' CPU on the measured core and on the load generator's core during
        # the windows (busy time minus ours): a shared host skews latencies, not CPU seconds.
        "host_other_cpu_percent": {
            "server_core": _other(server, SERVER_CORE, server.cpu_s),
            "load_core": _other(server, LOAD_CORE, server.load_cpu_s),
            "relay_server_core": _other(relay, SERVER_CORE, relay.cpu_s),
            "relay_load_core": _other(relay, LOAD_CORE, relay.load_cpu_s),
        }
        if opts.pin and can_pin()
        else None,
        "pinned": opts.pin and can_pin(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "options": {k: str(v) for k, v in asdict(opts).items()},
    }
    return out


def format_report(r: dict[str, Any]) -> str:
    rows = [
        ("calls x seconds", f"{r['calls']} x {r['seconds']} s ({r['mode']})"),
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
            "generator lag ms p99",
            f"send {r['caller_send_lag_p99_ms']}/{r['relay_caller_send_lag_p99_ms']}  read "
            f"{r['caller_read_lag_p99_ms']}/{r['relay_caller_read_lag_p99_ms']}"
            f"  (kernel receive times: {r['kernel_receive_times']})",
        ),
        ("other processes' CPU %", str(r["host_other_cpu_percent"])),
        ("errors", f"{r['errors']} {r['error_detail'] or ''}".rstrip()),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(args: argparse.Namespace) -> int:
    """`telephony bench` (arguments from telephony.cli)."""
    opts = BenchOptions(
        calls=args.calls,
        seconds=args.seconds,
        mode=args.mode,
        pin=not args.no_pin,
        ramp_s=args.ramp,
        samples_dir=Path(os.environ["TELEPHONY_BENCH_SAMPLES"])
        if os.environ.get("TELEPHONY_BENCH_SAMPLES")
        else None,
    )
    if opts.pin and can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})  # the load generator: this process
    result = load_run(run_bench(opts))
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    else:
        if args.json:
            Path(args.json).write_text(text + "\n")
        print(format_report(result))
    return 0


def load_run(coro: Any) -> Any:
    """Run on uvloop when installed: the load generator needs every spare cycle."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
