"""The call clock across Deepgram reconnects: an offset ledger.

Deepgram times (Flux `audio_window_*`, word times; Nova `start`) count from the first audio
byte *of that connection* and restart at 0 on every reconnect. Each connection is anchored to
the call's own audio clock — Twilio's `media.timestamp` of the first frame sent on it,
replayed audio included — never to wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Anchor:
    connection: int  # 0 for the first connection of this endpoint in the call
    offset_ms: int  # call time of the connection's first audio byte
    reason: str  # "start", or why the previous connection was replaced


@dataclass
class CallClock:
    anchors: list[Anchor] = field(default_factory=list)

    def anchor(self, offset_ms: int, reason: str) -> Anchor:
        """A new connection whose first audio byte was the call's `offset_ms`."""
        entry = Anchor(len(self.anchors), offset_ms, reason)
        self.anchors.append(entry)
        return entry

    def to_call_ms(self, seconds: float, connection: int | None = None) -> int:
        """A connection-relative time in seconds, as call time in ms (latest connection)."""
        anchors = self.anchors
        if not anchors:
            raise ValueError("no connection is anchored yet")
        entry = anchors[-1] if connection is None else anchors[connection]
        return entry.offset_ms + round(seconds * 1000)
