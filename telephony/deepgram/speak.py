"""Aura `/v1/speak` client: text in, μ-law 8 kHz audio out, one socket per call.

Text accumulates server-side until `Flush`, which is capped at 20 per 60 s, so we flush per
sentence only while the budget allows and otherwise let sentences gather until the next
flush. On barge-in `Clear` drops queued text and audio; audio that was already in flight
before `Cleared` arrives is dropped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from websockets.exceptions import ConnectionClosed

from telephony.deepgram import messages as dm
from telephony.deepgram.connection import DeepgramSocket, build_url, parse_or_skip

log = logging.getLogger(__name__)

SPEAK_PATH = "/v1/speak"
CLOSE_TIMEOUT_S = 2.0


class SpeakFatal(Exception):
    """Aura closed the socket. Its errors (bad text, rate limits, internal faults) arrive only
    as the close frame's code and reason, kept here; Deepgram defines no JSON Error for Aura."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class FlushBudget:
    """Sliding-window limit on Flush messages (Aura: 20 per 60 s)."""

    def __init__(
        self, limit: int = 20, window_s: float = 60.0, clock: Callable[[], float] | None = None
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock or asyncio.get_running_loop().time
        self._times: deque[float] = deque()

    def remaining(self) -> int:
        now = self._clock()
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        return self.limit - len(self._times)

    def take(self) -> bool:
        if self.remaining() <= 0:
            return False
        self._times.append(self._clock())
        return True


class SpeakClient(DeepgramSocket):
    def __init__(
        self, base_url: str, api_key: str, voice: str, *, budget: FlushBudget | None = None
    ) -> None:
        # No `container`: the socket sends raw audio only, and Deepgram's SDK offers no such
        # parameter on it.
        params = {"model": voice, "encoding": "mulaw", "sample_rate": 8000}
        super().__init__(build_url(base_url, SPEAK_PATH, params), api_key)
        self.budget = budget or FlushBudget()
        self._clearing = False  # audio before `Cleared` belongs to a reply we cancelled

    async def speak(self, text: str) -> None:
        if text.strip():
            await self.ws.send(dm.speak(text))

    async def flush(self, *, force: bool = False) -> bool:
        """Flush if the budget allows (or `force`, e.g. the end of a reply); False if not sent.

        A forced flush beyond the limit is refused by Aura with a Warning, so even forced
        flushes keep one slot back for the end of the next reply.
        """
        if not force and self.budget.remaining() <= 1:
            return False
        if not self.budget.take():
            log.warning("Aura flush budget exhausted; text waits for the window")
            return False
        await self.ws.send(dm.flush())
        return True

    async def clear(self) -> None:
        self._clearing = True
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(dm.clear())

    async def events(self) -> AsyncIterator[bytes | dm.SpeakServerEvent]:
        """Audio chunks and server messages; audio arriving between Clear and Cleared is dropped."""
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    if not self._clearing and raw:
                        yield raw
                    continue
                event = parse_or_skip(raw, dm.parse_speak_server, "Aura")
                if event is None:
                    continue
                if isinstance(event, dm.SpeakError):  # not sent by Aura; kept as a safety net
                    raise SpeakFatal(f"Aura error {event.code}: {event.description}")
                if isinstance(event, dm.Cleared):
                    self._clearing = False
                elif isinstance(event, dm.Flushed) and self._clearing:
                    continue  # the end of audio we already dropped
                if isinstance(event, dm.SpeakWarning):
                    log.warning("Aura warning %s: %s", event.code, event.description)
                yield event
        except ConnectionClosed as exc:
            frame = exc.rcvd  # the error, as Aura reports it: code and reason
            code, reason = (frame.code, frame.reason) if frame else (None, "")
            raise SpeakFatal(f"Aura closed: {frame or 'no close frame'}", code, reason) from None
        if not self._closing:
            code, reason = self.ws.close_code, self.ws.close_reason or ""
            raise SpeakFatal(f"Aura closed: {code or 'no status'} {reason}".rstrip(), code, reason)

    async def close(self) -> None:
        if self._ws is None:
            return
        self._closing = True
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(dm.close())
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.wait_closed()
        await self._ws.close()
