"""A fake Twilio caller: dials the service the way Twilio does and listens like a phone.

One call is: the voice webhook POST (signed), the TwiML answer, then the media WebSocket
(signed upgrade) carrying `connected`, `start`, real-time 20 ms μ-law frames, DTMF, mark echoes
and `stop`. What the service sends back is parsed as strictly as Twilio does and played out at
real time, so a mark is echoed only once the audio before it has played and `clear` drops
unplayed audio. Message formats come from telephony.twilio.messages, never from here.

`<Connect><Stream>` is the bidirectional stream; `<Start><Stream track="both_tracks">` then
`<Dial>` is a one-way fork while a person takes the call: each 20 ms tick then carries an
`inbound` frame (the caller's audio) and an `outbound` frame (what the caller hears: the
dialled person's `agent_audio`, from the fork's start), with the same timestamp. TwiML that a
REST update runs on the live call (`twiml_updates`, e.g. a transfer) ends the current stream
with `stop`, as Twilio does, and a `<Start><Stream>` in it opens a new stream for the same
call, whose caller audio carries on where the call clock is (`CallResult.forks`).

Used by tests, by the benchmark (hundreds of concurrent calls) and by `telephony call`, so a call
costs one receive task plus the dialling coroutine's send loop: no task per frame. The player is
advanced lazily from the monotonic clock, on every received message and every 20 ms tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from telephony.audio import FRAME_BYTES, FRAME_MS, TWILIO_RATE, read_wav_as_mulaw8k, silence
from telephony.audio import tone as tone  # re-exported for scripts, like silence and wav
from telephony.twilio import messages as tm
from telephony.twilio.security import sign as twilio_sign

BYTES_PER_S = TWILIO_RATE  # μ-law: one byte per sample
SILENCE_FRAME = silence(FRAME_MS)
MAX_BUFFER_BYTES = 10 * 60 * BYTES_PER_S  # Twilio warns (31931) past ~10 min buffered
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
# Twilio's media client identifies itself like this (observed, unverified); harmless either way.
USER_AGENT = "Twilio.TmeWs/1.0"

AudioSource = bytes | bytearray | memoryview


# --- audio sources: `silence(ms)` and `tone(freq_hz, ms)` come from telephony.audio ----------

wav = read_wav_as_mulaw8k  # a WAV file converted to μ-law 8 kHz mono


# --- the call's script: actions on the call clock ------------------------------------------


@dataclass(frozen=True, slots=True)
class SendDtmf:
    at_ms: int
    digit: str


@dataclass(frozen=True, slots=True)
class PauseStream:
    """No frames for `ms` (a network gap): the frames are lost and the next timestamp jumps.

    The source stays aligned to the call clock, so the audio of the gap is never heard.
    """

    at_ms: int
    ms: int


@dataclass(frozen=True, slots=True)
class SendRaw:
    """Send this frame verbatim (malformed-input tests); it takes no sequenceNumber."""

    at_ms: int
    data: str | bytes


@dataclass(frozen=True, slots=True)
class HangUp:
    """The caller hangs up: `stop`, then close."""

    at_ms: int


Action = SendDtmf | PauseStream | SendRaw | HangUp


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """What `start` announces; Twilio never varies it, tests of wrong formats do."""

    encoding: str = tm.MULAW_ENCODING
    sample_rate: int = tm.SAMPLE_RATE
    channels: int = 1
    tracks: tuple[str, ...] = ("inbound",)


# <Stream track=...> (with <Start>) -> the tracks Twilio sends; <Connect> is inbound only.
STREAM_TRACKS = {
    None: ("inbound",),
    "inbound_track": ("inbound",),
    "outbound_track": ("outbound",),
    "both_tracks": ("inbound", "outbound"),
}


# --- results --------------------------------------------------------------------------------


class Event(NamedTuple):
    ms: float  # call clock: ms since the stream opened (negative = before, e.g. the webhook)
    kind: str
    detail: str


@dataclass(slots=True)
class MarkEcho:
    name: str
    received_at_ms: float
    echoed_at_ms: float
    cleared: bool  # echoed because of `clear`: the audio before it was NOT (all) heard


@dataclass(slots=True)
class HeardSegment:
    """One uninterrupted run of played audio: byte i played at start_ms + i / 8."""

    start_ms: float
    length: int = 0
    audio: bytearray = field(default_factory=bytearray)  # empty when keep_audio=False

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.length * 1000 / BYTES_PER_S


@dataclass
class CallResult:
    call_sid: str
    stream_sid: str
    to: str
    from_number: str
    http_status: int | None = None
    twiml: str = ""
    verbs: list[str] = field(default_factory=list)  # top-level TwiML verbs, in order
    said: list[str] = field(default_factory=list)
    hung_up: bool = False  # TwiML ended the call with <Hangup/> or <Reject/>
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    fork: bool = False  # a one-way <Start><Stream> (the service must send nothing on it)
    track: str | None = None  # its <Stream track=...>
    dialled: list[str] = field(default_factory=list)  # <Dial> targets: numbers, "queue:NAME"
    forks: list[CallResult] = field(default_factory=list)  # streams opened by later TwiML
    ws_status: int | None = None  # HTTP status when the upgrade was refused
    heard: bytes = b""  # μ-law actually played; cleared and unplayed audio excluded
    heard_segments: list[HeardSegment] = field(default_factory=list)
    received_audio_bytes: int = 0
    cleared_bytes: int = 0
    unplayed_bytes: int = 0  # still buffered when the call ended
    marks: list[MarkEcho] = field(default_factory=list)
    unechoed_marks: list[str] = field(default_factory=list)  # pending when the call ended
    clears: list[float] = field(default_factory=list)
    outbound_errors: list[str] = field(default_factory=list)  # Twilio warnings 319xx
    close_code: int | None = None
    close_reason: str = ""
    closed_by: Literal["caller", "server"] | None = None
    sent_frames: int = 0
    events: list[Event] = field(default_factory=list)
    error: str | None = None  # transport failure (connection refused, bad TwiML, ...)

    def mark(self, name: str) -> MarkEcho | None:
        return next((m for m in self.marks if m.name == name), None)


# --- Twilio's play-out buffer ---------------------------------------------------------------


class PlayoutBuffer:
    """Twilio's per-stream play-out buffer, advanced lazily from a clock (seconds).

    Positions are absolute byte offsets into everything the service sent: `pos` is where the
    playhead is, `queued` where buffered audio ends. While audio is buffered the playhead moves
    at 8 bytes per ms from (run_t, run_pos); it starts when audio arrives while idle.
    """

    def __init__(
        self, origin: float, *, keep_audio: bool = True, max_bytes: int = MAX_BUFFER_BYTES
    ) -> None:
        self.origin = origin
        self.keep_audio = keep_audio
        self.max_bytes = max_bytes
        self.pending = bytearray()
        self.pos = 0
        self.queued = 0
        self.run_t = origin
        self.run_pos = 0
        self.marks: deque[tuple[str, int, float]] = deque()  # name, position, received ms
        self.segments: list[HeardSegment] = []
        self.cleared_bytes = 0
        self.warnings: list[str] = []
        self._overflowed = False

    def ms(self, now: float) -> float:
        return (now - self.origin) * 1000

    def advance(self, now: float) -> list[MarkEcho]:
        """Play up to `now`; return the marks whose audio has now played."""
        if self.pending:
            # The epsilon absorbs float error so a mark is never a byte late on exact clocks.
            played = int((now - self.run_t) * BYTES_PER_S + 1e-6)
            target = min(self.queued, self.run_pos + played)
            n = target - self.pos
            if n > 0:
                segment = self.segments[-1]
                if self.keep_audio:
                    segment.audio += memoryview(self.pending)[:n]
                segment.length += n
                del self.pending[:n]
                self.pos = target
        echoes = []
        while self.marks and self.marks[0][1] <= self.pos:
            name, _, received = self.marks.popleft()
            echoes.append(MarkEcho(name, received, self.ms(now), cleared=False))
        return echoes

    def media(self, payload: bytes, now: float) -> list[MarkEcho]:
        echoes = self.advance(now)
        if not payload:
            return echoes
        if not self.pending:  # idle: playback starts now
            self.run_t, self.run_pos = now, self.pos
            self.segments.append(HeardSegment(self.ms(now)))
        room = self.max_bytes - len(self.pending)
        if len(payload) > room:
            payload = payload[: max(room, 0)]
            if not self._overflowed:
                self._overflowed = True
                self.warnings.append("31931: more than 10 minutes of audio buffered; discarded")
        self.pending += payload
        self.queued += len(payload)
        return echoes

    def mark(self, name: str, now: float) -> list[MarkEcho]:
        echoes = self.advance(now)
        if self.pending:
            self.marks.append((name, self.queued, self.ms(now)))
        else:  # nothing buffered: echoed at once
            echoes.append(MarkEcho(name, self.ms(now), self.ms(now), cleared=False))
        return echoes

    def clear(self, now: float) -> list[MarkEcho]:
        """Drop unplayed audio and return every pending mark at once."""
        echoes = self.advance(now)
        self.cleared_bytes += len(self.pending)
        self.pending.clear()
        self.queued = self.pos
        at = self.ms(now)
        echoes += [MarkEcho(name, received, at, cleared=True) for name, _, received in self.marks]
        self.marks.clear()
        return echoes

    @property
    def heard(self) -> bytes:
        return b"".join(segment.audio for segment in self.segments)


# --- dialling ------------------------------------------------------------------------------


def _ws_scheme(scheme: str) -> str:
    return {"https": "wss", "http": "ws"}.get(scheme, scheme)


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class _Script:
    """The streaming half of `dial`'s options."""

    audio: AudioSource
    timeline: Sequence[Action]
    realtime: bool
    tail_ms: int | None
    ws_sign: bool | str
    connect_url: str | None
    stream_format: StreamFormat
    parameter_overrides: Mapping[str, str | None]
    hangup: asyncio.Event | None
    keep_audio: bool
    max_call_ms: int
    agent_audio: AudioSource = b""
    updates: asyncio.Queue[str] | None = None
    offset_ms: int = 0  # call clock at this stream's timestamp 0 (a later stream of the call)


