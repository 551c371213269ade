"""Outbound audio to Twilio: exact 20 ms frames, paced, with marks, clear and a heard ledger.

Twilio buffers whatever we send and plays it at real time, so the only way to keep `clear`
cheap and our "bot is speaking" state honest is to pace: frame n of a run of speech is sent
no earlier than `lead_ms` before it is due to play (deadline = run start + n × 20 ms, on the
monotonic clock, so pacing never drifts).

A mark is sent right after the last frame of the audio it covers (never before: Twilio echoes a
mark at once when nothing is buffered, which would fake "played"). Its echo means that audio was
heard; after a `clear`, every mark not yet echoed is unheard — including the echoes Twilio
returns for them at once.

One pacing task per call, idle on an Event when there is nothing to send: no per-frame tasks
or timers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from telephony.audio import FRAME_BYTES, FRAME_MS, MULAW_SILENCE, Framer
from telephony.twilio import messages as tm

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000


class SegmentState(Enum):
    QUEUED = "queued"  # audio not all sent yet
    SENT = "sent"  # mark sent, echo awaited
    PLAYED = "played"  # echo received: the caller heard it
    CLEARED = "cleared"  # dropped by a clear: the caller did not hear (all of) it


@dataclass(slots=True)
class Segment:
    """A span of bot speech closed by one mark: the unit of the heard-text ledger."""

    name: str
    text: str
    audio_ms: int = 0
    state: SegmentState = SegmentState.QUEUED


# Queued work: a frame of audio (bytes, queued as the framer made it: no wrapper per frame) or
# the Segment whose mark closes it.
_Item = bytes | Segment


@dataclass
class Ledger:
    """Segments in order; heard text is the text of the echoed ones."""

    segments: list[Segment] = field(default_factory=list)

    def heard_text(self) -> str:
        return " ".join(s.text for s in self.segments if s.state is SegmentState.PLAYED and s.text)

    def generated_text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)


Send = Callable[[str], Awaitable[None]]
SendMany = Callable[[list[str]], Awaitable[None]]


class Playout:
    """Paced outbound audio for one call's Twilio stream."""

    def __init__(
        self,
        send: Send,
        stream_sid: str,
        *,
        send_many: SendMany | None = None,
        lead_ms: int = 120,
        batch_frames: int = 3,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._send = send
        # A wake-up's frames (and mark) in one call: with a socket that can, one write, one
        # TCP segment, instead of one per 20 ms frame.
        self._send_many = send_many or self._send_each
        self._sid = stream_sid
        self._lead_s = lead_ms / 1000
        # Wake once per `batch_frames` frames, not per frame: Twilio then holds between
        # lead - (batch-1)*20 ms and lead ms of audio, and a call costs a third of the wake-ups.
        self._batch_s = max(0, batch_frames - 1) * FRAME_S
        self._clock = clock or asyncio.get_running_loop().time
        self._queue: deque[_Item] = deque()
        self._framer = Framer(FRAME_BYTES, MULAW_SILENCE)  # holds audio shorter than a frame
        self._open: Segment | None = None  # segment collecting audio, not yet marked
        self._in_flight: dict[str, Segment] = {}  # marks sent, echo awaited
        self._wake = asyncio.Event()
        self._run_start = 0.0  # monotonic time frame 0 of the current run plays
        self._run_frames = 0  # frames sent in the current run
        self.frames_sent = 0
        self.on_segment_done: Callable[[Segment], None] | None = None
        # Recording taps (None unless the call is recorded): every media frame with the
        # monotonic time it plays, told before it is sent; and the time a `clear` went out.
        self.on_frame: Callable[[bytes, float], None] | None = None
        self.on_clear: Callable[[float], None] | None = None

    # --- what the engine calls --------------------------------------------------------------

    def add_audio(self, audio: bytes, segment: Segment | None = None) -> None:
        """Queue μ-law audio of any length; whole 160-byte frames go out, the rest waits."""
        if segment is not None and segment is not self._open:
            self._open = segment
        if self._open is not None:
            self._open.audio_ms += len(audio) // 8
        frames = self._framer.push(audio)
        if frames:
            self._queue.extend(frames)
            self._wake.set()

    def end_segment(self, segment: Segment) -> None:
        """Close `segment` with a mark after all audio queued so far (padding the last frame)."""
        last = self._framer.flush()  # the tail, padded with μ-law silence
        if last is not None:
            self._queue.append(last)
        self._queue.append(segment)
        if self._open is segment:
            self._open = None
        self._wake.set()

    async def clear(self) -> list[Segment]:
        """Barge-in: drop our queue, send Twilio `clear`; returns every segment not heard."""
        unheard = [it for it in self._queue if isinstance(it, Segment)]
        unheard += self._in_flight.values()
        if self._open is not None:
            unheard.append(self._open)
            self._open = None
        had_audio = bool(self._queue or self._in_flight or self._framer.pending)
        self._queue.clear()
        self._framer.clear()
        self._in_flight.clear()
        self._run_frames = 0
        for seg in unheard:
            seg.state = SegmentState.CLEARED
            self._done(seg)
        if had_audio:
            if self.on_clear is not None:
                self.on_clear(self._clock())
            await self._send(tm.clear_message(self._sid))
        return unheard

    def on_mark(self, name: str) -> Segment | None:
        """Twilio echoed a mark: its audio has played. Echoes of cleared marks are ignored."""
        seg = self._in_flight.pop(name, None)
        if seg is None:
            return None
        seg.state = SegmentState.PLAYED
        self._done(seg)
        return seg

    @property
    def speaking(self) -> bool:
        """True while the caller may still hear bot audio (queued, partial or unechoed)."""
        return bool(self._queue or self._framer.pending or self._in_flight or self._open)

    # --- the pacing task --------------------------------------------------------------------

    async def run(self) -> None:
        """Send queued frames no earlier than `lead_ms` before they play. Runs for the call."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._send_due()

    async def _send_due(self) -> None:
        now = self._clock()
        if self._run_frames == 0 or now > self._run_start + self._run_frames * FRAME_S:
            # Twilio's buffer ran dry: a new run starts playing now.
            self._run_start, self._run_frames = now, 0
        # Send every item whose frame plays within the lead window, then sleep until the next.
        out: list[str] = []
        sleep_s = 0.0
        while self._queue:
            due = self._run_start + self._run_frames * FRAME_S - self._lead_s
            if due > now:
                sleep_s = due - now + self._batch_s
                break
            item = self._queue.popleft()
            if isinstance(item, bytes):
                if self.on_frame is not None:
                    self.on_frame(item, self._run_start + self._run_frames * FRAME_S)
                self._run_frames += 1
                self.frames_sent += 1
                out.append(tm.media_message(self._sid, item))
            else:
                seg = item
                seg.state = SegmentState.SENT
                self._in_flight[seg.name] = seg
                out.append(tm.mark_message(self._sid, seg.name))
        if out:
            await self._send_many(out)
        if sleep_s:
            await asyncio.sleep(sleep_s)

    async def _send_each(self, texts: list[str]) -> None:
        for text in texts:
            await self._send(text)

    def _done(self, seg: Segment) -> None:
        if self.on_segment_done is not None:
            self.on_segment_done(seg)
