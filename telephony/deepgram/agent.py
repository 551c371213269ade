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
import contextlib
import copy
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from telephony.audio import Chunker
from telephony.config import Profile
from telephony.deepgram import messages as dm
from telephony.deepgram.connection import (
    AGENT_KEEPALIVE,
    KeepAlive,
    KeepAliveRule,
    KeepAliveSpec,
    build_url,
    open_socket,
    parse_or_skip,
    send_now,
)

log = logging.getLogger(__name__)

AGENT_PATH = "/v1/agent/converse"
WELCOME_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 3.0
MULAW_BYTES_PER_MS = 8
# Keyterm prompting exists for Flux and Nova-3 only; Nova-2 would reject the field.
KEYTERM_MODELS = ("flux-general-en", "flux-general-multi", "nova-3")

_NO_PARAMS: dict[str, Any] = {"type": "object", "properties": {}}
# defer_until_eot: Deepgram dispatches these only once the caller's turn is confirmed, never
# speculatively for a turn the caller then resumes (no goodbye over a caller still talking).
BUILTIN_FUNCTIONS: Mapping[str, dict[str, Any]] = MappingProxyType(
    {
        "end_call": {
            "name": "end_call",
            "description": "End the call after saying goodbye",
            "parameters": _NO_PARAMS,
            "defer_until_eot": True,
        },
        "transfer_call": {
            "name": "transfer_call",
            "description": "Transfer the caller to a person",
            "parameters": _NO_PARAMS,
            "defer_until_eot": True,
        },
    }
)


class AgentFatal(Exception):
    """The agent sent an Error, or closed the socket when we did not ask: the session is over."""


