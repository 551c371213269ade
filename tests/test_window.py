"""SlidingWindow, the one rate window behind every budget and flood limit, and its users."""

from __future__ import annotations

from routes.login_limiter import LoginLimiter, Refusal
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
    limiter = LoginLimiter(
        per_account=2, per_client=1000, per_minute=100_000, window_s=300.0, max_keys=100
    )
    assert limiter.attempt("10.0.0.1", "alice", now=1.0) is None
    assert limiter.attempt("10.0.0.1", "alice", now=2.0) is None
    assert limiter.attempt("10.0.0.1", "alice", now=3.0) is Refusal.ACCOUNT
    assert limiter.attempt("10.0.0.2", "alice", now=3.0) is None  # another address
    assert limiter.attempt("10.0.0.1", "alice", now=400.0) is None  # the window has passed
    # A spray of made-up names cannot grow it past max_keys; the newest keys are kept.
    for i in range(10_000):
        limiter.attempt(f"10.1.{i // 250}.{i % 250}", f"name{i}", now=5.0)
    assert limiter.sizes() == (100, 100)
    limiter.attempt("10.0.0.9", "name9999", now=6.0)
    limiter.attempt("10.0.0.9", "name9999", now=6.0)
    assert limiter.attempt("10.0.0.9", "name9999", now=7.0) is Refusal.ACCOUNT


def test_login_limiter_budgets_a_name_spray_per_client_and_everyone_globally() -> None:
    """Made-up names were never throttled: each was a fresh (client, name) key."""
    limiter = LoginLimiter(per_account=5, per_client=10, per_minute=25, window_s=300.0)
    assert all(limiter.attempt("10.0.0.1", f"n{i}", now=1.0) is None for i in range(10))
    assert limiter.attempt("10.0.0.1", "n-new", now=1.0) is Refusal.CLIENT
    assert limiter.attempt("10.0.0.2", "alice", now=1.0) is None  # others go on...
    for i in range(14):
        assert limiter.attempt(f"10.0.1.{i}", "alice", now=2.0) is None
    # ...until the instance's budget is spent (25 attempts a minute): then everyone waits
    assert limiter.attempt("10.0.2.1", "bob", now=3.0) is Refusal.GLOBAL
    assert limiter.attempt("10.0.2.1", "bob", now=62.0) is None  # a minute later
    assert limiter.attempt("10.0.0.1", "n-new", now=62.0) is Refusal.CLIENT  # still, 5 min


def test_login_limiter_counts_an_attempt_before_its_password_is_checked() -> None:
    """Parallel attempts: each is counted as it starts, so the sixth is refused even though
    none of the first five has failed yet; a success clears its own account key only."""
    limiter = LoginLimiter(per_account=5, per_client=100, per_minute=100)
    assert [limiter.attempt("c", "alice", now=1.0) for _ in range(6)] == [None] * 5 + [
        Refusal.ACCOUNT
    ]
    limiter.succeeded("c", "alice")
    assert limiter.attempt("c", "alice", now=1.0) is None
