"""How every upstream link retries: one policy for Deepgram sockets, the LLM and Twilio REST.

- `Backoff`: the delays between attempts (first at once, then exponential with jitter, capped).
- `FailureBudget`: failures tolerated per window; past it a link stops trying (a socket that
  connects and fails again at once must not loop forever).
- `RetryPolicy`: which HTTP answers are worth repeating, how often, and how long a
  `Retry-After` may make us wait. What is safe to repeat differs per link (a Twilio transfer
  re-dials when repeated), so each link names its own statuses; the mechanism is this one.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from telephony.window import SlidingWindow


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: immediate first try, then exponential with ±20 % jitter, capped."""

    attempts: int = 6
    base_s: float = 0.1
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        """The wait before try number `attempt` (0 = the first try: no wait)."""
        if attempt <= 0:
            return 0.0
        delay = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        # Jitter: calls that failed together do not all come back in the same millisecond.
        return delay * random.uniform(0.8, 1.2)

    def delays(self) -> Iterator[float]:
        for attempt in range(self.attempts):
            yield self.delay(attempt)


class FailureBudget:
    """Failures tolerated per sliding window; past it, the link gives up."""

    def __init__(self, limit: int = 5, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._window = SlidingWindow(limit, window_s)

    def spend(self, now: float) -> bool:
        """Count one failure at `now`; False once more than `limit` fell in the window."""
        return self._window.add(now) <= self.limit


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When one HTTP request is repeated: `statuses` only, at most `attempts` tries in all.

    A `Retry-After` the server sends replaces our backoff delay; one longer than
    `max_wait_s` means "not soon": the request fails now rather than keep a caller waiting.
    """

    attempts: int = 2
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.2, cap_s=1.0))
    max_wait_s: float = 1.0

    def retryable(self, status: int) -> bool:
        return status in self.statuses

    def wait_before(self, attempt: int, retry_after_s: float | None = None) -> float | None:
        """Seconds to wait before try `attempt` (1 = the first repeat); None: do not retry."""
        if attempt >= self.attempts:
            return None
        wait = self.backoff.delay(attempt) if retry_after_s is None else retry_after_s
        return wait if wait <= self.max_wait_s else None


SERVER_ERRORS = frozenset({429, *range(500, 600)})  # for idempotent requests


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The server's requested wait, in seconds: `retry-after-ms` (OpenAI-compatible APIs), else
    `Retry-After` as seconds or an HTTP date. None when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
