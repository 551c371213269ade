"""Outbound audio to Twilio: exact 20 ms frames, paced, with marks and clear.

Twilio buffers whatever we send and plays it at real time, so the only way to keep `clear`
cheap and our "bot is speaking" state honest is to pace: frame n of a run of speech is sent
no earlier than `lead_ms` before it is due to play (deadline = run start + n × 20 ms, on the
monotonic clock, so pacing never drifts).

A mark is sent right after the last frame of the audio it covers (never before: Twilio echoes a
mark at once when nothing is buffered, which would fake "played"). Marks close every segment
(a sentence, or whatever text unit the engine gives) and also fall inside it at least every
`MARK_EVERY_MS` of audio, so what the caller heard is known to within half a second by echoes
alone. At a `clear` (or when the call ends) nothing more will echo: every pending segment is
then settled by the pacing clock instead, as the audio sent minus what Twilio still held, which
is exact to a frame as long as Twilio plays what it buffered without gaps (it does).

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
MARK_EVERY_MS = 500  # a mark at least this often inside a segment
MARK_EVERY_FRAMES = MARK_EVERY_MS // FRAME_MS


class SpanState(Enum):
    QUEUED = "queued"  # audio not all sent yet
    SENT = "sent"  # closing mark sent, echo awaited
    PLAYED = "played"  # closing mark echoed: the caller heard all of its audio
    CLEARED = "cleared"  # settled by a clear or the call's end: heard up to `played_ms`


@dataclass(slots=True)
class Span:
    """A span of outbound audio closed by a mark: what the playout knows of a piece of speech
    (its words are the session's business: telephony/session/segments.py).

    `complete` is False while its audio may still grow, and stays False when the speech
    source died before sending all of it.
    """

    name: str
    audio_ms: int = field(default=0, kw_only=True)  # audio received for it
    state: SpanState = field(default=SpanState.QUEUED, kw_only=True)
    complete: bool = field(default=False, kw_only=True)
    # of `audio_ms`, what the caller heard (echoes; the pacing clock once settled)
    played_ms: int = field(default=0, kw_only=True)
    estimated: bool = field(default=False, kw_only=True)  # `played_ms` from the clock
    sent_ms: int = field(default=0, kw_only=True)  # audio sent to Twilio
    plays_until: float = field(default=0.0, kw_only=True)  # when its last sent frame has played
    marks: int = field(default=0, kw_only=True)  # marks placed inside it so far


@dataclass(slots=True)
class _Mark:
    """A mark in the queue: when it echoes, `segment` has played up to `through_ms`."""

    segment: Span
    name: str
    through_ms: int
    closes: bool  # the segment's closing mark


# Queued work: a frame of audio (bytes, queued as the framer made it: no wrapper per frame), a
# mark, or a Span: the frames after it are that segment's audio.
_Item = bytes | _Mark | Span


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
        self._open: Span | None = None  # segment collecting audio, not yet closed
        self._open_frames = 0  # frames queued for the open segment
        self._sending: Span | None = None  # whose frames the pacing task is sending
        self._in_flight: dict[str, _Mark] = {}  # marks sent, echo awaited
        self._wake = asyncio.Event()
        self._run_start = 0.0  # monotonic time frame 0 of the current run plays
        self._run_frames = 0  # frames sent in the current run
        self.frames_sent = 0
        self.on_segment_done: Callable[[Span], None] | None = None
        # Recording taps (None unless the call is recorded): every media frame with the
        # monotonic time it plays, told before it is sent; and the time a `clear` went out.
        self.on_frame: Callable[[bytes, float], None] | None = None
        self.on_clear: Callable[[float], None] | None = None

    def release(self) -> None:
        """The call is over (its pacing task ended): the hooks are let go. Each is a method
        of what holds this playout (the engine's speech, the recorder), a cycle that would
        keep the ended call for a full garbage collection."""
        self.on_segment_done = self.on_frame = self.on_clear = None

    # --- what the engine calls --------------------------------------------------------------

    def add_audio(self, audio: bytes, segment: Span | None = None) -> None:
        """Queue μ-law audio of any length; whole 160-byte frames go out, the rest waits."""
        if segment is not None and segment is not self._open:
            self._open, self._open_frames = segment, 0
            self._queue.append(segment)
        seg = self._open
        if seg is not None:
            seg.audio_ms += len(audio) // 8
        frames = self._framer.push(audio)
        if not frames:
            return
        if seg is not None:
            self._queue_marked(seg, frames)
        else:
            self._queue.extend(frames)
        self._wake.set()

    def _queue_marked(self, seg: Span, frames: list[bytes]) -> None:
        """The open segment's frames, with a mark after every MARK_EVERY_FRAMES of them."""
        done = self._open_frames
        i = 0
        while (cut := (done // MARK_EVERY_FRAMES + 1) * MARK_EVERY_FRAMES - done) <= len(
            frames
        ) - i:
            self._queue.extend(frames[i : i + cut])
            i, done = i + cut, done + cut
            seg.marks += 1
            self._queue.append(_Mark(seg, f"{seg.name}.{seg.marks}", done * FRAME_MS, False))
        self._queue.extend(frames[i:] if i else frames)
        self._open_frames = done + len(frames) - i

    def end_segment(self, segment: Span, *, complete: bool = True) -> None:
        """Close `segment` with a mark after all audio queued so far (padding the last frame).

        `complete=False`: its source died before sending all of its audio."""
        last = self._framer.flush()  # the tail, padded with μ-law silence
        if last is not None:
            self._queue.append(last)
        segment.complete = complete
        self._queue.append(_Mark(segment, segment.name, segment.audio_ms, True))
        if self._open is segment:
            self._open = None
        self._wake.set()

    async def clear(self) -> list[Span]:
        """Barge-in: drop our queue, send Twilio `clear`; returns every segment not heard
        in full, each settled by the clock (what of it had played when the clear went out)."""
        had_audio = bool(self._queue or self._in_flight or self._framer.pending)
        unheard = self._settle()
        if had_audio:
            if self.on_clear is not None:
                self.on_clear(self._clock())
            await self._send(tm.clear_message(self._sid))
        return unheard

    def stop(self) -> list[Span]:
        """The call is over: settle every pending segment by the clock; nothing is sent."""
        return self._settle()

    def _settle(self) -> list[Span]:
        """Empty the queue; every segment not yet echoed is CLEARED with what of it played."""
        now = self._clock()
        pending: dict[int, Span] = {}  # in playing order, each once
        for mark in self._in_flight.values():
            pending[id(mark.segment)] = mark.segment
        for item in self._queue:
            seg = item.segment if isinstance(item, _Mark) else item
            if isinstance(seg, Span):
                pending[id(seg)] = seg
        if self._open is not None:
            pending[id(self._open)] = self._open
            self._open = None
        self._queue.clear()
        self._framer.clear()
        self._in_flight.clear()
        self._sending = None
        self._run_frames = 0
        unheard = list(pending.values())
        for seg in unheard:
            # Audio sent minus what Twilio still held; never less than the echoes proved.
            held_ms = max(0.0, seg.plays_until - now) * 1000
            by_clock = min(seg.audio_ms, round(seg.sent_ms - held_ms))
            if by_clock > seg.played_ms:
                seg.played_ms, seg.estimated = by_clock, True
            seg.state = SpanState.CLEARED
            self._done(seg)
        return unheard

    def on_mark(self, name: str) -> Span | None:
        """Twilio echoed a mark: its audio has played. Echoes of cleared marks are ignored."""
        mark = self._in_flight.pop(name, None)
        if mark is None:
            return None
        seg = mark.segment
        seg.played_ms = max(seg.played_ms, mark.through_ms)
        if mark.closes:
            seg.state = SpanState.PLAYED
            self._done(seg)
        return seg

    def played_out(self, seg: Span) -> bool:
        """All of `seg` went out and has played by the clock: only its closing mark's echo
        can still be on the way."""
        return seg.state is SpanState.PLAYED or (
            seg.state is SpanState.SENT and seg.complete and seg.plays_until <= self._clock()
        )

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
        sending = self._sending
        first = since = self._run_frames  # frames before this batch; before `sending`'s own
        while self._queue:
            due = self._run_start + self._run_frames * FRAME_S - self._lead_s
            item = self._queue[0]
            if isinstance(item, bytes):
                if due > now:
                    sleep_s = due - now + self._batch_s
                    break
                self._queue.popleft()
                if self.on_frame is not None:
                    self.on_frame(item, self._run_start + self._run_frames * FRAME_S)
                self._run_frames += 1
                out.append(tm.media_message(self._sid, item))
                continue
            self._queue.popleft()
            if isinstance(item, Span):  # the frames from here on are this one's
                self._account(sending, self._run_frames - since)
                sending, since = item, self._run_frames
                continue
            if item.closes:
                item.segment.state = SpanState.SENT
            self._in_flight[item.name] = item
            out.append(tm.mark_message(self._sid, item.name))
        self._account(sending, self._run_frames - since)
        self._sending = sending
        self.frames_sent += self._run_frames - first
        if out:
            await self._send_many(out)
        if sleep_s:
            await asyncio.sleep(sleep_s)

    def _account(self, seg: Span | None, frames: int) -> None:
        """`frames` of `seg` just went out: they play until the current run's end."""
        if seg is not None and frames:
            seg.sent_ms += frames * FRAME_MS
            seg.plays_until = self._run_start + self._run_frames * FRAME_S

    async def _send_each(self, texts: list[str]) -> None:
        for text in texts:
            await self._send(text)

    def _done(self, seg: Span) -> None:
        if self.on_segment_done is not None:
            self.on_segment_done(seg)
