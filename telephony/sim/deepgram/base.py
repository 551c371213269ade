"""What every fake Deepgram connection shares: its log, sending, closing, faults, audio clock.

Cost model (the benchmark runs hundreds of these at once): a connection is its handler's
receive loop plus, only while speaking, one task per utterance burst. No task or timer per
frame: audio-keyed events are checked against one precomputed "next event" time per frame,
and idle timeouts, session caps and wall-clock faults are checked by the server's one ticker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from telephony.deepgram import messages as dm
from telephony.sim.deepgram.script import Fault, Script

Entry = tuple[float, str, Any]  # (loop.time(), kind, detail)
CHUNK_MS = 200  # outbound speech chunk: 1600 bytes of μ-law 8 kHz, like Aura's
NET_0001 = "NET-0001"  # Deepgram's "no audio or text message within the timeout window"
NET_0000 = "NET-0000"  # Deepgram's internal error (or nothing sent in time)


@dataclass
class Options:
    """The fake's knobs (FakeDeepgram's keyword arguments)."""

    api_key: str = "test-key"
    speak_ms_per_char: int = 60
    speak_first_byte_ms: int = 100
    speak_speedup: float = 4.0  # Aura sends faster than real time
    idle_timeout_s: float = 10.0  # Nova NET-0001 and the agent's CLIENT_MESSAGE_TIMEOUT
    flux_idle_timeout_s: float = 60.0  # maintainers' figure, unverified in docs
    flush_limit: int = 20
    flush_window_s: float = 60.0
    realtime: bool = True  # False: no first-byte delay and no pacing of outbound audio
    agent_session_cap_s: float = 7200.0
    agent_latency_s: float = 0.6  # reported in AgentStartedSpeaking (ttt; tts = first byte)
    agent_history: bool = True  # False: an agent that sends no History messages
    log_audio: bool = True  # False: count audio frames received, log none received or sent
    tick_s: float = 0.05


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which script and faults a connection got, and its index among its endpoint+tag."""

    script: Script
    faults: tuple[Fault, ...]
    tag: str | None
    index: int


# (endpoint, candidate tags) -> the script and faults for a new connection
Assign = Callable[[str, Sequence[str | None]], Assignment]


@dataclass(eq=False)
class ConnectionLog:
    """Everything one connection did, for assertions. Times are `loop.time()`."""

    endpoint: str  # "flux" | "speak" | "agent" | "listen"
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # of interest; credentials masked
    auth: str  # "token" | "bearer" | "subprotocol"
    opened_at: float
    request_id: str
    tag: str | None = None
    index: int | None = None  # Nth connection (0-based) of this endpoint and tag
    received: list[Entry] = field(default_factory=list)  # "audio", "json:<type>", "ping", ...
    sent: list[Entry] = field(default_factory=list)  # "audio", "json:<type>"
    violations: list[str] = field(default_factory=list)
    faults: list[tuple[float, Fault]] = field(default_factory=list)
    close_code: int | None = None  # 1005: closed with no status; 1006: dropped
    close_reason: str = ""
    closed_by: str | None = None  # "server" | "client" | "drop"
    audio_bytes: int = 0
    audio_frames: int = 0
    audio_ms: float = 0.0
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    async def wait_closed(self, within: float = 5.0) -> None:
        """Wait until the handler has finished (raises TimeoutError after `within` s)."""
        async with asyncio.timeout(within):
            await self._done.wait()

    def received_kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.received]

    def sent_kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.sent]

    def sent_messages(self, cls: type | None = None) -> list[Any]:
        """Decoded JSON messages the fake sent, optionally only of one message class."""
        msgs = [d for _, k, d in self.sent if k.startswith("json:")]
        return msgs if cls is None else [m for m in msgs if isinstance(m, cls)]

    def received_messages(self, cls: type | None = None) -> list[Any]:
        msgs = [d for _, k, d in self.received if k.startswith("json:")]
        return msgs if cls is None else [m for m in msgs if isinstance(m, cls)]

    def sent_audio_bytes(self) -> int:
        return sum(d for _, k, d in self.sent if k == "audio")


