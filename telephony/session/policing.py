"""The bounds a media stream must keep, or its call ends (issue 19's hostile-input limits).

A real Twilio stream sends a few malformed frames at most, a few control messages (marks,
DTMF) a second, and audio no faster than real time. A stream that breaks one of these bounds is
broken or hostile: `Call` ends it with the reason, without affecting any other call.

The audio's pace is kept in bytes, per track (`AudioBudget`), whatever the frames' timestamps
say: timestamps are the caller's to choose (constant or running backwards, they never advance a
clock), bytes are what Deepgram bills. Per frame that costs the call an integer add and compare;
the clock is read only when the count passes the last allowance computed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from telephony.audio import FRAME_BYTES, MULAW_BYTES_PER_MS
from telephony.logs import CallLogger
from telephony.window import SlidingWindow

BAD_FRAME_WINDOW_S = 5.0
CONTROL_WINDOW_S = 5.0
# The least a media frame is charged (one Twilio frame, 20 ms): a flood of tiny frames costs
# per-frame work and bookkeeping (Deepgram's audio map, the replay window) like whole ones, so
# the budget bounds the frame rate too (50 a second per track, as Twilio sends).
MIN_FRAME_CHARGE = FRAME_BYTES


class AudioBudget:
    """One track's audio against real time: at most 8 bytes per ms since the stream started,
    plus a lead of `lead_ms` (Twilio's audio lags after a network stall, then catches up).

    The call adds each frame's bytes (at least MIN_FRAME_CHARGE) to `spent` (and the silence its
    gap fill sends) and calls `over()` only when `spent` passes `next_check`: what real time
    allowed at the last look. A stream at real time is looked at about once per `lead_ms`.
    """

    __slots__ = ("_clock", "_lead", "_origin", "next_check", "spent")

    def __init__(self, origin: float, lead_ms: int, clock: Callable[[], float]) -> None:
        self.spent = 0
        self._origin = origin  # `clock` time the stream started
        self._clock = clock
        self._lead = lead_ms * MULAW_BYTES_PER_MS
        self.next_check = self._lead  # nothing to look at before the lead is spent

    def allowed(self, now: float) -> int:
        return int((now - self._origin) * 1000 * MULAW_BYTES_PER_MS) + self._lead

    def ahead_ms(self) -> int:
        """How far the audio spent so far runs ahead of real time."""
        return (self.spent - self.allowed(self._clock()) + self._lead) // MULAW_BYTES_PER_MS

    def over(self) -> bool:
        """`spent` passed `next_check`: True if it is over what real time allows now."""
        allowed = self.allowed(self._clock())
        if self.spent > allowed:
            return True
        self.next_check = allowed
        return False


class StreamPolice:
    """Sliding-window counts of bad frames and control messages; the audio budget per track."""

    def __init__(
        self,
        log: CallLogger,
        *,
        max_bad_frames: int = 20,
        max_audio_ahead_ms: int = 2000,
        max_control_per_s: float = 50.0,
    ) -> None:
        self.log = log
        self.max_bad_frames = max_bad_frames
        self._bad_frames = SlidingWindow(max_bad_frames, BAD_FRAME_WINDOW_S)
        self.max_audio_ahead_ms = max_audio_ahead_ms
        # The call's loop keeps the time (as for every other timer of the call).
        self._clock = clock = asyncio.get_running_loop().time
        started = clock()  # the stream's start: both tracks' budgets count from here
        self.inbound = AudioBudget(started, max_audio_ahead_ms, clock)
        self.outbound = AudioBudget(started, max_audio_ahead_ms, clock)
        self.control_limit = round(max_control_per_s * CONTROL_WINDOW_S)
        self._controls = SlidingWindow(self.control_limit, CONTROL_WINDOW_S)

    def bad_frame(self) -> bool:
        """One more malformed frame; True when the flood limit is reached."""
        return self._bad_frames.add(self._clock()) > self.max_bad_frames

    def control_flood(self) -> bool:
        """One more control message (marks, DTMF and the like: a few per second at most on a
        real call); True when there are too many."""
        if self._controls.add(self._clock()) <= self.control_limit:
            return False
        self.log.warning(
            "closing: more than %d control messages in %.0f s", self.control_limit, CONTROL_WINDOW_S
        )
        return True

    def too_fast(self, track: str, budget: AudioBudget) -> None:
        """Log why the stream is being ended: `budget` (of `track`) is overspent."""
        self.log.warning("closing: %s audio %d ms ahead of real time", track, budget.ahead_ms())
