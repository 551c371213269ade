"""Voice Agent `/v1/agent/converse` client: caller audio in, agent speech and events out.

The flow (docs/protocol.md §5): Welcome -> our one Settings -> SettingsApplied -> binary audio both
ways. Audio is μ-law 8 kHz both ways, so Twilio payloads pass through untouched; they go up in
~80 ms messages (4 Twilio frames). Caller audio that arrives before SettingsApplied (the agent
ignores it) is kept, bounded, and sent in order right after it, so the caller's first words
are not lost. A JSON KeepAlive goes out only while no audio flows (KeepAlive while streaming
is a protocol fault).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from telephony.audio import HOLD_MS, MULAW_BYTES_PER_MS, Chunker
from telephony.deepgram import messages as dm
from telephony.deepgram.connection import (
    AGENT_KEEPALIVE,
    KeepAlive,
    KeepAliveRule,
    KeepAliveSpec,
    build_url,
)
from telephony.deepgram.socket import DeepgramClosed, DeepgramSocket

log = logging.getLogger(__name__)

AGENT_PATH = "/v1/agent/converse"
WELCOME_TIMEOUT_S = 5.0


class AgentClient(DeepgramSocket):
    """One Voice Agent connection. Not reusable after close: reconnecting means a new client.

    `events()` must be consumed: it is where SettingsApplied is seen, which releases the
    buffered caller audio and starts the KeepAlives (a beat of the ping clock).
    """

    endpoint = "agent"
    label = "agent"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        settings_body: dict[str, Any],
        *,
        max_buffered_ms: int = HOLD_MS,
        keepalive_idle_s: float = AGENT_KEEPALIVE.idle_s,
        chunk_ms: int = 80,
        welcome_timeout_s: float = WELCOME_TIMEOUT_S,
    ) -> None:
        super().__init__(
            build_url(base_url, AGENT_PATH),  # the agent takes no query parameters
            api_key,
            chunker=Chunker(chunk_ms=chunk_ms, bytes_per_ms=MULAW_BYTES_PER_MS),
        )
        self._settings = dm.settings(settings_body)  # a bad body fails here, before a socket
        self._keepalive_spec = KeepAliveSpec(KeepAliveRule.JSON_WHEN_IDLE, keepalive_idle_s)
        self._welcome_timeout_s = welcome_timeout_s
        self._early: deque[tuple[int, bytes]] = deque()  # (call ms, frame) before SettingsApplied
        self._early_bytes = 0
        self._max_early_bytes = max_buffered_ms * MULAW_BYTES_PER_MS
        self._live = False  # True once SettingsApplied came and the early audio is out
        self.settings_applied = asyncio.Event()
        self.request_id: str | None = None  # from Welcome, for support tickets
        self.dropped_bytes = 0  # early audio beyond max_buffered_ms (oldest dropped first)

    # --- connecting --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket, wait for Welcome, send Settings. SettingsApplied comes via events()."""
        await super().connect()
        ws = self.ws
        try:
            await self._await_welcome(ws)
            await ws.send(self._settings)
        except ConnectionClosed as exc:
            raise self.closed(f"agent closed during setup: {exc}") from None
        except DeepgramClosed:
            await ws.close()
            raise

    async def _await_welcome(self, ws: ClientConnection) -> None:
        try:
            async with asyncio.timeout(self._welcome_timeout_s):
                raw = await ws.recv()
        except TimeoutError:
            raise self.closed(f"no Welcome within {self._welcome_timeout_s:g} s") from None
        if isinstance(raw, bytes):
            raise self.closed("expected Welcome, got binary")
        try:
            event = dm.parse_agent_server(raw)
        except dm.DeepgramMessageError as exc:
            raise self.closed(f"expected Welcome: {exc}") from None
        if isinstance(event, dm.AgentError):
            raise self.closed(f"agent error {event.code}: {event.description}")
        if not isinstance(event, dm.Welcome):
            what = event.type if isinstance(event, dm.Unknown) else event.TYPE
            raise self.closed(f"expected Welcome, got {what}")
        self.request_id = event.request_id

    # --- caller audio ------------------------------------------------------------------------

    def send_audio(self, timestamp_ms: int, ulaw: bytes) -> bool:
        """One Twilio frame. Before SettingsApplied it is buffered; afterwards batched and sent.
        False when the socket is closed (the frame is not taken): events() reports why."""
        if self._closing:
            return False
        if not self._live:
            self._buffer(timestamp_ms, ulaw)
            return True
        return self._send_frame(timestamp_ms, ulaw)

    def _buffer(self, timestamp_ms: int, ulaw: bytes) -> None:
        # Oldest out first: what remains joins the live stream without a gap.
        self._early.append((timestamp_ms, ulaw))
        self._early_bytes += len(ulaw)
        while self._early_bytes > self._max_early_bytes:
            _, old = self._early.popleft()
            self._early_bytes -= len(old)
            self.dropped_bytes += len(old)

    def _send_frame(self, timestamp_ms: int, ulaw: bytes) -> bool:
        if self.first_audio_ms is None:
            self.first_audio_ms = timestamp_ms
        return self.send_chunked(ulaw)

    def _go_live(self) -> None:
        """SettingsApplied: start KeepAlive, send the early audio in order, then go direct."""
        self.settings_applied.set()
        self.keepalive = KeepAlive(self.ws, self._keepalive_spec)
        if self._early:
            log.debug("sending %d ms of audio held until SettingsApplied", self._early_bytes // 8)
        while self._early:
            timestamp_ms, ulaw = self._early.popleft()
            self._early_bytes -= len(ulaw)
            self._send_frame(timestamp_ms, ulaw)
        self._live = True

    # --- server events -----------------------------------------------------------------------

    def error_of(self, event: object) -> str | None:
        if isinstance(event, dm.AgentError):
            return f"agent error {event.code}: {event.description}"
        return None

    async def events(self) -> AsyncIterator[dm.AgentServerEvent | bytes]:
        """Typed events and agent speech (bytes, μ-law 8 kHz) until we close.

        An Error message, or a close we did not ask for, raises DeepgramClosed.
        """
        try:
            async for event in self.messages(dm.parse_agent_server, binary=True):
                if isinstance(event, dm.SettingsApplied) and not self.settings_applied.is_set():
                    self._go_live()
                yield event
                del event  # not kept while the next is awaited (socket.py, `messages`)
        except DeepgramClosed:
            self.stop_keepalive()  # no KeepAlive on a dead socket
            raise

    # --- control messages --------------------------------------------------------------------

    async def function_result(self, call_id: str, name: str, content: str) -> None:
        """Answer a client-side FunctionCallRequest (same id and name)."""
        await self._control(dm.function_call_response(call_id, name, content))

    async def update_prompt(self, prompt: str) -> None:
        await self._control(dm.update_prompt(prompt))

    async def inject_agent_message(self, message: str, behavior: str | None = None) -> None:
        await self._control(dm.inject_agent_message(message, behavior))

    async def inject_user_message(self, content: str) -> None:
        await self._control(dm.inject_user_message(content))

    async def _control(self, message: str) -> None:
        # Nothing but audio may precede SettingsApplied; these wait for it.
        await self.settings_applied.wait()
        try:
            await self.ws.send(message)
        except ConnectionClosed as exc:
            raise self.closed(f"agent closed: {exc}") from None

    # --- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop KeepAlive, send the audio tail, close with 1000. Safe to call more than once."""
        assert self._chunker is not None
        tail = self._chunker.flush() if self._live else None
        # The agent does not close on its own: we close at once, without waiting for it.
        await self.close_politely(*([tail] if tail else []), wait_for_server=False)
