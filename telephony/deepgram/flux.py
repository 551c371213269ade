"""Flux `/v2/listen` client: caller audio in, typed turn events out.

Audio goes up in ~80 ms binary messages (4 Twilio frames): μ-law 8 kHz passes through
untouched, or is transcoded to linear16 16 kHz when the profile asks. Keep-alive is WebSocket
pings only (a JSON KeepAlive kills a Flux socket). Times in TurnInfo count from this
connection's first audio byte; `first_audio_ms` anchors them to the call's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.exceptions import ConnectionClosed

from telephony.audio import Chunker, MulawToLinear16k
from telephony.deepgram import messages as dm
from telephony.deepgram.connection import DeepgramSocket, build_url, parse_or_skip, send_now

log = logging.getLogger(__name__)

FLUX_PATH = "/v2/listen"
CLOSE_TIMEOUT_S = 3.0


class FluxFatal(Exception):
    """Flux sent an Error message or closed the socket: the connection is unusable."""


@dataclass(frozen=True, slots=True)
class FluxOptions:
    model: str = "flux-general-en"
    encoding: Literal["mulaw", "linear16"] = "mulaw"
    eot_threshold: float | None = None
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int | None = None
    keyterms: tuple[str, ...] = field(default=())
    tag: str | None = None  # Deepgram usage tag; we send the call SID to attribute usage per call

    @classmethod
    def from_profile(cls, flux: Any) -> FluxOptions:
        """From the YAML profile's `flux` section."""
        return cls(
            model=flux.model,
            encoding=flux.encoding,
            eot_threshold=flux.eot_threshold,
            eager_eot_threshold=flux.eager_eot_threshold,
            eot_timeout_ms=flux.eot_timeout_ms,
            keyterms=tuple(flux.keyterms),
        )

    @property
    def sample_rate(self) -> int:
        return 8000 if self.encoding == "mulaw" else 16000

    @property
    def bytes_per_ms(self) -> int:
        return 8 if self.encoding == "mulaw" else 32

    def query(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "encoding": self.encoding,
            "sample_rate": self.sample_rate,
            "eot_threshold": self.eot_threshold,
            "eager_eot_threshold": self.eager_eot_threshold,
            "eot_timeout_ms": self.eot_timeout_ms,
            "keyterm": list(self.keyterms) or None,
            "tag": self.tag,
        }


class FluxClient(DeepgramSocket):
    """One Flux connection. Not reusable after close: reconnecting means a new client."""

    def __init__(
        self, base_url: str, api_key: str, options: FluxOptions, *, chunk_ms: int = 80
    ) -> None:
        super().__init__(build_url(base_url, FLUX_PATH, options.query()), api_key)
        self.options = options
        self._chunker = Chunker(chunk_ms=chunk_ms, bytes_per_ms=options.bytes_per_ms)
        self._transcode = MulawToLinear16k() if options.encoding == "linear16" else None
        self.first_audio_ms: int | None = None  # call clock of this connection's first byte
        self.bytes_sent = 0
        self._configure_in_flight = False
        self._configure_next: str | None = None

    def send_audio(self, timestamp_ms: int, ulaw: bytes) -> bool:
        """One Twilio frame; sends a binary message whenever a whole chunk is buffered. False
        when the socket is no longer open (the frame is not taken; see `send_now`)."""
        if self.first_audio_ms is None:
            self.first_audio_ms = timestamp_ms
        data = self._transcode.convert(ulaw) if self._transcode is not None else ulaw
        chunk = self._chunker.push(data)
        if chunk is None:
            return True
        if not send_now(self.ws, chunk):
            return False
        self.bytes_sent += len(chunk)
        return True

    async def events(self) -> AsyncIterator[dm.FluxServerEvent]:
        """Server events until the socket closes; Error and unexpected closes raise FluxFatal."""
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    continue  # Flux sends no binary; ignore rather than fail the call
                event = parse_or_skip(raw, dm.parse_flux_server, "Flux")
                if event is None:
                    continue
                if isinstance(event, dm.FluxError):
                    raise FluxFatal(f"Flux error {event.code}: {event.description}")
                if isinstance(event, dm.ConfigureSuccess | dm.ConfigureFailure):
                    await self._configure_acked()
                yield event
        except ConnectionClosed as exc:
            raise FluxFatal(f"Flux closed: {exc.rcvd or 'no close frame'}") from None
        if not self._closing:  # a clean close we did not ask for is still the end of Flux
            raise FluxFatal(f"Flux closed: {self.ws.close_code or 'no status'}")

    async def configure(
        self,
        *,
        eot_threshold: float | None = None,
        eager_eot_threshold: float | None = None,
        eot_timeout_ms: int | None = None,
        keyterms: Sequence[str] | None = None,
        language_hints: Sequence[str] | None = None,
    ) -> None:
        """Mid-stream Configure; one in flight, the newest waiting one replaces older ones."""
        message = dm.configure(
            eot_threshold=eot_threshold,
            eager_eot_threshold=eager_eot_threshold,
            eot_timeout_ms=eot_timeout_ms,
            keyterms=None if keyterms is None else list(keyterms),
            language_hints=None if language_hints is None else list(language_hints),
        )
        if self._configure_in_flight:
            self._configure_next = message
            return
        self._configure_in_flight = True
        await self.ws.send(message)

    async def _configure_acked(self) -> None:
        self._configure_in_flight = False
        if self._configure_next is not None:
            message, self._configure_next = self._configure_next, None
            self._configure_in_flight = True
            await self.ws.send(message)

    async def force_end_turn(self) -> None:
        await self.ws.send(dm.force_end_turn())

    async def abort(self) -> None:
        """Drop a failed or silent socket at once (no closing handshake to wait for)."""
        if self._ws is not None:
            self._closing = True
            self._ws.transport.abort()
            with contextlib.suppress(Exception):
                await self._ws.wait_closed()

    async def close(self) -> None:
        """Send the buffered tail and CloseStream; Flux closes without a status (1005)."""
        if self._ws is None:
            return
        self._closing = True
        with contextlib.suppress(ConnectionClosed):
            tail = self._chunker.flush()  # never empty
            if tail is not None:
                await self._ws.send(tail)
            await self._ws.send(dm.close_stream())
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.wait_closed()
        await self._ws.close()
