"""The background tasks of one call's engine: named, logged when they fail, cancelled at end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from telephony.logs import CallLogger


class TaskSet:
    def __init__(
        self, log: CallLogger, on_error: Callable[[str, BaseException], None] | None = None
    ):
        self._log = log
        self._on_error = on_error
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cancelled = False  # cancel_all() ran: the call is ending

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        if self._cancelled:
            # The call is ending: a task that ran on (a cancellation swallowed inside a
            # library) and then hit a socket closed under it is not a failure of the call.
            self._log.debug("task %s ended with the call: %r", task.get_name(), exc)
            return
        self._log.error("task %s failed", task.get_name(), exc_info=exc)
        if self._on_error is not None:
            self._on_error(task.get_name(), exc)

    def cancel_all(self) -> None:
        self._cancelled = True
        for task in list(self._tasks):
            task.cancel()
