"""The `telephony serve` process's garbage collection policy: when the collector may stop the
event loop, and so every live call's audio.

A collection scans objects while nothing else runs (gc.callbacks time each one: the
`telephony_gc_pause_seconds` metric, and `telephony bench`'s "server GC pauses").

- **Startup objects** (modules, classes, the app, its pools: ~130k) are frozen once the app
  has started (`gc.freeze`), so no collection scans them again (50-90 ms a full one, measured).
- **Young collections** run every `YOUNG` net allocations. Each scans what was made since the
  last and is still alive: what every call's pending awaits hold and what calls keep (turns,
  history, words). At Python's 700 there were 23 young and 8 middle collections in 20 s at 200
  calls (up to 10 and 20 ms: the service's EndOfTurn -> first audio p99 16-17 ms, 8.9 with
  collection off; jitter p99 4.5 ms, 2.1 off). At 7000, one in 20 s, longer (12-24 ms; 36-40
  at 300-400 calls, inside the 80-120 ms of audio Twilio holds ahead). Collecting more often
  does not help: each collection scans and promotes the objects in flight (a 50 ms clock made
  every pause longer). README, Performance, has the runs.
- **Full collections** scan every live call's objects (~110 ms at 300 calls). Their work is to
  free objects in reference cycles that outlived a young collection, and an ended call leaves
  none: its cycles are broken where it ends, so reference counting frees it at once
  (tests/test_call_memory.py; the bench's 21 calls left 8 455 such objects before, 40 after).
  So Python's automatic full collections, which ran every minute or so under call churn and
  found nothing, are off (`threshold2` out of reach), and one runs every `FULL_EVERY_S` as a
  safety net: a ~100 ms stall every ten minutes instead of every minute. What it finds is
  logged, and a lot of it (`LEAK_WARNING_OBJECTS`) is a warning: some path leaves cycles.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

YOUNG, MIDDLE = 7000, 2  # gc.set_threshold's first two
NEVER = 2**31 - 1  # middle collections before a full one: out of reach
FULL_EVERY_S = 600.0
LEAK_WARNING_OBJECTS = 20_000  # found by one scheduled full collection: ~50 calls' worth


def tune() -> None:
    """Once the app has started: collect, freeze what is alive, set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, NEVER)


async def full_collections(every_s: float = FULL_EVERY_S) -> None:
    """A full collection every `every_s` (a task for the app's life)."""
    while True:
        await asyncio.sleep(every_s)
        collect_all()


def collect_all() -> int:
    """One full collection, logged with what it found and how long the loop stood still."""
    started = time.perf_counter()
    found = gc.collect()
    pause_ms = (time.perf_counter() - started) * 1000
    level = logging.WARNING if found >= LEAK_WARNING_OBJECTS else logging.INFO
    log.log(
        level,
        "full garbage collection: %d unreachable objects found in %.0f ms%s",
        found,
        pause_ms,
        " (something leaves reference cycles)" if level == logging.WARNING else "",
    )
    return found
