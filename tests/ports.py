"""Free TCP ports for servers a test starts in another process (`telephony serve`, the
throwaway PostgreSQL), which bind them some time after we picked them.

A port picked by binding port 0 comes from the kernel's ephemeral range, the same range every
outgoing connection takes its local port from: with several test workers making connections,
one of them could take the port before the server bound it ("address already in use", seen at
6 workers). So ports come from below the ephemeral range, a block per xdist worker, never
handed out twice by one process.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

LOWEST = 10_000
MAX_WORKERS = 16


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; elsewhere a safe guess


def _block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % MAX_WORKERS if worker.isdigit() else 0
    top = max(LOWEST + MAX_WORKERS * 100, min(_ephemeral_low(), 32_768))
    size = (top - LOWEST) // MAX_WORKERS
    return range(LOWEST + index * size, LOWEST + (index + 1) * size)


_candidates = itertools.cycle(_block())


def free_port() -> int:
    """A loopback port nothing listens on now, from this worker's block."""
    for _ in range(len(_block())):
        port = next(_candidates)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this test worker's block")
