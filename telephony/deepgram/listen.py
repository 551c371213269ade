"""Nova `/v1/listen` client: one side of a call's audio in, typed transcript events out.

One connection per side (track) of the call, not one `multichannel` connection with both
tracks interleaved. Twilio sends the two tracks as separate 20 ms mono frames, each with its
own timestamps; they arrive interleaved but not in lockstep, and either may have holes (the
outbound track only carries audio once someone answers, a network gap may hit one side).
Interleaving them into a 2-channel stream would need a jitter buffer on the audio path that
waits for both sides' frames and invents the missing ones, adding latency and state; a stall
on one side would stall the other. With one socket per side each is anchored on its own first
frame and keeps its own map from Deepgram's audio time to the call clock (`AudioMap`), a
failure or reconnect of one side leaves the other alone, and roles follow from the socket.
The cost is two concurrent connections per call (Deepgram's rate limit counts sockets) and
Deepgram billing the silence of both sides, as it would with multichannel.

Rules (docs/protocol.md §6): μ-law 8 kHz passes through untouched, in ~80 ms binary messages that
are never empty (a zero-length binary frame closes the stream). KeepAlive is a JSON *text*
frame, sent only after ~4 s without audio (`NOVA_KEEPALIVE`); Nova closes an idle socket after
~10 s (NET-0001). At the end: the buffered tail, `Finalize`, a bounded wait for the final
`Results` with `from_finalize`, then `CloseStream` and a bounded wait for `Metadata` and the
close, so the last words are not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed

from telephony.audio import MULAW_BYTES_PER_MS as BYTES_PER_MS
from telephony.audio import Chunker
from telephony.deepgram import messages as dm
from telephony.deepgram.clock import AudioMap
from telephony.deepgram.connection import NOVA_KEEPALIVE, KeepAlive, build_url
from telephony.deepgram.socket import DeepgramSocket

log = logging.getLogger(__name__)

LISTEN_PATH = "/v1/listen"
FINALIZE_WAIT_S = 2.0  # for the Results with from_finalize after Finalize
CLOSE_WAIT_S = 2.0  # for Metadata and the close after CloseStream


@dataclass(frozen=True, slots=True)
class ListenOptions:
    """The query of a /v1/listen socket (Deepgram's parameter names, telephony's defaults)."""

    model: str = "nova-3"
    language: str | None = "en"
    interim_results: bool = True
    endpointing: int | bool = 300  # ms of silence for speech_final, or False
    utterance_end_ms: int | None = 1000  # needs interim_results
    vad_events: bool = True
    smart_format: bool = True
    punctuate: bool = True
    diarize: bool = False
    numerals: bool = False
    profanity_filter: bool = False
    redact: tuple[str, ...] = ()
    keyterms: tuple[str, ...] = ()  # nova-3
    keywords: tuple[str, ...] = ()  # nova-2
    tags: tuple[str, ...] = field(default=())  # usage tags: profile's, call SID, side

    def query(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "encoding": "mulaw",
            "sample_rate": 8000,
            "language": self.language,
            "interim_results": self.interim_results,
            "endpointing": self.endpointing,
            # UtteranceEnd exists only with interim results (Deepgram refuses it otherwise)
            "utterance_end_ms": self.utterance_end_ms if self.interim_results else None,
            "vad_events": self.vad_events,
            "smart_format": self.smart_format,
            "punctuate": self.punctuate,
            "diarize": self.diarize or None,
            "numerals": self.numerals or None,
            "profanity_filter": self.profanity_filter or None,
            "redact": list(self.redact) or None,
            "keyterm": list(self.keyterms) or None,
            "keywords": list(self.keywords) or None,
            "tag": list(self.tags) or None,
        }


ListenEvent = dm.Results | dm.UtteranceEnd | dm.SpeechStarted | dm.ListenMetadata


class ListenClient(DeepgramSocket):
    """One Nova connection for one side of the call. Not reusable: reconnecting means a new
    client. `send_audio` never blocks on anything but the socket's own send."""

    endpoint = "listen"
    label = "Nova"

    def __init__(
        self, base_url: str, api_key: str, options: ListenOptions, *, chunk_ms: int = 80
    ) -> None:
        super().__init__(
            build_url(base_url, LISTEN_PATH, options.query()),
            api_key,
            chunker=Chunker(chunk_ms=chunk_ms, bytes_per_ms=BYTES_PER_MS),
        )
        self.options = options
        self.map = AudioMap()  # this connection's audio time -> call time
        self.bytes_in = 0  # audio given to this connection (sent or in the chunker)
        self._next_ts: int | None = None  # call time where the next frame should start
        self.finalized = asyncio.Event()  # a from_finalize Results has been handled
        self.metadata: dm.ListenMetadata | None = None
        self._ended = asyncio.Event()  # the events loop has finished

    async def connect(self) -> None:
        await super().connect()
        self.keepalive = KeepAlive(self.ws, NOVA_KEEPALIVE)

    def send_audio(self, timestamp_ms: int, ulaw: bytes) -> bool:
        """One Twilio frame; a binary message whenever a whole chunk is buffered. False when
        the socket is no longer open (the frame is not taken; see `send_now`)."""
        if not ulaw:
            return True  # an empty binary frame would close the stream
        if timestamp_ms != self._next_ts:  # the first frame, or a jump nobody filled
            if self.first_audio_ms is None:
                self.first_audio_ms = timestamp_ms
            self.map.note(self.bytes_in / BYTES_PER_MS, timestamp_ms)
        self.bytes_in += len(ulaw)
        self._next_ts = timestamp_ms + len(ulaw) // BYTES_PER_MS
        return self.send_chunked(ulaw)

    def to_call_ms(self, seconds: float) -> int:
        return self.map.to_call_ms(seconds)

    @property
    def audio_ms(self) -> float:
        return self.bytes_in / BYTES_PER_MS

    def error_of(self, event: object) -> str | None:
        if isinstance(event, dm.ListenError):
            what = event.variant or event.code  # `code` is legacy on the wire
            return f"Nova error {what}: {event.description}"
        return None

    async def events(self) -> AsyncIterator[ListenEvent]:
        """Server events until the socket closes; an Error or an unasked-for close raises
        DeepgramClosed. A close after our CloseStream ends the iteration normally."""
        try:
            async for event in self.messages(dm.parse_listen_server):
                if isinstance(event, dm.ListenMetadata):
                    self.metadata = event
                yield event
                # Set once the consumer has handled it, so `finish` knows the words are in.
                if isinstance(event, dm.Results) and event.from_finalize:
                    self.finalized.set()
                del event  # not kept while the next is awaited (socket.py, `messages`)
        finally:
            self._ended.set()

    async def finish(self) -> None:
        """The call is over: tail, Finalize, wait for its finals, CloseStream, wait for the
        close. Every wait is bounded; the events loop must be running to see the finals."""
        if self._ws is None:
            return
        self.stop_keepalive()
        assert self._chunker is not None
        with contextlib.suppress(ConnectionClosed):
            tail = self._chunker.flush()  # never empty
            if tail is not None:
                await self._ws.send(tail)
            await self._ws.send(dm.finalize())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINALIZE_WAIT_S):
                    await self.finalized.wait()
            self._closing = True  # from here a close is the answer to CloseStream
            await self._ws.send(dm.close_stream())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await self._ended.wait()
        self._closing = True
        await self._ws.close()
