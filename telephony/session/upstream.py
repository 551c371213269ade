"""Caller audio on its way to one Deepgram listening socket (Flux, or Nova per track).

While the socket is live every frame is sent at once and kept in a bounded "recent" window,
so that after a reconnect the part Deepgram had not settled can be replayed; while it
(re)connects, frames are held (bounded, drops counted) and go first once it is live again.

Per frame this costs one send and two deque appends: timestamps and audio sit in parallel deques
rather than one tuple per frame, because 50 tuples a second per call kept for 30 s were the
bulk of what the garbage collector scanned and promoted (measured with `telephony bench`).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from websockets.exceptions import ConnectionClosed

PENDING_FRAMES = 500  # 10 s held while the socket (re)connects; beyond, drops counted
RECENT_FRAMES = 1500  # 30 s of sent audio kept for a replay

SendAudio = Callable[[int, bytes], Awaitable[None]]
Frame = tuple[int, bytes]


class Upstream:
    """One socket's caller audio: send while live, hold while not, replay after a reconnect."""

    def __init__(
        self, *, pending_frames: int = PENDING_FRAMES, recent_frames: int = RECENT_FRAMES
    ) -> None:
        self.live = False  # frames go straight to the socket; else they are held
        self.accepting = True  # False once the socket is given up or closing: drop, not hold
        self.dropped_frames = 0
        self._send: SendAudio | None = None  # the live socket's send, set by go_live
        self._pending_ts: deque[int] = deque(maxlen=pending_frames)
        self._pending: deque[bytes] = deque(maxlen=pending_frames)
        self._recent_ts: deque[int] = deque(maxlen=recent_frames)
        self._recent: deque[bytes] = deque(maxlen=recent_frames)

    async def push(self, timestamp_ms: int, payload: bytes) -> None:
        """The audio path: send now when live, else hold for the next socket."""
        if self.live:
            try:
                await self._send(timestamp_ms, payload)  # type: ignore[misc]  # set when live
            except ConnectionClosed:
                self.live = False  # the socket's events loop sees the close and reconnects
            else:
                self._recent_ts.append(timestamp_ms)
                self._recent.append(payload)
                return
        if not self.accepting:
            return
        if len(self._pending) == self._pending.maxlen:
            self.dropped_frames += 1
        self._pending_ts.append(timestamp_ms)
        self._pending.append(payload)

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
        # finds the cut; copying the short tail beats popping a turn's frames one by one.
        cut = bisect.bisect_left(self._recent_ts, ms)
        if cut:
            keep = self._recent_ts.maxlen
            self._recent_ts = deque(itertools.islice(self._recent_ts, cut, None), keep)
            self._recent = deque(itertools.islice(self._recent, cut, None), keep)

    def drop_held(self) -> None:
        self._pending_ts.clear()
        self._pending.clear()

    async def go_live(self, send: SendAudio, replay: list[Frame]) -> None:
        """Send the replay, then everything held, then switch to sending each frame directly."""
        self._send = send
        self._recent_ts.clear()
        self._recent.clear()
        for ts, payload in self._replay_then_held(replay):
            await send(ts, payload)
            self._recent_ts.append(ts)
            self._recent.append(payload)
        self.live = True

    def _replay_then_held(self, replay: list[Frame]) -> Iterator[Frame]:
        yield from replay
        while self._pending:  # frames keep arriving while we send: drain until none wait
            yield self._pending_ts.popleft(), self._pending.popleft()
