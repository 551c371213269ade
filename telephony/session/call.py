"""One live call: owns the Twilio media socket from the handshake's `start` to `stop`.

After a good handshake (telephony/session/handshake.py) every frame is dispatched by the
call's intake (telephony/session/media_intake.py, `Call`'s base). A malformed frame is logged,
counted and skipped; a flood of them, like any bound the stream breaks
(telephony/session/policing.py), ends this call only, with a recorded reason.

How the call ended is an `Outcome` (telephony/outcome.py): the call records each REST
action it asks Twilio for (hang-up, transfer, the failover's redirect, the time limit's and the
drain's goodbyes) before asking, and otherwise goes by how the stream ended (`stop` or not).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from telephony.logs import CallLogger, call_logger
from telephony.outcome import Outcome
from telephony.session.engine import CallContext, Engine
from telephony.session.handshake import CallSetup
from telephony.session.listen_in import ListenTap
from telephony.session.media_intake import MediaIntake
from telephony.session.media_socket import CLOSE_ERROR, CLOSE_NORMAL, StreamEnd, TwilioSocket
from telephony.session.policing import StreamPolice
from telephony.session.summary import CallSummary
from telephony.settings import Settings
from telephony.transcript import EventKind
from telephony.twilio import twiml
from telephony.twilio.playout import Playout

if TYPE_CHECKING:
    from telephony.store.recording import CallRecorder

TIME_LIMIT_TWIML = twiml.say_and_hang_up("This call has reached its time limit. Goodbye.")

EngineFactory = Callable[[CallContext], Engine]


class Call(MediaIntake):
    """A call after a good handshake. `run()` returns when the stream ends, with the reason.

    Three things run per call: the media socket's frames, each handled to the end as it arrives
    (`on_frame`: Twilio -> engine, marks -> playout; nothing on that path awaits, so the socket
    may call it straight from its parser), the playout's pacing task (engine -> Twilio) and the
    engine's own tasks (Deepgram sockets).
    """

    def __init__(
        self,
        socket: TwilioSocket,
        setup: CallSetup,
        *,
        max_bad_frames: int = 20,
        max_audio_ahead_ms: int = 2000,
        max_control_per_s: float = 50.0,
        engine_factory: EngineFactory | None = None,
        hang_up: Callable[[str], Awaitable[None]] | None = None,
        transfer: Callable[[str, str], Awaitable[None]] | None = None,
        redirect: Callable[[str, str], Awaitable[None]] | None = None,
        transfer_coming: Callable[[], None] | None = None,
        settings: Settings | None = None,
        recorder: CallRecorder | None = None,
    ) -> None:
        start = setup.start
        self.socket = socket
        self.profile = setup.profile
        self.stream_sid = start.stream_sid
        self.log: CallLogger = call_logger(start.call_sid)
        self._police = StreamPolice(
            self.log,
            max_bad_frames=max_bad_frames,
            max_audio_ahead_ms=max_audio_ahead_ms,
            max_control_per_s=max_control_per_s,
        )
        self._limit_reason: str | None = None  # a bound this call broke, or its time limit
        self._too_fast = False  # set by the audio budget, acted on by on_frame
        # Each track's bytes against real time: charged on every frame (see `_on_media`).
        self._inbound_budget = self._police.inbound
        self._outbound_budget = self._police.outbound
        self.max_call_s = float(setup.profile.max_call_seconds)
        self._next_sequence = start.sequence + 1
        params = start.custom_parameters
        self.summary = CallSummary(
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            profile=setup.profile_name,
            from_number=params.get("from", ""),
            to_number=params.get("to", ""),
            started_at=time.time(),
        )
        self.transcript = self.summary.transcript
        # A continuation (transcription after a transfer) carries on the call's clock and
        # turn numbering where the bot part stopped; its time limit counts from the call start.
        self.continuation = setup.continuation
        self._clock_offset_ms = setup.continuation.offset_ms if setup.continuation else 0
        if setup.continuation is not None:
            self.summary.stats.audio_end_ms = self._clock_offset_ms
            self.transcript.first_index = setup.continuation.turn_base
            self.max_call_s = max(1.0, self.max_call_s - self._clock_offset_ms / 1000)
        self.playout = Playout(socket.send_text, start.stream_sid, send_many=socket.send_many)
        # Recording: caller frames go in below (after gap fill), bot frames from the playout.
        self.recorder = recorder
        if recorder is not None:
            self.playout.on_frame = recorder.bot
            self.playout.on_clear = recorder.clear
        # Listen-in (session/listen_in.py): the audio path tests `_tap` only.
        self.listen = ListenTap(self._install_tap)
        self._tap: ListenTap | None = None
        self._hang_up = hang_up
        self._transfer = transfer
        self._redirect = redirect
        self._engine_error: str | None = None
        # The REST action we took to end the call (first wins) and its detail; see run().
        self._outcome: Outcome | None = None
        self._outcome_detail = ""
        self._ending = False
        self.engine: Engine | None = None
        if engine_factory is not None:
            self.engine = engine_factory(
                CallContext(
                    call_sid=start.call_sid,
                    profile_name=setup.profile_name,
                    profile=setup.profile,
                    settings=settings or Settings(),
                    playout=self.playout,
                    transcript=self.transcript,
                    log=self.log,
                    now_ms=self._now_ms,
                    hang_up=self._rest_hang_up,
                    transfer=self._rest_transfer,
                    redirect=self._rest_redirect,
                    mark_outcome=self._mark,
                    transfer_coming=transfer_coming or (lambda: None),
                )
            )
        # Twilio's `outbound` track (a both_tracks fork): what the caller hears. Only engines
        # that transcribe it take it; its frames never touch the inbound clock or gap fill.

    @property
    def call_sid(self) -> str:
        return self.summary.call_sid

    def _now_ms(self) -> int:
        return self.summary.stats.audio_end_ms

    def _mark(self, outcome: Outcome, detail: str = "") -> None:
        """We are ending the call this way (before asking Twilio: its `stop` may arrive before
        the REST answer). The first action wins; a stream that already ended is decided."""
        if self._outcome is None and not self._ending:
            self._outcome, self._outcome_detail = outcome, detail

    def _unmark(self, outcome: Outcome) -> None:
        """The REST action failed, so the call goes on and will end some other way."""
        if self._outcome is outcome and not self._ending:
            self._outcome, self._outcome_detail = None, ""

    async def _rest_hang_up(self, outcome: Outcome = Outcome.BOT_HANGUP) -> None:
        if self._hang_up is not None:
            self._mark(outcome)
            try:
                await self._hang_up(self.call_sid)
            except Exception:
                self._unmark(outcome)
                raise

    async def _rest_transfer(self, number: str) -> None:
        if self._transfer is not None:
            self._mark(Outcome.TRANSFERRED)
            try:
                await self._transfer(self.call_sid, number)
            except Exception:
                self._unmark(Outcome.TRANSFERRED)
                raise

    async def _rest_redirect(self, twiml: str) -> None:
        if self._redirect is not None:
            await self._redirect(self.call_sid, twiml)

    async def run(self) -> CallSummary:
        self.log.info("call started", extra={"profile": self.summary.profile})
        tasks = [
            asyncio.create_task(self.playout.run(), name="playout"),
            asyncio.create_task(self._time_limit(), name="time-limit"),
        ]
        if self.engine is not None:
            engine_task = asyncio.create_task(self.engine.run(), name="engine")
            engine_task.add_done_callback(self._engine_done)
            tasks.append(engine_task)
        end = StreamEnd("internal error", CLOSE_ERROR)  # unless the stream ends otherwise
        try:
            end = await self._read_stream()
        except Exception:
            self.log.exception("call failed")
            await self.socket.close(CLOSE_ERROR, end.reason)
        finally:
            if self.recorder is not None:  # what the playout sent ahead never played
                self.recorder.end(asyncio.get_running_loop().time())
            # Decided as the stream ends, before the engine's pending REST actions are
            # cancelled below: Twilio's `stop` often comes before its answer to our request.
            if self._outcome is None:
                self._outcome = self._stream_outcome(end)
            self._ending = True  # from here the engine stopping is expected, not a failure
            self.listen.close()
            if self.engine is not None:
                await self.engine.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.playout.release()  # its hooks are the engine's and the recorder's methods
        reason = self._limit_reason or self._engine_error or end.reason
        self.summary.end_reason = self._outcome
        self.summary.end_detail = self._outcome_detail or reason
        self.summary.ended_at = time.time()
        stats = self.summary.stats
        self.log.info(
            "call ended",
            extra={
                "outcome": str(self._outcome),
                "reason": self.summary.end_detail,
                "frames": stats.media_frames,
            },
        )
        return self.summary

    def release(self) -> None:
        """The call is over and recorded: let go of what points back at it — the engine (its
        context holds this call's methods) and the REST hooks (closures over this call) — so
        reference counting frees an ended call at once. A cycle left here would keep its
        every object until a full garbage collection, which stalls every live call's audio
        for as long as it scans them all (tests/test_call_memory.py)."""
        self.engine = None
        self._hang_up = self._transfer = self._redirect = None

    def _stream_outcome(self, end: StreamEnd) -> Outcome:
        """How the call ended when we had not acted: by the stream's own ending."""
        if self._engine_error is not None:
            return Outcome.ERROR
        if end.outcome is Outcome.CALLER_HANGUP and self.continuation is not None:
            return Outcome.TRANSFERRED  # the bot's transfer, then the person's call ended
        return end.outcome

    async def _time_limit(self) -> None:
        """The profile's max_call_seconds: say goodbye through Twilio and end the stream."""
        await asyncio.sleep(self.max_call_s)
        self.log.warning("call reached its time limit of %.0f s", self.max_call_s)
        if self.profile.mode == "transcribe" or self.continuation is not None:
            # People hold this call: stop transcribing it (close the fork), never hang up.
            self._limit_reason = "max call duration"
            self._mark(Outcome.MAX_DURATION)
            self.transcript.event(self._now_ms(), EventKind.TIME_LIMIT, seconds=self.max_call_s)
            await self.socket.close(CLOSE_NORMAL, self._limit_reason)
            return
        await self.end(
            "max call duration",
            TIME_LIMIT_TWIML,
            EventKind.TIME_LIMIT,
            outcome=Outcome.MAX_DURATION,
            seconds=self.max_call_s,
        )

    async def end(
        self,
        reason: str,
        twiml: str | None,
        event: EventKind,
        *,
        outcome: Outcome,
        code: int = CLOSE_NORMAL,
        **data: object,
    ) -> None:
        """End the call from our side: `twiml` (a goodbye) runs on the call through Twilio's
        REST API, then the stream is closed with `reason`, which becomes the end detail and
        `outcome` the end reason (unless we had already ended it another way).
        `twiml=None` only closes the stream (a call we merely listen to goes on without us),
        with `code` (CLOSE_POLICY for a duplicate stream another instance carries).

        The transcript gets an `event` (with `data`). Does nothing if the call is already
        ending. Used by the time limit and by the server's drain.
        """
        if self._ending or self._limit_reason is not None:
            return
        self._limit_reason = reason
        self._mark(outcome)
        self.transcript.event(self._now_ms(), event, **data)
        if twiml is not None:
            try:
                await self._rest_redirect(twiml)
            except Exception as exc:  # the stream is closed below whatever REST says
                self.log.error("%s: goodbye redirect failed: %s", reason, exc)
        await self.socket.close(code, reason)

    def _engine_done(self, task: asyncio.Task[None]) -> None:
        """The engine stopping on its own is fatal for the call: end it with the reason."""
        if task.cancelled() or self._ending:
            return
        exc = task.exception()
        self._engine_error = f"engine failed: {exc}" if exc else "engine stopped"
        self.log.error("%s", self._engine_error, exc_info=exc)
        asyncio.get_running_loop().create_task(self.socket.close(CLOSE_ERROR, "upstream failure"))

    async def _read_stream(self) -> StreamEnd:
        """Frames to `on_frame` until the stream ends; close it as the ending says."""
        end = await self.socket.pump(self.on_frame)
        if end is None:  # gone without `stop`: the stream was lost, not ended
            return StreamEnd("twilio closed the socket")
        await self.socket.close(end.code, end.close_reason or end.reason)
        return end
