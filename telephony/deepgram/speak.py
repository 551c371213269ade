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
from collections.abc import AsyncIterator, Callable

from websockets.exceptions import ConnectionClosed

from telephony.deepgram import messages as dm
from telephony.deepgram.connection import ParamValue, build_url
from telephony.deepgram.socket import DeepgramSocket
from telephony.window import SlidingWindow

log = logging.getLogger(__name__)

SPEAK_PATH = "/v1/speak"


class FlushBudget:
    """Sliding-window limit on Flush messages (Aura: 20 per 60 s)."""

    def __init__(
        self, limit: int = 20, window_s: float = 60.0, clock: Callable[[], float] | None = None
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock or asyncio.get_running_loop().time
        self._window = SlidingWindow(limit, window_s)

    def remaining(self) -> int:
        return self._window.remaining(self._clock())

    def take(self) -> bool:
        if self.remaining() <= 0:
            return False
        self._window.add(self._clock())
        return True


class SpeakClient(DeepgramSocket):
    """One Aura connection. Its errors (bad text, rate limits, internal faults) arrive only as
    the close frame's code and reason (kept on `DeepgramClosed`); Deepgram defines no JSON
    Error for Aura."""

    endpoint = "speak"
    label = "Aura"

    def __init__(
        self, base_url: str, api_key: str, voice: str, *, budget: FlushBudget | None = None
    ) -> None:
        # No `container`: the socket sends raw audio only, and Deepgram's SDK offers no such
        # parameter on it.
        params: dict[str, ParamValue] = {"model": voice, "encoding": "mulaw", "sample_rate": 8000}
        super().__init__(build_url(base_url, SPEAK_PATH, params), api_key)
        self.voice = voice  # one voice per socket: another voice is another socket
        self.budget = budget or FlushBudget()
        self._clearing = False  # audio before `Cleared` belongs to a reply we cancelled

    async def speak(self, text: str) -> None:
        """Text for Aura. On a socket already lost the text is lost with it (the reply's
        segment ends short); its link replaces the socket, and later text goes there."""
        if text.strip():
            with contextlib.suppress(ConnectionClosed):
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
        try:
            await self.ws.send(dm.flush())
        except ConnectionClosed:
            return False
        return True

    async def clear(self) -> None:
        self._clearing = True
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(dm.clear())

    def error_of(self, event: object) -> str | None:
        if isinstance(event, dm.SpeakError):  # not sent by Aura; kept as a safety net
            return f"Aura error {event.code}: {event.description}"
        return None

    async def events(self) -> AsyncIterator[bytes | dm.SpeakServerEvent]:
        """Audio chunks and server messages; audio arriving between Clear and Cleared is dropped."""
        async for event in self.messages(dm.parse_speak_server, binary=True):
            if isinstance(event, bytes):
                if not self._clearing and event:
                    yield event
                continue
            if isinstance(event, dm.Cleared):
                self._clearing = False
            elif isinstance(event, dm.Flushed) and self._clearing:
                continue  # the end of audio we already dropped
            if isinstance(event, dm.SpeakWarning):
                log.warning("Aura warning %s: %s", event.code, event.description)
            yield event
            del event  # not kept while the next is awaited (socket.py, `messages`)

    async def close(self) -> None:
        await self.close_politely(dm.close())
