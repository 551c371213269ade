"""Password hashes (scrypt), and `HashPool`: hashing off the event loop, bounded.

On the loop every hash stalls every call's audio and every other request for its duration; in
threads (hashlib releases the GIL while scrypt runs) the loop goes on. A few workers bound the
CPU and memory a login flood can take, and a short queue bounds how long an attempt may wait:
past it `HashBusy` is raised at once, so the caller answers "busy" instead of queueing forever.

The workers run at a lower CPU priority than the event loop (on Linux a thread has its own nice
value): where they share a core with it, as in a container held to one CPU, a hash would
otherwise take the loop's time slice and delay every call's next frame by milliseconds.

Unknown account names cost exactly what a wrong password costs, one scrypt run, against a dummy
hash made once (lazily, in a worker), so response times do not tell which accounts exist.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# scrypt is memory-hard: 2**14 x 8 x 128 B = 16 MiB per hash, ~50 ms here.
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES = 2**14, 8, 1, 32

DUMMY_PASSWORD = "timing-equaliser"
# Added to the workers' nice value: at +10 the scheduler gives the loop's thread ~10x their
# share of a contended core, and wakes it ahead of them.
WORKER_NICE = 10


def _yield_to_the_loop() -> None:
    """Thread initializer: lower this worker thread's CPU priority (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + WORKER_NICE))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$key`, so parameters can be raised later without breaking logins."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


class HashBusy(RuntimeError):
    """Every worker is busy and the queue of waiting attempts is full."""


class HashPool:
    def __init__(self, workers: int = 2, max_waiting: int = 8) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="password-hash", initializer=_yield_to_the_loop
        )
        self._lock = threading.Lock()  # `_pending` is released by the worker threads
        self._pending = 0  # submitted and not yet finished (running or waiting)
        self._dummy: str | None = None

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a worker; HashBusy at once if workers and queue are full. A caller
        that gives up (a dropped request) does not free its slot before the work ends: the
        bound is on threads' work, not on waiting coroutines."""
        with self._lock:
            if self._pending >= self.workers + self.max_waiting:
                raise HashBusy
            self._pending += 1

        def work() -> T:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._pending -= 1

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work)
        except RuntimeError as exc:  # executor shut down: nothing was queued
            if "shutdown" not in str(exc):
                raise
            with self._lock:
                self._pending -= 1
            raise HashBusy from exc

    async def hash(self, password: str) -> str:
        return await self.run(hash_password, password)

    async def verify(self, password: str, stored: str | None) -> bool:
        """Whether `password` matches `stored`; `stored` None (no such account): always False,
        at the same cost."""
        if stored is not None:
            return await self.run(verify_password, password, stored)
        return await self.run(self._verify_unknown, password)

    def _verify_unknown(self, password: str) -> bool:
        # The first unknown name makes the dummy hash: one scrypt run, like any verify.
        if self._dummy is None:
            self._dummy = hash_password(DUMMY_PASSWORD)
        else:
            verify_password(password, self._dummy)
        return False

    def close(self) -> None:
        self._executor.shutdown(wait=False)
