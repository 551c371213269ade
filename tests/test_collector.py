"""The service's garbage collection policy (telephony/collector.py): full collections only on
its schedule, and what one finds is logged — a warning when it is a lot (a leak of cycles)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from telephony import collector


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _cycles(n: int) -> None:
    """`n` objects in reference cycles, then dropped: only a collection can free them."""
    for _ in range(n // 2):
        a: list[Any] = []
        b: list[Any] = [a]
        a.append(b)


def test_tune_leaves_full_collections_to_the_schedule(restore_gc: None) -> None:
    collector.tune()
    young, middle, full = gc.get_threshold()
    assert (young, middle) == (collector.YOUNG, collector.MIDDLE)
    # Python would start a full one after `full` middle collections: never, in effect (at one
    # middle collection per 14 000 net allocations, 2**31 of them).
    assert full >= 2**30


def test_a_full_collection_reports_what_it_found(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="telephony.collector")
    gc.collect()
    gc.disable()  # the cycles are left for collect_all to find
    try:
        _cycles(100)
        assert collector.collect_all() >= 100
        assert caplog.records[-1].levelno == logging.INFO
        _cycles(collector.LEAK_WARNING_OBJECTS)
        assert collector.collect_all() >= collector.LEAK_WARNING_OBJECTS
    finally:
        gc.enable()
    last = caplog.records[-1]
    assert last.levelno == logging.WARNING and "leaves reference cycles" in last.getMessage()


async def test_full_collections_run_on_their_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(collector, "collect_all", lambda: runs.append(loop.time()) or 0)
    began = loop.time()
    task = asyncio.create_task(collector.full_collections(every_s=0.05))
    for _ in range(100):  # three runs (a loaded host may be slow to give them)
        await asyncio.sleep(0.05)
        if len(runs) >= 3:
            break
    task.cancel()
    assert len(runs) >= 3
    # One a period, the first after a whole one: never back to back.
    gaps = [b - a for a, b in zip([began, *runs], runs, strict=False)]
    assert min(gaps) >= 0.05 - 0.005, gaps
