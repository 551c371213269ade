"""The call clock across Deepgram reconnects: an offset ledger.

Deepgram times (Flux `audio_window_*`, word times; Nova `start`) count from the first audio
byte *of that connection* and restart at 0 on every reconnect. Each connection is anchored to
the call's own audio clock — Twilio's `media.timestamp` of the first frame sent on it,
replayed audio included — never to wall-clock time.
"""

from __future__ import annotations

from bisect import bisect_left
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


# Breakpoints one connection's map keeps. A real stream makes a handful (a lost stretch beyond
# the gap fill, a rare overlapping frame); a sender whose timestamps step back or jump on every
# frame would make one per frame for as long as the call lasts.
MAX_BREAKPOINTS = 10_000


@dataclass
class AudioMap:
    """One connection's audio time -> call time, when its audio is not contiguous on the call
    clock.

    Deepgram counts time in audio bytes received; the call clock is Twilio's media.timestamp.
    They advance together while frames follow each other; where a frame's timestamp jumps (a
    gap nobody filled: a paused stream beyond the call's gap fill, a track whose audio starts
    late) a breakpoint is noted, so the times after it map to the right call time. The first
    frame of a connection is its first breakpoint (the anchor). Costs one comparison per frame.
    At most MAX_BREAKPOINTS are kept; past that each new one replaces the last (a hostile
    stream's older word times may then be off; the map's memory is not).
    """

    conn_ms: list[float] = field(default_factory=list)  # connection audio ms, ascending
    call_ms: list[int] = field(default_factory=list)  # call time at that point
    moved: int = 0  # breakpoints past MAX_BREAKPOINTS, folded into the last one

    def note(self, conn_ms: float, call_ms: int) -> None:
        """From `conn_ms` of connection audio on, the audio is the call's `call_ms` onwards."""
        if self.conn_ms and self.conn_ms[-1] == conn_ms:  # nothing sent since the last jump
            self.call_ms[-1] = call_ms
            return
        if len(self.conn_ms) >= MAX_BREAKPOINTS:  # a hostile stream: the newest audio maps right
            self.conn_ms[-1], self.call_ms[-1] = conn_ms, call_ms
            self.moved += 1
            return
        self.conn_ms.append(conn_ms)
        self.call_ms.append(call_ms)

    def to_call_ms(self, seconds: float) -> int:
        """A connection-relative time in seconds (Deepgram's unit), as call time in ms."""
        if not self.conn_ms:
            raise ValueError("no audio has been sent on this connection yet")
        ms = seconds * 1000
        # A time exactly on a breakpoint is the end of the audio before it (a word's end).
        i = max(0, bisect_left(self.conn_ms, ms - 1e-6) - 1)
        return self.call_ms[i] + round(ms - self.conn_ms[i])
