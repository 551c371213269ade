"""The base of every Deepgram client (Flux, Aura, Voice Agent, Nova): one socket, its events
loop, its audio uplink, and how it ends.

What the four endpoints share lives here once:
- `events()`: server messages typed by the endpoint's parser (unparseable or unknown ones
  skipped, docs/protocol.md §7), binary frames passed on for endpoints that send audio, and
  every way the socket can end without our asking raised as one exception, `DeepgramClosed`,
  naming the endpoint and the reason (an Error message, a close frame, a dropped connection).
- `abort()`: drop the socket at once; its events loop then raises `DeepgramClosed`, so the
  link supervisor (telephony/session/link.py) replaces it.
- `close()`: polite and bounded; a close we asked for ends the events loop quietly.
- `send_chunked()`: the audio uplink: ~80 ms messages written without awaiting
  (`send_now`), and the KeepAlive timer touched per message, never per frame.

A client subclass keeps only its endpoint's own rules (Flux's Configure queue, Aura's flush
budget and Clear, the agent's Welcome/Settings, Nova's Finalize).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from telephony.audio import Chunker
from telephony.deepgram.connection import KeepAlive, open_socket, parse_or_skip, send_now

CLOSE_TIMEOUT_S = 2.0  # a polite close waits this long for the server's close, then drops


class DeepgramClosed(Exception):
    """A Deepgram socket ended without our asking, or could not start.

    `endpoint` is the link ("flux", "speak", "agent", "listen"), `code` and `reason` the close
    frame's when there was one (Aura reports its errors only there).
    """

    def __init__(
        self, endpoint: str, message: str, *, code: int | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.code = code
        self.reason = reason


class DeepgramSocket:
    """One client connection to a Deepgram endpoint. Not reusable: a reconnect is a new client."""

    endpoint: ClassVar[str]  # the link's name in events, metrics and errors
    label: ClassVar[str]  # how logs and error messages name it ("Flux", "Aura", ...)

    def __init__(self, url: str, api_key: str, *, chunker: Chunker | None = None) -> None:
        self.url = url
        self._api_key = api_key
        self._ws: ClientConnection | None = None
        self._closing = False  # a close we asked for is the end, not a failure
        self._chunker = chunker
        self.keepalive: KeepAlive | None = None  # JSON KeepAlives (Nova, Agent)
        self.first_audio_ms: int | None = None  # call clock of this connection's first frame
        self.bytes_sent = 0

    async def connect(self) -> None:
        self._ws = await open_socket(self.url, self._api_key)

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError(f"{type(self).__name__}.connect() first")
        return self._ws

    @property
    def keepalives_sent(self) -> int:
        return self.keepalive.sent if self.keepalive is not None else 0

    def closed(self, message: str, *, code: int | None = None, reason: str = "") -> DeepgramClosed:
        return DeepgramClosed(self.endpoint, message, code=code, reason=reason)

    # --- server -> us ---------------------------------------------------------------------------

    def error_of(self, event: Any) -> str | None:
        """The endpoint's Error message as a reason (it ends the socket), else None."""
        return None

    def events(self) -> AsyncIterator[object]:
        """The endpoint's server events until we close (each client overrides this with an
        async generator of its own event types, usually over `messages`)."""
        raise NotImplementedError(f"{type(self).__name__}.events")

    async def messages(
        self, parse: Callable[[str], Any], *, binary: bool = False
    ) -> AsyncIterator[Any]:
        """Typed server messages (and binary frames when `binary`) until the socket ends.
        Ends quietly after a close we asked for; any other end raises `DeepgramClosed`."""
        ws = self.ws
        try:
            while True:
                # recv() itself, not `async for raw in ws`: one async generator fewer per
                # message, and fewer objects held while the socket waits.
                try:
                    raw = await ws.recv()
                except ConnectionClosedOK:
                    break  # a clean close: as the end of `async for` (checked below)
                if isinstance(raw, bytes):
                    if binary:
                        yield raw
                    continue  # an endpoint that sends no binary: ignore, do not fail the call
                event = parse_or_skip(raw, parse, self.label)
                if event is None:
                    continue
                error = self.error_of(event)
                if error is not None:
                    raise self.closed(error)
                yield event
                # Not kept alive while the next message is awaited: every garbage collection
                # scans what an idle socket's wait holds (a TurnInfo: its words and tuple).
                del raw, event
        except ConnectionClosed as exc:
            if self._closing:
                return
            frame = exc.rcvd
            code, reason = (frame.code, frame.reason) if frame else (None, "")
            message = f"{self.label} closed: {frame or 'no close frame'}"
            raise self.closed(message, code=code, reason=reason) from None
        if not self._closing:  # a clean close we did not ask for is still the end
            code, reason = ws.close_code, ws.close_reason or ""
            message = f"{self.label} closed: {code or 'no status'} {reason}".rstrip()
            raise self.closed(message, code=code, reason=reason)

    # --- us -> server: audio --------------------------------------------------------------------

    def send_audio(self, timestamp_ms: int, ulaw: bytes) -> bool:
        """One Twilio frame (μ-law 8 kHz) at call time `timestamp_ms`; False when the socket
        is no longer open. Endpoints that listen override this; Aura takes no audio."""
        raise TypeError(f"{self.label} takes no audio")

    def send_chunked(self, data: bytes) -> bool:
        """Audio into the chunker; a binary message whenever a whole chunk is ready. False when
        the socket is no longer open (see `send_now`): the caller keeps the frame."""
        assert self._chunker is not None
        chunk = self._chunker.push(data)
        if chunk is None:
            return True
        if self.keepalive is not None:
            self.keepalive.audio_sent()
        if not send_now(self.ws, chunk):
            return False
        self.bytes_sent += len(chunk)
        return True

    # --- ending ---------------------------------------------------------------------------------

    def stop_keepalive(self) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()

    async def abort(self) -> None:
        """Drop a failed or silent socket at once (no closing handshake to wait for). Its
        events loop raises `DeepgramClosed`, so whoever supervises it replaces it."""
        self.stop_keepalive()
        if self._ws is not None:
            self._ws.transport.abort()
            with contextlib.suppress(Exception):
                await self._ws.wait_closed()

    async def close(self) -> None:
        """End the socket the endpoint's way (each client says how; by default a plain close)."""
        await self.close_politely(wait_for_server=False)

    async def close_politely(self, *last: str | bytes, wait_for_server: bool = True) -> None:
        """Send `last` (the tail of the audio, the endpoint's close message); with
        `wait_for_server` (the endpoint closes once it has answered them) wait a bounded time
        for that, then close ourselves with 1000. Safe to call more than once."""
        self._closing = True
        self.stop_keepalive()
        if self._ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            for message in last:
                await self._ws.send(message)
        if wait_for_server:
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._ws.wait_closed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.close(1000)
