"""`telephony bench`'s measured process: started pinned to a core, read from /proc (with its
workers, if any), its /metrics and log read, stopped.

The service and the bare relay are measured the same way, so one `Process` and one set of
/proc readers serve both phases; the figures they yield are made into the report in
bench_report.py, the phases are run in bench.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVER_CORE, LOAD_CORE = 0, 1
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[1]

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, every thread (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a `--workers` parent and its workers; Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
            todo += [int(child) for child in children.split()]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of `pid` and its descendants, as they are now (one gone meanwhile: 0)."""
    total = 0.0
    for each in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(each)
    return total


def tree_rss_mib(pid: int) -> float:
    """rss_mib of `pid` and its descendants (pages they share counted in each)."""
    total = 0.0
    for each in tree(pid):
        with contextlib.suppress(OSError):
            total += rss_mib(each)
    return total


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


def ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux; elsewhere a guess)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports (a `--workers` service's private
    ones), picked as free_port picks one."""
    for _ in range(100):
        first = free_port()
        if all(port_is_free(first + k) for k in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def free_port() -> int:
    """A loopback port for a server we spawn, which binds it a moment later. Picked at random
    below the kernel's ephemeral range: a port from that range (binding port 0) can be taken
    meanwhile by any outgoing connection on the machine."""
    low = ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, max(low, 10_100))
        if port_is_free(port):
            return port
    with socket.socket() as sock:  # a crowded machine: let the kernel pick
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
    port = port or free_port()
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


async def server_end_reasons(urls: list[str], expected: float) -> dict[str, float]:
    """calls_ended_total by reason from /metrics (each worker's), once the service has wound
    the calls down."""
    from prometheus_client.parser import text_string_to_metric_families

    reasons: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            live, reasons = 0, {}
            for url in urls:
                live += (await http.get(url + "/healthz")).json()["live_calls"]
                text = (await http.get(url + "/metrics")).text
                for f in text_string_to_metric_families(text):
                    for s in f.samples:
                        if f.name == "telephony_calls_ended" and s.name.endswith("_total"):
                            reason = s.labels.get("reason", "")
                            reasons[reason] = reasons.get(reason, 0.0) + s.value
            if live == 0 and sum(reasons.values()) >= expected:
                break
            await asyncio.sleep(0.2)
    return reasons


GC_METRIC = "telephony_gc_pause_seconds"
LOOP_LAG_METRIC = "telephony_event_loop_lag_seconds"


@dataclass
class HistogramReading:
    """A histogram of the service's so far, per label value (the garbage collections' per
    generation "0", "1", "2"; an unlabelled one's under ""): how many observations, their sum
    (s), and the cumulative counts by bucket bound (s)."""

    count: dict[str, float]
    total_s: dict[str, float]
    buckets: dict[str, dict[float, float]]

    def since(self, before: HistogramReading) -> dict[str, dict[str, float | None]]:
        """Per generation, the collections between `before` and this reading: how many, their
        summed pause (ms) and the longest's upper bound (ms: the first bucket holding them
        all, or their sum where that is less; None without any)."""
        out: dict[str, dict[str, float | None]] = {}
        for gen in sorted(self.count):
            n = self.count[gen] - before.count.get(gen, 0.0)
            total_ms = (self.total_s[gen] - before.total_s.get(gen, 0.0)) * 1000
            longest = self.quantile_bound_ms(before, gen, 1.0)
            if longest is not None:
                longest = round(min(longest, total_ms), 3)
            out[gen] = {"collections": n, "pause_ms": round(total_ms, 3), "longest_ms": longest}
        return out

    def quantile_bound_ms(self, before: HistogramReading, key: str, q: float) -> float | None:
        """The first bucket bound (ms) under which a fraction `q` of the observations of `key`
        since `before` fell; None without any."""
        n = self.count.get(key, 0.0) - before.count.get(key, 0.0)
        for bound, cumulative in sorted(self.buckets.get(key, {}).items()):
            if n and cumulative - before.buckets.get(key, {}).get(bound, 0.0) >= q * n:
                return round(bound * 1000, 3)
        return None


async def read_histogram(urls: list[str], metric: str = GC_METRIC) -> HistogramReading:
    """A histogram from /metrics (GC_METRIC's, by generation, unless told), summed over the
    service's workers; an unlabelled one's observations are under the key ""."""
    from prometheus_client.parser import text_string_to_metric_families

    pauses = HistogramReading({}, {}, {})
    async with httpx.AsyncClient(timeout=5) as http:
        for url in urls:
            text = (await http.get(url + "/metrics")).text
            for family in text_string_to_metric_families(text):
                if family.name != metric:
                    continue
                for sample in family.samples:
                    gen = sample.labels.get("generation", "")
                    if sample.name.endswith("_count"):
                        pauses.count[gen] = pauses.count.get(gen, 0.0) + sample.value
                    elif sample.name.endswith("_sum"):
                        pauses.total_s[gen] = pauses.total_s.get(gen, 0.0) + sample.value
                    elif sample.name.endswith("_bucket"):
                        bound = float(sample.labels["le"])
                        by_bound = pauses.buckets.setdefault(gen, {})
                        by_bound[bound] = by_bound.get(bound, 0.0) + sample.value
    return pauses


_SID = re.compile(r"CA[0-9a-f]{6,}")


def log_errors(process: Process) -> Counter[str]:
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
            # One count per message, not per call: call SIDs are cut out.
            msg = _SID.sub("CA…", str(entry.get("msg", "")))
            found[f"log: {msg[:60]}"] += 1
    return found
