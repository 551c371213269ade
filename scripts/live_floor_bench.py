"""What the live floor costs the calls: `telephony bench`'s Flux load through a real
`telephony serve`, three phases on one server setup each, figures from one run:

- `off`: TELEPHONY_LIVE_EVENTS=false (no call publishes anything);
- `on`: live events on, one browser-like event stream reading them (SQLite: the in-process bus);
- `listen`: events on, and `--listeners` supervisors listening in (one call each).

Reported per phase: the server's CPU per call-minute, events published (from /metrics), pacing
jitter p99 (what callers hear), and from them the CPU cost of one live event ((on - off) CPU /
events) and the listeners' jitter impact (listen - on). Speed figures belong here, never in a
unit test.

    .venv/bin/python scripts/live_floor_bench.py --calls 200 --seconds 20 --listeners 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from telephony import bench
from telephony.bench_process import cpu_seconds, free_port, spawn, wait_ready
from telephony.bench_report import percentile
from telephony.sim.lean_call import Dialer, LeanCall, hang_up_all
from telephony.sim.load import Probes
from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.users import add_user

SUPERVISOR = ("bench-supervisor", "supervisor", "bench-supervisor-password")


async def _published(url: str) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith("telephony_live_events_published_total "):
            return float(line.split()[1])
    return 0.0


async def _cookie(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        page = await http.get("/login")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        form = {"name": SUPERVISOR[0], "password": SUPERVISOR[2], "csrf": csrf, "next": "/calls"}
        await http.post("/login", data=form)
        return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


async def _drain_stream(url: str, cookie: str, stop: asyncio.Event) -> int:
    """A browser's event stream: read everything until `stop`; the bytes read."""
    n = 0
    async with (
        httpx.AsyncClient(base_url=url, timeout=None, headers={"Cookie": cookie}) as http,
        http.stream("GET", "/live/events") as resp,
    ):
        async for chunk in resp.aiter_bytes():
            n += len(chunk)
            if stop.is_set():
                break
    return n


async def _listen(url: str, sid: str, cookie: str, stop: asyncio.Event) -> int:
    ws_url = url.replace("http://", "ws://") + f"/live/listen/{sid}"
    n = 0
    headers = {"Cookie": cookie, "Origin": url}
    async with connect(ws_url, additional_headers=headers) as ws:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    n += len(await ws.recv())
    return n


async def read(args: argparse.Namespace) -> int:
    """The reader process: a browser stream (if asked) and a listener per SID, for `seconds`;
    prints the bytes they received."""
    stop = asyncio.Event()
    tasks = [_listen(args.read, sid, args.cookie, stop) for sid in args.sids.split(",") if sid]
    if args.stream == "yes":
        tasks.append(_drain_stream(args.read, args.cookie, stop))
    running = [asyncio.create_task(t) for t in tasks]
    await asyncio.sleep(args.seconds)
    stop.set()
    done = await asyncio.gather(*running, return_exceptions=True)
    return sum(n for n in done if isinstance(n, int))


async def phase(
    name: str, opts: bench.BenchOptions, workdir: Path, *, events: bool, listeners: int
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a benchmark, before any call
    probes = Probes(opts.calls + 1)
    async with bench.fakes(opts, probes) as (deepgram, llm):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = bench.server_env(opts, workdir, url, deepgram.url, llm.url)
        env["TELEPHONY_LIVE_EVENTS"] = "true" if events else "false"
        db_url = env["TELEPHONY_DATABASE_URL"]
        await upgrade(db_url)
        engine = make_engine(db_url)
        with contextlib.suppress(Exception):  # already there from an earlier phase
            await add_user(engine, *SUPERVISOR)
        await engine.dispose()
        argv = [sys.executable, *bench.SERVER_ENTRY, "serve", "--port", str(port)]
        server = await spawn("server", argv, env, workdir, opts.pin, port)
        dialer = Dialer(
            probes, base_url=url, auth_token=bench.AUTH_TOKEN, number=bench.NUMBERS["flux"]
        )
        reader: asyncio.subprocess.Process | None = None
        try:
            await wait_ready(server, http_check=True)
            await bench.warm_up(dialer, opts.calls)
            cookie = await _cookie(url)
            calls: list[LeanCall] = await dialer.dial_all(range(opts.calls), opts.ramp)
            await asyncio.sleep(1.0)
            # The browser stream and the listeners in a process of their own: in this one
            # they would slow the callers' clocks, which is what the jitter measures.
            sids = [call.call_sid for call in calls[:listeners]]
            reader = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--read", url, "--cookie", cookie,
                "--stream", "yes" if events else "no", "--seconds", str(opts.seconds + 2),
                *(["--sids", ",".join(sids)] if sids else []),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await asyncio.sleep(1.0)  # connected and reading
            published0 = await _published(url)
            probes.recording = True
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            await asyncio.sleep(opts.seconds)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            probes.recording = False
            published = await _published(url) - published0
            out, _ = await reader.communicate()
            received = int(out.decode().strip() or 0)
            await hang_up_all(calls)
        finally:
            if reader is not None and reader.returncode is None:
                reader.kill()
            await dialer.aclose()
            await server.stop()
    call_minutes = len(calls) * (t1 - t0) / 60
    return {
        "phase": name,
        "calls": len(calls),
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_s_per_call_minute": round((cpu1 - cpu0) / call_minutes, 4),
        "events_published": published,
        "bytes_to_readers": received,
        "jitter_p99_ms": percentile(probes.jitter, 99),
        # The generator's own lag (this process: callers and listeners): a run is only as
        # good as this is small next to the jitter.
        "generator_lag_p99_ms": percentile(probes.send_lag, 99),
        "errors": dict(probes.errors),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    opts = bench.BenchOptions(calls=args.calls, seconds=args.seconds, pin=not args.no_pin)
    workdir = Path(tempfile.mkdtemp(prefix="telephony-live-bench-"))
    off = await phase("off", opts, workdir / "off", events=False, listeners=0)
    on = await phase("on", opts, workdir / "on", events=True, listeners=0)
    listen = await phase("listen", opts, workdir / "listen", events=True, listeners=args.listeners)
    per_event_us = None
    if on["events_published"]:
        per_event_us = round(1e6 * (on["cpu_s"] - off["cpu_s"]) / on["events_published"], 2)
    return {
        "phases": [off, on, listen],
        "cpu_per_event_us": per_event_us,
        "events_per_call_second": round(on["events_published"] / (on["calls"] * args.seconds), 3),
        "listen_jitter_p99_delta_ms": (
            None
            if listen["jitter_p99_ms"] is None or on["jitter_p99_ms"] is None
            else round(listen["jitter_p99_ms"] - on["jitter_p99_ms"], 2)
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--listeners", type=int, default=5)
    parser.add_argument("--no-pin", action="store_true")
    # The reader process (see `phase`): not for use by hand.
    parser.add_argument("--read", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--cookie", default="", help=argparse.SUPPRESS)
    parser.add_argument("--stream", default="no", help=argparse.SUPPRESS)
    parser.add_argument("--sids", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(asyncio.run(read(args)))
        return 0
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
