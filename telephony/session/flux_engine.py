"""Flux mode: Flux turns -> responder -> Aura -> paced playout, with barge-in and actions.

This module is the Flux side: the socket, its reconnects and replay, the stuck-turn watchdog and
DTMF. The replies (responder, Aura, playout, speculation) are `FluxReplies` in flux_replies.py.

Turn state machine (Flux `TurnInfo.event`):
- StartOfTurn while the bot may be heard -> barge-in: Twilio `clear`, Aura `Clear`, reply
  cancelled, all before the next event is read.
- EagerEndOfTurn -> start the responder speculatively; its text is held, not spoken.
- TurnResumed -> cancel the speculative reply, discard its text.
- EndOfTurn -> commit the speculative reply if the final transcript equals the eager one,
  otherwise start afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

from websockets.exceptions import ConnectionClosed

from telephony.audio import FRAME_MS
from telephony.deepgram import messages as dm
from telephony.deepgram.clock import CallClock
from telephony.deepgram.flux import FluxClient, FluxFatal, FluxOptions
from telephony.deepgram.speak import SpeakClient
from telephony.responder import Responder
from telephony.retry import Backoff, FailureBudget
from telephony.session.engine import CallContext
from telephony.session.fallback import fail_over
from telephony.session.flux_replies import FluxReplies
from telephony.session.tasks import TaskSet
from telephony.session.upstream import Upstream

DTMF_GAP_S = 1.5  # digits typed closer together than this form one entry
REPLAY_TAIL_MS = 1000  # with no turn open, what may have been in flight when the socket died
WATCHDOG_TICK_S = 0.25  # how often the stuck-turn watchdog looks while Flux reconnects
FORCE_ANSWER_S = 1.0  # ForceEndTurn unanswered this long: the socket is not listening


class FluxEngine:
    """One Flux-mode call: caller audio to Flux, its turns to `FluxReplies`."""

    def __init__(
        self,
        ctx: CallContext,
        responder: Responder,
        flux: Callable[[FluxOptions], FluxClient],
        options: FluxOptions,
        speak: Callable[[], SpeakClient],
        *,
        reconnect: Backoff | None = None,
    ) -> None:
        self.ctx = ctx
        self._new_flux = flux
        self.options = options  # what Flux confirmed last: a reconnect's URL carries it
        self.flux = flux(options)
        self.clock = CallClock()
        self._backoff = reconnect or Backoff()
        self._tasks = TaskSet(ctx.log)
        self.replies = FluxReplies(ctx, responder, speak, self._tasks, self._backoff)
        self._turn_open = False
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self._dtmf_for_turn = ""
        self.upstream = Upstream()  # caller audio to Flux: sent, held, replayed
        self._turn_start_ms: int | None = None
        self._last_turn_end_ms = 0
        self._last_update = ""
        self._last_progress_at = 0.0
        self._forced_at: float | None = None
        self._budget = FailureBudget()

    # --- Engine interface -------------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.gather(self.flux.connect(), self.replies.speak.connect())
        await self._go_live([], "start")  # caller audio from before Flux was up goes first
        greeting = self.ctx.profile.greeting
        if greeting:
            self.replies.say_fixed(greeting, interruptible=self.ctx.profile.greeting_interruptible)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flux_loop(), name="flux-events")
            tg.create_task(self.replies.run(), name="speak-events")
            tg.create_task(self._watchdog(), name="turn-watchdog")

    def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.upstream.push(timestamp_ms, payload)

    def on_dtmf(self, ms: int, digit: str) -> None:
        self.ctx.transcript.event(ms, "dtmf", digit=digit)
        self._dtmf.append(digit)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        delay = 0.0 if digit == "#" else DTMF_GAP_S
        self._dtmf_task = self._tasks.spawn(self._dtmf_entry(delay), "dtmf")

    async def close(self) -> None:
        speech = self.replies.speech
        speech.close()
        self._tasks.cancel_all()
        speech.cancel_actions()
        with contextlib.suppress(Exception):
            await self.flux.close()
        with contextlib.suppress(Exception):
            await self.replies.speak.close()

    # --- Flux events --------------------------------------------------------------------------

    async def _flux_loop(self) -> None:
        while True:
            try:
                async for event in self.flux.events():
                    await self._on_flux_event(event)
                return  # we closed it: the call is over
            except FluxFatal as exc:
                if not await self._reconnect(str(exc)):
                    return

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
    ) -> None:
        """Change Flux's turn settings mid-call (applied once Flux confirms them)."""
        await self.flux.configure(
            eot_threshold=eot_threshold,
            eager_eot_threshold=eager_eot_threshold,
            eot_timeout_ms=eot_timeout_ms,
            keyterms=keyterms,
        )

    def _configured(self, ok: dm.ConfigureSuccess) -> None:
        """Remember what Flux applied, so a reconnect's URL carries it."""
        th = ok.thresholds
        self.options = replace(
            self.options,
            eot_threshold=th.get("eot_threshold", self.options.eot_threshold),
            eager_eot_threshold=th.get("eager_eot_threshold", self.options.eager_eot_threshold),
            eot_timeout_ms=th.get("eot_timeout_ms", self.options.eot_timeout_ms),
            keyterms=tuple(ok.keyterms),
        )
        self.ctx.transcript.event(self.ctx.now_ms(), "flux-configured", thresholds=dict(th))

    # --- reconnect ------------------------------------------------------------------------------

    async def _reconnect(self, reason: str) -> bool:
        """Replace a failed Flux socket; audio from the gap (and the open turn) is replayed."""
        self.upstream.live = False
        lost_at = asyncio.get_running_loop().time()
        self.ctx.log.warning("Flux connection lost: %s", reason)
        await self.flux.abort()
        if not self._budget.spend(asyncio.get_running_loop().time()):
            await self._give_up(f"{reason} (repeated failures)")
            return False
        replay = self._replay_frames()
        for delay in self._backoff.delays():
            await asyncio.sleep(delay)
            client = self._new_flux(self.options)
            try:
                await client.connect()
            except Exception as exc:  # handshake refused, 429, network: back off and retry
                self.ctx.log.warning("Flux reconnect failed: %s", exc)
                continue
            self.flux = client
            await self._go_live(replay, reason, lost_at)
            return True
        await self._give_up(reason)
        return False

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

    async def _go_live(
        self, replay: list[tuple[int, bytes]], reason: str, lost_at: float | None = None
    ) -> None:
        """Send the replay, then everything that waited, then switch to direct sending."""
        self._turn_open = False  # a new connection starts with no turn; replay reopens it
        self.upstream.go_live(self.flux.send_audio, replay)  # False: the events loop reconnects
        offset = self.flux.first_audio_ms
        if offset is None:  # nothing sent yet: the next frame anchors it
            offset = self.ctx.now_ms()
            self.flux.first_audio_ms = offset
        anchor = self.clock.anchor(offset, reason)
        self.ctx.transcript.event(
            self.ctx.now_ms(),
            "flux-connection",
            connection=anchor.connection,
            offset_ms=anchor.offset_ms,
            reason=reason,
            replayed_ms=len(replay) * FRAME_MS,
            dropped_ms=self.upstream.dropped_frames * FRAME_MS,
        )
        if lost_at is not None:  # socket lost -> new socket live with the replay sent
            ms = round((asyncio.get_running_loop().time() - lost_at) * 1000, 1)
            self.ctx.transcript.events[-1].data["reconnect_ms"] = ms

    async def _give_up(self, reason: str) -> None:
        """Flux is gone for good: apologise and hand over (through Twilio alone)."""
        self.upstream.stop()  # no socket will take the audio any more
        await self.replies.speak.clear()
        await self.ctx.playout.clear()
        await fail_over(self.ctx, reason)

    # --- stuck turns ----------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """An open turn whose words stopped growing eot_timeout_ms (+ 1 s) ago should have
        ended: it is stuck, or the socket went silent. ForceEndTurn first; if even that gets no
        answer, end the turn from the last Update ourselves and replace the socket."""
        loop = asyncio.get_running_loop()
        stuck_after_s = (self.flux.options.eot_timeout_ms or 5000) / 1000 + 1
        while True:
            # Sleep until the first moment anything could be due, not on a clock: hundreds of
            # calls would otherwise wake four times a second each to find nothing to do.
            now = loop.time()
            if not self.upstream.live:
                due = now + WATCHDOG_TICK_S  # reconnecting: look again soon
            elif not self._turn_open:
                # A turn that opens from now on has words newer than now (StartOfTurn is
                # progress), so it cannot be stuck before this.
                due = now + stuck_after_s
            elif self._forced_at is not None:
                due = self._forced_at + FORCE_ANSWER_S
            else:
                due = self._last_progress_at + stuck_after_s
            if due > now:
                await asyncio.sleep(due - now)
                continue
            if self._forced_at is not None:
                await self._release_stuck_turn()
            else:
                self._forced_at = now
                self.ctx.transcript.event(self.ctx.now_ms(), "turn-watchdog", step="force-end")
                with contextlib.suppress(ConnectionClosed):
                    await self.flux.force_end_turn()

    async def _release_stuck_turn(self) -> None:
        self._forced_at = None
        self._turn_open = False
        ms = self.ctx.now_ms()
        self.ctx.transcript.event(ms, "turn-watchdog", step="ended-from-update")
        text = self._last_update.strip()
        start = self._turn_start_ms if self._turn_start_ms is not None else ms
        self._last_turn_end_ms = ms
        self.upstream.forget_before(ms)  # this turn is settled: do not replay it
        if text:
            self.ctx.transcript.add_turn("caller", text, start, ms, meta={"trigger": "watchdog"})
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
        if kind == "StartOfTurn":
            self._turn_open = True
            self._turn_start_ms = self.clock.to_call_ms(ev.audio_window_start)
            await self.replies.barge_in(self._turn_start_ms)
        elif kind == "EagerEndOfTurn":
            self.replies.speculate(ev.transcript)
        elif kind == "TurnResumed":
            self.replies.drop_speculation()
        elif kind == "EndOfTurn":
            self._turn_open = False
            self._forced_at = None
            self._last_turn_end_ms = self.clock.to_call_ms(ev.audio_window_end)
            self.upstream.forget_before(self._last_turn_end_ms)  # never replayed again
            await self._end_of_turn(ev)

    async def _end_of_turn(self, ev: dm.TurnInfo) -> None:
        text = f"{ev.transcript.strip()} {self._dtmf_for_turn}".strip()
        self._dtmf_for_turn = ""
        if not text:
            self.replies.drop_speculation()
            return
        start_ms = self.clock.to_call_ms(ev.audio_window_start)
        end_ms = self.clock.to_call_ms(ev.audio_window_end)
        meta: dict[str, object] = {"trigger": ev.trigger or ""}
        if ev.languages:  # flux-general-multi: what the caller spoke, most used first
            meta["languages"] = list(ev.languages)
        self.ctx.transcript.add_turn("caller", text, start_ms, end_ms, meta=meta)
        self.replies.answer(text, end_ms)

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
        await self.replies.barge_in(ms)
        self.ctx.transcript.add_turn("caller", digits, ms, ms, meta={"trigger": "dtmf"})
        self.replies.answer(digits, ms)
