"""The transcript store: what the call path records (calls, turns, events, Twilio's status
callbacks), write-behind, and the read queries for the UI.

Every record is a row on telephony/store/writer.py's bounded queue: the call path never waits
for the database, and a fault is retried there, not here.

Twilio's status callbacks (``status``) are recorded only for calls that have a row: a signed
callback for a call never carried here must not create one. A callback that arrives before
its call's row (written by another instance, or later in the queue) is retried for
``STATUS_WAIT_S``, then dropped and counted in ``unknown_status``.

With an ``instance``, a keeper task (telephony/store/keeper.py) writes this process's heartbeat
and closes calls that dead instances left open: once before ``start`` returns, then every
``heartbeat_s``; every ``check_s`` it checks that a SQLite file is still the one opened.
Failed writes and heartbeats, and a deleted or replaced file, are fault episodes
(telephony/store/health.py): logged once, on /metrics, and the instance is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Unpack

from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.outcome import Outcome
from telephony.store import instances
from telephony.store.batch import INSIGHTS, Kind, Row
from telephony.store.health import describe
from telephony.store.instances import Instance
from telephony.store.keeper import start_keeper
from telephony.store.queries import CallFilter, get_call, search_calls
from telephony.store.redact import redacted_turn
from telephony.store.writer import BatchWriter, WriterOptions
from telephony.transcript import Event, Transcript, Turn

log = logging.getLogger(__name__)

STATUS_WAIT_S = 20.0  # a status callback waits this long for its call's row to appear


class TranscriptStore(BatchWriter):
    """Non-blocking sink for calls, turns and events; batched, retried writes."""

    def __init__(
        self,
        engine: AsyncEngine | str,
        *,
        instance: Instance | None = None,
        heartbeat_s: float = instances.HEARTBEAT_S,
        stale_after_s: float = instances.STALE_AFTER_S,
        check_s: float = 2.0,
        **writer: Unpack[WriterOptions],
    ) -> None:
        super().__init__(engine, **writer)
        # The heartbeat and the restart sweep (None: neither, e.g. tools and most tests).
        self.instance = instance
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._keeper: asyncio.Task[None] | None = None
        self.check_s = check_s

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._start_writer()
        if self._keeper is None:
            started = await start_keeper(self)
            if started is not None:
                self._watch, self._keeper = started

    async def stop(self) -> None:
        """Flush everything queued (bounded by ``stop_timeout``), then stop the writer."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self._stop_writer()
        if self.instance is not None and not self.health.replaced:
            try:  # gone cleanly: anything still open is swept by the others' next sweep
                await instances.forget(self.engine, self.instance)
            except Exception as exc:
                log.warning("could not remove this instance's heartbeat: %s", describe(exc))
        if self._owns_engine:
            await self.engine.dispose()

    @property
    def ready(self) -> bool:
        """False during a fault episode: /readyz turns new calls away while calls go on."""
        return self.health.problem is None

    # -- the call path: never blocks -----------------------------------------------------

    def call_started(
        self,
        call_sid: str,
        *,
        from_number: str = "",
        to_number: str = "",
        profile: str = "",
        mode: str = "",
        started_at: float | None = None,
        recording_path: str | None = None,
    ) -> None:
        self._put(
            "call_started",
            {
                "sid": call_sid,
                "from_number": from_number,
                "to_number": to_number,
                "profile": profile,
                "mode": mode,
                "started_at": time.time() if started_at is None else started_at,
                "recording_path": recording_path,
                "instance_id": self._instance_id,
            },
        )

    @property
    def _instance_id(self) -> str:
        return self.instance.id if self.instance is not None else ""

    def call_ended(
        self,
        summary: Any,
        *,
        duration_ms: int | None = None,
        mode: str | None = None,
        recording_path: str | None = None,
        insights: bool = False,
    ) -> None:
        """``summary``: a ``CallSummary`` (or anything with its fields). ``mode`` and
        ``recording_path`` are written only when given (a recording is linked once its file
        exists, which may be a second ``call_ended`` for the same call). ``insights``: the
        profile wants post-call insights (a pending row is written with the end)."""
        ended_at = summary.ended_at or time.time()
        if duration_ms is None:
            stats = getattr(summary, "stats", None)
            audio_end = getattr(stats, "audio_end_ms", 0) or 0
            duration_ms = audio_end or max(0, round((ended_at - summary.started_at) * 1000))
        values = {
            "sid": summary.call_sid,
            "from_number": summary.from_number,
            "to_number": summary.to_number,
            "profile": summary.profile,
            "started_at": summary.started_at,
            "ended_at": ended_at,
            "end_reason": str(summary.end_reason),  # an Outcome
            "end_detail": getattr(summary, "end_detail", ""),
            "duration_ms": duration_ms,
        }
        if mode is not None:
            values["mode"] = mode
        if recording_path is not None:
            values["recording_path"] = recording_path
        if insights:
            values[INSIGHTS] = True
        self._put("call_ended", values)

    def call_resumed(self, summary: Any) -> None:
        """The call goes on in a new stream (its transcription after a transfer to a person):
        the same row is live again (ended_at cleared) until that stream's ``call_ended``."""
        self._put(
            "call_ended",
            {
                "sid": summary.call_sid,
                "from_number": summary.from_number,
                "to_number": summary.to_number,
                "profile": summary.profile,
                "started_at": summary.started_at,  # only used if the row does not exist yet
                "ended_at": None,
                "end_reason": "",
                "end_detail": "",
                "duration_ms": None,
                "instance_id": self._instance_id,  # carried here now
            },
        )

    def call_refused(
        self,
        call_sid: str,
        reason: str,
        *,
        from_number: str = "",
        to_number: str = "",
        profile: str = "",
        at: float | None = None,
    ) -> None:
        """A media stream of a call we answered that could not become a call: an ended row
        with outcome `refused`, unless the call already has a row (which is left alone)."""
        now = time.time() if at is None else at
        values = {
            "sid": call_sid,
            "from_number": from_number,
            "to_number": to_number,
            "profile": profile,
            "started_at": now,
            "ended_at": now,
            "end_reason": str(Outcome.REFUSED),
            "end_detail": reason,
            "duration_ms": 0,
            "instance_id": self._instance_id,
        }
        self._put("refused", values)

    def status(self, call_sid: str, event: Event) -> None:
        """A Twilio status callback, as an event of the call, only if the call has a row."""
        values = {
            "call_sid": call_sid,
            "ms": event.ms,
            "kind": event.kind,
            "data": dict(event.data),
        }
        self._put("status", values, until=time.monotonic() + STATUS_WAIT_S)

    def turn(self, call_sid: str, turn: Turn) -> None:
        """Upserted by (call_sid, idx): a bot turn may be written again when it closes."""
        self._put(
            "turn",
            {
                "call_sid": call_sid,
                "idx": turn.index,
                "role": turn.role,
                "text": turn.text,
                "heard": turn.heard,
                "interrupted": turn.interrupted,
                "interrupted_at_ms": turn.interrupted_at_ms,
                "start_ms": turn.start_ms,
                "end_ms": turn.end_ms,
                "latency_ms": turn.latency_ms,
                "meta": dict(turn.meta),  # snapshot: the Turn may change later
            },
        )

    def event(self, call_sid: str, event: Event) -> None:
        self._put(
            "event",
            {"call_sid": call_sid, "ms": event.ms, "kind": event.kind, "data": dict(event.data)},
        )

    def attach(self, call_sid: str, transcript: Transcript, *, redact: bool = False) -> None:
        """Subscribe to a call's transcript hooks; with `redact`, PII never reaches the store."""
        if redact:
            transcript.on_turn = lambda t: self.turn(call_sid, redacted_turn(t))
        else:
            transcript.on_turn = lambda t: self.turn(call_sid, t)
        transcript.on_event = lambda e: self.event(call_sid, e)

    def _put(self, kind: Kind, values: dict[str, Any], *, until: float = 0.0) -> None:
        self._put_row(Row(kind, values, until))

    # -- reads (the UI's queries live in store/queries.py) ------------------------------

    async def list_calls(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        return await search_calls(self.engine, CallFilter(limit=limit, offset=offset))

    async def get_call(self, sid: str) -> dict[str, Any] | None:
        """The call row with ``turns`` (by idx) and ``events`` (by ms, then arrival)."""
        return await get_call(self.engine, sid)
