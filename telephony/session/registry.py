"""Live calls on this instance, and the most recent finished ones (for health and tests)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from telephony.session.call import Call, CallSummary


@dataclass
class CallRegistry:
    recent: int = 200
    live: dict[str, Call] = field(default_factory=dict)
    finished: deque[CallSummary] = field(init=False)
    refused: deque[tuple[str | None, str]] = field(init=False)  # (call SID, reason)

    def __post_init__(self) -> None:
        self.finished = deque(maxlen=self.recent)
        self.refused = deque(maxlen=self.recent)

    def add(self, call: Call) -> None:
        self.live[call.call_sid] = call

    def done(self, call: Call) -> None:
        self.live.pop(call.call_sid, None)
        self.finished.append(call.summary)

    def find_finished(self, call_sid: str) -> CallSummary | None:
        return next((s for s in reversed(self.finished) if s.call_sid == call_sid), None)
