"""The call's intake: every frame off the Twilio media socket, handled as it is parsed.

Media is charged to its track's budget (telephony/session/policing.py), checked against the
stream's sequence numbers, put on the call clock (gaps filled with silence, overlaps counted)
and fanned out: to the recorder, to a listen-in tap, to the engine. Marks go to the playout,
DTMF to the engine. A malformed frame is logged, counted and skipped. Nothing here awaits, so
the socket may call `on_frame` straight from its parser; this is the per-frame path, so the
common case is a few additions and comparisons.

`MediaIntake` is `Call`'s base (telephony/session/call.py sets every attribute declared here):
a base class, not a collaborator object, so a frame costs no extra hop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from telephony.audio import (
    FRAME_BYTES,
    FRAME_MS,
    MAX_GAP_FILL_MS,
    MULAW_BYTES_PER_MS,
    MULAW_SILENCE,
)
from telephony.logs import CallLogger
from telephony.outcome import Outcome
from telephony.session.engine import Engine
from telephony.session.listen_in import ListenTap, bot_frames
from telephony.session.media_socket import CLOSE_NORMAL, StreamEnd
from telephony.session.policing import MIN_FRAME_CHARGE, AudioBudget, StreamPolice
from telephony.session.summary import CallSummary
from telephony.transcript import EventKind, Transcript
from telephony.twilio import messages as tm
from telephony.twilio.playout import Playout

if TYPE_CHECKING:
    from telephony.store.recording import CallRecorder

# Gap filling: lost packets are replaced by silence so the engine's audio clock (bytes / 8)
# stays on the call clock. A bigger jump is a broken stream, not packet loss: only
# MAX_GAP_FILL_MS of it is filled, so hostile timestamps cannot make us loop or send without
# bound.
GAP_EVENT_MS = 100  # fills this long go into the transcript; shorter ones are only counted
SILENCE_FRAME = bytes((MULAW_SILENCE,)) * FRAME_BYTES  # shared by every fill, never copied


class MediaIntake:
    """Twilio -> the call: frames dispatched, audio policed, clocked and fanned out."""

    stream_sid: str
    log: CallLogger
    summary: CallSummary
    transcript: Transcript
    playout: Playout
    recorder: CallRecorder | None
    engine: Engine | None
    _police: StreamPolice
    _inbound_budget: AudioBudget
    _outbound_budget: AudioBudget
    _limit_reason: str | None
    _too_fast: bool
    _next_sequence: int
    _clock_offset_ms: int
    _tap: ListenTap | None

    def on_frame(self, frame: str | bytes) -> StreamEnd | None:
        """One frame off the media socket, handled to the end without awaiting (so the socket
        can hand frames over as they are parsed); a StreamEnd when the call must stop."""
        try:
            if isinstance(frame, bytes):
                raise tm.MessageError("binary frame (Twilio sends text only)")
            msg = tm.parse_inbound(frame)
            if isinstance(msg, tm.Media):
                self._on_media(msg)
                if self._too_fast:
                    self._limit_reason = "media faster than real time"
                    return StreamEnd(self._limit_reason)
                return None
            self._check_stream(msg)
            if self._police.control_flood():
                self._limit_reason = "control message flood"
                return StreamEnd(self._limit_reason)
        except tm.MessageError as exc:
            if self._on_bad_frame(exc, frame):
                return StreamEnd("too many malformed frames")
            return None
        if isinstance(msg, tm.Stop):
            return StreamEnd("stop", CLOSE_NORMAL, "stream stopped", Outcome.CALLER_HANGUP)
        self._on_control(msg)
        return None

    def _check_stream(self, msg: tm.InboundMessage) -> None:
        if isinstance(msg, tm.Connected | tm.Start):
            raise tm.MessageError(f"unexpected {type(msg).__name__.lower()} mid-stream")
        self._track_sequence(msg)

    def _track_sequence(self, msg: tm.Media | tm.Mark | tm.Dtmf | tm.Stop) -> None:
        """Every message after start: this stream's, and counted by sequenceNumber."""
        if msg.stream_sid != self.stream_sid:
            raise tm.MessageError(f"wrong streamSid {msg.stream_sid!r}")
        sequence = msg.sequence
        if sequence > self._next_sequence:
            self.summary.stats.sequence_gaps += sequence - self._next_sequence
        self._next_sequence = max(self._next_sequence, sequence + 1)

    def _on_media(self, msg: tm.Media) -> None:
        self._track_sequence(msg)
        payload = msg.payload
        size = len(payload)  # at most MAX_MEDIA_PAYLOAD_BYTES: a bigger frame did not parse
        # Every frame of either track is charged to its budget before it goes anywhere, whatever
        # its timestamp: the common path is this add and compare.
        charge = size if size > MIN_FRAME_CHARGE else MIN_FRAME_CHARGE
        if msg.track == "outbound":
            budget = self._outbound_budget
            budget.spent += charge
            if budget.spent > budget.next_check and budget.over():
                self._over_budget("outbound", budget)
                return
            self.summary.stats.outbound_frames += 1
            out_ts = msg.timestamp + self._clock_offset_ms
            if self.recorder is not None:  # the person on the call: the recording's right side
                self.recorder.outbound(out_ts, payload)
            if self._tap is not None:
                self._tap.other(payload)
            if self.engine is not None:
                self.engine.on_outbound_audio(out_ts, payload)
            return
        budget = self._inbound_budget
        budget.spent += charge
        if budget.spent > budget.next_check and budget.over():
            self._over_budget("inbound", budget)
            return
        stats = self.summary.stats
        ts = msg.timestamp + self._clock_offset_ms
        end_ms = ts + size // MULAW_BYTES_PER_MS
        # media.timestamp is the call's audio clock; normally each frame starts where the last
        # one ended, so the common path costs this one comparison.
        if ts != stats.audio_end_ms:
            if ts > stats.audio_end_ms:
                self._fill_gap(ts)
                if self._too_fast:  # the fill overspent the budget: nothing more is sent
                    return
            else:
                stats.timestamp_overlaps += 1  # forwarded as is; the clock never runs back
                end_ms = max(end_ms, stats.audio_end_ms)
        stats.media_frames += 1
        stats.audio_bytes += size
        stats.last_timestamp_ms = ts
        stats.audio_end_ms = end_ms
        if self.recorder is not None:
            self.recorder.caller(ts, payload)
        if self._tap is not None:
            self._tap.caller(payload)
        if self.engine is not None:
            self.engine.on_caller_audio(ts, payload)

    def _install_tap(self, tap: ListenTap | None) -> None:
        """Someone started (a tap) or stopped (None) listening in."""
        self._tap = tap
        recorder = self.recorder
        self.playout.on_frame = bot_frames(recorder.bot if recorder else None, tap)

    def _over_budget(self, track: str, budget: AudioBudget) -> None:
        """The stream sent (or made us fill) more audio than real time allows: it ends, and
        this frame goes nowhere."""
        self._too_fast = True
        self._police.too_fast(track, budget)

    def _fill_gap(self, ts: int) -> None:
        """Frames were lost upstream: send silence up to `ts` (bounded) in whole frames.

        20 ms frames with their own timestamps, so the engine's buffering and replay treat
        fill like any other audio; the last is shorter when the gap is not a multiple of 20.
        """
        stats = self.summary.stats
        start_ms = stats.audio_end_ms
        gap_ms = ts - start_ms
        fill_ms = min(gap_ms, MAX_GAP_FILL_MS)
        unfilled_ms = gap_ms - fill_ms
        if unfilled_ms and not stats.unfilled_gap_ms:  # warn once: a hostile stream repeats it
            self.log.warning("timestamp jump of %d ms; filled only %d ms", gap_ms, fill_ms)
        stats.timestamp_gap_ms += gap_ms
        stats.filled_gap_ms += fill_ms
        stats.unfilled_gap_ms += unfilled_ms
        # The fill goes upstream like caller audio, so it is charged like it: a stream whose
        # every timestamp jumps ahead would otherwise send seconds of silence per frame.
        budget = self._inbound_budget
        budget.spent += fill_ms * MULAW_BYTES_PER_MS
        if budget.spent > budget.next_check and budget.over():
            self._over_budget("inbound", budget)
            return
        if fill_ms >= GAP_EVENT_MS:
            extra = {"unfilled_ms": unfilled_ms} if unfilled_ms else {}
            self.transcript.event(start_ms, EventKind.GAP_FILLED, filled_ms=fill_ms, **extra)
        engine = self.engine
        if engine is None:
            return
        fill_end = start_ms + fill_ms
        for frame_ts in range(start_ms, fill_end, FRAME_MS):
            left_ms = fill_end - frame_ts
            frame = (
                SILENCE_FRAME
                if left_ms >= FRAME_MS
                else SILENCE_FRAME[: left_ms * MULAW_BYTES_PER_MS]
            )
            stats.audio_end_ms = frame_ts + min(left_ms, FRAME_MS)  # now_ms() follows the fill
            engine.on_caller_audio(frame_ts, frame)

    def _on_control(self, msg: tm.InboundMessage) -> None:
        stats = self.summary.stats
        if isinstance(msg, tm.Dtmf):
            stats.dtmf.append((stats.audio_end_ms, msg.digit))
            if self.engine is not None:
                self.engine.on_dtmf(stats.audio_end_ms, msg.digit)
        elif isinstance(msg, tm.Mark):
            stats.marks += 1
            self.playout.on_mark(msg.name)

    def _on_bad_frame(self, exc: tm.MessageError, frame: str | bytes) -> bool:
        """Log and count; True when the flood limit is reached and the call must end."""
        self.summary.stats.bad_frames += 1
        self.log.warning("malformed frame skipped: %s (%d bytes)", exc, len(frame))
        return self._police.bad_frame()
