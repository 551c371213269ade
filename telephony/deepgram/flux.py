"""Flux `/v2/listen` client: caller audio in, typed turn events out.

Audio goes up in ~80 ms binary messages (4 Twilio frames): μ-law 8 kHz passes through
untouched, or is transcoded to linear16 16 kHz when the profile asks. Keep-alive is WebSocket
pings only (a JSON KeepAlive kills a Flux socket). Times in TurnInfo count from this
connection's first audio byte; `first_audio_ms` anchors them to the call's clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from telephony.audio import Chunker, MulawToLinear16k
from telephony.deepgram import messages as dm
from telephony.deepgram.connection import build_url
from telephony.deepgram.socket import DeepgramSocket

log = logging.getLogger(__name__)

FLUX_PATH = "/v2/listen"


@dataclass(frozen=True, slots=True)
class FluxOptions:
    model: str = "flux-general-en"
    encoding: Literal["mulaw", "linear16"] = "mulaw"
    eot_threshold: float | None = None
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int | None = None
    keyterms: tuple[str, ...] = field(default=())
    tag: str | None = None  # Deepgram usage tag; we send the call SID to attribute usage per call
    language_hints: tuple[str, ...] = field(default=())  # flux-general-multi only

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
            "language_hint": list(self.language_hints) or None,
        }


class FluxClient(DeepgramSocket):
    """One Flux connection. Not reusable after close: reconnecting means a new client."""

    endpoint = "flux"
    label = "Flux"

    def __init__(
        self, base_url: str, api_key: str, options: FluxOptions, *, chunk_ms: int = 80
    ) -> None:
        super().__init__(
            build_url(base_url, FLUX_PATH, options.query()),
            api_key,
            chunker=Chunker(chunk_ms=chunk_ms, bytes_per_ms=options.bytes_per_ms),
        )
        self.options = options
        self._transcode = MulawToLinear16k() if options.encoding == "linear16" else None
        self._configure_in_flight = False
        self._configure_next: str | None = None

    def send_audio(self, timestamp_ms: int, ulaw: bytes) -> bool:
        """One Twilio frame; sends a binary message whenever a whole chunk is buffered. False
        when the socket is no longer open (the frame is not taken; see `send_now`)."""
        if self.first_audio_ms is None:
            self.first_audio_ms = timestamp_ms
        return self.send_chunked(self._transcode.convert(ulaw) if self._transcode else ulaw)

    def error_of(self, event: Any) -> str | None:
        if isinstance(event, dm.FluxError):
            return f"Flux error {event.code}: {event.description}"
        return None

    async def events(self) -> AsyncIterator[dm.FluxServerEvent]:
        """Server events until we close; an Error or any other end raises DeepgramClosed."""
        async for event in self.messages(dm.parse_flux_server):
            if isinstance(event, dm.ConfigureSuccess | dm.ConfigureFailure):
                await self._configure_acked()
            yield event
            del event  # not kept while the next is awaited (socket.py, `messages`)

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

    async def close(self) -> None:
        """Send the buffered tail and CloseStream; Flux closes without a status (1005)."""
        assert self._chunker is not None
        tail = self._chunker.flush()
        await self.close_politely(*([tail] if tail else []), dm.close_stream())
