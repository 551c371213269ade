"""Twilio's play-out buffer, the one model every fake caller uses (docs/protocol.md §1.3).

Twilio queues the audio we send and plays it in order in real time; a `mark` is echoed once
everything queued before it has played (at once when nothing is queued); `clear` drops the
unplayed audio and echoes every pending mark. The buffer is advanced lazily from a clock
(seconds), on each message and each 20 ms tick of its caller: no task of its own.

`keep_audio=False` keeps positions only (the load generator's hundreds of calls, which never
listen to the bytes): the same timing, marks and segments, without copying audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from telephony.audio import TWILIO_RATE

BYTES_PER_S = TWILIO_RATE  # μ-law: one byte per sample
MAX_BUFFER_BYTES = 10 * 60 * BYTES_PER_S  # Twilio warns (31931) past ~10 min buffered


@dataclass(slots=True)
class MarkEcho:
    name: str
    received_at_ms: float
    echoed_at_ms: float
    cleared: bool  # echoed because of `clear`: the audio before it was NOT (all) heard


@dataclass(slots=True)
class HeardSegment:
    """One uninterrupted run of played audio: byte i played at start_ms + i / 8."""

    start_ms: float
    length: int = 0
    audio: bytearray = field(default_factory=bytearray)  # empty when keep_audio=False

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.length * 1000 / BYTES_PER_S


class PlayoutBuffer:
    """One stream's play-out buffer. Positions are absolute byte offsets into everything the
    service sent: `pos` is where the playhead is, `queued` where buffered audio ends. While
    audio is buffered the playhead moves at 8 bytes per ms from (run_t, run_pos); a run starts
    when audio arrives while idle. Times in echoes and segments are ms since `origin`."""

    def __init__(
        self, origin: float, *, keep_audio: bool = True, max_bytes: int = MAX_BUFFER_BYTES
    ) -> None:
        self.origin = origin
        self.keep_audio = keep_audio
        self.max_bytes = max_bytes
        self.pending = bytearray()  # the unplayed audio itself; stays empty without keep_audio
        self.pos = 0
        self.queued = 0
        self.run_t = origin
        self.run_pos = 0
        self.marks: deque[tuple[str, int, float]] = deque()  # name, position, received ms
        self.segments: list[HeardSegment] = []
        self.cleared_bytes = 0
        self.warnings: list[str] = []
        self._overflowed = False

    @property
    def buffered(self) -> int:
        """Bytes queued and not played yet."""
        return self.queued - self.pos

    def ms(self, now: float) -> float:
        return (now - self.origin) * 1000

    def advance(self, now: float) -> list[MarkEcho]:
        """Play up to `now`; return the marks whose audio has now played."""
        if self.queued > self.pos:
            # The epsilon absorbs float error so a mark is never a byte late on exact clocks.
            played = int((now - self.run_t) * BYTES_PER_S + 1e-6)
            target = min(self.queued, self.run_pos + played)
            n = target - self.pos
            if n > 0:
                segment = self.segments[-1]
                if self.keep_audio:
                    segment.audio += memoryview(self.pending)[:n]
                    del self.pending[:n]
                segment.length += n
                self.pos = target
        if not self.marks or self.marks[0][1] > self.pos:
            return []  # the common case, every tick of every call: nothing to build
        echoes = []
        while self.marks and self.marks[0][1] <= self.pos:
            name, _, received = self.marks.popleft()
            echoes.append(MarkEcho(name, received, self.ms(now), cleared=False))
        return echoes

    def media(self, payload: bytes, now: float) -> list[MarkEcho]:
        """Queue `payload`; a new entry in `segments` means playback started from idle."""
        echoes = self.advance(now)
        if not payload:
            return echoes
        if self.queued == self.pos:  # idle: playback starts now
            self.run_t, self.run_pos = now, self.pos
            self.segments.append(HeardSegment(self.ms(now)))
        size = len(payload)
        room = self.max_bytes - self.buffered
        if size > room:
            size = max(room, 0)
            payload = payload[:size]
            if not self._overflowed:
                self._overflowed = True
                self.warnings.append("31931: more than 10 minutes of audio buffered; discarded")
        if self.keep_audio:
            self.pending += payload
        self.queued += size
        return echoes

    def mark(self, name: str, now: float) -> list[MarkEcho]:
        echoes = self.advance(now)
        if self.queued > self.pos:
            self.marks.append((name, self.queued, self.ms(now)))
        else:  # nothing buffered: echoed at once
            echoes.append(MarkEcho(name, self.ms(now), self.ms(now), cleared=False))
        return echoes

    def clear(self, now: float) -> list[MarkEcho]:
        """Drop unplayed audio and return every pending mark at once."""
        echoes = self.advance(now)
        self.cleared_bytes += self.buffered
        self.pending.clear()
        self.queued = self.pos
        at = self.ms(now)
        echoes += [MarkEcho(name, received, at, cleared=True) for name, _, received in self.marks]
        self.marks.clear()
        return echoes

    @property
    def heard(self) -> bytes:
        return b"".join(segment.audio for segment in self.segments)
