"""Flux mode: Flux turns -> responder -> Aura -> paced playout, with barge-in and actions.

This module is the Flux side: the socket, its reconnects and replay, the stuck-turn watchdog and
DTMF. The replies (responder, Aura, playout, speculation) are `FluxReplies` in flux_replies.py.

Turn state machine (Flux `TurnInfo.event`):
- StartOfTurn while the bot may be heard -> barge-in: Twilio `clear`, Aura `Clear`, reply
  cancelled, all before the next event is read. With `barge_in.mode: smart` the turn's first
  words decide instead, and a turn of only backchannels never interrupts nor is answered
  (`SmartBargeIn`, barge_in.py).
- EagerEndOfTurn -> start the responder speculatively; its text is held, not spoken.
- TurnResumed -> cancel the speculative reply, discard its text.
- EndOfTurn -> commit the speculative reply if the final transcript equals the eager one,
  otherwise start afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import replace

from websockets.exceptions import ConnectionClosed

from telephony.config.barge_in import DEFAULT_BACKCHANNELS
from telephony.deepgram import messages as dm
from telephony.deepgram.clock import CallClock
from telephony.deepgram.flux import FluxClient, FluxOptions
from telephony.deepgram.speak import SpeakClient
from telephony.outcome import Outcome
from telephony.responder import Responder
from telephony.retry import Backoff
from telephony.session.barge_in import Backchannels, SmartBargeIn
from telephony.session.engine import CallContext
from telephony.session.fallback import hand_over
from telephony.session.flux_replies import FluxReplies
from telephony.session.idle import IdleWatch
from telephony.session.idle import config_of as idle_config_of
from telephony.session.link import Link
from telephony.session.tasks import TaskSet, run_together
from telephony.session.upstream import Upstream
from telephony.transcript import EventKind, Role

DTMF_GAP_S = 1.5  # digits typed closer together than this form one entry
REPLAY_TAIL_MS = 1000  # with no turn open, what may have been in flight when the socket died
WATCHDOG_TICK_S = 0.25  # how often the stuck-turn watchdog looks while Flux reconnects
FORCE_ANSWER_S = 1.0  # ForceEndTurn unanswered this long: the socket is not listening
EOT_TIMEOUT_DEFAULT_MS = 5000  # Flux's eot_timeout_ms when the profile leaves it unset


class FluxEngine:
    """One Flux-mode call: caller audio to Flux, its turns to `FluxReplies`."""

    def __init__(
        self,
        ctx: CallContext,
        responder: Responder,
        flux: Callable[[FluxOptions], FluxClient],
        options: FluxOptions,
        speak: Callable[[str], SpeakClient],
        *,
        reconnect: Backoff | None = None,
        phrase: Callable[[str, str], bytes | None] = lambda voice, text: None,
    ) -> None:
        self.ctx = ctx
        self.options = options  # what Flux confirmed last: a reconnect's URL carries it
        self.clock = CallClock()
        self._tasks = TaskSet(ctx.log)
        self.upstream = Upstream()  # caller audio to Flux: sent, held, replayed
        self.link = Link(
            ctx,
            "flux",
            lambda: flux(self.options),
            give_up=self._give_up,
            upstream=self.upstream,
            replay=self._replay_frames,
            on_live=self._on_live,
            backoff=reconnect,
        )
        self.replies = FluxReplies(
            ctx, responder, speak, self._tasks, self._give_up, reconnect, phrase=phrase
        )
        barge_in = ctx.profile.barge_in
        # The English model hears English; the multilingual one any language we have phrases of.
        languages = ("en",) if ctx.profile.flux.model == "flux-general-en" else DEFAULT_BACKCHANNELS
        self.barge = SmartBargeIn(
            barge_in,
            Backchannels.for_profile(barge_in, languages),
            self._tasks,
            self._interrupt,
            lambda: self.replies.speaking,
        )
        self.idle = IdleWatch(
            ctx,
            idle_config_of(ctx.profile),
            self._tasks,
            say=self._say_idle,
            busy=lambda: self._turn_open or bool(self.replies.speech.active),
            localize=self.replies.language.idle,
        )
        self.replies.speech.on_quiet = self.idle.bot_quiet
        self._turn_open = False
        self._dtmf: list[str] = []
        self._dtmf_timer = self._tasks.timer("dtmf", self._dtmf_entry)
        self._watchdog = self._tasks.timer("turn-watchdog", self._watch)
        self._watchdog_step: asyncio.Task[None] | None = None  # a due step, running
        self._dtmf_for_turn = ""
        self._turn_start_ms: int | None = None
        self._last_turn_end_ms = 0
        self._last_update = ""
        self._last_progress_at = 0.0
        self._forced_at: float | None = None
        self._hinted = options.language_hints  # the language hints last asked of Flux
        self._shown = ""  # the interim text live views were last told

    @property
    def flux(self) -> FluxClient:
        return self.link.client

    @property
    def keepalives_sent(self) -> int:
        """Flux is kept alive by WebSocket pings only: no JSON KeepAlive, ever."""
        return 0

    @property
    def interim(self) -> Mapping[Role, str]:
        return {}  # Flux turns are not shown live

    def on_outbound_audio(self, timestamp_ms: int, payload: bytes) -> None:
        """A bot stream carries no outbound track."""

    # --- Engine interface -------------------------------------------------------------------

    async def run(self) -> None:
        # Both links retry a refused start; one that cannot start hands the call over (and
        # never returns), so past this point both sockets are up.
        await asyncio.gather(self.link.start(), self.replies.link.start())
        greeting = self.ctx.profile.greeting
        if greeting:
            self.replies.say_fixed(greeting, interruptible=self.ctx.profile.greeting_interruptible)
        self._restart_watchdog()
        await run_together(
            {"flux-events": self.link.run(self._on_flux_event), "speak-events": self.replies.run()}
        )

    def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.upstream.push(timestamp_ms, payload)

    def on_dtmf(self, ms: int, digit: str) -> None:
        self.ctx.transcript.event(ms, EventKind.DTMF, digit=digit)
        self.idle.caller_active()
        self._dtmf.append(digit)
        self._dtmf_timer.start(0.0 if digit == "#" else DTMF_GAP_S)

    async def close(self) -> None:
        speech = self.replies.speech
        speech.close()
        self._tasks.cancel_all()
        speech.cancel_actions()
        for link in (self.link, self.replies.link):
            await link.close()

    # --- Flux events --------------------------------------------------------------------------

    async def _on_flux_event(self, event: dm.FluxServerEvent) -> None:
        if isinstance(event, dm.TurnInfo):
            await self._on_turn(event)
        elif isinstance(event, dm.ConfigureSuccess):
            self._configured(event)
        elif isinstance(event, dm.ConfigureFailure):
            self.ctx.log.warning("Flux Configure refused")
        elif isinstance(event, dm.FluxWarning):
            self.ctx.log.warning("Flux warning %s: %s", event.code, event.description)

    # --- mid-call Configure ---------------------------------------------------------------------

    async def configure(
        self,
        *,
        eot_threshold: float | None = None,
        eager_eot_threshold: float | None = None,
        eot_timeout_ms: int | None = None,
        keyterms: list[str] | None = None,
        language_hints: list[str] | None = None,
    ) -> None:
        """Change Flux's turn settings mid-call (applied once Flux confirms them)."""
        await self.flux.configure(
            eot_threshold=eot_threshold,
            eager_eot_threshold=eager_eot_threshold,
            eot_timeout_ms=eot_timeout_ms,
            keyterms=keyterms,
            language_hints=language_hints,
        )

    async def _follow_language(self) -> None:
        """`flux.follow_language`: once the caller's language is known (and whenever it
        changes), Flux is hinted with it alone."""
        caller = self.replies.language.caller
        if not self.ctx.profile.flux.follow_language or caller is None:
            return
        if self._hinted != (caller,):
            self._hinted = (caller,)
            with contextlib.suppress(ConnectionClosed):
                await self.flux.configure(language_hints=[caller])

    def _configured(self, ok: dm.ConfigureSuccess) -> None:
        """Remember what Flux applied, so a reconnect's URL carries it (and the watchdog's
        threshold follows it)."""
        th = ok.thresholds
        before = self.options.eot_timeout_ms
        hints = self.options.language_hints if ok.language_hints is None else ok.language_hints
        self.options = replace(
            self.options,
            eot_threshold=th.get("eot_threshold", self.options.eot_threshold),
            eager_eot_threshold=th.get("eager_eot_threshold", self.options.eager_eot_threshold),
            eot_timeout_ms=th.get("eot_timeout_ms", self.options.eot_timeout_ms),
            keyterms=tuple(ok.keyterms),
            language_hints=tuple(hints),
        )
        data: dict[str, object] = {"thresholds": dict(th)}
        if ok.language_hints is not None:
            data["language_hints"] = list(ok.language_hints)
        self.ctx.transcript.event(self.ctx.now_ms(), EventKind.FLUX_CONFIGURED, **data)
        if self.options.eot_timeout_ms != before:
            self._restart_watchdog()  # it may be asleep on the old threshold

    # --- reconnect ------------------------------------------------------------------------------

    def _replay_frames(self) -> list[tuple[int, bytes]]:
        """Sent frames Flux must hear again: the open turn from its start, else the last 1 s
        (what was in flight when the socket died), never audio of a turn already ended."""
        last = self.upstream.last_sent_ms()
        if last is None:
            return []
        if self._turn_open and self._turn_start_ms is not None:
            start = self._turn_start_ms
        else:
            start = max(self._last_turn_end_ms, last - REPLAY_TAIL_MS)
        return self.upstream.sent_since(start)

    def _on_live(self, client: FluxClient, reason: str) -> dict[str, int]:
        """A new socket took the replay: anchor its audio times to the call clock."""
        self._turn_open = False  # a new connection starts with no turn; the replay reopens it
        self.barge.reset()
        offset = client.first_audio_ms
        if offset is None:  # nothing sent yet: the next frame anchors it
            offset = self.ctx.now_ms()
            client.first_audio_ms = offset
        anchor = self.clock.anchor(offset, reason)
        return {"connection": anchor.connection, "offset_ms": anchor.offset_ms}

    async def _give_up(self, endpoint: str, reason: str) -> None:
        """Flux or Aura is gone for good: nothing more is heard or answered; apologise and
        hand over through Twilio alone."""
        self.upstream.stop()
        self.replies.drop_all()
        await hand_over(self.ctx, endpoint, reason)

    # --- stuck turns ----------------------------------------------------------------------------

    def _restart_watchdog(self) -> None:
        """Look again now (at the start, or a Configure moved the threshold); a step under way
        gives way to it."""
        if self._watchdog_step is not None:
            self._watchdog_step.cancel()
            self._watchdog_step = None
        self._watch()

    def _watch(self) -> None:
        """An open turn whose words stopped growing eot_timeout_ms (+ 1 s) ago should have
        ended: it is stuck, or the socket went silent. ForceEndTurn first; if even that gets no
        answer, end the turn from the last Update ourselves and replace the socket.

        The timer is armed for the first moment anything could be due, not on a clock:
        hundreds of calls would otherwise wake four times a second each to find nothing to do.
        """
        loop = asyncio.get_running_loop()
        # From what Flux confirmed last: a mid-call Configure moves the threshold.
        stuck_after_s = (self.options.eot_timeout_ms or EOT_TIMEOUT_DEFAULT_MS) / 1000 + 1
        now = loop.time()
        if not self.upstream.live:  # reconnecting (or given up): look again soon
            due = now + WATCHDOG_TICK_S
        elif not self._turn_open:
            # A turn that opens from now on has words newer than now (StartOfTurn is
            # progress), so it cannot be stuck before this.
            due = now + stuck_after_s
        elif self._forced_at is not None:
            due = self._forced_at + FORCE_ANSWER_S
        else:
            due = self._last_progress_at + stuck_after_s
        if due > now:
            self._watchdog.start(due - now)
        else:
            self._watchdog_step = self._tasks.spawn(self._step(now), "turn-watchdog")

    async def _step(self, now: float) -> None:
        """What is due at `now`, then look again."""
        if self._forced_at is not None:
            await self._release_stuck_turn()
        else:
            self._forced_at = now
            self.ctx.transcript.event(self.ctx.now_ms(), EventKind.TURN_WATCHDOG, step="force-end")
            with contextlib.suppress(ConnectionClosed):
                await self.flux.force_end_turn()
        self._watchdog_step = None
        self._watch()

    async def _release_stuck_turn(self) -> None:
        self._forced_at = None
        self._turn_open = False
        ms = self.ctx.now_ms()
        self.ctx.transcript.event(ms, EventKind.TURN_WATCHDOG, step="ended-from-update")
        text = self._last_update.strip()
        start = self._turn_start_ms if self._turn_start_ms is not None else ms
        self._last_turn_end_ms = ms
        self.upstream.forget_before(ms)  # this turn is settled: do not replay it
        backchannel = await self.barge.end_of_turn(text)
        if text:
            meta: dict[str, object] = {"trigger": "watchdog"}
            if backchannel:
                meta["backchannel"] = True
            self.ctx.transcript.add_turn("caller", text, start, ms, meta=meta)
            if not backchannel:
                self.replies.answer(text, ms)
        await self.flux.abort()  # the events loop sees the close and reconnects

    async def _on_turn(self, ev: dm.TurnInfo) -> None:
        kind = ev.event
        if kind == "StartOfTurn" or (kind != "EndOfTurn" and ev.transcript != self._last_update):
            # Progress: the caller is still talking. Updates keep coming while a turn is open,
            # so "no message" cannot detect a stuck turn; "no new words" can.
            self._last_progress_at = asyncio.get_running_loop().time()
        if kind != "EndOfTurn" and ev.transcript:
            self._last_update = ev.transcript
        if kind == "StartOfTurn" or (kind == "Update" and ev.transcript != self._shown):
            self._shown = ev.transcript  # live views: the caller is speaking, and says this
            self.ctx.transcript.signal("interim", role="caller", text=ev.transcript)
        if kind == "StartOfTurn":
            self._turn_open = True
            self.idle.caller_active()
            self._turn_start_ms = self.clock.to_call_ms(ev.audio_window_start)
            await self.barge.start_of_turn(self._turn_start_ms, ev.transcript)
        elif kind == "EagerEndOfTurn":
            await self.barge.words(ev.transcript)
            if not self.barge.holding:  # a backchannel so far: nothing to answer
                self.replies.speculate(ev.transcript)
        elif kind == "TurnResumed":
            self.replies.drop_speculation()
            await self.barge.words(ev.transcript)
        elif kind == "Update":
            await self.barge.words(ev.transcript)
        elif kind == "EndOfTurn":
            self._turn_open = False
            self._forced_at = None
            self._last_turn_end_ms = self.clock.to_call_ms(ev.audio_window_end)
            self.upstream.forget_before(self._last_turn_end_ms)  # never replayed again
            await self._end_of_turn(ev)

    def _say_idle(self, text: str, final: bool) -> None:
        """A reprompt, or the goodbye after which the call hangs up (idle.py)."""
        reply = self.replies.say_fixed(text, interruptible=True)
        if final:
            reply.action, reply.outcome = "hangup", Outcome.IDLE_HANGUP

    async def _interrupt(self, start_ms: int, why: str, decided_after_ms: int) -> None:
        """Barge-in for the turn that started at `start_ms`; how it was decided, for a smart
        one, goes on its event."""
        detail = None
        if self.barge.smart:
            detail = {"decided_by": why, "decided_after_ms": decided_after_ms}
        await self.replies.barge_in(start_ms, detail)

    async def _end_of_turn(self, ev: dm.TurnInfo) -> None:
        digits, self._dtmf_for_turn = self._dtmf_for_turn, ""
        # Keys pressed in the turn are never a backchannel.
        backchannel = await self.barge.end_of_turn(ev.transcript) and not digits
        text = f"{ev.transcript.strip()} {digits}".strip()
        if not text:
            self.replies.drop_speculation()
            return
        start_ms = self.clock.to_call_ms(ev.audio_window_start)
        end_ms = self.clock.to_call_ms(ev.audio_window_end)
        meta: dict[str, object] = {"trigger": ev.trigger or ""}
        if ev.languages:  # flux-general-multi: what the caller spoke, most used first
            meta["languages"] = list(ev.languages)
        if backchannel:
            # Heard over the bot and only an acknowledgement: kept, never answered.
            meta["backchannel"] = True
            self.replies.drop_speculation()
            self.ctx.transcript.add_turn("caller", text, start_ms, end_ms, meta=meta)
            return
        self.ctx.transcript.add_turn("caller", text, start_ms, end_ms, meta=meta)
        self.replies.answer(text, end_ms, ev.languages)
        await self._follow_language()

    # --- DTMF ---------------------------------------------------------------------------------

    async def _dtmf_entry(self) -> None:
        """Digits end the caller's turn: with Flux mid-turn, via ForceEndTurn; else alone."""
        digits = "".join(d for d in self._dtmf if d != "#")
        self._dtmf.clear()
        if not digits:
            return
        if self._turn_open:
            self._dtmf_for_turn = digits
            await self.flux.force_end_turn()
            return
        ms = self.ctx.now_ms()
        await self.replies.barge_in(ms)
        self.ctx.transcript.add_turn("caller", digits, ms, ms, meta={"trigger": "dtmf"})
        self.replies.answer(digits, ms)
