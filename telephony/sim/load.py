"""The load generator of `telephony bench`: hundreds of fake Twilio callers, the fake Deepgram
and the fake LLM in one asyncio process, with the probes the benchmark reports.

Cost model (it must drive hundreds of calls from one core, so the figures are the service's,
not the generator's):

- A caller is one `asyncio.Protocol` on websockets' sans-I/O `ClientProtocol` (its frames
  written by `telephony.client_frames`): no task per call and none per frame. Its 20 ms frames
  are sent by one timer handle per call (`call_at` on an absolute deadline, so lateness never
  accumulates); the same tick plays out the bot audio
  (positions only, no bytes kept) and echoes the marks whose audio has played. Received frames
  are parsed by `telephony.twilio.messages.parse_outbound`, as strictly as Twilio does.
- Fake Deepgram is `FakeDeepgram` (audio frames counted, not logged) whose Flux, Aura and Agent
  sessions carry the probes below; the fake LLM is `FakeLLM`.

Probes (all times on `time.monotonic()`'s clock: CLOCK_MONOTONIC is system-wide on Linux, so
times taken here compare with nothing but times taken here — every probe starts and ends in this
process):

- **Inbound** (caller frame sent -> its bytes at fake Deepgram): every caller frame carries its
  call index and frame number in its first 4 payload bytes (the fakes do not listen to the
  audio). The caller notes the send time per frame; Flux (or the agent) reads the tags of
  every 160-byte frame of each binary message it receives. The bridge sends 80 ms chunks (4
  frames), so a frame waits 0-60 ms for its chunk to complete: `inbound` is measured on the
  frame that completes a chunk (no chunking wait: two loopback hops plus the bridge's work),
  `inbound_all` on every frame (chunking wait included).
- **Outbound** (Aura's first audio of a reply sent -> its first Twilio frame at the caller): the
  first chunk a fake Aura (or agent) sends after being idle starts with a 4-byte magic and a
  4-byte id; the caller recognises it in a media payload. Only those first chunks are measured:
  later audio is held back on purpose by the bridge's pacing.
- **Pacing jitter** (at the caller): bot audio comes in bursts (the playout sends every frame
  due within its lead each time it wakes). The first frame of each burst should arrive exactly
  n × 20 ms after the run's first frame plus a constant (the lead); its lateness against the
  run's least-late burst is the jitter. The first burst of a run (the lead itself) is left out.
- **EndOfTurn -> first audio**: Flux's EndOfTurn (the agent: its user ConversationText) is
  timed per call; the next media frame the caller receives closes the interval. A turn with no
  bot audio within `NO_REPLY_S` counts as an error.
- **Send lag**: how late each caller frame left against its 20 ms grid (the generator's own
  health: if this grows, the generator is the bottleneck).
- **Read lag**: how long after the kernel received a caller's bytes this loop read them (the
  generator's own lateness, which kernel receive times keep out of the probes above).

Receive times: the callers and fake Deepgram read their sockets through
`telephony.sim.stamped.StampedTransport`, and every probe that ends on a receive ("at the
caller", "at fake Deepgram") uses the time the bytes reached the socket (where Linux stamps
received packets; elsewhere, the time they were read).
Fake Deepgram times a binary frame as websockets parses it (`_StampedConnection`), not when
the session's task gets to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import struct
import time
import xml.etree.ElementTree as ET
from array import array
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from telephony.client_frames import text_frame
from telephony.deepgram import messages as dm
from telephony.sim.deepgram.agent import AgentSession
from telephony.sim.deepgram.flux import FluxSession
from telephony.sim.deepgram.script import AgentStep, Script, ScriptedTurn
from telephony.sim.deepgram.server import FakeConnection, FakeDeepgram
from telephony.sim.deepgram.speak import SpeakSession
from telephony.sim.stamped import StampedTransport
from telephony.twilio import messages as tm
from telephony.twilio.security import sign as twilio_sign

FRAME_BYTES = 160
FRAME_S = 0.02
TAG = struct.Struct(">HH")  # inbound frame tag: call index, frame number mod 2**16
NO_CALL = 0xFFFF  # μ-law silence (0xFF 0xFF) reads as this index: gap fill, not ours
FILLER = b"\xff" * (FRAME_BYTES - TAG.size)
RING = 1024  # send times kept per call: 20 s of frames
OUT_MAGIC = b"\x7e\x42\x7e\x42"
OUT_TAG = struct.Struct(">4sI")  # outbound tag: magic, id
BURST_GAP_S = 0.005  # frames further apart than this are separate playout wake-ups
NO_REPLY_S = 5.0  # a caller turn with no bot audio this long after its end is an error
MAX_LATENCY_S = 10.0  # probe matches older than this are stale ring entries, not latencies
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32

# The conversation every call has, repeated: the caller asks, the bot answers; the caller
# asks again while the answer plays (a barge-in), the bot answers that too.
CYCLE_MS = 8000
TURNS = (
    (500, 1500, "I would like to check on my order please"),
    (3000, 4000, "Actually let me ask about something else"),
)
REPLY_TEXT = "Sure, I can help you with that order today."  # one sentence: one Aura flush
SPEECH_MS = 1000  # agent: UserStartedSpeaking -> ConversationText(user)


def turns_for(total_ms: int) -> list[ScriptedTurn]:
    """The caller's turns (Flux) for a call of `total_ms` of audio."""
    out = []
    for cycle in range(0, total_ms, CYCLE_MS):
        out += [ScriptedTurn(cycle + a, cycle + b, text) for a, b, text in TURNS]
    return out


