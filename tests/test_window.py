"""SlidingWindow, the one rate window behind every budget and flood limit, and its users."""

from __future__ import annotations

from routes.auth import LoginLimiter
from telephony.retry import FailureBudget
from telephony.window import SlidingWindow


def test_counts_events_younger_than_the_window() -> None:
    window = SlidingWindow(limit=3, window_s=10.0)
    assert [window.add(t) for t in (0.0, 1.0, 2.0)] == [1, 2, 3]
    assert not window.over(2.0) and window.remaining(2.0) == 0
    assert window.add(3.0) == 4 and window.over(3.0)
    assert window.count(10.0) == 3  # the event at 0 is 10 s old: out
    assert window.count(13.0) == 0 and window.remaining(13.0) == 3


def test_memory_is_bounded_whatever_the_flood() -> None:
    window = SlidingWindow(limit=5, window_s=60.0)
    for i in range(100_000):
        window.add(i * 1e-4)
    assert window.count(10.0) == 6  # limit + 1: enough to answer "over", no more kept
    assert window.over(10.0)


def test_failure_budget_spends_from_a_window() -> None:
    budget = FailureBudget(limit=2, window_s=60.0)
    assert budget.spend(0.0) and budget.spend(1.0)
    assert not budget.spend(2.0)  # the third failure within a minute
    assert budget.spend(200.0)  # a minute later the budget is back


def test_login_limiter_locks_one_key_and_stays_bounded() -> None:
    limiter = LoginLimiter(max_failures=2, window_s=300.0, max_keys=100)
    limiter.failed("10.0.0.1", "alice", now=1.0)
    limiter.failed("10.0.0.1", "alice", now=2.0)
    assert not limiter.allowed("10.0.0.1", "alice", now=3.0)
    assert limiter.allowed("10.0.0.2", "alice", now=3.0)  # another address
    assert limiter.allowed("10.0.0.1", "alice", now=400.0)  # the window has passed
    # A spray of made-up names cannot grow it past max_keys; the newest keys are kept.
    for i in range(10_000):
        limiter.failed("10.0.0.9", f"name{i}", now=5.0)
    assert len(limiter._failures) == 100
    limiter.failed("10.0.0.9", "name9999", now=6.0)
    assert not limiter.allowed("10.0.0.9", "name9999", now=7.0)
