"""`telephony bench`: N concurrent calls through the service, then through a bare relay.

    telephony bench --calls 200 --seconds 60 [--mode flux|agent|both] [--json report.json]
    telephony bench --calls 100,200,300,400,500 --seconds 30   # a sweep

One run, two phases with the same load (`--mode both`: a server phase per mode on the one
service, then one relay phase, which does not depend on the mode; a report per mode):

1. **server**: `telephony serve` in its own process (one uvicorn worker; pinned to core 0 with
   `taskset` where available), its Deepgram and LLM URLs pointed at the fakes in this process.
   `--workers N`: `telephony serve --workers N`, unpinned, on the PostgreSQL database
   TELEPHONY_BENCH_DATABASE_URL names; its CPU and RSS are the parent's and the workers' summed.
2. **relay**: `python -m telephony.sim.relay` (telephony/sim/relay.py) in the same place: it
   only parses Twilio's JSON, base64-decodes and forwards the frames to Flux, and plays canned
   audio back on EndOfTurn — the floor any bridge pays for the same traffic.

This process is the load generator (pinned to core 1): the lean callers (telephony.sim.lean_call,
their per-frame wire work in telephony.sim.lean_wire), fake Deepgram (Flux, Aura, Voice Agent:
telephony.sim.load_deepgram) and the fake LLM, around the conversation of `telephony.sim.load`.
Every call repeats an 8 s
conversation: the caller speaks 1 s, the bot answers (~2.6 s of speech), the caller speaks again
1.5 s into the answer (a barge-in), the bot answers again.

Each phase: start the process, one warm-up call (imports and caches), the idle RSS, then the
calls, started evenly over a ramp; the measurement window (`--seconds`) begins once every call is
up (the process is left to settle before the idle RSS and before the window: `--settle`, 1 s;
tests/test_bench.py, with two calls, waits less). Within the window: the process's CPU (utime +
stime from /proc/<pid>/stat, every thread), its RSS
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

Whether a run measured the service or the generator: `generator_ok` is false, with the reasons
in `generator_problems`, when in either phase the callers' send lag p99 passed 5 ms or the
generator's core was 95 % busy or more (every process on it, from /proc/stat), or, without
kernel receive times, the read lag p99 passed 5 ms. Figures of such a run describe the
generator (or the host), not the service.

EndOfTurn -> first audio, Flux: its excess over the fakes' own delays (`eot_tax_ms`, p50) is
split into `eot_tax_fakes_ms` — how much longer than asked the fake LLM held its first token
and fake Aura its first audio, plus the fake LLM streaming the rest of the sentence, which
the service waits for before it flushes to Aura (p50s, timed by the fakes) — and the rest,
`eot_tax_service_ms`: the service, the loopback hops, and the generator's lateness in reading
the service's LLM request (the fake LLM's hold starts when uvicorn hands it the request).
The pieces are reported too (telephony/sim/load.py, "Where that interval goes"). At p99 the
split is per reply, since p99s of separate samples do not add: each reply's pieces are joined
(fake Flux tags the transcript, the tag reaches the fake LLM in the service's request, the
first audio's tag names its Aura Flush), its tax split into fakes' part and the rest, and
`eot_tax_p99_ms`, `eot_tax_fakes_p99_ms`, `eot_tax_service_p99_ms` are the p99s of those
per-reply values over the `eot_replies_joined` replies — so the fakes' and the service's p99
need not sum to the tax's p99 (the slowest replies of each part are not the same replies).
The service's part is split the same way into its three hops, each with its own p99:
`eot_to_llm_p99_ms` (EndOfTurn sent -> the service's request at the fake LLM),
`llm_to_flush_p99_ms` (the LLM's last token written -> the Flush at fake Aura) and
`aura_to_caller_p99_ms` (Aura's first audio sent -> at the caller).
Intervals that could not be joined are counted (`eot_replies_unjoined`, reasons in
`eot_unjoined_why`), not guessed; with none, `eot_tax_p99_ms` is `eot_to_first_audio_p99_ms`
less `fake_upstream_delay_ms`.

The service's garbage collections in the window (`server_gc`, per generation: how many, their
summed pause and the longest's bound, read from its `telephony_gc_pause_seconds` before and
after the window; `server_gc_pause_percent` of the window): each stops its loop, and every
call's audio, so they are the first suspect when pacing jitter or the tax's p99 grows (with
collection off, 200 calls: jitter p99 4.5 -> 2.1 ms, the service's tax p99 16 -> 9 ms).

A sweep (`--calls` with several counts) runs the whole bench once per count, each with a
service and a relay process of its own (nothing one count leaves behind weighs on the next),
prints each count's report, then one table per mode, service and relay side by side
(telephony/bench_sweep.py), and the knee: the largest count with pacing jitter p99 <= 5 ms,
bridge-added inbound p99 <= 2 ms, no errors and a valid generator (the relay's: jitter, its
errors, its phase's generator). JSON: `{"sweep": [{"calls": N, "reports": {mode: report}}],
"knee": {mode: {...}}}`; one count keeps the single report.

`--churn R`: through the window, R calls a second hang up (the longest-running first) and as
many new ones are dialled in their place, so the live count stays `--calls` while calls end
and start: each new call's webhook, handshake and Deepgram sockets, each ended call's records
written and the garbage it leaves (a full collection, in "server GC pauses"), and the RSS that
garbage holds. Without it the window has no call ending or starting. `calls_redialled` says how
many were made (dials are made one after another, so a slow service gets fewer).

Errors: calls that could not be placed or that the far end closed, malformed frames at the
caller, caller turns that got no bot audio within 5 s, protocol violations the fake Deepgram saw,
calls that ended for any reason but the caller's hang-up, error lines in the service's log.

Speed targets are the benchmark's business, never a unit test's: tests/test_bench.py only runs
a tiny configuration and checks the report's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from telephony.bench_phase import WARMUP_MAX_S, BenchOptions, run_phase
from telephony.bench_process import (
    Process,
    free_port,
    free_ports,
    log_errors,
    server_end_reasons,
    spawn,
    wait_ready,
)
from telephony.bench_report import (
    Phase,
    dump_samples,
    report,
)
from telephony.outcome import Outcome
from telephony.sim import load
from telephony.sim.fake_llm import FakeLLM
from telephony.sim.lean_call import Dialer
from telephony.sim.load import Probes
from telephony.sim.load_deepgram import BenchDeepgram

AUTH_TOKEN = "bench-auth-token"
DEEPGRAM_KEY = "bench-deepgram-key"
LLM_KEY = "bench-llm-key"
LLM_KEY_ENV = "TELEPHONY_BENCH_LLM_KEY"
NUMBERS = {"flux": "+15550009000", "agent": "+15550009001"}
CLEAN_END_REASONS = {str(Outcome.CALLER_HANGUP)}  # the fake callers hang up
SERVER_ENTRY = ["-m", "telephony.cli"]  # `telephony serve`
BOTH = "both"  # --mode both: every mode's server phase on one service, one relay phase
# The service's database: PostgreSQL for --workers above 1 (telephony/workers.py); unset, a
# SQLite file in the work directory.
DATABASE_ENV = "TELEPHONY_BENCH_DATABASE_URL"


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


def server_env(opts: BenchOptions, workdir: Path, url: str, dg_url: str, llm_url: str) -> dict:
    config = workdir / "numbers.yaml"
    config.write_text(_numbers_yaml(llm_url))
    return {
        **os.environ,
        "TELEPHONY_CONFIG": str(config),
        "TELEPHONY_DATABASE_URL": os.environ.get(DATABASE_ENV)
        or f"sqlite+aiosqlite:///{workdir}/bench.db",
        "TELEPHONY_RECORDINGS_DIR": str(workdir / "recordings"),
        "TELEPHONY_PUBLIC_URL": url,
        "TELEPHONY_MAX_CALLS": str(opts.calls + 10),
        "TELEPHONY_SESSION_SECRET": secrets.token_urlsafe(32),
        "TELEPHONY_LOG_FORMAT": "json",
        "TELEPHONY_LOG_LEVEL": "WARNING",
        "TELEPHONY_DRAIN_TIMEOUT_S": "5",
        # Every fake caller is 127.0.0.1, standing for Twilio's many addresses: no per-client
        # request budget (the hostile bench turns it back on, its attacker on 127.0.0.2).
        "TELEPHONY_HTTP_CLIENT_RATE": "0",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TELEPHONY_ALLOW_INSECURE_DEV": "1",  # the token above is in this repository
        "TWILIO_API_URL": "http://127.0.0.1:9",  # the script never hangs up through REST
        "DEEPGRAM_API_KEY": DEEPGRAM_KEY,
        "DEEPGRAM_URL": dg_url,
        "DEEPGRAM_AGENT_URL": dg_url,
        LLM_KEY_ENV: LLM_KEY,
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.asynccontextmanager
async def fakes(opts: BenchOptions, probes: Probes) -> AsyncIterator[tuple[BenchDeepgram, FakeLLM]]:
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
    # The fake LLM's holds go to whichever phase's probes the fakes hold now.
    llm.on_streamed = lambda user, arrived, first, last: deepgram.probes.llm_streamed(
        user, arrived, first, last
    )
    await deepgram.start()
    await llm.start()
    try:
        yield deepgram, llm
    finally:
        await llm.stop()
        await deepgram.stop()


async def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Both phases; the report (see bench_report.REPORT_KEYS and `report`)."""
    return (await run_modes(opts, (opts.mode,)))[opts.mode]