def agent_steps_for(total_ms: int) -> list[AgentStep]:
    """The same conversation for the Voice Agent (keyed on audio after SettingsApplied)."""
    return [
        AgentStep(at_ms=t.start_ms, user_text=t.text, reply_text=REPLY_TEXT, speech_ms=SPEECH_MS)
        for t in turns_for(total_ms)
    ]


def bench_script(total_ms: int) -> Script:
    """Flux turns and agent steps together: each endpoint reads its own part."""
    return Script(turns=turns_for(total_ms), agent=agent_steps_for(total_ms))


def reply_ms(ms_per_char: int) -> int:
    """How long the fake Aura speaks REPLY_TEXT (the relay's canned reply is this long)."""
    return len(REPLY_TEXT) * ms_per_char


# --- measurements ---------------------------------------------------------------------------


class Probes:
    """Where every probe writes: one per benchmark phase (server or relay)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sent_at = [array("d", bytes(8 * RING)) for _ in range(capacity)]
        self.calls: list[LeanCall | None] = [None] * capacity
        self.by_sid: dict[str, LeanCall] = {}
        self.recording = False  # only samples within the measurement window count
        self.inbound = array("d")  # ms, chunk-completing frames
        self.inbound_all = array("d")  # ms, every frame (chunking wait included)
        self.outbound = array("d")
        self.jitter = array("d")
        self.eot_to_audio = array("d")
        self.send_lag = array("d")
        self.read_lag = array("d")
        self.tts_sent: dict[int, float] = {}
        self._tts_ids = itertools.count(1)
        self.errors: Counter[str] = Counter()
        self.bot_frames = 0  # media frames the callers received (window only)
        self.caller_frames = 0  # media frames the callers sent (window only)
        self.turns = 0  # caller turns ended (window only)

    def register(self, call: LeanCall) -> None:
        self.calls[call.index] = call
        self.by_sid[call.call_sid] = call

    def on_inbound(self, data: bytes, now: float) -> None:
        """A binary frame reached fake Deepgram at `now`: the latency of each tagged frame."""
        if not self.recording:
            return
        last = len(data) - FRAME_BYTES
        sent_at, capacity = self.sent_at, self.capacity
        for offset in range(0, last + 1, FRAME_BYTES):
            index, number = TAG.unpack_from(data, offset)
            if index >= capacity:
                continue  # silence the bridge filled in, or not a tagged frame
            latency = now - sent_at[index][number % RING]
            if 0 <= latency < MAX_LATENCY_S:
                ms = latency * 1000
                self.inbound_all.append(ms)
                if offset == last:
                    self.inbound.append(ms)

    def call_of(self, data: bytes) -> LeanCall | None:
        """The caller whose audio this is (the agent learns its call from the tags)."""
        if len(data) < TAG.size:
            return None
        index, _ = TAG.unpack_from(data, 0)
        return self.calls[index] if index < self.capacity else None

    def end_of_turn(self, call: LeanCall | None) -> None:
        if call is not None:
            call.eot_at = time.monotonic()
            if self.recording:
                self.turns += 1

    def tag_outbound(self, data: bytes) -> bytes:
        if len(data) < OUT_TAG.size:
            return data
        tts_id = next(self._tts_ids)
        self.tts_sent[tts_id] = time.monotonic()
        return OUT_TAG.pack(OUT_MAGIC, tts_id) + data[OUT_TAG.size :]


# --- fake Deepgram with probes ----------------------------------------------------------------


class _ProbedFlux(FluxSession):
    probes: Probes

    async def send(self, msg: dm._Wire) -> None:
        if isinstance(msg, dm.TurnInfo) and msg.event == "EndOfTurn":
            self.probes.end_of_turn(self.probes.by_sid.get(self.params.tag or ""))
        await super().send(msg)


class _ProbedSpeak(SpeakSession):
    probes: Probes
    _tag_next = False

    async def _flush(self, now: float) -> None:
        idle = self.speaker is None
        await super()._flush(now)
        if idle and self.speaker is not None:
            self._tag_next = True  # the first audio of this burst is timed

    async def send_audio(self, data: bytes) -> None:
        if self._tag_next:
            self._tag_next = False
            data = self.probes.tag_outbound(data)
        await super().send_audio(data)


class _ProbedAgent(AgentSession):
    probes: Probes
    _tag_next = False
    _call: LeanCall | None = None

    async def on_binary(self, data: bytes, now: float) -> None:
        if self._call is None:
            self._call = self.probes.call_of(data)
        await super().on_binary(data, now)

    async def send(self, msg: dm._Wire) -> None:
        if isinstance(msg, dm.ConversationText) and msg.role == "user":
            self.probes.end_of_turn(self._call)
        await super().send(msg)

    def _say(self, text: str, *, answer: bool = False) -> None:
        if self.speaker is None:
            self._tag_next = True
        super()._say(text, answer=answer)

    async def send_audio(self, data: bytes) -> None:
        if self._tag_next:
            self._tag_next = False
            data = self.probes.tag_outbound(data)
        await super().send_audio(data)


_PROBED: dict[type, type] = {
    FluxSession: _ProbedFlux,
    SpeakSession: _ProbedSpeak,
    AgentSession: _ProbedAgent,
}


class _StampedConnection(FakeConnection):
    """Fake Deepgram's end of a socket, read with kernel receive times (telephony.sim.stamped):
    the inbound probe times each binary frame as websockets parses it, at the time its bytes
    reached the socket, not when a session task got round to it."""

    probes: Probes | None = None  # set once the handshake is done (BenchDeepgram._session)
    _stamped: StampedTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stamped = StampedTransport(transport, self)
        super().connection_made(self._stamped)  # type: ignore[arg-type]  # a proxy

    def connection_lost(self, exc: Exception | None) -> None:
        self._stamped.detach()
        super().connection_lost(exc)

    def process_event(self, event: Any) -> None:
        probes = self.probes
        # The bridge never fragments its audio: a whole binary frame is a whole message.
        if probes is not None and isinstance(event, Frame) and event.opcode is Opcode.BINARY:
            probes.on_inbound(event.data, self._stamped.received_at)
        super().process_event(event)


class BenchDeepgram(FakeDeepgram):
    """FakeDeepgram whose Flux, Aura and Agent sessions report to `probes`."""

    connection_class = _StampedConnection

    def __init__(self, probes: Probes, **kwargs: Any) -> None:
        super().__init__(log_audio=False, **kwargs)
        self.probes = probes

    def _session(self, conn: Any, log: Any, acc: Any) -> Any:
        if isinstance(conn, _StampedConnection):
            conn.probes = self.probes
        session = super()._session(conn, log, acc)
        probed = _PROBED.get(type(session))
        if probed is not None:
            # The probed subclasses only override methods, so the built session is switched
            # to one (the server builds its sessions itself; this keeps that code untouched).
            session.__class__ = probed
            session.probes = self.probes
        return session


# --- the callers ------------------------------------------------------------------------------


class _Player:
    """Twilio's play-out buffer, by position only: what has played, and the pending marks."""

    __slots__ = ("marks", "pos", "queued", "run_pos", "run_t")

    def __init__(self) -> None:
        self.queued = 0  # bytes received
        self.pos = 0  # bytes played
        self.run_t = 0.0
        self.run_pos = 0
        self.marks: deque[tuple[str, int]] = deque()

    def advance(self, now: float) -> list[str]:
        if self.queued > self.pos:
            played = self.run_pos + int((now - self.run_t) * 8000 + 1e-6)
            self.pos = min(self.queued, played)
        echoes = []
        while self.marks and self.marks[0][1] <= self.pos:
            echoes.append(self.marks.popleft()[0])
        return echoes

    def media(self, n: int, now: float) -> tuple[bool, list[str]]:
        """Queue n bytes; (True if playback starts now from idle, marks now echoed)."""
        echoes = self.advance(now)
        idle = self.pos >= self.queued
        if idle:
            self.run_t, self.run_pos = now, self.pos
        self.queued += n
        return idle, echoes

    def mark(self, name: str, now: float) -> list[str]:
        echoes = self.advance(now)
        if self.queued > self.pos:
            self.marks.append((name, self.queued))
        else:
            echoes.append(name)  # nothing buffered: echoed at once
        return echoes

    def clear(self, now: float) -> list[str]:
        self.advance(now)
        self.queued = self.pos
        echoes = [name for name, _ in self.marks]
        self.marks.clear()
        return echoes


