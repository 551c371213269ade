"""Waiting a bounded time for a database operation without ever cancelling it.

A transaction cancelled mid-flight (`asyncio.timeout` around it, or its task cancelled) can
leave SQLite locked for good: with aiosqlite the statement runs on in its thread, SQLAlchemy
gives up on the interrupted connection without closing it, and that orphaned connection keeps
its open transaction and the database's write lock. Every later write then fails "database is
locked" (reproduced: 40 concurrent claims cancelled at random moments left the file locked in
9 of 30 rounds; the store lost every row after it). So a caller that cannot wait long, such
as a webhook or a call's claim, stops *waiting* at its deadline, and the operation finishes
(commits or rolls back) in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Operations still running after their caller stopped waiting; held so they are not collected.
_unwaited: set[asyncio.Task[Any]] = set()


def _finished(task: asyncio.Task[Any]) -> None:
    _unwaited.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("an operation nobody waited for failed: %r", task.exception())


async def wait_at_most(operation: Coroutine[Any, Any, T], timeout_s: float | None) -> T:
    """`operation`'s result, or TimeoutError after `timeout_s` (None: no deadline), or
    CancelledError if the caller is cancelled, while the operation runs on to its end."""
    task = asyncio.ensure_future(operation)
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except BaseException:
        if not task.done():
            _unwaited.add(task)
            task.add_done_callback(_finished)
        raise


def unwaited() -> int:
    """How many operations are still running after their caller stopped waiting."""
    return len(_unwaited)
