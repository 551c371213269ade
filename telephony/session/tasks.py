"""The background tasks of one call's engine: named, logged when they fail, cancelled at end."""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Callable, Coroutine, Mapping
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
        self._at_end: list[Callable[[], None]] = []
        self._cancelled = False  # cancel_all() ran: the call is ending

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            # A cancelled task keeps its CancelledError, whose traceback holds the task's
            # frames and so their owner, which often holds the task (a reply its generation):
            # a cycle. Asking for the result hands the error over, and it goes with this frame.
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
            return
        if task.exception() is None:
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
        """The call is ending: every task cancelled, every timer disarmed for good and its
        action let go (an action is its owner's bound method: owner -> timer -> action ->
        owner), and the `at_end` releases run."""
        self._cancelled = True
        for timer in self._timers:
            timer.release()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        self._on_error = None  # a failure from here is only logged (see `failed`)
        at_end, self._at_end = self._at_end, []
        for release in at_end:
            release()

    def at_end(self, release: Callable[[], None]) -> None:
        """`release` runs in `cancel_all`: where a part of the call lets go of its owner's
        callbacks (engine -> part -> engine's method is a cycle, and a cycle keeps an ended
        call's objects until a full garbage collection, which stalls every live call)."""
        self._at_end.append(release)

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

    def release(self) -> None:
        """Disarmed, and its action dropped: it can never fire again (`TaskSet.cancel_all`)."""
        self.cancel()
        self._action = _ended

    def _fire(self) -> None:
        self._handle = None  # fired: the action may arm it again
        try:
            result = self._action()
        except Exception as exc:
            self._tasks.failed(self._name, exc)
            return
        if result is not None:
            self._tasks.spawn(result, self._name)


def _ended() -> None:
    """A released timer's action (it cannot fire: `start` returns once the set is cancelled)."""


async def run_together(named: Mapping[str, Coroutine[Any, Any, None]]) -> None:
    """Run these as tasks until every one ends; the first to fail cancels the rest and its
    error is raised (`asyncio.TaskGroup`'s contract), as is a cancellation of ours.

    Without what Python 3.11's TaskGroup leaves when it ends by an exception: the error it
    raises is kept in a local of its `__aexit__` frame, which that error's traceback holds,
    and the group itself (a local here) holds this task, whose CancelledError holds this
    frame. Cycles through the engine's `run` frame and so the whole call, which only a full
    garbage collection frees, stalling every live call for as long as it scans them all.
    """
    group: asyncio.TaskGroup | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for name, coro in named.items():
                group.create_task(coro, name=name)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # finished frames only: ours is running
        group = None
        raise
