"""Live calls on this instance, and the most recent finished ones (for health and tests)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from telephony.session.call import Call
from telephony.session.summary import CallSummary


@dataclass
class CallRegistry:
    recent: int = 200
    live: dict[str, Call] = field(default_factory=dict)
    finished: deque[CallSummary] = field(init=False)
    refused: deque[tuple[str | None, str]] = field(init=False)  # (call SID, reason)
    # Calls answered by the webhook whose media socket has not arrived yet: call SID ->
    # monotonic expiry (the stream token's TTL). They count against the instance's capacity.
    reserved: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.finished = deque(maxlen=self.recent)
        self.refused = deque(maxlen=self.recent)

    def add(self, call: Call) -> None:
        self.reserved.pop(call.call_sid, None)
        self.live[call.call_sid] = call

    def reserve(self, call_sid: str, ttl_s: float, now: float | None = None) -> None:
        self.reserved[call_sid] = (time.monotonic() if now is None else now) + ttl_s

    def load(self, now: float | None = None) -> int:
        """Live calls plus answered calls whose socket is still on its way."""
        now = time.monotonic() if now is None else now
        for sid in [s for s, expiry in self.reserved.items() if expiry <= now]:
            del self.reserved[sid]
        return len(self.live) + len(self.reserved)

    def done(self, call: Call) -> None:
        # A transfer's transcription stream may already be live under the same call SID.
        if self.live.get(call.call_sid) is call:
            del self.live[call.call_sid]
        self.finished.append(call.summary)

    def find_finished(self, call_sid: str) -> CallSummary | None:
        return next((s for s in reversed(self.finished) if s.call_sid == call_sid), None)
