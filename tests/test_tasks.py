"""A call's TaskSet and its restartable timers (telephony/session/tasks.py): a timer is a loop
timer, not a task, yet behaves as one of the call's tasks — it fires once after its delay,
re-arming replaces it, an async action runs as a task of the set, failures reach the set's
error path, and the call's end disarms it for good."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest

from telephony.logs import call_logger
from telephony.session.tasks import TaskSet, run_together

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)


def task_set() -> tuple[TaskSet, list[tuple[str, BaseException]]]:
    errors: list[tuple[str, BaseException]] = []
    return TaskSet(call_logger("CAtest"), lambda name, exc: errors.append((name, exc))), errors


async def test_a_timer_fires_once_after_its_delay_and_a_restart_replaces_it() -> None:
    tasks, errors = task_set()
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = tasks.timer("t", lambda: fired.append(loop.time()))
    assert not timer.armed
    t0 = loop.time()
    timer.start(0.5)
    timer.start(1.0)  # re-armed: only this one fires
    assert timer.armed
    await asyncio.sleep(1.5)
    assert len(fired) == 1 and fired[0] - t0 >= 1.0
    assert not timer.armed and not errors


async def test_a_cancelled_timer_never_fires() -> None:
    tasks, _ = task_set()
    fired: list[int] = []
    timer = tasks.timer("t", lambda: fired.append(1))
    timer.start(0.2)
    timer.cancel()
    assert not timer.armed
    await asyncio.sleep(0.5)
    assert fired == []


async def test_an_action_may_arm_its_timer_again() -> None:
    tasks, _ = task_set()
    fired: list[int] = []

    def again() -> None:
        fired.append(1)
        if len(fired) < 3:
            timer.start(0.1)

    timer = tasks.timer("t", again)
    timer.start(0.1)
    await asyncio.sleep(1.0)
    assert len(fired) == 3 and not timer.armed


async def test_an_async_action_is_a_task_of_the_set_and_ends_with_the_call() -> None:
    tasks, errors = task_set()
    started, finished = asyncio.Event(), []

    async def action() -> None:
        started.set()
        await asyncio.sleep(10)
        finished.append(1)

    timer = tasks.timer("slow", action)
    other = tasks.timer("other", lambda: finished.append(2))
    timer.start(0.1)
    other.start(1.0)
    await asyncio.wait_for(started.wait(), 5)
    tasks.cancel_all()  # the call ends: the running action is cancelled, the other disarmed
    assert not other.armed
    other.start(0.1)  # and nothing can arm a timer after the end
    assert not other.armed
    await asyncio.sleep(1.5)
    assert finished == [] and errors == []


async def test_a_failing_action_reaches_the_sets_error_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks, errors = task_set()

    def broken() -> None:
        raise ValueError("sync")

    async def broken_later() -> None:
        raise KeyError("async")

    tasks.timer("sync-action", broken).start(0.05)
    tasks.timer("async-action", broken_later).start(0.1)
    with caplog.at_level(logging.ERROR):
        await asyncio.sleep(0.5)
    assert [(name, type(exc)) for name, exc in errors] == [
        ("sync-action", ValueError),
        ("async-action", KeyError),
    ]
    assert "task sync-action failed" in caplog.text and "task async-action failed" in caplog.text


async def test_the_calls_end_runs_each_release_once_and_lets_go_of_every_action() -> None:
    tasks, _ = task_set()
    released: list[str] = []

    class Part:  # holds a timer whose action is its own method, as a call's parts do
        def __init__(self) -> None:
            self.timer = tasks.timer("part", self.act)
            tasks.at_end(lambda: released.append("part"))

        def act(self) -> None:
            pass

    part = Part()
    part.timer.start(0.01)
    gone = weakref.ref(part)
    tasks.cancel_all()
    tasks.cancel_all()  # a second end runs nothing again
    assert released == ["part"]
    del part
    assert gone() is None  # part -> timer -> its method -> part: broken at the end


async def test_a_cancelled_task_keeps_no_error_holding_its_owner() -> None:
    tasks, errors = task_set()

    class Reply:  # holds its own task, which is cancelled mid-await (a barge-in)
        def __init__(self) -> None:
            self.task = tasks.spawn(self.generate(), "reply")

        async def generate(self) -> None:
            await asyncio.sleep(10)

    reply = Reply()
    await asyncio.sleep(0)
    reply.task.cancel()
    await asyncio.sleep(0.01)
    gone = weakref.ref(reply)
    gc.disable()
    try:
        del reply
        assert gone() is None  # the CancelledError's traceback no longer holds it
    finally:
        gc.enable()
    assert errors == []


async def test_run_together_the_first_failure_cancels_the_rest_and_is_raised() -> None:
    cancelled = asyncio.Event()

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ExceptionGroup) as raised:
        await run_together({"fails": fails(), "waits": waits()})
    assert raised.group_contains(ValueError, match="boom") and cancelled.is_set()

    done: list[str] = []

    async def ends(name: str) -> None:
        await asyncio.sleep(0.01)
        done.append(name)

    await run_together({"a": ends("a"), "b": ends("b")})  # every one to its end
    assert sorted(done) == ["a", "b"]

    task = asyncio.create_task(run_together({"w": waits()}))
    await asyncio.sleep(0.01)
    task.cancel()  # the call ending: the children are cancelled with it
    with pytest.raises(asyncio.CancelledError):
        await task