class AudioClock:
    """Audio time from bytes received: what Deepgram's timestamps count."""

    __slots__ = ("bytes", "bytes_per_ms", "frame_ms", "ms")

    def __init__(self, bytes_per_ms: float | None, frame_ms: float = 20.0) -> None:
        self.bytes_per_ms = bytes_per_ms
        self.frame_ms = frame_ms  # compressed audio: assume one frame per message (approximate)
        self.bytes = 0
        self.ms = 0.0

    def add(self, n: int) -> float:
        self.bytes += n
        self.ms = self.bytes / self.bytes_per_ms if self.bytes_per_ms else self.ms + self.frame_ms
        return self.ms


class Session:
    """One accepted connection. Subclasses implement the endpoint's behaviour."""

    endpoint: ClassVar[str]
    # A staticmethod in each subclass (the endpoint's parser), so no `self` is bound.
    parse_client: ClassVar[staticmethod[[str | bytes], Any]]

    clock: AudioClock  # set by each endpoint: its audio time drives the timeline
    next_at: float = math.inf  # audio ms of the next scripted event

    def __init__(self, opts: Options, ws: ServerConnection, log: ConnectionLog) -> None:
        self.opts = opts
        self.ws = ws
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.opened = self.loop.time()
        self.last_activity = self.opened  # what the idle timeout watches (per endpoint)
        self.closing = False
        self.silent = False
        self.faults: list[Fault] = []  # pending, by at_ms
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.on_open()
            async for data in self.ws:
                now = self.loop.time()
                if isinstance(data, bytes):
                    self._log_audio(data, now)
                    if not self.closing:  # a silent session still listens; it only says nothing
                        await self.on_binary(data, now)
                else:
                    msg = self._parse(data, now)
                    if not self.closing:
                        await self.on_message(msg, now)
        except ConnectionClosed:
            pass
        finally:
            for task in list(self._tasks):
                task.cancel()

    def _log_audio(self, data: bytes, now: float) -> None:
        self.log.audio_frames += 1
        if self.opts.log_audio or not data:
            self.log.received.append((now, "audio", len(data)))

    def _parse(self, text: str, now: float) -> Any:
        """The typed message, or the DeepgramMessageError (logged as "invalid")."""
        try:
            msg = type(self).parse_client(text)
        except dm.DeepgramMessageError as exc:
            self.log.received.append((now, "invalid", text[:200]))
            return exc
        wire_type = msg.type if isinstance(msg, dm.Unknown) else msg.TYPE
        self.log.received.append((now, f"json:{wire_type}", msg))
        return msg

    async def on_open(self) -> None:
        """Greet the client, fire faults due at 0 ms."""

    async def on_binary(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    async def on_message(self, msg: Any, now: float) -> None:
        raise NotImplementedError

    def on_ping(self) -> None:
        self.log.received.append((self.loop.time(), "ping", None))

    def tick(self, now: float) -> None:
        """Called by the server's ticker every `tick_s`: idle timeouts and wall-clock faults."""

    # --- output ------------------------------------------------------------------------------

    async def send(self, msg: dm._Wire) -> None:
        if self.silent or self.closing:
            return
        self.log.sent.append((self.loop.time(), f"json:{msg.TYPE}", msg))
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(dm.encode(msg))

    async def send_audio(self, data: bytes) -> None:
        if self.silent or self.closing:
            return
        if self.opts.log_audio:  # else (the benchmark) no entry per chunk, as for received
            self.log.sent.append((self.loop.time(), "audio", len(data)))
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(data)

    def violation(self, text: str) -> None:
        self.log.violations.append(text)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self, code: int | None, reason: str = "") -> None:
        """Start the closing handshake; code None sends a close frame with no status (1005).

        The handshake runs in a task so the receive loop keeps draining the client's frames
        (a paused reader could never see the client's close frame).
        """
        if self.closing or self.silent:
            return
        self.closing = True
        self.log.close_code = 1005 if code is None else code
        self.log.close_reason = reason
        self.log.closed_by = "server"
        self.spawn(self.ws.close(code, reason))  # type: ignore[arg-type]  # None is allowed

    def drop(self) -> None:
        """Abrupt TCP close with no close frame: the client sees 1006."""
        self.closing = True
        self.log.close_code, self.log.closed_by = 1006, "drop"
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def fail(self, error: dm._Wire | None, code: int, reason: str = "") -> None:
        """Send a fatal Error message (if the endpoint has one), then close."""
        if error is not None:
            await self.send(error)
        self.close(code, reason)

    def error_message(self, code: str, description: str) -> dm._Wire | None:
        """The endpoint's fatal JSON Error; None where errors are only a close frame (Aura)."""
        raise NotImplementedError

    # --- the scripted timeline ----------------------------------------------------------------

    def _next_event(self) -> tuple[float, str]:
        """(audio ms, kind) of the next scripted event; (inf, "") when none is left."""
        return math.inf, ""

    async def _emit(self, kind: str, at: float) -> None:
        raise NotImplementedError

    async def _advance(self) -> None:
        """Emit everything due at the current audio time, faults first, in audio-time order."""
        while not self.closing:
            at, kind = self._next_event()
            if self.next_fault_ms <= at and self.next_fault_ms <= self.clock.ms:
                await self.fire(self.faults.pop(0))
                continue
            if at > self.clock.ms:
                self.next_at = min(at, self.next_fault_ms)
                return
            await self._emit(kind, at)

    # --- faults ------------------------------------------------------------------------------

    def set_faults(self, faults: tuple[Fault, ...]) -> None:
        self.faults = sorted(faults, key=lambda f: f.at_ms)

    @property
    def next_fault_ms(self) -> float:
        return self.faults[0].at_ms if self.faults else math.inf

    async def fire_due_faults(self, at_ms: float) -> None:
        while self.faults and self.faults[0].at_ms <= at_ms and not self.closing:
            await self.fire(self.faults.pop(0))

    async def fire(self, fault: Fault) -> None:
        self.log.faults.append((self.loop.time(), fault))
        if fault.kind == "drop":
            self.drop()
        elif fault.kind == "close":
            self.close(fault.code, fault.reason)
        elif fault.kind == "silent":
            self.silent = True
        elif fault.kind == "error":
            error = self.error_message("INTERNAL_SERVER_ERROR", fault.reason or "injected fault")
            # Without a JSON Error the close frame's reason is all the client learns.
            reason = fault.reason or ("" if error is not None else NET_0000)
            await self.fail(error, 1011, reason)
        elif fault.kind == "stuck":
            self.on_stuck()

    def on_stuck(self) -> None:
        """Flux and Nova: the current (or next) turn never ends by itself."""

    # --- speech out (speak and agent) ---------------------------------------------------------

    async def first_byte_delay(self) -> None:
        if self.opts.realtime and self.opts.speak_first_byte_ms > 0:
            await asyncio.sleep(self.opts.speak_first_byte_ms / 1000)

    async def stream(self, audio: bytes, bytes_per_ms: float) -> None:
        """Send `audio` in 200 ms chunks, `speak_speedup` times faster than real time."""
        chunk = max(1, round(bytes_per_ms * CHUNK_MS))
        t0 = self.loop.time()
        for i, offset in enumerate(range(0, len(audio), chunk)):
            if self.opts.realtime:
                delay = t0 + i * CHUNK_MS / 1000 / self.opts.speak_speedup - self.loop.time()
                await asyncio.sleep(max(0.0, delay))
            else:
                await asyncio.sleep(0)  # let Clear / barge-in interleave
            await self.send_audio(audio[offset : offset + chunk])
