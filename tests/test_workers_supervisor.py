"""The `--workers` parent's own rules (telephony/workers.py `Supervisor`), with stand-in workers:
tiny Python processes that write down every signal they get. Each signal reaches each worker
once and in order (the third SIGTERM included, and SIGHUP); a worker that dies is started again;
the parent's status says whether every worker exited cleanly. `telephony serve --workers` for
real is tests/test_workers.py."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from telephony.workers import Supervisor, Worker

pytestmark = pytest.mark.process

# A stand-in worker: notes its start and each signal in its file; SIGTERM n°3 exits 1 (the
# service's forced exit), the first SIGTERM exits 0 after a moment (a drain), unless it is
# told (ARGV[2]) to ignore SIGTERM. Given ARGV[3], its first start exits 3 at once (a crash).
STAND_IN = """
import os, signal, sys, time
path, hold, crash_once = sys.argv[1], sys.argv[2] == "hold", len(sys.argv) > 3
index = os.environ["TELEPHONY_WORKER"].split(",")[0]
mine = f"{path}/w{index}"
first = not os.path.exists(mine)
with open(mine, "a") as f:
    f.write("start\\n")
if crash_once and first:
    sys.exit(3)
terms = 0
def on(sig, frame):
    global terms
    with open(mine, "a") as f:
        f.write(signal.Signals(sig).name + "\\n")
    if sig == signal.SIGTERM:
        terms += 1
        if terms == 3:
            sys.exit(1)
signal.signal(signal.SIGTERM, on)
signal.signal(signal.SIGHUP, on)
while not terms or hold:
    time.sleep(0.01)
time.sleep(0.2)
"""


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    yield made
    for sock in made:
        sock.close()


def supervisor(
    tmp_path: Path, sockets: list[socket.socket], *args: str, workers: int = 2
) -> Supervisor:
    argv = [sys.executable, "-c", STAND_IN, str(tmp_path), *args]
    return Supervisor(argv, sockets[0], [Worker(k, {}, sockets[1 + k]) for k in range(workers)])


def send_later(*signals: tuple[float, signal.Signals]) -> threading.Thread:
    """Signals to this process (the supervisor's handler takes them), each at its time."""

    def run() -> None:
        start = time.monotonic()
        for at, sig in signals:
            time.sleep(max(0.0, start + at - time.monotonic()))
            os.kill(os.getpid(), sig)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def lines(tmp_path: Path, k: int) -> list[str]:
    return (tmp_path / f"w{k}").read_text().split()


def test_each_signal_reaches_every_worker_once_and_a_third_is_not_clean(
    tmp_path: Path, sockets: list[socket.socket]
) -> None:
    parent = supervisor(tmp_path, sockets, "hold")
    sender = send_later(
        (0.8, signal.SIGHUP),
        (1.0, signal.SIGTERM),
        (1.3, signal.SIGTERM),
        (1.6, signal.SIGTERM),
    )
    assert parent.run() == 1  # the third made each worker exit 1
    sender.join()
    for k in (0, 1):
        assert lines(tmp_path, k) == ["start", "SIGHUP", "SIGTERM", "SIGTERM", "SIGTERM"]


def test_a_worker_that_dies_is_started_again_and_a_drain_is_clean(
    tmp_path: Path, sockets: list[socket.socket]
) -> None:
    parent = supervisor(tmp_path, sockets, "drain", "crash-once", workers=1)
    # The crash at once, the restart 1 s later (RESTART_DELAY_S), then a drain.
    sender = send_later((2.5, signal.SIGTERM))
    assert parent.run() == 0
    sender.join()
    assert lines(tmp_path, 0) == ["start", "start", "SIGTERM"]
