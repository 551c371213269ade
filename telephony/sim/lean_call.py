"""The lean fake Twilio callers of `telephony bench`, and their dialling.

Cost model (the generator must drive hundreds of calls from one core, so the figures are the
service's, not the generator's):

- A caller is one `asyncio.Protocol` on websockets' sans-I/O `ClientProtocol` (its frames
  written by `telephony.client_frames`): no task per call and none per frame. Its 20 ms frames
  are sent from the loop's one `FrameClock` (sim/lean_wire.py: a timer per 1 ms slot, shared
  by every caller, on absolute deadlines, so lateness never accumulates), each built from a
  per-call template (`MediaText`) and written straight to the socket's transport; the same
  tick plays out the bot audio through the fakes' one model of Twilio's play-out buffer
  (sim/playout.py, positions only: no bytes kept) and echoes the marks whose audio has played.
- Received text frames are cut by `ServerFrames` (every other frame goes to websockets);
  media in the service's own shape is decoded with strict base64 (`media_payload`), everything
  else is parsed by `telephony.twilio.messages.parse_outbound`, as strictly as Twilio does.
- The webhook hop is sim/webhook.py's, as for the full fake caller.

Every caller reports to the `Probes` of telephony.sim.load (its frames carry their tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httpx
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from telephony.client_frames import text_frame
from telephony.http_pool import tls_context
from telephony.sim.lean_wire import (
    FrameClock,
    MediaText,
    ServerFrames,
    media_payload,
    media_prefix,
)
from telephony.sim.load import BURST_GAP_S, FRAME_S, NO_REPLY_S, OUT_MAGIC, OUT_TAG, RING, Probes
from telephony.sim.playout import MarkEcho, PlayoutBuffer
from telephony.sim.stamped import StampedTransport
from telephony.sim.webhook import DEFAULT_ACCOUNT_SID, dial_stream, signature_header
from telephony.twilio import messages as tm


class LeanCall(asyncio.Protocol):
    """One fake Twilio media stream: a protocol on the shared frame clock, no tasks."""

    def __init__(
        self,
        probes: Probes,
        index: int,
        call_sid: str,
        url: str,
        headers: dict[str, str],
        parameters: dict[str, str],
        account_sid: str = DEFAULT_ACCOUNT_SID,
    ) -> None:
        self.probes = probes
        self.index = index
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.ws = ClientProtocol(parse_uri(url), max_size=2**20)
        self._headers = headers
        self.builder = tm.InboundBuilder(
            self.stream_sid, call_sid, account_sid, custom_parameters=parameters
        )
        self.loop = asyncio.get_running_loop()
        self.clock = FrameClock.of(self.loop)
        self.transport: StampedTransport | None = None  # writes go to the loop's transport
        self._write: Callable[[bytes], object] | None = None  # the loop transport's own write
        self.sending = False  # media goes out: open, started, not hanging up nor closing
        self.media_text = MediaText(self.builder, index)
        self._media_prefix = media_prefix(self.stream_sid)
        self._frames: ServerFrames | None = None  # once open and websockets' parser is idle
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.player = PlayoutBuffer(0.0, keep_audio=False)  # times unused: positions only
        self.sent_at = probes.sent_at[index]
        self.n = 0  # next frame number
        self.t0_mono = 0.0  # monotonic deadline of frame 0 (its slot's)
        self.hanging_up = False
        self.server_closed = False
        self.eot_at: float | None = None  # the open EndOfTurn interval's start
        self.replies = 0  # EndOfTurns so far: the open interval's reply is (index, replies)
        # pacing jitter: the current run of bot audio
        self._run_t = 0.0
        self._run_n = 0
        self._last_arrival = 0.0
        self._bursts = 0
        self._run_lateness: list[float] = []
        probes.register(self)

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = StampedTransport(transport, self)
        # The per-frame writes skip the proxy's attribute lookup.
        self._write = transport.write  # type: ignore[attr-defined]
        request = self.ws.connect()
        for name, value in self._headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport.detach()
        self._stop_sending()
        self._end_run()
        if not self.hanging_up and self.opened.done():
            self.server_closed = True
            self.probes.errors["server_closed_call"] += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"media socket lost: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.ws.close_expected():
            self.loop.call_later(1.0, transport.close)

    def _send(self, text: str) -> None:
        transport = self.transport
        if self.ws.state is State.OPEN and transport is not None and not transport.is_closing():
            transport.write(text_frame(text.encode()))  # as ws.send_text would, but leaner

    def start(self) -> None:
        """After the upgrade: `connected`, `start`, then a frame every 20 ms (the first at the
        next slot of the frame clock, within a millisecond)."""
        self._send(self.builder.connected())
        self._send(self.builder.start())
        self.sending = self.ws.state is State.OPEN
        if self.sending:
            self.t0_mono = self.clock.join(self._tick)

    def _stop_sending(self) -> None:
        if self.sending:
            self.sending = False
            self.clock.leave(self._tick)

    def hang_up(self) -> None:
        """`stop`, then close the socket."""
        if self.hanging_up:
            return
        self.hanging_up = True
        self._stop_sending()
        self._end_run()
        if self.ws.state is State.OPEN:
            self._send(self.builder.stop())
            self.ws.send_close(1000)
            self._flush()
        elif self.transport is not None:
            self.transport.close()

    # --- sending ------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self.sending:
            return
        now = time.monotonic()
        n = self.n
        probes = self.probes
        if probes.recording:
            probes.send_lag.append((now - self.t0_mono - n * FRAME_S) * 1000)
            probes.caller_frames += 1
        player = self.player
        if player.queued > player.pos or player.marks:  # else nothing to play nor echo
            echoes = player.advance(now)
            if echoes:
                self._echo(echoes)
        self.sent_at[n % RING] = now
        assert self._write is not None
        self._write(self.media_text.frame(n))
        if self.eot_at is not None and now - self.eot_at > NO_REPLY_S:
            self.eot_at = None
            probes.errors["turn_without_reply"] += 1
        self.n = n + 1

    def _echo(self, echoes: Iterable[MarkEcho]) -> None:
        for echo in echoes:
            self._send(self.builder.mark(echo.name))

    # --- receiving ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        read_at = time.monotonic()
        assert self.transport is not None
        # Probes use the time the bytes reached the socket; how late this loop read them is the
        # generator's own health, reported apart.
        now = self.transport.received_at
        if self.probes.recording:
            self.probes.read_lag.append((read_at - now) * 1000)
        frames = self._frames
        if frames is not None:
            texts, rest = frames.feed(data)
            for text in texts:
                self._on_text(text, now)
            if not rest:
                return
            self._frames = None
            data = rest
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    body = event.data
                    self._on_text(body if isinstance(body, bytes) else bytes(body), now)
                elif event.opcode is Opcode.BINARY:
                    self.probes.errors["binary_frame_31950"] += 1
            elif isinstance(event, Response) and not self.opened.done():
                if self.ws.handshake_exc is not None:
                    self.opened.set_exception(self.ws.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()
        ws = self.ws
        if ws.state is not State.OPEN:
            self._stop_sending()
        elif self.opened.done() and not ws.reader.buffer and ws.current_size is None:
            self._frames = ServerFrames()  # websockets' parser idle at a frame boundary

    def eof_received(self) -> bool | None:
        if self._frames is not None and self._frames.buffer:  # a frame cut short: websockets'
            self.ws.receive_data(self._frames.buffer)
        self._frames = None
        self.ws.receive_eof()
        self._flush()
        return None

    def _on_text(self, data: bytes, now: float) -> None:
        if self.hanging_up:
            return
        payload = media_payload(data, self._media_prefix)
        if payload is not None:
            self._on_media(payload, now)
            return
        try:
            msg = tm.parse_outbound(data, self.stream_sid)
        except tm.MessageError:
            self.probes.errors["bad_outbound_31951"] += 1
            return
        if isinstance(msg, tm.OutboundMedia):
            self._on_media(msg.payload, now)
        elif isinstance(msg, tm.OutboundMark):
            self._echo(self.player.mark(msg.name, now))
        else:
            self._end_run()
            self._echo(self.player.clear(now))

    def _on_media(self, payload: bytes, now: float) -> None:
        probes, player = self.probes, self.player
        runs = len(player.segments)
        echoes = player.media(payload, now)
        new_run = len(player.segments) > runs  # playback started from idle
        if echoes:
            self._echo(echoes)
        if player.warnings:
            probes.errors["buffer_over_10min_31931"] += len(player.warnings)
            player.warnings.clear()
        recording = probes.recording
        if recording:
            probes.bot_frames += 1
        tagged: tuple[float | None, float] | None = None  # its Flush at Aura, Aura's send
        if payload[:4] == OUT_MAGIC:
            _, tts_id = OUT_TAG.unpack_from(payload)
            sent = probes.tts_sent.pop(tts_id, None)
            if sent is not None:
                tagged = probes.tts_flushed.pop(tts_id, None), sent
                if recording:
                    probes.outbound.append((now - sent) * 1000)
        if self.eot_at is not None and now >= self.eot_at:
            probes.first_audio((self.index, self.replies), self.eot_at, now, tagged)
            self.eot_at = None
        # pacing jitter
        if new_run:
            self._end_run()
            self._run_t, self._run_n, self._bursts = now, 0, 0
        elif now - self._last_arrival > BURST_GAP_S:
            self._bursts += 1
            self._run_lateness.append(now - self._run_t - self._run_n * FRAME_S)
        self._last_arrival = now
        self._run_n += 1

    def _end_run(self) -> None:
        lateness = self._run_lateness
        if lateness:
            if self.probes.recording:
                least = min(lateness)
                self.probes.jitter.extend((x - least) * 1000 for x in lateness)
            lateness.clear()


# --- dialling ---------------------------------------------------------------------------------


class Dialer:
    """Places lean calls: through the voice webhook (the service) or straight to a socket."""

    def __init__(
        self,
        probes: Probes,
        *,
        base_url: str,
        auth_token: str,
        number: str,
        webhook: bool = True,
        media_url: str | None = None,
    ) -> None:
        self.probes = probes
        self.base_url = base_url.rstrip("/")
        self.auth_token = auth_token
        self.number = number
        self.webhook = webhook
        self.media_url = media_url
        self.http = httpx.AsyncClient(timeout=20, verify=tls_context())

    async def aclose(self) -> None:
        await self.http.aclose()

    async def dial(self, index: int) -> LeanCall:
        call_sid = "CA" + secrets.token_hex(16)
        if self.webhook:
            url, parameters = await self._webhook(call_sid)
        else:
            assert self.media_url is not None
            url, parameters = self.media_url, {}
        headers = signature_header(self.auth_token, url, {})  # the upgrade's: no parameters
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ConnectionError(f"no host in the media URL {url!r}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        loop = asyncio.get_running_loop()
        call = LeanCall(self.probes, index, call_sid, url, headers, parameters)
        await loop.create_connection(lambda: call, parts.hostname, port)
        async with asyncio.timeout(20):
            await call.opened
        call.start()
        return call

    async def _webhook(self, call_sid: str) -> tuple[str, dict[str, str]]:
        return await dial_stream(
            self.http, self.base_url, self.auth_token, call_sid, self.number, "+15550100000"
        )

    async def dial_all(self, indexes: Iterable[int], ramp_s: float) -> list[LeanCall]:
        """Calls started evenly over `ramp_s`; failures are counted, not raised.

        Their 20 ms frame clocks are spread evenly over the 20 ms (call k of n starts k/n of a
        frame after the grid), as independent calls' would be: started in step, every call's
        frame would leave in the same millisecond, a burst no real deployment sees.
        """
        indexes = list(indexes)
        count = max(1, len(indexes))
        step = ramp_s / count

        def delay(k: int) -> float:
            return math.floor(k * step / FRAME_S) * FRAME_S + k / count * FRAME_S

        async def one(i: int, k: int) -> LeanCall | None:
            await asyncio.sleep(delay(k))
            try:
                return await self.dial(i)
            except Exception as exc:
                self.probes.errors[f"dial_failed: {type(exc).__name__}"] += 1
                return None

        calls = await asyncio.gather(*(one(i, k) for k, i in enumerate(indexes)))
        return [c for c in calls if c is not None]


async def hang_up_all(calls: Iterable[LeanCall], within_s: float = 10.0) -> None:
    calls = list(calls)
    for call in calls:
        call.hang_up()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            await asyncio.gather(*(c.closed for c in calls), return_exceptions=True)
    for call in calls:
        if call.transport is not None and not call.closed.done():
            call.transport.abort()
