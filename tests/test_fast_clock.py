"""The tests' scaled clock (tests/fast_clock.py): it runs `scale` times real time, and time the
loop's thread spent waiting for a CPU does not count."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests import fast_clock
from tests.fast_clock import ScaledLoop, _RunQueueWait


class _Waits:
    """A stand-in for the kernel's run-queue figure: seconds waited so far, set by the test."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    def close(self) -> None:
        pass


def _loop_with(waits: _Waits, scale: float) -> ScaledLoop:
    loop = ScaledLoop(scale)
    loop._waited = waits  # type: ignore[assignment]
    loop._waited_at_origin = waits()
    return loop


def test_the_clock_runs_scale_times_real_time() -> None:
    loop = _loop_with(_Waits(), 8)
    try:
        start, real = loop.time(), time.monotonic()
        time.sleep(0.05)
        elapsed_real = time.monotonic() - real
        assert loop.time() - start == pytest.approx(8 * elapsed_real, abs=8 * 0.005)
    finally:
        loop.close()


def test_a_wait_for_a_cpu_stops_the_clock_and_it_never_steps_back() -> None:
    waits = _Waits()
    loop = _loop_with(waits, 4)
    try:
        before = loop.time()
        time.sleep(0.05)
        waits.seconds = 0.04  # 40 of those 50 ms were spent waiting for a core
        ran = loop.time() - before
        assert 4 * 0.01 <= ran < 4 * 0.03  # ~10 ms of real running time, 4x
        waits.seconds = 10.0  # more than has passed: the clock holds, never goes back
        held = loop.time()
        assert loop.time() == held >= before + ran
    finally:
        loop.close()


def test_timers_fire_on_the_scaled_clock() -> None:
    loop = ScaledLoop(8)
    try:
        real = time.monotonic()
        loop.run_until_complete(asyncio.sleep(0.8))  # 0.8 s of call time: ~0.1 s real
        assert time.monotonic() - real < 0.5
    finally:
        loop.close()


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux schedstat")
def test_the_run_queue_wait_is_read_from_the_kernel_and_only_grows() -> None:
    waits = _RunQueueWait()
    try:
        first = waits()
        sum(range(200_000))  # run a little; the figure may or may not grow, never shrink
        assert first >= 0.0 and waits() >= first
    finally:
        waits.close()


def test_without_schedstat_the_clock_is_plain_scaled_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise FileNotFoundError("/proc/thread-self/schedstat")

    monkeypatch.setattr(fast_clock.os, "open", refuse)
    waits = _RunQueueWait()
    assert waits() == 0.0
    waits.close()
