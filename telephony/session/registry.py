"""Live media streams on this instance, and the most recent finished ones (health, tests)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from telephony.session.call import Call
from telephony.session.summary import CallSummary


def _now() -> float:
    """The loop's clock, like every other timer of a call (a reservation lapses on it); off a
    loop, the monotonic clock, which asyncio's and uvloop's loops both read."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class StreamTaken(Exception):
    """The call already has a live stream for this part on this instance."""


def stream_key(call_sid: str, part: str = "") -> str:
    """A live stream's key: the call SID for the stream the webhook answered, `SID|part` for a
    continuation (a transfer's transcription), so `live.get(sid)` is still the call's first."""
    return f"{call_sid}|{part}" if part else call_sid


@dataclass
class CallRegistry:
    recent: int = 200
    # Every live stream, by `stream_key`: one per call and part. A second stream for the same
    # key is refused (StreamTaken), never put in the first one's place, so capacity, health
    # (`live_calls`) and the drain see every stream there is.
    live: dict[str, Call] = field(default_factory=dict)
    finished: deque[CallSummary] = field(init=False)
    refused: deque[tuple[str | None, str]] = field(init=False)  # (call SID, reason)
    # Calls answered by the webhook whose media socket has not arrived yet: call SID ->
    # monotonic expiry (the stream token's TTL). They count against the instance's capacity.
    reserved: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.finished = deque(maxlen=self.recent)
        self.refused = deque(maxlen=self.recent)

    def add(self, call: Call, part: str = "") -> None:
        key = stream_key(call.call_sid, part)
        if key in self.live:
            raise StreamTaken(f"call {call.call_sid} already has a live stream here")
        self.reserved.pop(call.call_sid, None)
        self.live[key] = call

    def carries(self, call_sid: str, part: str = "") -> bool:
        return stream_key(call_sid, part) in self.live

    def current(self, call_sid: str) -> Call | None:
        """The call's newest live stream (a transfer's transcription once it has started)."""
        cont = [c for k, c in self.live.items() if k.startswith(call_sid + "|")]
        return cont[-1] if cont else self.live.get(call_sid)

    def reserve(self, call_sid: str, ttl_s: float, now: float | None = None) -> None:
        self.reserved[call_sid] = (_now() if now is None else now) + ttl_s

    def unreserve(self, call_sid: str) -> None:
        self.reserved.pop(call_sid, None)

    def load(self, now: float | None = None) -> int:
        """Live streams plus answered calls whose socket is still on its way."""
        now = _now() if now is None else now
        for sid in [s for s, expiry in self.reserved.items() if expiry <= now]:
            del self.reserved[sid]
        return len(self.live) + len(self.reserved)

    def done(self, call: Call) -> None:
        # By identity: a transfer's transcription stream may be live under the same call SID.
        for key in [k for k, c in self.live.items() if c is call]:
            del self.live[key]
        self.finished.append(call.summary)

    def find_finished(self, call_sid: str) -> CallSummary | None:
        return next((s for s in reversed(self.finished) if s.call_sid == call_sid), None)
