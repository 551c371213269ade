"""The background tasks of one call's engine: named, logged when they fail, cancelled at end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
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

    def timer(self, name: str, action: Callable[[], Awaitable[None] | None]) -> Timer:
        """A restartable one-shot timer whose firing runs `action` as one of these tasks."""
        return Timer(self, name, action)


class Timer:
    """A one-shot timer: `start(after_s)` arms it (re-arming an armed one), `cancel()` disarms.

    The wait is one task at a time, spawned on the engine's TaskSet (so it ends with the call);
    `action` may be sync or async and may start the timer again.
    """

    def __init__(
        self, tasks: TaskSet, name: str, action: Callable[[], Awaitable[None] | None]
    ) -> None:
        self._tasks = tasks
        self._name = name
        self._action = action
        self._task: asyncio.Task[None] | None = None

    @property
    def armed(self) -> bool:
        return self._task is not None

    def start(self, after_s: float) -> None:
        self.cancel()
        self._task = self._tasks.spawn(self._fire(after_s), self._name)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _fire(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        self._task = None  # fired: the action may arm it again
        result = self._action()
        if result is not None:
            await result
