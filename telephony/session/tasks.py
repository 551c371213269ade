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
        self._timers: list[Timer] = []
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
        self.failed(task.get_name(), exc)

    def failed(self, name: str, exc: BaseException) -> None:
        """One of this call's tasks (or a timer's action) raised `exc`."""
        if self._cancelled:
            # The call is ending: a task that ran on (a cancellation swallowed inside a
            # library) and then hit a socket closed under it is not a failure of the call.
            self._log.debug("task %s ended with the call: %r", name, exc)
            return
        self._log.error("task %s failed", name, exc_info=exc)
        if self._on_error is not None:
            self._on_error(name, exc)

    def cancel_all(self) -> None:
        self._cancelled = True
        for timer in self._timers:
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def timer(self, name: str, action: Callable[[], Coroutine[Any, Any, None] | None]) -> Timer:
        """A restartable one-shot timer; an async `action` runs as one of these tasks."""
        timer = Timer(self, name, action)
        self._timers.append(timer)
        return timer


class Timer:
    """A one-shot timer: `start(after_s)` arms it (re-arming an armed one), `cancel()` disarms.

    A loop timer, not a task: arming, re-arming and disarming cost a timer handle, not a task,
    a coroutine and a cancellation each (they are restarted at every turn of every call, and
    what a pending wait holds is what each garbage collection scans). `action` may be sync or
    async (then it runs as a task of the TaskSet, so it ends with the call), may start the
    timer again, and its failure is the TaskSet's like any task's. `TaskSet.cancel_all`
    disarms it for good.
    """

    def __init__(
        self,
        tasks: TaskSet,
        name: str,
        action: Callable[[], Coroutine[Any, Any, None] | None],
    ) -> None:
        self._tasks = tasks
        self._name = name
        self._action = action
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def start(self, after_s: float) -> None:
        self.cancel()
        if self._tasks.cancelled:
            return  # the call is ending: nothing may fire after it
        self._handle = asyncio.get_running_loop().call_later(after_s, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None  # fired: the action may arm it again
        try:
            result = self._action()
        except Exception as exc:
            self._tasks.failed(self._name, exc)
            return
        if result is not None:
            self._tasks.spawn(result, self._name)
