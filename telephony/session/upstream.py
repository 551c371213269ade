"""Caller audio on its way to one Deepgram listening socket (Flux, or Nova per track).

While the socket is live every frame is sent at once and kept in a bounded "recent" window,
so that after a reconnect the part Deepgram had not settled can be replayed; while it
(re)connects, frames are held (bounded, drops counted) and go first once it is live again.

Both windows are bounded in bytes, not frames: a frame's size is the sender's to choose (the
parser caps it at a few Twilio frames, telephony.twilio.messages.MAX_MEDIA_PAYLOAD_BYTES), and
a bound in frames of unknown size bounds nothing. Each frame counts at least a whole Twilio
frame (`charge`), so a window of tiny frames holds no more entries than one of whole frames.

Nothing here awaits: a frame is written to the socket's transport (or held) before the call
reads the next one (`telephony.deepgram.connection.send_now`). Per frame this costs one send,
two deque appends and an add and compare: timestamps and audio sit in parallel deques rather
than one tuple per frame, because 50 tuples a second per call kept for 30 s were the bulk of
what the garbage collector scanned and promoted (measured with `telephony bench`).
"""

from __future__ import annotations

import bisect
import itertools
import sys
from collections import deque
from collections.abc import Callable

from telephony.audio import FRAME_BYTES, HOLD_MS, MULAW_BYTES_PER_MS

PENDING_BYTES = HOLD_MS * MULAW_BYTES_PER_MS  # held while the socket (re)connects; beyond, dropped
RECENT_MS = 30_000  # sent audio kept for a replay
RECENT_BYTES = RECENT_MS * MULAW_BYTES_PER_MS

# A socket's send: True once the frame is taken, False when the socket is no longer open.
SendAudio = Callable[[int, bytes], bool]
Frame = tuple[int, bytes]


def charge(payload: bytes) -> int:
    """What a frame counts against a window: its bytes, at least a whole Twilio frame's."""
    size = len(payload)
    return size if size > FRAME_BYTES else FRAME_BYTES


class Upstream:
    """One socket's caller audio: send while live, hold while not, replay after a reconnect.

    `pending_bytes` and `recent_bytes` bound the two windows (as counted by `charge`; the recent
    window holds between 15/16 of its bound and all of it once full); `recent_bytes=0` keeps no
    recent window (a socket with nothing to replay).
    """

    def __init__(
        self, *, pending_bytes: int = PENDING_BYTES, recent_bytes: int = RECENT_BYTES
    ) -> None:
        self.live = False  # frames go straight to the socket; else they are held
        self.accepting = True  # False once the socket is given up or closing: drop, not hold
        self.dropped_frames = 0
        self.dropped_bytes = 0
        self._send: SendAudio | None = None  # the live socket's send, set by go_live
        self._pending_ts: deque[int] = deque()
        self._pending: deque[bytes] = deque()
        self._pending_size = 0  # charged bytes held
        self._pending_max = pending_bytes
        keep = None if recent_bytes > 0 else 0  # maxlen 0: every append is discarded at once
        self._recent_ts: deque[int] = deque(maxlen=keep)
        self._recent: deque[bytes] = deque(maxlen=keep)
        self._recent_size = 0  # charged bytes in the recent window
        # With no window there is nothing to trim: a bound no count reaches keeps it so.
        self._recent_max = recent_bytes if recent_bytes > 0 else sys.maxsize

    @property
    def dropped_ms(self) -> int:
        return self.dropped_bytes // MULAW_BYTES_PER_MS

    def push(self, timestamp_ms: int, payload: bytes) -> None:
        """The audio path: send now when live, else hold for the next socket."""
        if self.live:
            if self._send(timestamp_ms, payload):  # type: ignore[misc]  # set when live
                self._recent_ts.append(timestamp_ms)
                self._recent.append(payload)
                size = len(payload)
                self._recent_size += size if size > FRAME_BYTES else FRAME_BYTES
                if self._recent_size > self._recent_max:
                    self._trim_recent()
                return
            self.live = False  # the socket's events loop sees the close and reconnects
        if not self.accepting:
            return
        self._hold(timestamp_ms, payload)

    def _trim_recent(self) -> None:
        """The window is over its bound: the oldest sent frames out, down to 1/16 below it, so
        a window that stays full (no turn has settled anything for 30 s) is trimmed once per
        ~100 frames rather than on every frame."""
        size, floor = self._recent_size, self._recent_max - self._recent_max // 16
        recent_ts, recent = self._recent_ts, self._recent
        while size > floor and recent:
            recent_ts.popleft()
            n = len(recent.popleft())
            size -= n if n > FRAME_BYTES else FRAME_BYTES
        self._recent_size = size

    def _hold(self, timestamp_ms: int, payload: bytes) -> None:
        self._pending_ts.append(timestamp_ms)
        self._pending.append(payload)
        self._pending_size += charge(payload)
        while self._pending_size > self._pending_max and self._pending:
            self._pending_ts.popleft()
            old = self._pending.popleft()
            self._pending_size -= charge(old)
            self.dropped_frames += 1
            self.dropped_bytes += len(old)

    def last_sent_ms(self) -> int | None:
        return self._recent_ts[-1] if self._recent_ts else None

    def sent_since(self, start_ms: int | None) -> list[Frame]:
        """Sent frames starting at or after `start_ms` (all of them for None): a replay."""
        pairs = zip(self._recent_ts, self._recent, strict=True)
        return [(ts, audio) for ts, audio in pairs if start_ms is None or ts >= start_ms]

    def forget_before(self, ms: int) -> None:
        """Audio before `ms` is settled (a turn ended there): it will never be replayed."""
        # Timestamps ascend (a rare overlapping frame from Twilio can step back: it repeats
        # audio already here, so a cut off by one frame there is harmless), so a binary search
        # finds the cut. The frames are popped in place (a few hundred, once a turn): new
        # deques would be young objects holding every frame since, which each young garbage
        # collection scans item by item (a third of its references at 300 calls).
        cut = bisect.bisect_left(self._recent_ts, ms)
        if cut:
            recent_ts, recent = self._recent_ts, self._recent
            size = self._recent_size
            for _ in range(cut):
                recent_ts.popleft()
                size -= charge(recent.popleft())
            self._recent_size = size

    def stop(self) -> None:
        """The socket is given up for good: nothing is sent or held from now on."""
        self.live = self.accepting = False
        self.drop_held()

    def drop_held(self) -> None:
        self._pending_ts.clear()
        self._pending.clear()
        self._pending_size = 0

    def go_live(self, send: SendAudio, replay: list[Frame]) -> bool:
        """Send the replay, then everything held, then switch to sending each frame directly.

        False if the new socket closed on the way: what it did not take is held again (after
        what it took, which is in the recent window) for the socket after it.
        """
        self._send = send
        self._recent_ts.clear()
        self._recent.clear()
        self._recent_size = 0
        held = list(zip(self._pending_ts, self._pending, strict=True))
        self.drop_held()
        frames = itertools.chain(replay, held)
        for ts, payload in frames:
            if not send(ts, payload):
                for frame in itertools.chain([(ts, payload)], frames):
                    self._hold(*frame)
                return False
            self._recent_ts.append(ts)
            self._recent.append(payload)
            self._recent_size += charge(payload)
            if self._recent_size > self._recent_max:
                self._trim_recent()
        self.live = True
        return True
