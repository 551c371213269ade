"""An asyncio event loop whose clock runs `scale` times faster than real time.

Most end-to-end tests wait on a call's real-time clock: 20 ms frames, playout paced to the
audio, keepalive and watchdog timers. The service, the fakes and the tests all read time from
the running loop (`loop.time()`, `asyncio.sleep`, `asyncio.timeout`, `call_later`), so one
faster loop plays a whole call faster with every ratio between its timings kept: a 10 s call
on a 4x clock takes 2.5 s, and every ms figure in it is still in call-clock ms.

A host's stall does not count: a test worker that waits 100-400 ms for a core (the workers, the
services and browsers they start, all on two cores) would lose seconds of call time on an 8x
clock that the code under test never had. So the clock stops while the loop's thread waits
for a CPU (Linux's run-queue figure, /proc/thread-self/schedstat); everything else the code
does, computing, blocking or sleeping, still counts, so a blocked loop still shows.

What does not scale is work done outside the loop's clock: CPU time and threads (SQLite's,
the password hashes). On a 4x clock 1 ms of real work reads as 4 ms, so a test that bounds a
latency tightly, or waits on another process, stays on the real clock (scale 1).

Which scale: 8x for the modules of scripted calls whose bounds leave a stall room (each passed
twice at five workers on two cores before it moved from 4x); 4x where a module bounds audio
timing tightly (the recording's alignment, what was heard at a drop), times real work, or
scripts a caller's words so early that a late socket start changes the call (the agent's
greeting), or places a caller's key or word inside a bot line with well under a second of call
time either side (the idle reprompts: at 8x a 90 ms stall moved the reprompt past the keys);
2x or 1x on a single test whose bound a busy machine missed. The suite's time is
mostly such calls waiting on their clocks: 8x took ~1/3 off those modules' wall time.

Use: `pytestmark = pytest.mark.clock(8)` in a module, or `@pytest.mark.clock(1)` on a test to
override it (tests/conftest.py pytest_asyncio_loop_factories). A synchronous test that runs the
CLI in-process uses `scaled_loops`; one that runs it as a user would, `cli_argv` (which also
puts `telephony serve` on the clock, on asyncio's loop rather than uvloop: tests/serve_process.py
starts it so when the test's own loop is scaled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import runpy
import selectors
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class _ScaledSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop computes its select timeout in loop seconds; wait that many real ones / scale."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self._scale = scale

    def select(self, timeout: float | None = None) -> list:
        return super().select(None if timeout is None else timeout / self._scale)


class _RunQueueWait:
    """Seconds the calling thread has spent ready to run but waiting for a CPU (Linux's
    per-thread schedstat, its second field: run_delay in ns); always 0 where there is none.

    Read from the thread that runs the loop: the kernel adds a wait when the thread next gets
    a CPU, so a read sees every wait before it."""

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self()
        except (OSError, ValueError, IndexError):
            self.close()

    def __call__(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 64, 0).split()[1]) / 1e9

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ScaledLoop(asyncio.SelectorEventLoop):
    """A loop whose clock runs `scale` times real time, minus the time its thread waited for a
    CPU: on a shared, oversubscribed host (test workers, the services and browsers they start)
    a thread can wait 100-400 ms for a core, which on an 8x clock is seconds of call time the
    code under test never had. Such a wait stops this clock as it stops the code; time the
    code spends computing, blocking or sleeping still counts, so a blocked loop still shows.
    The run-queue wait is read lazily from the thread that first asks the time (the loop's)."""

    def __init__(self, scale: float) -> None:
        super().__init__(_ScaledSelector(scale))
        self.scale = scale
        self._origin = time.monotonic()
        self._waited: _RunQueueWait | None = None
        self._waited_at_origin = 0.0
        self._last = self._origin

    def time(self) -> float:
        if self._waited is None:
            self._waited = _RunQueueWait()
            self._waited_at_origin = self._waited()
        ran = time.monotonic() - self._origin - (self._waited() - self._waited_at_origin)
        # A wait is added when the thread gets its CPU back; never let the clock step back.
        self._last = max(self._last, self._origin + ran * self.scale)
        return self._last

    def close(self) -> None:
        super().close()
        if self._waited is not None:
            self._waited.close()


def clock_scale(item: pytest.Item) -> float:
    marker = item.get_closest_marker("clock")
    return float(marker.args[0]) if marker is not None else 1.0


def loop_factory(scale: float) -> Callable[[], asyncio.AbstractEventLoop]:
    if scale == 1:
        return asyncio.new_event_loop
    return lambda: ScaledLoop(scale)


class _ScaledPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return ScaledLoop(self.scale)


@contextlib.contextmanager
def scaled_loops(scale: float) -> Iterator[None]:
    """Every loop `asyncio.run` makes in the block (the CLI's) runs on a `scale`x clock."""
    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_ScaledPolicy(scale))
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(before)


def cli_argv(scale: float, *args: str) -> list[str]:
    """`python -m telephony.cli ARGS` in a new process, its event loops on a `scale`x clock."""
    root = str(Path(__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {root!r}); "
        f"from tests.fast_clock import _run_cli; _run_cli({float(scale)!r})"
    )
    return [sys.executable, "-c", code, *args]


def _run_cli(scale: float) -> None:
    asyncio.set_event_loop_policy(_ScaledPolicy(scale))
    # `telephony serve` runs uvicorn on uvloop, whose clock cannot be scaled: asyncio's here.
    import uvicorn

    uvicorn.Config.get_loop_factory = lambda self: lambda: ScaledLoop(scale)  # type: ignore[method-assign]
    runpy.run_module("telephony.cli", run_name="__main__", alter_sys=True)


def scale_of_running_loop() -> float:
    """The clock scale of the running loop (1 for any loop but a ScaledLoop)."""
    return getattr(asyncio.get_running_loop(), "scale", 1.0)