async def _server_phase(
    mode: str,
    server: Process,
    urls: list[str],
    probes: Probes,
    opts: BenchOptions,
    ended_before: dict[str, float],
) -> Phase:
    """One mode's calls through the running service; its end reasons are what /metrics
    counts beyond `ended_before` (an earlier mode's calls on the same service)."""
    dialer = Dialer(probes, base_url=server.url, auth_token=AUTH_TOKEN, number=NUMBERS[mode])
    try:
        phase = await run_phase("server", server, dialer, probes, opts, urls)
    finally:
        await dialer.aclose()
    expected = sum(ended_before.values()) + phase.calls + phase.redialled + 1
    ended = await server_end_reasons(urls, expected)
    phase.end_reasons = {
        r: n - ended_before.get(r, 0.0) for r, n in ended.items() if n > ended_before.get(r, 0.0)
    }
    unclean = {r: n for r, n in phase.end_reasons.items() if r not in CLEAN_END_REASONS}
    for reason, n in unclean.items():
        phase.errors[f"call ended: {reason}"] += int(n)
    return phase


async def run_modes(opts: BenchOptions, modes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """A server phase per mode (one service, the modes one after the other), then the relay
    phase, which is the same for every mode: {mode: its report against the relay}."""
    if not modes or set(modes) - set(NUMBERS):
        raise ValueError(f"mode must be one of {sorted(NUMBERS)}")
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="telephony-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    capacity = opts.capacity
    probes = Probes(capacity)
    phases: dict[str, Phase] = {}
    async with fakes(opts, probes) as (deepgram, llm):
        # The generator's long-lived objects leave the garbage collector's view (as the
        # service's do): full collections of them stalled the callers' clocks for 20-60 ms.
        gc.collect()
        gc.freeze()
        # --- the service
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = server_env(opts, workdir, url, deepgram.url, llm.url)
        argv = [sys.executable, *SERVER_ENTRY, "serve", "--port", str(port)]
        urls = [url]  # where each worker's /healthz and /metrics are
        if opts.workers > 1:  # unpinned (main): the workers share the cores with this process
            first = free_ports(opts.workers)
            argv += ["--workers", str(opts.workers), "--internal-port", str(first)]
            urls = [f"http://127.0.0.1:{first + k}" for k in range(opts.workers)]
        server = await spawn("server", argv, env, workdir, opts.pin, port)
        servers: dict[str, Phase] = {}
        ended: dict[str, float] = {}
        try:
            await wait_ready(server, http_check=True)
            for worker_url in urls if opts.workers > 1 else []:  # every worker, not one
                await wait_ready(replace(server, port=int(worker_url.rsplit(":", 1)[1])), True)
            for mode in modes:
                if servers:  # the first mode's probes are the fakes' already
                    probes = Probes(capacity)
                    deepgram.probes = probes
                servers[mode] = await _server_phase(mode, server, urls, probes, opts, ended)
                for reason, n in servers[mode].end_reasons.items():
                    ended[reason] = ended.get(reason, 0.0) + n
        finally:
            code = await server.stop()
        for phase in servers.values():  # what the service did in all, held against each
            if code != 0:
                phase.errors[f"server exit status {code}"] += 1
            phase.errors.update(log_errors(server))
            phase.errors.update({f"deepgram: {v}": 1 for v in deepgram.violations()})
        for mode, phase in servers.items():
            phases["server" if len(modes) == 1 else f"server-{mode}"] = phase

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
            number=NUMBERS[modes[0]],
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
    return {m: report(replace(opts, mode=m), servers[m], phases["relay"]) for m in modes}


def load_run(coro: Any) -> Any:
    """Run on uvloop when installed: the load generator needs every spare cycle."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