def settings_for_profile(
    profile: Profile,
    *,
    context: list[dict[str, Any]] | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """The Settings body for an agent-mode profile.

    `context`: prior turns, on a reconnect — then there is no greeting: the caller has had it.
    """
    agent = profile.agent
    if agent is None:
        raise ValueError("settings_for_profile needs a profile with an agent section")
    flux = agent.listen_model.startswith("flux")
    return dm.agent_settings(
        prompt=agent.think_prompt,
        greeting=None if context else profile.greeting,
        listen_model=agent.listen_model,
        think_provider={"type": agent.think_provider, "model": agent.think_model},
        speak_model=agent.speak_voice,
        functions=_functions(profile),
        context_messages=context,
        eot_threshold=agent.eot_threshold if flux else None,
        eot_timeout_ms=agent.eot_timeout_ms if flux else None,
        keyterms=_keyterms(agent.listen_model, agent.keyterms),
        tags=tags,
    )


def _keyterms(listen_model: str, keyterms: list[str]) -> list[str] | None:
    if not keyterms:
        return None
    if listen_model not in KEYTERM_MODELS:
        log.warning("keyterms ignored: %s does not support keyterm prompting", listen_model)
        return None
    return list(keyterms)


def _functions(profile: Profile) -> list[dict[str, Any]]:
    """Built-ins first, then the profile's: only what the LLM sees (url/timeout stay ours)."""
    names = ["end_call", "transfer_call"] if profile.transfer_number else ["end_call"]
    out = [copy.deepcopy(BUILTIN_FUNCTIONS[n]) for n in names]
    for f in profile.agent.functions if profile.agent else ():
        function = {
            "name": f.name,
            "description": f.description,
            "parameters": copy.deepcopy(f.parameters),
        }
        if f.defer_until_eot:  # false is Deepgram's default: sent only when asked for
            function["defer_until_eot"] = True
        out.append(function)
    return out


class AgentClient:
    """One Voice Agent connection. Not reusable after close: reconnecting means a new client.

    `events()` must be consumed: it is where SettingsApplied is seen, which releases the
    buffered caller audio and starts the KeepAlive task.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        settings_body: dict[str, Any],
        *,
        max_buffered_ms: int = 10_000,
        keepalive_idle_s: float = AGENT_KEEPALIVE.idle_s,
        chunk_ms: int = 80,
        welcome_timeout_s: float = WELCOME_TIMEOUT_S,
    ) -> None:
        self.url = build_url(base_url, AGENT_PATH)  # the agent takes no query parameters
        self._api_key = api_key
        self._settings = dm.settings(settings_body)  # a bad body fails here, before a socket
        self._keepalive_spec = KeepAliveSpec(KeepAliveRule.JSON_WHEN_IDLE, keepalive_idle_s)
        self._welcome_timeout_s = welcome_timeout_s
        self._chunker = Chunker(chunk_ms=chunk_ms, bytes_per_ms=MULAW_BYTES_PER_MS)
        self._ws: ClientConnection | None = None
        self._keepalive: KeepAlive | None = None
        self._early: deque[tuple[int, bytes]] = deque()  # (call ms, frame) before SettingsApplied
        self._early_bytes = 0
        self._max_early_bytes = max_buffered_ms * MULAW_BYTES_PER_MS
        self._live = False  # True once SettingsApplied came and the early audio is out
        self._closing = False
        self.settings_applied = asyncio.Event()
        self.request_id: str | None = None  # from Welcome, for support tickets
        self.first_audio_ms: int | None = None  # call clock of this connection's first byte
        self.bytes_sent = 0
        self.dropped_bytes = 0  # early audio beyond max_buffered_ms (oldest dropped first)

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("AgentClient.connect() first")
        return self._ws

    @property
    def keepalives_sent(self) -> int:
        return self._keepalive.sent if self._keepalive is not None else 0

    # --- connecting --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket, wait for Welcome, send Settings. SettingsApplied comes via events()."""
        self._ws = await open_socket(self.url, self._api_key)
        try:
            await self._await_welcome(self._ws)
            await self._ws.send(self._settings)
        except ConnectionClosed as exc:
            raise AgentFatal(f"agent closed during setup: {exc}") from None
        except AgentFatal:
            await self._ws.close()
            raise

    async def _await_welcome(self, ws: ClientConnection) -> None:
        try:
            async with asyncio.timeout(self._welcome_timeout_s):
                raw = await ws.recv()
        except TimeoutError:
            raise AgentFatal(f"no Welcome within {self._welcome_timeout_s:g} s") from None
        if isinstance(raw, bytes):
            raise AgentFatal("expected Welcome, got binary")
        try:
            event = dm.parse_agent_server(raw)
        except dm.DeepgramMessageError as exc:
            raise AgentFatal(f"expected Welcome: {exc}") from None
        if isinstance(event, dm.AgentError):
            raise AgentFatal(f"agent error {event.code}: {event.description}")
        if not isinstance(event, dm.Welcome):
            what = event.type if isinstance(event, dm.Unknown) else event.TYPE
            raise AgentFatal(f"expected Welcome, got {what}")
        self.request_id = event.request_id

    # --- caller audio ------------------------------------------------------------------------

    def send_audio(self, timestamp_ms: int, ulaw: bytes) -> None:
        """One Twilio frame. Before SettingsApplied it is buffered; afterwards batched and sent.

        A dead socket is not raised here (the media loop must not die of it): events() reports it.
        """
        if self._closing:
            return
        if not self._live:
            self._buffer(timestamp_ms, ulaw)
            return
        self._send_frame(timestamp_ms, ulaw)

    def _buffer(self, timestamp_ms: int, ulaw: bytes) -> None:
        # Oldest out first: what remains joins the live stream without a gap.
        self._early.append((timestamp_ms, ulaw))
        self._early_bytes += len(ulaw)
        while self._early_bytes > self._max_early_bytes:
            _, old = self._early.popleft()
            self._early_bytes -= len(old)
            self.dropped_bytes += len(old)

    def _send_frame(self, timestamp_ms: int, ulaw: bytes) -> None:
        if self.first_audio_ms is None:
            self.first_audio_ms = timestamp_ms
        chunk = self._chunker.push(ulaw)
        if chunk is not None:
            if self._keepalive is not None:
                self._keepalive.audio_sent()
            if send_now(self.ws, chunk):  # a closed socket: events() ends the session
                self.bytes_sent += len(chunk)

    def _go_live(self) -> None:
        """SettingsApplied: start KeepAlive, send the early audio in order, then go direct."""
        self.settings_applied.set()
        self._keepalive = KeepAlive(self.ws, self._keepalive_spec)
        if self._early:
            log.debug("sending %d ms of audio held until SettingsApplied", self._early_bytes // 8)
        while self._early:
            timestamp_ms, ulaw = self._early.popleft()
            self._early_bytes -= len(ulaw)
            self._send_frame(timestamp_ms, ulaw)
        self._live = True

    # --- server events -----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[dm.AgentServerEvent | bytes]:
        """Typed events and agent speech (bytes, μ-law 8 kHz) until we close.

        An Error message, or a close we did not ask for, raises AgentFatal.
        """
        ws = self.ws
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    yield raw
                    continue
                event = parse_or_skip(raw, dm.parse_agent_server, "agent")
                if event is None:
                    continue
                if isinstance(event, dm.AgentError):
                    raise await self._fatal(f"agent error {event.code}: {event.description}")
                if isinstance(event, dm.SettingsApplied) and not self.settings_applied.is_set():
                    self._go_live()
                yield event
        except ConnectionClosed as exc:
            if not self._closing:
                raise await self._fatal(f"agent closed: {exc}") from None
            return
        if not self._closing:  # a clean close we did not ask for still ends the session
            raise await self._fatal(f"agent closed: {ws.close_code} {ws.close_reason or ''}")

    async def _fatal(self, why: str) -> AgentFatal:
        await self._stop_keepalive()
        return AgentFatal(why)

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
            raise AgentFatal(f"agent closed: {exc}") from None

    # --- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop KeepAlive, send the audio tail, close with 1000. Safe to call more than once."""
        self._closing = True
        await self._stop_keepalive()
        if self._ws is None:
            return
        tail = self._chunker.flush() if self._live else None
        if tail is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(tail)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.close(1000)

    async def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            # The task may already have died sending on a closed socket.
            with contextlib.suppress(ConnectionClosed):
                await self._keepalive.stop()