class FakeTwilioCaller:
    """Places calls on the service like Twilio. One instance can dial many concurrent calls;
    all per-call state lives in the call (see _MediaStream)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth_token: str,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        public_url: str | None = None,
        from_number: str = "+15550001111",
        webhook_path: str = "/twilio/voice",
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The URL Twilio believes it calls: what both signatures cover.
        self.public_url = (public_url or base_url).rstrip("/")
        self.auth_token = auth_token
        self.account_sid = account_sid
        self.from_number = from_number
        self.webhook_path = webhook_path
        self.http = http

    async def dial(
        self,
        to: str,
        *,
        audio: AudioSource = b"",
        call_sid: str | None = None,
        timeline: Sequence[Action] = (),
        realtime: bool = True,
        tail_ms: int | None = 500,
        sign: bool | str = True,
        ws_sign: bool | str = True,
        connect_url: str | None = None,
        stream_format: StreamFormat | None = None,
        parameter_overrides: Mapping[str, str | None] | None = None,
        extra_params: Mapping[str, str] | None = None,
        hangup: asyncio.Event | None = None,
        keep_audio: bool = True,
        max_call_ms: int = 600_000,
        agent_audio: AudioSource = b"",
        twiml_updates: asyncio.Queue[str] | None = None,
    ) -> CallResult:
        """Place one call and return what happened.

        audio: μ-law 8 kHz sent as 20 ms frames from timestamp 0. After it, `tail_ms` of
        silence frames (a live line keeps sending), then `stop` and close; `tail_ms=None` keeps
        sending silence in real time until the server closes, `hangup` is set or `max_call_ms`.
        The call lasts at least until the last timeline action. realtime=False sends frames
        without pacing (content-only tests). sign/ws_sign: True = correct X-Twilio-Signature,
        False = none, a str = send that. parameter_overrides: change (None = drop) the
        customParameters echoed in `start`, e.g. to forge a token. agent_audio: what the
        dialled person says on a both_tracks fork (the outbound track), from the fork's start.
        twiml_updates: TwiML run on the live call by a REST update (put it here when the fake
        REST API receives it): the stream ends and a `<Start><Stream>` in it is followed.
        """
        result = CallResult(
            call_sid=call_sid or _new_sid("CA"),
            stream_sid=_new_sid("MZ"),
            to=to,
            from_number=self.from_number,
        )
        clock = _Clock(result)
        if not await self._webhook(result, clock, sign, extra_params or {}):
            clock.finish()
            return result
        script = _Script(
            audio=audio,
            timeline=sorted(timeline, key=lambda action: action.at_ms),
            realtime=realtime,
            tail_ms=tail_ms,
            ws_sign=ws_sign,
            connect_url=connect_url,
            stream_format=stream_format or StreamFormat(),
            parameter_overrides=parameter_overrides or {},
            hangup=hangup,
            keep_audio=keep_audio,
            max_call_ms=max_call_ms,
            agent_audio=agent_audio,
            updates=twiml_updates,
        )
        stream = _MediaStream(self, result, clock, script)
        await stream.run()
        clock.finish()
        await self._follow_updates(result, script, stream.t0)
        return result

    async def _follow_updates(self, result: CallResult, script: _Script, origin: float) -> None:
        """New TwiML on the live call: a `<Start><Stream>` in it is a new stream of the call,
        on the same call clock (origin: the first stream's start)."""
        updates = script.updates
        while updates is not None and not updates.empty() and origin:
            if script.hangup is not None and script.hangup.is_set():
                return
            fork = CallResult(
                call_sid=result.call_sid,
                stream_sid=_new_sid("MZ"),
                to=result.to,
                from_number=result.from_number,
            )
            fork.twiml = updates.get_nowait()
            result.forks.append(fork)
            clock = _Clock(fork)
            if not _read_twiml(fork, fork.twiml.encode(), clock):
                clock.finish()
                return
            offset_ms = round((time.monotonic() - origin) * 1000 / FRAME_MS) * FRAME_MS
            later = dataclasses.replace(
                script, offset_ms=offset_ms, parameter_overrides={}, stream_format=StreamFormat()
            )
            stream = _MediaStream(self, fork, clock, later)
            await stream.run()
            clock.finish()

    # -- the webhook hop --

    def webhook_params(self, result: CallResult, extra: Mapping[str, str]) -> dict[str, str]:
        return {
            "CallSid": result.call_sid,
            "AccountSid": self.account_sid,
            "From": result.from_number,
            "To": result.to,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
            **extra,
        }

    async def _webhook(
        self, result: CallResult, clock: _Clock, sign: bool | str, extra: Mapping[str, str]
    ) -> bool:
        """POST the voice webhook and read the TwiML; True when it says to open a stream."""
        params = self.webhook_params(result, extra)
        headers = {}
        if sign is True:
            headers["X-Twilio-Signature"] = twilio_sign(
                self.auth_token, self.public_url + self.webhook_path, params
            )
        elif sign:
            headers["X-Twilio-Signature"] = sign
        try:
            response = await self._post(self.base_url + self.webhook_path, params, headers)
        except httpx.HTTPError as exc:
            result.error = f"webhook failed: {exc!r}"
            return False
        result.http_status = response.status_code
        result.twiml = response.text
        clock.event("webhook", str(response.status_code))
        if response.status_code != 200:
            return False
        return _read_twiml(result, response.content, clock)

    async def _post(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> httpx.Response:
        if self.http is not None:
            return await self.http.post(url, data=params, headers=headers)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(url, data=params, headers=headers)

    def connect_target(self, stream_url: str) -> str:
        """Where to really connect: the public host is swapped for base_url's (tests, proxies)."""
        stream, public, base = (
            urlsplit(stream_url),
            urlsplit(self.public_url),
            urlsplit(self.base_url),
        )
        if stream.netloc != public.netloc:
            return stream_url
        return urlunsplit((_ws_scheme(base.scheme), base.netloc, stream.path, "", ""))


def _read_twiml(result: CallResult, body: bytes, clock: _Clock) -> bool:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        result.error = f"bad TwiML: {exc}"
        return False
    result.verbs = [child.tag for child in root]
    result.said = [(say.text or "") for say in root.iter("Say")]
    result.hung_up = any(verb in ("Hangup", "Reject") for verb in result.verbs)
    for dial in root.iter("Dial"):
        queue = dial.find("Queue")
        result.dialled.append(f"queue:{queue.text}" if queue is not None else (dial.text or ""))
    stream = root.find("./Connect/Stream")
    if stream is None:
        stream = root.find("./Start/Stream")
        result.fork = stream is not None
    if stream is None:
        clock.event("twiml", ",".join(result.verbs))
        return False
    result.track = stream.get("track")
    allowed = STREAM_TRACKS if result.fork else (None, "inbound_track")
    if result.track not in allowed:
        result.error = f"31941: invalid <Stream track={result.track!r}>"
        return False
    result.stream_url = stream.get("url")
    result.parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    clock.event("twiml", f"stream {result.stream_url}")
    return result.stream_url is not None


class _Clock:
    """Timestamps events on the call clock. Until the stream opens, times are kept raw and
    converted later, so the webhook shows up at negative ms."""

    def __init__(self, result: CallResult) -> None:
        self.result = result
        self.origin: float | None = None
        self._raw: list[tuple[float, str, str]] = []

    def start(self, origin: float) -> None:
        self.origin = origin

    def ms(self, now: float) -> float:
        return (now - (self.origin if self.origin is not None else now)) * 1000

    def event(self, kind: str, detail: str = "", now: float | None = None) -> None:
        self._raw.append((time.monotonic() if now is None else now, kind, detail))

    def finish(self) -> None:
        origin = self.origin
        if origin is None:  # no stream: times count from the dial
            origin = self._raw[0][0] if self._raw else 0.0
        self.result.events = [Event((t - origin) * 1000, k, d) for t, k, d in self._raw]


class _MediaStream:
    """The media WebSocket of one call: a send loop (this coroutine) and one receive task."""

    def __init__(
        self, caller: FakeTwilioCaller, result: CallResult, clock: _Clock, script: _Script
    ) -> None:
        self.caller = caller
        self.result = result
        self.clock = clock
        self.script = script
        params = {**result.parameters, **script.parameter_overrides}
        self.builder = tm.InboundBuilder(
            result.stream_sid,
            result.call_sid,
            caller.account_sid,
            custom_parameters={k: v for k, v in params.items() if v is not None},
        )
        self.player = PlayoutBuffer(time.monotonic(), keep_audio=script.keep_audio)
        self.closed = False  # the socket is gone (either side)
        self.stopped = False  # we sent `stop`: the caller sends nothing more
        self.t0 = 0.0  # monotonic start of the stream (0: it never opened)
        self.tracks = STREAM_TRACKS[result.track]

    async def run(self) -> None:
        ws = await self._open()
        if ws is None:
            return
        receiver: asyncio.Task[None] | None = None
        try:
            t0 = self.t0 = time.monotonic()
            self.clock.start(t0)
            self.player.origin = t0
            await ws.send(self.builder.connected())
            await ws.send(self._start_message())
            self.clock.event("start")
            receiver = asyncio.create_task(self._receive(ws))
            await self._send_frames(ws, t0)
        except ConnectionClosed:
            pass
        finally:
            await self._hang_up(ws)
            if receiver is not None:
                await receiver
            self._finish(ws)

    async def _open(self) -> ClientConnection | None:
        result, script = self.result, self.script
        assert result.stream_url is not None
        parts = urlsplit(result.stream_url)
        if parts.query:
            self.clock.event("query_dropped", parts.query)  # Twilio drops the query string
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        headers = {}
        if script.ws_sign is True:
            headers["X-Twilio-Signature"] = twilio_sign(self.caller.auth_token, url, {})
        elif script.ws_sign:
            headers["X-Twilio-Signature"] = script.ws_sign
        target = script.connect_url or self.caller.connect_target(url)
        try:
            ws = await connect(
                target,
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                compression=None,
                proxy=None,
                max_size=16 * 1024 * 1024,
            )
        except InvalidStatus as exc:
            result.ws_status = exc.response.status_code
            self.clock.event("ws_refused", str(result.ws_status))
            return None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            result.error = f"media socket failed: {exc!r}"
            return None
        self.clock.event("ws_open", target)
        return ws

    def _start_message(self) -> str:
        fmt = self.script.stream_format
        tracks = self.tracks if self.result.fork else fmt.tracks
        text = self.builder.start(fmt.encoding, fmt.sample_rate, tracks)
        if fmt.channels == 1:
            return text
        msg = orjson.loads(text)  # InboundBuilder fixes channels=1; patch for format tests
        msg["start"]["mediaFormat"]["channels"] = fmt.channels
        return orjson.dumps(msg).decode()

    # -- sending: one loop ticking every 20 ms on the call clock --

    def _end_tick(self) -> int | None:
        """Exclusive end of the frame ticks, or None to run until the server closes."""
        script = self.script
        if script.tail_ms is None:
            return None
        tail_ticks = math.ceil(script.tail_ms / FRAME_MS)
        audio_ticks = math.ceil(len(script.audio) / FRAME_BYTES)
        last_action = script.timeline[-1].at_ms if script.timeline else -FRAME_MS
        end = max(audio_ticks + tail_ticks, math.ceil(last_action / FRAME_MS) + 1)
        if "outbound" in self.tracks:  # the dialled person's audio counts from the fork's start
            agent_ticks = math.ceil(len(script.agent_audio) / FRAME_BYTES)
            end = max(end, script.offset_ms // FRAME_MS + agent_ticks + tail_ticks)
        return end

    @staticmethod
    def _frame_of(audio: AudioSource, n: int) -> bytes:
        if n * FRAME_BYTES >= len(audio):
            return SILENCE_FRAME  # the tail: a live line keeps sending
        frame = bytes(audio[n * FRAME_BYTES : (n + 1) * FRAME_BYTES])
        if len(frame) == FRAME_BYTES:
            return frame
        return frame + SILENCE_FRAME[len(frame) :]

    def _frame(self, n: int) -> bytes:
        return self._frame_of(self.script.audio, n)

    async def _send_frames(self, ws: ClientConnection, t0: float) -> None:
        """Tick n of this stream is tick `base + n` of the call: timestamps restart at 0 on a
        later stream of the call, the caller's audio and the timeline go on."""
        script = self.script
        base = script.offset_ms // FRAME_MS
        actions = deque(a for a in script.timeline if a.at_ms >= script.offset_ms)
        end = self._end_tick()
        audio_ticks = math.ceil(len(script.audio) / FRAME_BYTES)
        inbound, outbound = "inbound" in self.tracks, "outbound" in self.tracks
        pace_t, pace_n = t0, 0  # deadline of tick n = pace_t + (n - pace_n) * 20 ms
        paused_until = 0
        n = 0
        while not self.closed and (end is None or base + n < end):
            ts = n * FRAME_MS
            call_ts = script.offset_ms + ts
            if call_ts >= script.max_call_ms or (script.hangup and script.hangup.is_set()):
                return
            if script.updates is not None and not script.updates.empty():
                self.clock.event("twiml_update", "the stream ends")  # Twilio runs the new TwiML
                return
            # An open-ended tail is always real time: unpaced, it would flood the server.
            paced = script.realtime or (end is None and base + n >= audio_ticks)
            if paced and not script.realtime and base + n == audio_ticks:
                pace_t, pace_n = time.monotonic(), n
            await self._tick_wait(paced, pace_t + (n - pace_n) * FRAME_MS / 1000)
            while actions and actions[0].at_ms <= call_ts:
                action = actions.popleft()
                if isinstance(action, HangUp):
                    self.clock.event("hangup", f"at {call_ts}")
                    return
                if isinstance(action, PauseStream):
                    paused_until = max(paused_until, action.at_ms + action.ms)
                await self._act(ws, action, ts)
            await self._echo(ws, self.player.advance(time.monotonic()))
            if call_ts >= paused_until and not self.closed:
                if inbound:
                    await ws.send(self.builder.media(self._frame(base + n), ts))
                    self.result.sent_frames += 1
                if outbound:  # same timestamp: both tracks count from the stream's start
                    frame = self._frame_of(script.agent_audio, n)
                    await ws.send(self.builder.media(frame, ts, "outbound"))
                    self.result.sent_frames += 1
            n += 1

    @staticmethod
    async def _tick_wait(paced: bool, deadline: float) -> None:
        if paced:
            # Sleep to an absolute deadline so scheduling delays never accumulate.
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        else:
            await asyncio.sleep(0)  # let the receive task and the server run

    async def _act(self, ws: ClientConnection, action: Action, ts: int) -> None:
        if isinstance(action, SendDtmf):
            await ws.send(self.builder.dtmf(action.digit))
            self.clock.event("dtmf", action.digit)
        elif isinstance(action, PauseStream):
            self.clock.event("pause", f"{action.ms} ms from {ts}")
        elif isinstance(action, SendRaw):
            await ws.send(action.data)
            self.clock.event("raw", repr(action.data[:40]))

    async def _hang_up(self, ws: ClientConnection) -> None:
        if self.closed or ws.state is not State.OPEN:
            return  # the server closed first
        self.result.closed_by = self.result.closed_by or "caller"
        self.player.advance(time.monotonic())  # playback ends with the call
        self.stopped = True
        try:
            await ws.send(self.builder.stop())
            self.clock.event("stop")
        except ConnectionClosed:
            pass
        await ws.close(1000)

    # -- receiving: the service's media/mark/clear --

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                await self._handle(ws, data, time.monotonic())
        except ConnectionClosed:
            pass
        finally:
            if not self.stopped:  # else playback already ended at the hang-up
                self.player.advance(time.monotonic())
            self.closed = True
            self.result.closed_by = self.result.closed_by or "server"
            self.clock.event("closed", f"{ws.close_code} {ws.close_reason or ''}".strip())

    async def _handle(self, ws: ClientConnection, data: str | bytes, now: float) -> None:
        if self.stopped:
            return  # we hung up: nothing plays any more
        if self.result.fork:  # Twilio plays nothing from a one-way stream (reaction unverified)
            self._warn(f"one-way <Start><Stream>: message ignored: {data[:60]!r}", now)
            return
        if isinstance(data, bytes):
            self._warn(f"31950: binary frame ({len(data)} bytes)", now)
            return
        try:
            msg = tm.parse_outbound(data, self.result.stream_sid)
        except tm.MessageError as exc:
            self._warn(str(exc), now)
            return
        player = self.player
        if isinstance(msg, tm.OutboundMedia):
            runs = len(player.segments)
            echoes = player.media(msg.payload, now)
            self.result.received_audio_bytes += len(msg.payload)
            if len(player.segments) > runs:
                self.clock.event("audio_start", "", now)
            for warning in player.warnings:
                self._warn(warning, now)
            player.warnings.clear()
        elif isinstance(msg, tm.OutboundMark):
            self.clock.event("mark", msg.name, now)
            echoes = player.mark(msg.name, now)
        else:
            self.result.clears.append(self.clock.ms(now))
            self.clock.event("clear", f"{len(player.pending)} bytes", now)
            echoes = player.clear(now)
        await self._echo(ws, echoes)

    def _warn(self, warning: str, now: float) -> None:
        self.result.outbound_errors.append(warning)
        self.clock.event("warning", warning, now)

    async def _echo(self, ws: ClientConnection, echoes: list[MarkEcho]) -> None:
        for echo in echoes:
            self.result.marks.append(echo)
            self.clock.event("mark_echo", echo.name + (" (cleared)" if echo.cleared else ""))
            if not self.stopped and not self.closed:
                await ws.send(self.builder.mark(echo.name))

    def _finish(self, ws: ClientConnection) -> None:
        result, player = self.result, self.player
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
        result.heard_segments = player.segments
        result.heard = player.heard
        result.cleared_bytes = player.cleared_bytes
        result.unplayed_bytes = len(player.pending)
        result.unechoed_marks = [name for name, _, _ in player.marks]


async def run_calls(
    caller: FakeTwilioCaller, n: int, to: str, *, stagger_ms: int = 0, **dial_kwargs: object
) -> list[CallResult]:
    """n concurrent calls to one number, started `stagger_ms` apart."""

    async def one(i: int) -> CallResult:
        await asyncio.sleep(i * stagger_ms / 1000)
        return await caller.dial(to, **dial_kwargs)  # type: ignore[arg-type]

    return await asyncio.gather(*(one(i) for i in range(n)))
