"""Fake Deepgram for `telephony bench`: `FakeDeepgram` (audio frames counted, not logged) whose
Flux, Aura and Agent sessions carry the probes of telephony.sim.load.

The bench's Flux sockets take the service's audio on a short path (`_StampedConnection`): a
whole masked binary frame is cut, unmasked and counted right where its bytes are read, while
the session's task is idle waiting, nothing is queued for it and no event is being emitted —
what the session's own loop would have done with it, without websockets' parser, its message
queue and a task wake-up per 80 ms chunk (py-spy at 300 calls: some 12 % of the generator's
samples). Events the audio makes due are emitted by a task (`_ProbedFlux.take_audio`) that the
session's next frame or message waits for. Every other frame (text, control), and everything
after it until the task is idle again, goes the usual way, so the order the session sees is
the order sent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.protocol import State

from telephony.client_frames import apply_mask
from telephony.deepgram import messages as dm
from telephony.sim.deepgram.agent import AgentSession
from telephony.sim.deepgram.flux import FluxSession
from telephony.sim.deepgram.server import FakeConnection, FakeDeepgram
from telephony.sim.deepgram.speak import SpeakSession
from telephony.sim.load import Probes
from telephony.sim.stamped import StampedTransport

if TYPE_CHECKING:
    from telephony.sim.lean_call import LeanCall


class _ProbedFlux(FluxSession):
    probes: Probes
    advancing: asyncio.Task[None] | None = None  # emitting what the short path's audio made due

    def take_audio(self, data: bytes, now: float) -> bool:
        """What `run` + `on_binary` do with audio, done inline (True; False leaves the frame to
        the session's task). Events it makes due are emitted by a task of their own, which
        whatever the session handles next waits for (`_after_advance`), so the order holds."""
        if not data or self.closing or self.clock.bytes_per_ms is None:
            return False
        self._log_audio(data, now)
        self.last_activity = now
        self.log.audio_bytes += len(data)
        self.log.audio_ms = self.clock.add(len(data))
        if self.clock.ms >= self.next_at:
            self.advancing = self.spawn(self._advance_alone())
        return True

    async def _advance_alone(self) -> None:
        try:
            await self._advance()
        finally:
            self.advancing = None

    async def _after_advance(self) -> None:
        if self.advancing is not None:
            await asyncio.shield(self.advancing)

    async def on_binary(self, data: bytes, now: float) -> None:
        await self._after_advance()
        await super().on_binary(data, now)

    async def on_message(self, msg: Any, now: float) -> None:
        await self._after_advance()
        await super().on_message(msg, now)

    async def send(self, msg: dm._Wire) -> None:
        if isinstance(msg, dm.TurnInfo) and msg.event == "EndOfTurn":
            # The reply's tag rides on the transcript to the service's LLM request, where
            # the fake LLM reads it (the per-reply split of telephony/sim/load.py).
            tag = self.probes.end_of_turn(self.probes.by_sid.get(self.params.tag or ""))
            if tag and msg.transcript:
                msg = replace(msg, transcript=f"{msg.transcript} {tag}")
        await super().send(msg)


class _ProbedSpeak(SpeakSession):
    probes: Probes
    _tag_next = False
    _flushed_at: float | None = None

    async def _flush(self, now: float) -> None:
        idle = self.speaker is None
        await super()._flush(now)
        if idle and self.speaker is not None:
            self._tag_next = True  # the first audio of this burst is timed
            # ...from its Flush's arrival: the kernel's time for the socket's last read, the
            # one that held the Flush unless more came since (then a little later).
            conn = self.ws
            if isinstance(conn, _StampedConnection):
                self._flushed_at = conn._stamped.received_at
            else:
                self._flushed_at = time.monotonic()

    async def send_audio(self, data: bytes) -> None:
        if self._tag_next:
            self._tag_next = False
            data = self.probes.tag_outbound(data, self._flushed_at)
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
    _held = b""  # the start of a frame the short path will take once it is whole

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stamped = StampedTransport(transport, self)
        super().connection_made(self._stamped)  # type: ignore[arg-type]  # a proxy

    def connection_lost(self, exc: Exception | None) -> None:
        self._stamped.detach()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        session = self.session
        if isinstance(session, _ProbedFlux) and session.advancing is None and self._idle():
            data = self._take(data, session)
            if not data:
                return
        super().data_received(data)

    def _idle(self) -> bool:
        """websockets' parser at a frame boundary, the session's task waiting on an empty queue."""
        protocol, queue = self.protocol, self.recv_messages
        return (
            protocol.state is State.OPEN
            and not protocol.reader.buffer
            and protocol.current_size is None
            and queue.get_in_progress
            and len(queue.frames) == 0
        )

    def _take(self, buf: bytes, session: _ProbedFlux) -> bytes:
        """Take whole masked binary frames the session can take inline; the rest is returned
        for websockets (or held, when it is the start of a frame not yet whole)."""
        pos, size, now = 0, len(buf), self.loop.time()
        limit = self.protocol.max_message_size or 2**20
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if first != 0x82 or not second & 0x80:  # not a whole masked binary frame
                break
            length, start = second & 0x7F, pos + 2
            if length >= 126:
                start += 2 if length == 126 else 8
            if start + 4 > size:  # the header or the mask key is not all here
                self._held = buf[pos:]
                return b""
            if length >= 126:
                length = int.from_bytes(buf[pos + 2 : start], "big")
            if length > limit:
                break  # websockets refuses it, as it would have
            end = start + 4 + length
            if end > size:
                self._held = buf[pos:]
                return b""
            payload = apply_mask(buf[start + 4 : end], buf[start : start + 4])
            if not session.take_audio(payload, now):
                break
            if self.probes is not None:
                self.probes.on_inbound(payload, self._stamped.received_at)
            pos = end
        return buf[pos:]

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
            cast("_ProbedFlux | _ProbedSpeak | _ProbedAgent", session).probes = self.probes
        return session
