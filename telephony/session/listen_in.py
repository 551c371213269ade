"""Listen-in: a supervisor hears a live call (both sides) in the browser, about a second behind.

The call's frames are μ-law as they pass: the caller's as received, the bot's as the playout
sends them to Twilio (or, after a transfer, the person's from the fork's outbound track).
Nothing is decoded or copied for a call nobody listens to: the call holds no tap until a
listener attaches (one attribute test per frame). With listeners, each frame is appended to
each listener's bounded queue; a browser that does not keep up loses its oldest audio
(counted), and the call never waits for it. The browser decodes and mixes (routes/static/
listen.js).

On the wire to the browser: a binary message every `BATCH_S` at most, holding the frames that
passed since, in order, each as its side (0: the caller, 1: the other side), its length (2
bytes, big-endian) and its μ-law bytes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

CALLER, OTHER = 0, 1
MAX_QUEUED = 100  # frames per listener (2 s of both sides): beyond it the oldest go
MAX_LISTENERS = 5  # per call
BATCH_S = 0.1  # a listener's frames go out at most this often (the browser buffers 0.3 s)


class Listener:
    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self._queue: deque[tuple[int, bytes]] = deque()
        self._max = max_queued
        self._ready = asyncio.Event()
        self.dropped = 0  # frames lost because the browser was slow
        self.closed = False

    def put(self, side: int, frame: bytes) -> None:
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((side, frame))
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def batches(self) -> AsyncIterator[bytes]:
        """What is queued, at most one message every `BATCH_S`, until closed: each frame as
        its side (1 byte), its length (2 bytes, big-endian) and its bytes. Batching spares
        the loop a send per 20 ms frame per listener."""
        while not self.closed:
            self._ready.clear()
            await self._ready.wait()
            await asyncio.sleep(BATCH_S)  # let a batch gather
            parts: list[bytes] = []
            while self._queue:
                side, frame = self._queue.popleft()
                parts.append(bytes((side, len(frame) >> 8, len(frame) & 0xFF)))
                parts.append(frame)
            if parts:
                yield b"".join(parts)


class ListenTap:
    """A call's listeners. `attach` installs the call's hooks on the first listener and
    `detach` removes them after the last (`install(tap or None)`)."""

    def __init__(self, install: Callable[[ListenTap | None], None]) -> None:
        self._install = install
        self.listeners: list[Listener] = []
        self._closed = False

    def attach(self, listener: Listener) -> bool:
        if self._closed or len(self.listeners) >= MAX_LISTENERS:
            return False
        self.listeners.append(listener)
        if len(self.listeners) == 1:
            self._install(self)
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def detach(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)
            listener.close()
            if not self.listeners:
                self._install(None)

    def close(self) -> None:
        """The call ended: every listener's stream ends, and the call's hook is let go (it is
        the call's method: call -> tap -> call would be a cycle). Attaching after fails."""
        for listener in list(self.listeners):
            self.detach(listener)
        self._install = _ended
        self._closed = True

    # --- the call's hooks (the audio path: appends only) --------------------------------------

    def caller(self, payload: bytes) -> None:
        for listener in self.listeners:
            listener.put(CALLER, payload)

    def other(self, payload: bytes) -> None:
        for listener in self.listeners:
            listener.put(OTHER, payload)

    def bot(self, frame: bytes, play_at: float) -> None:
        """The playout's `on_frame`: a frame sent to Twilio."""
        self.other(frame)


def _ended(tap: ListenTap | None) -> None:
    """An ended call's install hook: nothing to install."""


FrameHook = Callable[[bytes, float], None]


def bot_frames(recorder: FrameHook | None, tap: ListenTap | None) -> FrameHook | None:
    """The playout's `on_frame`: the bot's frames to the recording, the listeners, both or
    neither (no call at all when neither wants them)."""
    if tap is None or recorder is None:
        return tap.bot if tap is not None else recorder

    def both(frame: bytes, play_at: float) -> None:
        recorder(frame, play_at)
        tap.bot(frame, play_at)

    return both
