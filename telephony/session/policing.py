"""The bounds a media stream must keep, or its call ends (issue 19's hostile-input limits).

A real Twilio stream sends a few malformed frames at most, a few control messages (marks,
DTMF) a second, and audio no faster than real time. A stream that breaks one of these bounds is
broken or hostile: `Call` ends it with the reason, without affecting any other call. Nothing
here runs per audio frame: the pace is checked once per AHEAD_CHECK_FRAMES frames.
"""

from __future__ import annotations

import time

from telephony.logs import CallLogger
from telephony.window import SlidingWindow

BAD_FRAME_WINDOW_S = 5.0
CONTROL_WINDOW_S = 5.0
# A real stream's audio clock never runs ahead of the wall clock (it lags after a stall and
# catches up). Checked every AHEAD_CHECK_FRAMES frames (one clock read per second of audio).
AHEAD_CHECK_FRAMES = 50


class StreamPolice:
    """Sliding-window counts of bad frames and control messages, and the audio's pace."""

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
        self._audio_origin: float | None = None  # monotonic time of the first media frame
        self._too_fast = False
        self.control_limit = round(max_control_per_s * CONTROL_WINDOW_S)
        self._controls = SlidingWindow(self.control_limit, CONTROL_WINDOW_S)

    def bad_frame(self) -> bool:
        """One more malformed frame; True when the flood limit is reached."""
        return self._bad_frames.add(time.monotonic()) > self.max_bad_frames

    def control_flood(self) -> bool:
        """One more control message (marks, DTMF and the like: a few per second at most on a
        real call); True when there are too many."""
        if self._controls.add(time.monotonic()) <= self.control_limit:
            return False
        self.log.warning(
            "closing: more than %d control messages in %.0f s", self.control_limit, CONTROL_WINDOW_S
        )
        return True

    def too_fast(self, end_ms: int) -> bool:
        """Audio up to `end_ms` has arrived: True (once) when it runs ahead of real time by more
        than allowed, i.e. burns Deepgram credit faster than a caller could."""
        now = time.monotonic()
        if self._audio_origin is None:
            self._audio_origin = now - end_ms / 1000
            return False
        ahead_ms = end_ms - (now - self._audio_origin) * 1000
        if ahead_ms > self.max_audio_ahead_ms and not self._too_fast:
            self._too_fast = True
            self.log.warning("closing: caller audio %.0f ms ahead of real time", ahead_ms)
            return True
        return False
