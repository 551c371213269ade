"""Flux mode: Flux turns -> responder -> Aura -> paced playout, with barge-in and actions.

Turn state machine (Flux `TurnInfo.event`):
- StartOfTurn while the bot may be heard -> barge-in: Twilio `clear`, Aura `Clear`, reply
  cancelled, all before the next event is read.
- EagerEndOfTurn -> start the responder speculatively; its text is held, not spoken.
- TurnResumed -> cancel the speculative reply, discard its text.
- EndOfTurn -> commit the speculative reply if the final transcript equals the eager one,
  otherwise start afresh.

A reply streams sentence by sentence into Aura; each Flush groups the sentences sent since the
previous one, and that group's audio becomes one playout segment closed by a mark. What the
caller heard, the transcript row and playback-gated actions are `BotSpeech`'s job, shared with
the Voice Agent engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from telephony.deepgram import messages as dm
from telephony.deepgram.flux import FluxClient
from telephony.deepgram.speak import SpeakClient
from telephony.responder import Message, Responder, ResponderError, SentenceChunker
from telephony.session.engine import CallContext
from telephony.session.speech import BotReply, BotSpeech
from telephony.session.tasks import TaskSet
from telephony.twilio.playout import Segment

DTMF_GAP_S = 1.5  # digits typed closer together than this form one entry
EARLY_AUDIO_FRAMES = 500  # 10 s of caller audio kept while Flux connects
APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"


@dataclass(eq=False)
class FluxReply(BotReply):
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    unflushed: list[str] = field(default_factory=list)  # sent to Aura, not yet flushed


class FluxEngine:
    def __init__(
        self, ctx: CallContext, responder: Responder, flux: FluxClient, speak: SpeakClient
    ) -> None:
        self.ctx = ctx
        self.responder = responder
        self.flux = flux
        self.speak = speak
        self.speech = BotSpeech(ctx, on_finished=self._remember)
        self.history: list[Message] = []
        self._speculative: FluxReply | None = None
        self._flush_groups: deque[tuple[FluxReply, Segment]] = deque()  # audio still to come
        self._turn_open = False
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self._dtmf_for_turn = ""
        self._tasks = TaskSet(ctx.log)
        self._connected = asyncio.Event()
        self._early_audio: deque[tuple[int, bytes]] = deque(maxlen=EARLY_AUDIO_FRAMES)

    # --- Engine interface -------------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.gather(self.flux.connect(), self.speak.connect())
        for timestamp_ms, payload in self._early_audio:  # caller audio from before Flux was up
            await self.flux.send_audio(timestamp_ms, payload)
        self._early_audio.clear()
        self._connected.set()
        greeting = self.ctx.profile.greeting
        if greeting:
            self._say_fixed(greeting, interruptible=self.ctx.profile.greeting_interruptible)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flux_loop(), name="flux-events")
            tg.create_task(self._speak_loop(), name="speak-events")

    async def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        if self._connected.is_set():
            await self.flux.send_audio(timestamp_ms, payload)
        else:  # the first ~100 ms: kept (bounded) and sent once Flux is connected
            self._early_audio.append((timestamp_ms, payload))

    def on_dtmf(self, ms: int, digit: str) -> None:
        self.ctx.transcript.event(ms, "dtmf", digit=digit)
        self._dtmf.append(digit)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        delay = 0.0 if digit == "#" else DTMF_GAP_S
        self._dtmf_task = self._tasks.spawn(self._dtmf_entry(delay), "dtmf")

    async def close(self) -> None:
        self._tasks.cancel_all()
        self.speech.cancel_actions()
        with contextlib.suppress(Exception):
            await self.flux.close()
        with contextlib.suppress(Exception):
            await self.speak.close()

    # --- Flux events --------------------------------------------------------------------------

    async def _flux_loop(self) -> None:
        async for event in self.flux.events():
            if isinstance(event, dm.TurnInfo):
                await self._on_turn(event)
            elif isinstance(event, dm.ConfigureFailure):
                self.ctx.log.warning("Flux Configure refused")
            elif isinstance(event, dm.FluxWarning):
                self.ctx.log.warning("Flux warning %s: %s", event.code, event.description)

    async def _on_turn(self, ev: dm.TurnInfo) -> None:
        kind = ev.event
        if kind == "StartOfTurn":
            self._turn_open = True
            await self._barge_in(self.flux.to_call_ms(ev.audio_window_start))
        elif kind == "EagerEndOfTurn":
            self._start_speculation(ev.transcript)
        elif kind == "TurnResumed":
            self._drop_speculation()
        elif kind == "EndOfTurn":
            self._turn_open = False
            await self._end_of_turn(ev)

    async def _end_of_turn(self, ev: dm.TurnInfo) -> None:
        text = f"{ev.transcript.strip()} {self._dtmf_for_turn}".strip()
        self._dtmf_for_turn = ""
        if not text:
            self._drop_speculation()
            return
        start_ms = self.flux.to_call_ms(ev.audio_window_start)
        end_ms = self.flux.to_call_ms(ev.audio_window_end)
        meta = {"trigger": ev.trigger or ""}
        self.ctx.transcript.add_turn("caller", text, start_ms, end_ms, meta=meta)
        self._answer(text, end_ms)

    def _answer(self, text: str, eot_ms: int) -> None:
        """Commit the speculative reply if it answered this exact text, else start anew."""
        reply = self._speculative
        self._speculative = None
        if reply is not None and reply.user_text != text:
            self._cancel(reply)
            reply = None
        if reply is None:
            reply = self._start_reply(text, speculative=False)
        else:
            self.ctx.transcript.event(eot_ms, "speculation-used", reply=reply.number)
        self.history.append(Message("user", text))
        reply.held = False
        reply.eot_ms, reply.eot_at = eot_ms, asyncio.get_running_loop().time()
        reply.committed.set()

    def _start_speculation(self, transcript: str) -> None:
        text = transcript.strip()
        if self._speculative is not None:
            if self._speculative.user_text == text:
                return
            self._drop_speculation()
        self._speculative = self._start_reply(text, speculative=True)

    def _start_reply(self, text: str, *, speculative: bool) -> FluxReply:
        reply = self.speech.new_reply(text, cls=FluxReply)
        reply.held = speculative
        reply.task = self._tasks.spawn(self._generate(reply, list(self.history)), "reply")
        return reply

    def _drop_speculation(self) -> None:
        if self._speculative is not None:
            self._cancel(self._speculative)
            self._speculative = None

    def _cancel(self, reply: FluxReply) -> None:
        if reply.task is not None:
            reply.task.cancel()
        self.speech.drop(reply)

    # --- barge-in -------------------------------------------------------------------------------

    async def _barge_in(self, ms: int) -> None:
        """Twilio clear, Aura Clear and our queue go together, before the next event is read.

        A held (speculative) reply is not audible, so it is left to TurnResumed / EndOfTurn.
        """

        def stop_generating() -> None:
            for reply in self.speech.audible:
                if isinstance(reply, FluxReply) and reply.task is not None:
                    reply.task.cancel()
            self._flush_groups.clear()

        if await self.speech.barge_in(ms, before_clear=stop_generating):
            await self.speak.clear()

    # --- replies --------------------------------------------------------------------------------

    def _say_fixed(self, text: str, *, interruptible: bool) -> FluxReply:
        reply = self.speech.new_reply(interruptible=interruptible, cls=FluxReply)
        reply.committed.set()

        async def fixed() -> None:
            await self._say_sentence(reply, text)
            await self._end_reply_text(reply)

        reply.task = self._tasks.spawn(fixed(), "fixed-reply")
        return reply

    async def _generate(self, reply: FluxReply, history: list[Message]) -> None:
        chunker = SentenceChunker()
        try:
            async with self.responder.respond(history, reply.user_text) as stream:
                async for delta in stream:
                    for sentence in chunker.push(delta):
                        await self._say_sentence(reply, sentence)
                reply.action = stream.action
            tail = chunker.flush()
            if tail:
                await self._say_sentence(reply, tail)
        except ResponderError as exc:
            self.ctx.log.warning("responder failed: %s", exc)
            ms = self.ctx.now_ms()
            self.ctx.transcript.event(ms, "error", source="responder", detail=str(exc))
            await self._say_sentence(reply, APOLOGY)
        await self._end_reply_text(reply)

    async def _say_sentence(self, reply: FluxReply, sentence: str) -> None:
        await reply.committed.wait()  # a speculative reply holds its text until EndOfTurn
        reply.text.append(sentence)
        reply.unflushed.append(sentence)
        if reply.first_text_at is None:
            reply.first_text_at = asyncio.get_running_loop().time()
        await self.speak.speak(sentence)
        if await self.speak.flush():
            self._flushed(reply)

    async def _end_reply_text(self, reply: FluxReply) -> None:
        if reply.unflushed and await self.speak.flush(force=True):
            self._flushed(reply)
        self.speech.generated(reply)

    def _flushed(self, reply: FluxReply) -> None:
        """Everything spoken since the last flush is one segment: Aura's audio comes in order."""
        seg = self.speech.segment(reply, " ".join(reply.unflushed))
        reply.unflushed.clear()
        self._flush_groups.append((reply, seg))

    def _remember(self, reply: BotReply) -> None:
        """The LLM's history holds what the caller heard, not what was generated."""
        said = reply.turn.heard if reply.turn and reply.interrupted_at_ms is not None else None
        text = said if said is not None else " ".join(reply.text)
        if text:
            self.history.append(Message("assistant", text))

    # --- Aura audio -> playout --------------------------------------------------------------

    async def _speak_loop(self) -> None:
        async for event in self.speak.events():
            if isinstance(event, bytes):
                if self._flush_groups:  # else: audio of a reply that was cancelled
                    reply, seg = self._flush_groups[0]
                    self.speech.audio(reply, seg, event)
            elif isinstance(event, dm.Flushed) and self._flush_groups:
                self.speech.end_segment(self._flush_groups.popleft()[1])

    # --- DTMF ---------------------------------------------------------------------------------

    async def _dtmf_entry(self, delay_s: float) -> None:
        """Digits end the caller's turn: with Flux mid-turn, via ForceEndTurn; else alone."""
        await asyncio.sleep(delay_s)
        digits = "".join(d for d in self._dtmf if d != "#")
        self._dtmf.clear()
        if not digits:
            return
        if self._turn_open:
            self._dtmf_for_turn = digits
            await self.flux.force_end_turn()
            return
        ms = self.ctx.now_ms()
        await self._barge_in(ms)
        self.ctx.transcript.add_turn("caller", digits, ms, ms, meta={"trigger": "dtmf"})
        self._answer(digits, ms)