class LeanCall(asyncio.Protocol):
    """One fake Twilio media stream: a protocol, a timer handle, no tasks."""

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
        self.transport: StampedTransport | None = None  # writes go to the loop's transport
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.player = _Player()
        self.sent_at = probes.sent_at[index]
        self.n = 0  # next frame number
        self.t0 = 0.0  # loop time of frame 0 (scheduling)
        self.t0_mono = 0.0  # monotonic time of frame 0 (measuring)
        self._timer: asyncio.TimerHandle | None = None
        self.hanging_up = False
        self.server_closed = False
        self.eot_at: float | None = None
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
        request = self.ws.connect()
        for name, value in self._headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport.detach()
        if self._timer is not None:
            self._timer.cancel()
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
        """After the upgrade: `connected`, `start`, then a frame every 20 ms."""
        self._send(self.builder.connected())
        self._send(self.builder.start())
        self.t0 = self.loop.time()
        self.t0_mono = time.monotonic()
        self._tick()

    def hang_up(self) -> None:
        """`stop`, then close the socket."""
        if self.hanging_up:
            return
        self.hanging_up = True
        if self._timer is not None:
            self._timer.cancel()
        self._end_run()
        if self.ws.state is State.OPEN:
            self._send(self.builder.stop())
            self.ws.send_close(1000)
            self._flush()
        elif self.transport is not None:
            self.transport.close()

    # --- sending ------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.hanging_up or self.ws.state is not State.OPEN:
            return
        now = time.monotonic()
        n = self.n
        probes = self.probes
        if probes.recording:
            probes.send_lag.append((now - self.t0_mono - n * FRAME_S) * 1000)
            probes.caller_frames += 1
        echoes = self.player.advance(now)
        if echoes:
            self._echo(echoes)
        self.sent_at[n % RING] = now
        self._send(self.builder.media(TAG.pack(self.index, n & 0xFFFF) + FILLER, n * 20))
        if self.eot_at is not None and now - self.eot_at > NO_REPLY_S:
            self.eot_at = None
            probes.errors["turn_without_reply"] += 1
        self.n = n + 1
        self._timer = self.loop.call_at(self.t0 + self.n * FRAME_S, self._tick)

    def _echo(self, names: Iterable[str]) -> None:
        for name in names:
            self._send(self.builder.mark(name))

    # --- receiving ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        read_at = time.monotonic()
        assert self.transport is not None
        # Probes use the time the bytes reached the socket; how late this loop read them is the
        # generator's own health, reported apart.
        now = self.transport.received_at
        if self.probes.recording:
            self.probes.read_lag.append((read_at - now) * 1000)
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self._on_text(event.data, now)
                elif event.opcode is Opcode.BINARY:
                    self.probes.errors["binary_frame_31950"] += 1
            elif isinstance(event, Response) and not self.opened.done():
                if self.ws.handshake_exc is not None:
                    self.opened.set_exception(self.ws.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def _on_text(self, data: bytes, now: float) -> None:
        if self.hanging_up:
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
        probes = self.probes
        new_run, echoes = self.player.media(len(payload), now)
        if echoes:
            self._echo(echoes)
        recording = probes.recording
        if recording:
            probes.bot_frames += 1
        if payload[:4] == OUT_MAGIC:
            _, tts_id = OUT_TAG.unpack_from(payload)
            sent = probes.tts_sent.pop(tts_id, None)
            if sent is not None and recording:
                probes.outbound.append((now - sent) * 1000)
        if self.eot_at is not None and now >= self.eot_at:
            if recording:
                probes.eot_to_audio.append((now - self.eot_at) * 1000)
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
        self.http = httpx.AsyncClient(timeout=20)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def dial(self, index: int) -> LeanCall:
        call_sid = "CA" + secrets.token_hex(16)
        if self.webhook:
            url, parameters = await self._webhook(call_sid)
        else:
            assert self.media_url is not None
            url, parameters = self.media_url, {}
        headers = {"X-Twilio-Signature": twilio_sign(self.auth_token, url, {})}
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        call = LeanCall(self.probes, index, call_sid, url, headers, parameters)
        await loop.create_connection(lambda: call, parts.hostname, parts.port)
        async with asyncio.timeout(20):
            await call.opened
        call.start()
        return call

    async def _webhook(self, call_sid: str) -> tuple[str, dict[str, str]]:
        params = {
            "CallSid": call_sid,
            "AccountSid": DEFAULT_ACCOUNT_SID,
            "From": "+15550100000",
            "To": self.number,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        url = self.base_url + "/twilio/voice"
        headers = {"X-Twilio-Signature": twilio_sign(self.auth_token, url, params)}
        response = await self.http.post(url, data=params, headers=headers)
        response.raise_for_status()
        stream = ET.fromstring(response.content).find("./Connect/Stream")
        if stream is None or not stream.get("url"):
            raise ConnectionError(f"no <Stream> in TwiML: {response.text[:200]}")
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        return str(stream.get("url")), parameters

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
