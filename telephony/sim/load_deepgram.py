"""Fake Deepgram for `telephony bench`: `FakeDeepgram` (audio frames counted, not logged) whose
Flux, Aura and Agent sessions carry the probes of telephony.sim.load."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode

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
            cast("_ProbedFlux | _ProbedSpeak | _ProbedAgent", session).probes = self.probes
        return session
