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

from telephony.bench_process import ephemeral_low, port_is_free

LOWEST = 10_000
MAX_WORKERS = 16


def _block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % MAX_WORKERS if worker.isdigit() else 0
    top = max(LOWEST + MAX_WORKERS * 100, min(ephemeral_low(), 32_768))
    size = (top - LOWEST) // MAX_WORKERS
    return range(LOWEST + index * size, LOWEST + (index + 1) * size)


_candidates = itertools.cycle(_block())


def free_port() -> int:
    """A loopback port nothing listens on now, from this worker's block."""
    for _ in range(len(_block())):
        port = next(_candidates)
        if port_is_free(port):
            return port
    raise RuntimeError("no free port in this test worker's block")
