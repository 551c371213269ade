"""What every Deepgram socket shares: URL building, auth, and the keep-alive rule per endpoint.

Each endpoint keeps its socket alive by its own rule (docs/protocol.md §2–6):
- Flux `/v2/listen`: WebSocket pings only. A JSON KeepAlive kills the socket.
- Nova `/v1/listen`: a `{"type":"KeepAlive"}` text frame every 3–5 s without audio.
- Agent `/v1/agent/converse`: KeepAlive about every 8 s, and only while no audio flows.
- Aura `/v1/speak`: none.
Pings are sent on every socket (they are harmless everywhere), all of a process's from one
clock (telephony/deepgram/ping_clock.py); the JSON rule is enforced by `KeepAlive`, a beat of
that same clock (no task) that runs once per idle period and costs nothing per audio frame
beyond storing a timestamp.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from telephony.client_frames import binary_frame, text_frame
from telephony.deepgram import ping_clock
from telephony.deepgram.messages import DeepgramMessageError, Unknown
from telephony.deepgram.ping_clock import PingClock

log = logging.getLogger(__name__)

E = TypeVar("E")

ParamValue = str | int | float | bool | Sequence[str] | None


class KeepAliveRule(Enum):
    WS_PING = "ws-ping"  # Flux
    JSON_WHEN_IDLE = "json-when-idle"  # Nova, Agent
    NONE = "none"  # Aura


@dataclass(frozen=True, slots=True)
class KeepAliveSpec:
    rule: KeepAliveRule
    idle_s: float = 0.0  # send a JSON KeepAlive after this long without audio


FLUX_KEEPALIVE = KeepAliveSpec(KeepAliveRule.WS_PING)
NOVA_KEEPALIVE = KeepAliveSpec(KeepAliveRule.JSON_WHEN_IDLE, idle_s=4.0)
AGENT_KEEPALIVE = KeepAliveSpec(KeepAliveRule.JSON_WHEN_IDLE, idle_s=8.0)
SPEAK_KEEPALIVE = KeepAliveSpec(KeepAliveRule.NONE)

KEEPALIVE_MESSAGE = '{"type":"KeepAlive"}'
KEEPALIVE_BYTES = KEEPALIVE_MESSAGE.encode()
PING_INTERVAL_S = 5.0  # WS pings double as dead-peer detection


def build_url(base: str, path: str, params: Mapping[str, ParamValue] | None = None) -> str:
    """`base` + `path` + query; lists repeat the key (e.g. keyterm), None values are left out."""
    items: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, bool):
            items.append((key, "true" if value else "false"))
        elif isinstance(value, str | int | float):
            items.append((key, str(value)))
        else:
            items.extend((key, str(v)) for v in value)
    url = base.rstrip("/") + path
    return f"{url}?{urlencode(items)}" if items else url


class _RedactAuthorization(logging.Filter):
    """websockets logs every handshake header at DEBUG (`> Authorization: Token <key>`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == "authorization":
            record.args = (args[0], "[redacted]")
        return True


# The Deepgram sockets' own websockets logger: a child of websockets.client (configured with
# it), whose header lines never carry the API key.
_WS_LOG = logging.getLogger("websockets.client.deepgram")
_WS_LOG.addFilter(_RedactAuthorization())


async def open_socket(url: str, api_key: str, *, open_timeout_s: float = 5.0) -> ClientConnection:
    """Connect with `Authorization: Token <key>`; handshake errors raise websockets' errors.
    Pinged every PING_INTERVAL_S by the loop's one ping clock (telephony/deepgram/
    ping_clock.py), or by websockets' own task per socket where that clock cannot run."""
    shared = ping_clock.SUPPORTED
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Token {api_key}"},
        logger=_WS_LOG,
        open_timeout=open_timeout_s,
        ping_interval=None if shared else PING_INTERVAL_S,
        ping_timeout=PING_INTERVAL_S * 2,
        max_size=2**22,
        compression=None,  # audio does not compress; deflate would cost CPU per frame
        proxy=None,
    )
    if shared:
        PingClock.of(asyncio.get_running_loop()).add(ws, PING_INTERVAL_S, PING_INTERVAL_S * 2)
    return ws


# A peer that stops reading: past this many unsent bytes the socket is given up (see send_now).
STALLED_BYTES = 256 * 1024  # 32 s of μ-law 8 kHz, 8 s of linear16 16 kHz


def send_now(ws: ClientConnection, audio: bytes) -> bool:
    """Write one binary message without awaiting: the audio path's send. False if the socket
    is not open (or has just been given up): the caller keeps the audio for the next socket.

    websockets' `send` is a coroutine that wraps the write in an async context manager and then
    awaits a drain; per audio chunk on hundreds of calls that machinery cost more than the
    write. Here the frame goes to the transport whole (telephony/client_frames.py: websockets'
    framing byte for byte, with a cheaper source of masking keys); what websockets writes
    itself (pings, pongs, text) goes out whole too, so frames never interleave. Instead of
    awaiting a drain, a socket whose unsent bytes pass STALLED_BYTES is aborted: its peer
    stopped reading (and websockets' pings, queued behind the same backlog, could never time
    out), so the events loop sees a closed socket and the engine reconnects and replays. We
    never send fragmented messages, so no fragment can be in progress here.
    """
    transport = ws.transport
    if ws.protocol.state is not State.OPEN or transport.is_closing():
        return False
    if transport.get_write_buffer_size() > STALLED_BYTES:
        log.warning("Deepgram socket stopped reading (%d bytes unsent): dropping it", STALLED_BYTES)
        transport.abort()
        return False
    transport.write(binary_frame(audio))
    return True


class KeepAlive:
    """Sends JSON KeepAlives on sockets whose rule asks for them, only while audio is idle: a
    beat of the loop's one ping clock, which holds it weakly (it goes with its socket)."""

    def __init__(self, ws: ClientConnection, spec: KeepAliveSpec) -> None:
        self._ws = ws
        self._idle_s = spec.idle_s
        self._loop = asyncio.get_running_loop()
        self.last_audio = self._loop.time()
        self._last_keepalive = -spec.idle_s
        self.sent = 0
        self._stopped = spec.rule is not KeepAliveRule.JSON_WHEN_IDLE
        if not self._stopped:
            PingClock.of(self._loop).add_beat(self, self.last_audio + self._idle_s)

    def audio_sent(self) -> None:
        """Called per audio message: one attribute store, no timer."""
        self.last_audio = self._loop.time()

    def beat(self, now: float) -> float | None:
        """A KeepAlive if audio has been idle for idle_s (and none went for as long); else
        when that could first be. Never on a clock: while audio flows this runs once per
        idle_s per socket, and a KeepAlive is never late."""
        ws = self._ws
        if self._stopped or ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            return None
        due = max(self.last_audio, self._last_keepalive) + self._idle_s
        if due > now:
            return due
        ws.transport.write(text_frame(KEEPALIVE_BYTES))  # whole, as send_now writes audio
        self._last_keepalive = now
        self.sent += 1
        return now + self._idle_s

    def stop(self) -> None:
        self._stopped = True


def parse_or_skip(raw: str, parse: Callable[[str], E | Unknown], endpoint: str) -> E | None:
    """A server text message, typed; None for one to skip: unparseable (logged, the call goes
    on) or of a type we do not know (newer API versions add some)."""
    try:
        event = parse(raw)
    except DeepgramMessageError as exc:
        log.warning("unparseable %s message skipped: %s", endpoint, exc)
        return None
    if isinstance(event, Unknown):
        log.debug("%s message %s skipped", endpoint, event.type)
        return None
    return event
