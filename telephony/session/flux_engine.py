"""Flux mode: Flux turns -> responder -> Aura -> paced playout, with barge-in and actions.

Turn state machine (Flux `TurnInfo.event`):
- StartOfTurn while the bot may be heard -> barge-in: Twilio `clear`, Aura `Clear`, reply
  cancelled, all before the next event is read.
- EagerEndOfTurn -> start the responder speculatively; its text is held, not spoken.
- TurnResumed -> cancel the speculative reply, discard its text.
- EndOfTurn -> commit the speculative reply if the final transcript equals the eager one,
  otherwise start afresh.

A reply streams sentence by sentence into Aura; each Flush groups the sentences sent since the
previous one, and that group's audio becomes one playout segment closed by a mark. A bot turn
is written to the transcript once every segment is played or cleared: generated text, heard
text (echoed marks only) and whether and when it was interrupted. Hang-up and transfer wait for
the reply's last mark and are dropped if the caller barges in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

from telephony.deepgram import messages as dm
from telephony.deepgram.flux import FluxClient
from telephony.deepgram.speak import SpeakClient
from telephony.responder import Message, Responder, ResponderError, SentenceChunker
from telephony.session.engine import CallContext
from telephony.session.transcript import Turn
from telephony.twilio.playout import Ledger, Segment, SegmentState

log = logging.getLogger(__name__)

DTMF_GAP_S = 1.5  # digits typed closer together than this form one entry
EARLY_AUDIO_FRAMES = 500  # 10 s of caller audio kept while Flux connects
APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"


@dataclass(eq=False)
class BotReply:
    """One thing the bot says: a greeting or the answer to a caller turn."""

    number: int
    user_text: str
    interruptible: bool = True
    speculative: bool = False
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sentences: list[str] = field(default_factory=list)
    unflushed: list[str] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    action: str = "none"
    generated_done: bool = False
    finished: bool = False
    eot_ms: int | None = None  # caller end of speech on the call clock
    eot_at: float | None = None  # monotonic time EndOfTurn arrived
    first_text_at: float | None = None  # monotonic: first sentence sent to Aura
    first_audio_ms: int | None = None
    first_audio_at: float | None = None
    interrupted_at_ms: int | None = None
    turn: Turn | None = None  # opened in the transcript when its first audio arrives

    def all_segments_done(self) -> bool:
        return all(
            s.state in (SegmentState.PLAYED, SegmentState.CLEARED) for s in self.ledger.segments
        )


def _latency_breakdown(reply: BotReply) -> dict[str, float]:
    """Wall-clock stages of a reply, ms: EndOfTurn -> first sentence to Aura -> first audio."""
    eot, text, audio = reply.eot_at, reply.first_text_at, reply.first_audio_at
    if eot is None or text is None or audio is None:
        return {}
    return {
        "eot_to_audio_ms": round((audio - eot) * 1000, 1),
        "eot_to_text_ms": round(max(0.0, text - eot) * 1000, 1),  # responder (LLM) share
        "text_to_audio_ms": round((audio - max(text, eot)) * 1000, 1),  # Aura share
    }


class FluxEngine:
    def __init__(
        self,
        ctx: CallContext,
        responder: Responder,
        flux: FluxClient,
        speak: SpeakClient,
    ) -> None:
        self.ctx = ctx
        self.responder = responder
        self.flux = flux
        self.speak = speak
        self.history: list[Message] = []
        self._numbers = itertools.count()
        self._replies: list[BotReply] = []
        self._speculative: BotReply | None = None
        self._flush_groups: deque[Segment] = deque()  # flushed to Aura, audio not complete
        self._owner: dict[str, BotReply] = {}  # segment name -> reply
        self._turn_open = False
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self._dtmf_for_turn: str = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._early_audio: deque[tuple[int, bytes]] = deque(maxlen=EARLY_AUDIO_FRAMES)
        ctx.playout.on_segment_done = self._segment_done

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
        self._dtmf_task = self._spawn(self._dtmf_entry(delay), "dtmf")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
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
        text = ev.transcript.strip()
        if self._dtmf_for_turn:
            text = f"{text} {self._dtmf_for_turn}".strip()
            self._dtmf_for_turn = ""
        start_ms, end_ms = (
            self.flux.to_call_ms(ev.audio_window_start),
            self.flux.to_call_ms(ev.audio_window_end),
        )
        if not text:
            self._drop_speculation()
            return
        self.ctx.transcript.add_turn(
            "caller", text, start_ms, end_ms, meta={"trigger": ev.trigger or ""}
        )
        self._answer(text, end_ms)

    def _answer(self, text: str, eot_ms: int) -> None:
        """Commit the speculative reply if it answered this exact text, else start anew."""
        reply = self._speculative
        self._speculative = None
        if reply is not None and reply.user_text != text:
            self._cancel(reply)
            reply = None
        if reply is None:
            reply = self._new_reply(text)
            reply.task = self._spawn(self._generate(reply, list(self.history)), "reply")
        else:
            self.ctx.transcript.event(eot_ms, "speculation-used", reply=reply.number)
        self.history.append(Message("user", text))
        reply.speculative = False
        reply.eot_ms, reply.eot_at = eot_ms, asyncio.get_running_loop().time()
        reply.committed.set()

    def _start_speculation(self, transcript: str) -> None:
        text = transcript.strip()
        if self._speculative is not None:
            if self._speculative.user_text == text:
                return
            self._drop_speculation()
        reply = self._new_reply(text, speculative=True)
        reply.task = self._spawn(self._generate(reply, list(self.history)), "speculative-reply")
        self._speculative = reply

    def _drop_speculation(self) -> None:
        if self._speculative is not None:
            self._cancel(self._speculative)
            self._speculative = None

    # --- barge-in -------------------------------------------------------------------------------

    async def _barge_in(self, ms: int) -> None:
        """Caller speech while the bot may be heard: stop everything the caller would hear."""
        active = [r for r in self._replies if not r.finished and not r.speculative]
        if not active or not all(r.interruptible for r in active):
            return
        for reply in active:
            if reply.task is not None:
                reply.task.cancel()
            reply.interrupted_at_ms = ms
            reply.generated_done = True
        self._flush_groups.clear()
        # Twilio clear, Aura Clear and our queue go together, before the next event is read.
        await self.ctx.playout.clear()
        await self.speak.clear()
        self.ctx.transcript.event(ms, "barge-in", replies=[r.number for r in active])
        for reply in active:
            self._finish(reply)

    # --- replies --------------------------------------------------------------------------------

    def _new_reply(self, user_text: str, *, speculative: bool = False) -> BotReply:
        reply = BotReply(next(self._numbers), user_text, speculative=speculative)
        self._replies.append(reply)
        return reply

    def _cancel(self, reply: BotReply) -> None:
        if reply.task is not None:
            reply.task.cancel()
        reply.finished = True
        self._replies.remove(reply)

    def _say_fixed(self, text: str, *, interruptible: bool) -> BotReply:
        reply = self._new_reply("")
        reply.interruptible = interruptible
        reply.committed.set()

        async def fixed(reply: BotReply) -> None:
            await self._say_sentence(reply, text)
            await self._end_reply_text(reply)

        reply.task = self._spawn(fixed(reply), "fixed-reply")
        return reply

    async def _generate(self, reply: BotReply, history: list[Message]) -> None:
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
            self.ctx.transcript.event(
                self.ctx.now_ms(), "error", source="responder", detail=str(exc)
            )
            await reply.committed.wait()
            await self._say_sentence(reply, APOLOGY)
        await self._end_reply_text(reply)

    async def _say_sentence(self, reply: BotReply, sentence: str) -> None:
        await reply.committed.wait()  # a speculative reply holds its text until EndOfTurn
        reply.sentences.append(sentence)
        reply.unflushed.append(sentence)
        if reply.first_text_at is None:
            reply.first_text_at = asyncio.get_running_loop().time()
        await self.speak.speak(sentence)
        if await self.speak.flush():
            self._flushed(reply)

    async def _end_reply_text(self, reply: BotReply) -> None:
        if reply.unflushed and await self.speak.flush(force=True):
            self._flushed(reply)
        reply.generated_done = True
        self._maybe_finish(reply)

    def _flushed(self, reply: BotReply) -> None:
        """Everything spoken since the last flush is one segment: Aura's audio comes in order."""
        seg = Segment(f"r{reply.number}:s{len(reply.ledger.segments)}", " ".join(reply.unflushed))
        reply.unflushed.clear()
        reply.ledger.segments.append(seg)
        self._owner[seg.name] = reply
        self._flush_groups.append(seg)

    # --- Aura audio -> playout --------------------------------------------------------------

    async def _speak_loop(self) -> None:
        playout = self.ctx.playout
        async for event in self.speak.events():
            if isinstance(event, bytes):
                if not self._flush_groups:
                    continue  # audio of a reply that was cancelled
                seg = self._flush_groups[0]
                reply = self._owner[seg.name]
                if reply.first_audio_at is None:
                    self._first_audio(reply)
                playout.add_audio(event, seg)
            elif isinstance(event, dm.Flushed) and self._flush_groups:
                playout.end_segment(self._flush_groups.popleft())

    def _first_audio(self, reply: BotReply) -> None:
        loop_now = asyncio.get_running_loop().time()
        reply.first_audio_at, reply.first_audio_ms = loop_now, self.ctx.now_ms()
        # The bot turn takes its place in the transcript when it starts to be heard.
        ms = reply.first_audio_ms
        reply.turn = self.ctx.transcript.open_turn("bot", "", ms, ms)

    def _segment_done(self, seg: Segment) -> None:
        reply = self._owner.get(seg.name)
        if reply is not None:
            self._maybe_finish(reply)

    def _maybe_finish(self, reply: BotReply) -> None:
        if reply.finished or not reply.generated_done or not reply.all_segments_done():
            return
        self._finish(reply)

    def _finish(self, reply: BotReply) -> None:
        """Write the bot turn; run its action if the caller heard all of it."""
        if reply.finished:
            return
        reply.finished = True
        for seg in reply.ledger.segments:
            self._owner.pop(seg.name, None)
        if reply in self._replies:
            self._replies.remove(reply)
        generated = " ".join(reply.sentences)
        if not generated:
            return
        heard = reply.ledger.heard_text()
        interrupted = reply.interrupted_at_ms is not None
        end_ms = reply.interrupted_at_ms if interrupted else self.ctx.now_ms()
        start_ms = reply.first_audio_ms if reply.first_audio_ms is not None else end_ms
        latency = None
        if reply.eot_ms is not None and reply.first_audio_ms is not None:
            latency = reply.first_audio_ms - reply.eot_ms
        transcript = self.ctx.transcript
        turn = reply.turn or transcript.open_turn("bot", "", start_ms, start_ms)
        turn.text, turn.heard, turn.interrupted = generated, heard, interrupted
        turn.start_ms, turn.end_ms = start_ms, max(start_ms, end_ms or start_ms)
        turn.interrupted_at_ms, turn.latency_ms = reply.interrupted_at_ms, latency
        turn.meta["action"] = reply.action
        turn.meta.update(_latency_breakdown(reply))
        transcript.close_turn(turn)
        self.history.append(Message("assistant", heard if interrupted else generated))
        if not interrupted and reply.action in ("hangup", "transfer"):
            self._spawn(self._act(reply.action), reply.action)

    async def _act(self, action: str) -> None:
        ms = self.ctx.now_ms()
        if action == "hangup":
            self.ctx.transcript.event(ms, "hangup")
            await self.ctx.hang_up()
            return
        number = self.ctx.profile.transfer_number
        if not number:
            self.ctx.log.warning("transfer requested but the profile has no transfer_number")
            return
        self.ctx.transcript.event(ms, "transfer", to=number)
        await self.ctx.transfer(number)

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

    # --- plumbing -----------------------------------------------------------------------------

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.ctx.log.error("engine task %s failed", task.get_name(), exc_info=task.exception())
