"""`SlidingWindow`: how many things happened in the last N seconds, bounded in memory.

Every rate rule here is one: a socket's failure budget (telephony/retry.py), Aura's flush
budget (telephony/deepgram/speak.py), the media stream's bad-frame and control-message floods
(telephony/session/policing.py) and the staff login limiter (routes/auth.py). It remembers at
most `limit + 1` times: beyond that no count could change an answer, so a flood costs O(1)
memory however long it lasts.
"""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """Times of recent events; an event `window_s` or more seconds old no longer counts."""

    __slots__ = ("_times", "limit", "window_s")

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=limit + 1)

    def count(self, now: float) -> int:
        """Events in the window ending at `now` (capped at limit + 1)."""
        times = self._times
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return len(times)

    def add(self, now: float) -> int:
        """One event at `now`; the count including it."""
        self._times.append(now)
        return self.count(now)

    def over(self, now: float) -> bool:
        """More than `limit` events in the window."""
        return self.count(now) > self.limit

    def remaining(self, now: float) -> int:
        return max(0, self.limit - self.count(now))
