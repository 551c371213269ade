"""Flux mode's replies: responder -> Aura -> paced playout, speculation and barge-in.

A reply streams sentence by sentence into Aura; each Flush groups the sentences sent since the
previous one, and that group's audio becomes one playout segment closed by a mark. What the
caller heard, the transcript row and playback-gated actions are `BotSpeech`'s job, shared with
the Voice Agent engine.

Apart from flux_engine.py (the Flux socket and its turns) because replies have their own
socket, Aura, with its own reconnects, and their own state (the speculative reply, the LLM's
history, the flush groups); the engine only tells them when a turn starts, is guessed, resumes
or ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from telephony.deepgram import messages as dm
from telephony.deepgram.speak import SpeakClient
from telephony.responder import Message, Responder, ResponderError, Switch
from telephony.retry import Backoff
from telephony.session.engine import CallContext
from telephony.session.language import APOLOGY, CallLanguage
from telephony.session.link import GiveUp, Link
from telephony.session.segments import Segment
from telephony.session.sentences import SentenceChunker
from telephony.session.speech import BotReply, BotSpeech
from telephony.session.tasks import TaskSet
from telephony.transcript import EventKind

__all__ = ["APOLOGY", "FluxReplies"]


def record_llm_fallback(ctx: CallContext, switch: Switch) -> None:
    """An LLM backend failed a turn before its first token: the next one answers it."""
    ctx.log.warning(
        "LLM backend %s failed (%s, %s) after %d ms; %s answers the turn",
        switch.from_name,
        switch.reason,
        switch.error,
        switch.after_ms,
        switch.to_name,
    )
    ctx.transcript.event(ctx.now_ms(), EventKind.LLM_FALLBACK, **switch.as_event())


@dataclass(eq=False)
class FluxReply(BotReply):
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    unflushed: list[str] = field(default_factory=list)  # sent to Aura, not yet flushed
    language: str = ""  # what it is said in (session/language.py)


class FluxReplies:
    """One call's replies; `tasks` and `give_up` are the engine's, so closing it ends them."""

    def __init__(
        self,
        ctx: CallContext,
        responder: Responder,
        speak: Callable[[str], SpeakClient],
        tasks: TaskSet,
        give_up: GiveUp,
        backoff: Backoff | None = None,
        phrase: Callable[[str, str], bytes | None] = lambda voice, text: None,
    ) -> None:
        self.ctx = ctx
        self.responder = responder
        self._phrase = phrase  # a fixed phrase's cached audio by (voice, text) (phrases.py)
        self.language = CallLanguage(ctx.profile)
        self.voice = self.language.voice  # what replies are said in from now on
        self.link = Link(
            ctx,
            "speak",
            lambda: speak(self.voice),
            give_up=give_up,
            on_lost=self._speak_lost,
            on_live=self._speak_live,
            backoff=backoff,
        )
        self._tasks = tasks
        self.speech = BotSpeech(ctx, on_finished=self._remember)
        self.history: list[Message] = []
        self._speculative: FluxReply | None = None
        self._flush_groups: deque[tuple[FluxReply, Segment]] = deque()  # audio still to come
        self._drained = asyncio.Event()  # set whenever no Aura audio is still to come
        self._voice_ready = asyncio.Event()  # the live Aura socket speaks `self.voice`
        self._voice_task: asyncio.Task[None] | None = None
        self._fillers_said = 0
        self._filler_timer = tasks.timer("filler", self._filler_due)
        self._waiting: FluxReply | None = None  # the committed reply a filler may cover

    # --- the caller's turns -------------------------------------------------------------------

    def answer(self, text: str, eot_ms: int, languages: Sequence[str] | None = None) -> None:
        """Commit the speculative reply if it answered this exact text in the language the
        caller spoke (`languages`, from Flux), else start anew."""
        if self.language.heard(languages):
            self._follow_voice()
        reply = self._speculative
        self._speculative = None
        if reply is not None and (reply.user_text != text or reply.language != self.language.reply):
            self._cancel(reply)
            reply = None
        if reply is None:
            reply = self._start_reply(text, speculative=False)
        else:
            self.ctx.transcript.event(eot_ms, EventKind.SPECULATION_USED, reply=reply.number)
        self.history.append(Message("user", text))
        reply.held = False
        reply.eot_ms, reply.eot_at = eot_ms, asyncio.get_running_loop().time()
        reply.committed.set()
        if self.ctx.profile.filler is not None and reply.first_text_at is None:
            self._waiting = reply
            self._filler_timer.start(self.ctx.profile.filler.after_ms / 1000)

    def _filler_due(self) -> None:
        """The reply has said nothing yet: a short phrase, so the caller hears we are on it.
        It plays before the reply, whose audio queues after it."""
        reply, self._waiting = self._waiting, None
        if reply is None or reply.finished or reply.first_text_at is not None:
            return
        fillers = self.language.fillers()
        self._fillers_said += 1
        filler = self.say_fixed(
            fillers[(self._fillers_said - 1) % len(fillers)], interruptible=True
        )
        filler.meta["filler"] = True
        self.ctx.transcript.event(self.ctx.now_ms(), EventKind.FILLER, reply=reply.number)

    def speculate(self, transcript: str) -> None:
        """EagerEndOfTurn: start a reply to `transcript`, its text held until EndOfTurn."""
        text = transcript.strip()
        if self._speculative is not None:
            if self._speculative.user_text == text:
                return
            self.drop_speculation()
        self._speculative = self._start_reply(text, speculative=True)

    def _start_reply(self, text: str, *, speculative: bool) -> FluxReply:
        reply = self._new_reply(text)
        reply.held = speculative
        history = [*self.language.instruction(), *self.history]
        reply.task = self._tasks.spawn(self._generate(reply, history), "reply")
        return reply

    def _new_reply(self, text: str = "", *, interruptible: bool = True) -> FluxReply:
        reply = self.speech.new_reply(text, interruptible=interruptible, cls=FluxReply)
        reply.language = self.language.reply
        if self.language.multilingual:
            reply.meta["language"] = reply.language  # the staff UI shows it per turn
        return reply

    def drop_speculation(self) -> None:
        if self._speculative is not None:
            self._cancel(self._speculative)
            self._speculative = None

    def _cancel(self, reply: FluxReply) -> None:
        if reply.task is not None:
            reply.task.cancel()
        self.speech.drop(reply)

    # --- barge-in -------------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """The caller hears (or is about to hear) a reply."""
        return bool(self.speech.audible)

    async def barge_in(self, ms: int, detail: Mapping[str, object] | None = None) -> None:
        """Twilio clear, Aura Clear and our queue go together, before the next event is read.

        A held (speculative) reply is not audible, so it is left to TurnResumed / EndOfTurn.
        """

        def stop_generating() -> None:
            for reply in self.speech.audible:
                if isinstance(reply, FluxReply) and reply.task is not None:
                    reply.task.cancel()
            self._flush_groups.clear()
            self._settled()

        if await self.speech.barge_in(ms, before_clear=stop_generating, detail=detail):
            await self.speak.clear()

    # --- replies --------------------------------------------------------------------------------

    def say_fixed(self, text: str, *, interruptible: bool) -> FluxReply:
        """A phrase said word for word (greeting, filler, reprompt, goodbye): from the phrase
        cache when it has it and no Aura audio is still coming (which it would overtake),
        else through Aura."""
        reply = self._new_reply(interruptible=interruptible)
        reply.committed.set()
        audio = None if self._flush_groups else self._phrase(self.voice, text)
        if audio is not None:
            reply.text.append(text)
            reply.first_text_at = asyncio.get_running_loop().time()
            reply.meta["cached"] = True
            seg = self.speech.segment(reply, text)
            self.speech.audio(reply, seg, audio)
            self.speech.end_segment(seg)
            self.speech.generated(reply)
            return reply

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
                    if reply.first_token_at is None and delta:
                        reply.first_token_at = asyncio.get_running_loop().time()
                    for sentence in chunker.push(delta):
                        await self._say_sentence(reply, sentence)
                reply.action = stream.action
            if reply.action == "transfer":  # its line is still to play: get the whisper going
                self.ctx.transfer_coming()
            tail = chunker.flush()
            if tail:
                await self._say_sentence(reply, tail)
        except ResponderError as exc:
            self.ctx.log.warning("responder failed: %s", exc)
            ms = self.ctx.now_ms()
            self.ctx.transcript.event(ms, EventKind.ERROR, source="responder", detail=str(exc))
            await self._say_sentence(reply, self.language.apology)
        await self._end_reply_text(reply)

    async def _say_sentence(self, reply: FluxReply, sentence: str) -> None:
        await reply.committed.wait()  # a speculative reply holds its text until EndOfTurn
        await self._voice_ready.wait()  # Aura is being given another voice
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
        if reply.meta.get("filler"):
            return  # "One moment." is not part of the conversation the LLM reads
        said = reply.turn.heard if reply.turn and reply.interrupted_at_ms is not None else None
        text = said if said is not None else " ".join(reply.text)
        if text:
            self.history.append(Message("assistant", text))

    # --- Aura audio -> playout --------------------------------------------------------------

    @property
    def speak(self) -> SpeakClient:
        return self.link.client

    async def run(self) -> None:
        """Aura's events until we close it; its link replaces a socket that fails."""
        await self.link.run(self._on_speak_event)

    def _on_speak_event(self, event: bytes | dm.SpeakServerEvent) -> None:
        if isinstance(event, bytes):
            if self._flush_groups:  # else: audio of a reply that was cancelled
                reply, seg = self._flush_groups[0]
                self.speech.audio(reply, seg, event)
        elif isinstance(event, dm.Flushed) and self._flush_groups:
            self.speech.end_segment(self._flush_groups.popleft()[1])
            self._settled()

    def _speak_lost(self, reason: str) -> None:
        """Aura dropped: what it had not yet spoken is lost; close those segments with the
        audio that did arrive (so their replies finish); the link connects a new socket."""
        while self._flush_groups:
            self.speech.end_segment(self._flush_groups.popleft()[1], complete=False)
        self._settled()

    def _settled(self) -> None:
        if not self._flush_groups:
            self._drained.set()

    # --- the voice: one per Aura socket -----------------------------------------------------

    def _speak_live(self, client: SpeakClient, reason: str) -> dict[str, object]:
        """A socket is live (the first, a replacement or a new voice): text may go to it once
        it speaks the voice replies are now said in."""
        if client.voice == self.voice:
            self._voice_ready.set()
        return {"voice": client.voice} if self.language.multilingual else {}

    def _follow_voice(self) -> None:
        """The call's language changed: Aura needs the voice that speaks it, a new socket."""
        if self.language.voice == self.voice:
            return
        self.voice = self.language.voice
        self._voice_ready.clear()
        if self._voice_task is None or self._voice_task.done():
            self._voice_task = self._tasks.spawn(self._swap_voice(), "voice")

    async def _swap_voice(self) -> None:
        """Once the old voice's audio has all come (it would be cut off), swap the socket;
        again if the language changed once more meanwhile."""
        while self.link.connected and self.link.client.voice != self.voice:
            while self._flush_groups:
                self._drained.clear()
                await self._drained.wait()
            if not await self.link.swap(f"voice {self.voice}"):
                return  # given up: the call is being handed over

    def drop_all(self) -> None:
        """The call is being handed over: nothing more is generated or spoken."""
        self._filler_timer.cancel()
        self.drop_speculation()
        for reply in self.speech.audible:
            if isinstance(reply, FluxReply) and reply.task is not None:
                reply.task.cancel()
        self._flush_groups.clear()
        self._settled()
