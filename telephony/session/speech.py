"""Bot speech as the caller hears it, shared by the Flux and the Voice Agent engines.

A reply's audio goes to the playout in segments (a text unit: a sentence or Flush group in Flux
mode, the whole reply in agent mode), marked at least every 500 ms by the playout. What the
caller heard of a segment is all of it once its closing mark echoes; a segment cut short (a
barge-in's clear, the call ending, the speech source dropping) is heard in proportion to the
audio of it that played (`Segment.heard`), and the turn says the heard text is estimated.
When all of a reply's segments are settled the bot turn is written: generated text, heard text,
whether, when and by what it was cut off, latency. Hang-up and transfer run only after the
whole reply played.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, overload

from telephony.actions import Action
from telephony.outcome import Outcome
from telephony.session.engine import CallContext
from telephony.session.segments import DEFAULT_MS_PER_CHAR, Ledger, Segment
from telephony.session.tasks import TaskSet
from telephony.transcript import CUT_BY_CALL_END, CUT_BY_CALLER, CUT_BY_DROP, EventKind, Turn
from telephony.twilio.playout import Span, SpanState

R = TypeVar("R", bound="BotReply")


@dataclass(eq=False)
class BotReply:
    """One thing the bot says: a greeting or the answer to a caller turn."""

    number: int
    user_text: str = ""
    interruptible: bool = True
    held: bool = False  # prepared but not allowed to speak yet (a speculative reply)
    text: list[str] = field(default_factory=list)  # what was generated, in order
    ledger: Ledger = field(default_factory=Ledger)
    action: Action = "none"
    outcome: Outcome | None = None  # how a hang-up `action` ends the call (default bot-hangup)
    generated_done: bool = False  # no more text or audio will be added
    # Every word had played when the caller spoke over it (barge_in): nothing was cut off.
    heard_whole: bool = False
    finished: bool = False
    eot_ms: int | None = None  # caller end of speech on the call clock
    eot_at: float | None = None  # monotonic time the caller's turn ended
    first_token_at: float | None = None  # loop time: the responder's first text (LLM token)
    first_text_at: float | None = None  # loop time: first text (a sentence) sent to TTS
    first_audio_ms: int | None = None
    first_audio_at: float | None = None
    # When the caller heard it, on the call clock, from Twilio's mark echoes: the first segment
    # began playing (its echo minus its length), the last echo (the reply finished playing).
    first_played_ms: int | None = None
    last_played_ms: int | None = None
    interrupted_at_ms: int | None = None
    cut_by: str | None = None  # CUT_BY_*: set with interrupted_at_ms
    turn: Turn | None = None  # opened in the transcript when its first audio arrives
    meta: dict[str, object] = field(default_factory=dict)

    def all_segments_done(self) -> bool:
        return all(s.state in (SpanState.PLAYED, SpanState.CLEARED) for s in self.ledger.segments)


def latency_breakdown(reply: BotReply) -> dict[str, float]:
    """Stages of a reply, ms: caller turn end -> the responder's first token -> first text to
    TTS -> first audio back (loop time); then that audio playing for the caller (call clock,
    from Twilio's mark echo)."""
    eot, text, audio = reply.eot_at, reply.first_text_at, reply.first_audio_at
    if eot is None or audio is None:
        return {}
    out = {"eot_to_audio_ms": round((audio - eot) * 1000, 1)}
    token = reply.first_token_at
    if token is not None and (text is None or token <= text):
        out["eot_to_token_ms"] = round(max(0.0, token - eot) * 1000, 1)  # the LLM's first token
    if reply.first_played_ms is not None and reply.first_audio_ms is not None:
        out["audio_to_played_ms"] = max(0, reply.first_played_ms - reply.first_audio_ms)
    if text is not None:
        out["eot_to_text_ms"] = round(max(0.0, text - eot) * 1000, 1)  # responder share
        out["text_to_audio_ms"] = round((audio - max(text, eot)) * 1000, 1)  # TTS share
    return out


class BotSpeech:
    """The replies of one call, from first audio to the transcript row."""

    def __init__(self, ctx: CallContext, *, on_finished: Callable[[BotReply], None] | None = None):
        self.ctx = ctx
        self._numbers = itertools.count()
        self.started = 0  # replies begun so far; the next reply's number
        self.active: list[BotReply] = []
        self._owner: dict[str, BotReply] = {}  # segment name -> reply
        self._on_finished = on_finished
        # The bot has stopped talking: a reply played out and none is under way (idle.py).
        self.on_quiet: Callable[[], None] | None = None
        self._tasks = TaskSet(ctx.log, on_error=self._action_failed)
        self._tasks.at_end(self._release)
        # This call's speech rate, from segments whose audio arrived whole: how long the text
        # of a segment cut off at its source would have taken.
        self._rate_ms = 0
        self._rate_chars = 0
        ctx.playout.on_segment_done = self._segment_done

    # Overloads: a TypeVar parameter cannot default to BotReply itself.
    @overload
    def new_reply(self, user_text: str = "", *, interruptible: bool = True) -> BotReply: ...
    @overload
    def new_reply(self, user_text: str = "", *, interruptible: bool = True, cls: type[R]) -> R: ...
    def new_reply(
        self, user_text: str = "", *, interruptible: bool = True, cls: type[BotReply] = BotReply
    ) -> BotReply:
        reply = cls(next(self._numbers), user_text, interruptible=interruptible)
        self.started = reply.number + 1
        self.active.append(reply)
        return reply

    def drop(self, reply: BotReply) -> None:
        """Forget a reply that was never heard (a cancelled speculation)."""
        reply.finished = True
        if reply in self.active:
            self.active.remove(reply)

    def segment(self, reply: BotReply, text: str = "") -> Segment:
        seg = Segment(f"r{reply.number}:s{len(reply.ledger.segments)}", text)
        reply.ledger.segments.append(seg)
        self._owner[seg.name] = reply
        return seg

    def audio(self, reply: BotReply, seg: Segment, data: bytes) -> None:
        if reply.first_audio_at is None:
            reply.first_audio_at = asyncio.get_running_loop().time()
            reply.first_audio_ms = ms = self.ctx.now_ms()
            # The bot turn takes its place in the transcript when it starts to be heard.
            reply.turn = self.ctx.transcript.open_turn("bot", "", ms, ms)
        self.ctx.playout.add_audio(data, seg)

    def end_segment(self, seg: Segment, *, complete: bool = True) -> None:
        """All of `seg`'s audio is queued; `complete=False` if its source died first."""
        if complete and seg.text and seg.audio_ms:
            self._rate_ms += seg.audio_ms
            self._rate_chars += len(seg.text)
        self.ctx.playout.end_segment(seg, complete=complete)

    @property
    def ms_per_char(self) -> float:
        if self._rate_chars < 20:  # too little measured to trust
            return DEFAULT_MS_PER_CHAR
        return self._rate_ms / self._rate_chars

    def generated(self, reply: BotReply) -> None:
        """No more text or audio for this reply: it finishes once its audio has settled."""
        reply.generated_done = True
        self._maybe_finish(reply)

    @property
    def audible(self) -> list[BotReply]:
        return [r for r in self.active if not r.finished and not r.held]

    async def barge_in(
        self,
        ms: int,
        *,
        before_clear: Callable[[], None] | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> bool:
        """Caller speech over the bot: clear Twilio and our queue; False if not interruptible.
        `detail` goes on the barge-in event (how a smart barge-in decided)."""
        replies = self.audible
        if not replies or not all(r.interruptible for r in replies):
            return False
        playout = self.ctx.playout
        for reply in replies:
            # Its last mark's echo may still be on the way after every word has played (a
            # loaded machine, a slow network): such a reply was heard, not cut off.
            segments = reply.ledger.segments
            reply.heard_whole = (
                reply.generated_done and bool(segments) and all(map(playout.played_out, segments))
            )
            reply.interrupted_at_ms, reply.cut_by = ms, CUT_BY_CALLER
            reply.generated_done = True
        if before_clear is not None:
            before_clear()
        await playout.clear()
        if cut := [r.number for r in replies if not r.heard_whole]:
            self.ctx.transcript.event(ms, EventKind.BARGE_IN, replies=cut, **(detail or {}))
        for reply in replies:
            self._finish(reply)
        return True

    def close(self) -> None:
        """The call ended: replies still playing are written with what of them played."""
        replies = self.audible
        ms = self.ctx.now_ms()
        for reply in replies:
            reply.interrupted_at_ms, reply.cut_by = ms, CUT_BY_CALL_END
            reply.generated_done = True
        self.ctx.playout.stop()  # settles every pending segment by the clock
        for reply in replies:
            self._finish(reply)
        for reply in list(self.active):  # held speculation: never heard, never written
            self.drop(reply)

    def _segment_done(self, seg: Span) -> None:  # the playout's callback: it knows spans
        reply = self._owner.get(seg.name)
        if reply is not None:
            if seg.state is SpanState.PLAYED:
                self._played(reply, seg)
            self._maybe_finish(reply)

    def _played(self, reply: BotReply, seg: Span) -> None:
        """A mark echoed: the caller has heard `seg`, up to now on the call clock."""
        ms = self.ctx.now_ms()
        if reply.first_played_ms is None:
            # Twilio plays buffered audio without gaps, so the segment began at the latest its
            # length before its echo; and never before its first audio was sent.
            began = ms - seg.audio_ms
            sent = reply.first_audio_ms
            reply.first_played_ms = began if sent is None else max(began, sent)
        reply.last_played_ms = ms

    def _maybe_finish(self, reply: BotReply) -> None:
        if not reply.finished and reply.generated_done and reply.all_segments_done():
            self._finish(reply)

    def _finish(self, reply: BotReply) -> None:
        """Write the bot turn; run its action if the caller heard all of it."""
        if reply.finished:
            return
        reply.finished = True
        for seg in reply.ledger.segments:
            self._owner.pop(seg.name, None)
        if reply in self.active:
            self.active.remove(reply)
        self._cut_at_source(reply)
        generated = " ".join(t for t in reply.text if t)
        if generated:
            self._write_turn(reply, generated)
        if self._on_finished is not None:
            self._on_finished(reply)
        ending = reply.action in ("hangup", "transfer") and reply.cut_by != CUT_BY_CALLER
        quiet = not self.active and reply.cut_by not in (CUT_BY_CALLER, CUT_BY_CALL_END)
        if quiet and not ending and self.on_quiet is not None:
            self.on_quiet()
        if reply.action not in ("hangup", "transfer") or reply.cut_by == CUT_BY_CALL_END:
            return
        if reply.cut_by != CUT_BY_CALLER:  # played in full, or as far as its source got
            self.act(reply.action, reply.outcome)
        else:  # the goodbye was cut off: the caller has more to say, stay on the line
            ms = reply.interrupted_at_ms
            assert ms is not None  # barge_in sets it with cut_by
            self.ctx.transcript.event(ms, EventKind.ACTION_CANCELLED, action=reply.action)

    def _cut_at_source(self, reply: BotReply) -> None:
        """A reply whose last segment lost its audio at the source ended where that audio
        stopped playing: the caller heard nothing after it."""
        segments = reply.ledger.segments
        if reply.cut_by is None and segments and not segments[-1].complete:
            reply.cut_by = CUT_BY_DROP
            reply.interrupted_at_ms = (
                reply.last_played_ms if reply.last_played_ms is not None else self.ctx.now_ms()
            )

    def _write_turn(self, reply: BotReply, generated: str) -> None:
        cut_at = reply.interrupted_at_ms
        if reply.cut_by == CUT_BY_CALLER and reply.heard_whole:
            cut_at = None  # not interrupted (a goodbye's action is still cancelled: see _finish)
        interrupted = cut_at is not None
        end_ms = cut_at if cut_at is not None else self.ctx.now_ms()
        start_ms = reply.first_audio_ms if reply.first_audio_ms is not None else end_ms
        transcript = self.ctx.transcript
        turn = reply.turn or transcript.open_turn("bot", "", start_ms, start_ms)
        turn.text, turn.interrupted = generated, interrupted
        turn.heard, turn.meta["heard_estimated"] = reply.ledger.heard(self.ms_per_char)
        if interrupted and reply.cut_by is not None:
            turn.meta["cut_by"] = reply.cut_by
        turn.start_ms, turn.end_ms = start_ms, max(start_ms, end_ms)
        turn.interrupted_at_ms = cut_at
        if reply.eot_ms is not None and reply.first_audio_ms is not None:
            turn.latency_ms = reply.first_audio_ms - reply.eot_ms
        turn.meta.update({"action": reply.action, **reply.meta, **latency_breakdown(reply)})
        if reply.eot_ms is not None:
            turn.meta["eot_ms"] = reply.eot_ms  # the caller's end of speech this answers
        if reply.first_played_ms is not None:
            turn.meta["first_audio_played_ms"] = reply.first_played_ms
        played = all(s.state is SpanState.PLAYED for s in reply.ledger.segments)
        if reply.last_played_ms is not None and played and not interrupted:
            turn.meta["finished_playing_ms"] = reply.last_played_ms
        transcript.close_turn(turn)

    def act(self, action: Action, outcome: Outcome | None = None) -> None:
        """Hang up or transfer now (callers make sure the goodbye has played); a hang-up ends
        the call as `outcome` (bot-hangup by default)."""
        self._tasks.spawn(self._act(action, outcome), action)

    async def _act(self, action: Action, outcome: Outcome | None = None) -> None:
        ms = self.ctx.now_ms()
        if action == "hangup":
            self.ctx.transcript.event(ms, EventKind.HANGUP)
            await (self.ctx.hang_up(outcome) if outcome else self.ctx.hang_up())
            return
        number = self.ctx.profile.transfer_number
        if not number:
            self.ctx.log.warning("transfer requested but the profile has no transfer_number")
            return
        self.ctx.transcript.event(ms, EventKind.TRANSFER, to=number)
        await self.ctx.transfer(number)

    def cancel_actions(self) -> None:
        """The call is over (after `close`): actions cancelled, the owner's hooks let go."""
        self._tasks.cancel_all()

    def _release(self) -> None:  # see TaskSet.at_end
        self._on_finished = self.on_quiet = None

    def _action_failed(self, name: str, exc: BaseException) -> None:
        ms = self.ctx.now_ms()
        self.ctx.transcript.event(ms, EventKind.ERROR, source=name, detail=str(exc))
