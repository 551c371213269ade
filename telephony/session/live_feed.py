"""A call's live events onto the bus (telephony/live/bus.py): started, each turn and the
events staff watch for, ended. Small payloads: ids, times and a turn's text (redacted when the
profile redacts, cut to `TEXT_CHARS`), never the transcript so far.

A transcript listener: told on the event loop when a turn closes or an event is recorded, it
only calls `publish`, which never waits. Nothing per audio frame.
"""

from __future__ import annotations

import re

from telephony.live.bus import LiveBus
from telephony.store.redact import redact
from telephony.transcript import CONNECTION_KINDS, Event, EventKind, Turn, is_reconnect

TEXT_CHARS = 300
# In a turn still being spoken, any run of 4 digits or more (spaces and dashes between): what
# the caller is in the middle of saying may be a card or account number not yet whole.
PARTIAL_NUMBER = re.compile(r"\d(?:[\d \-]{2,}\d)")
# The events a live view shows (alerts, state): the rest stay on the call page.
WATCHED = frozenset(
    {
        EventKind.BARGE_IN,
        EventKind.TRANSFER,
        EventKind.HANDOVER,
        EventKind.HANGUP,
        EventKind.UPSTREAM_FAILED,
        EventKind.NUDGE,
        EventKind.IDLE_GOODBYE,
        EventKind.FILLER,
        EventKind.ERROR,
        EventKind.LLM_FALLBACK,
    }
)


class LiveFeed:
    def __init__(self, bus: LiveBus, sid: str, *, redaction: bool) -> None:
        self.bus = bus
        self.sid = sid
        self.redaction = redaction

    def started(self, *, to_number: str, profile: str, mode: str, started_at: float) -> None:
        self.bus.publish(
            "call-started",
            self.sid,
            number=to_number,
            profile=profile,
            mode=mode,
            started_at=started_at,
            instance=self.bus.instance,
        )

    def ended(self, outcome: str, duration_ms: int) -> None:
        self.bus.publish("call-ended", self.sid, outcome=outcome, duration_ms=duration_ms)

    def signal(self, kind: str, data: dict[str, object]) -> None:
        """The transcript's live-only signals: who is speaking, and what so far."""
        if kind == "interim":
            # Nobody could see the words: the event alone (redacting them costs ~40 µs, at
            # every Flux Update of every call).
            text = str(data.get("text", "")) if self.bus.watched else ""
            if self.redaction and text:  # half a card number is not one to `redact`
                text = PARTIAL_NUMBER.sub("[number]", redact(text).text)
            self.bus.publish("interim", self.sid, role=data.get("role"), text=text[:TEXT_CHARS])
        elif kind == "opened":
            self.bus.publish("opened", self.sid, idx=data.get("idx"), role=data.get("role"))

    # --- TranscriptListener -------------------------------------------------------------------

    def on_turn(self, turn: Turn) -> None:
        text = turn.heard if turn.role == "bot" and turn.heard is not None else turn.text
        if self.redaction:
            text = redact(text).text
        data: dict[str, object] = {
            "idx": turn.index,
            "role": turn.role,
            "text": text[:TEXT_CHARS],
            "start_ms": turn.start_ms,
            "end_ms": turn.end_ms,
        }
        if turn.interrupted:
            data["interrupted"] = True
        if turn.latency_ms is not None:
            data["latency_ms"] = turn.latency_ms
        if turn.meta.get("backchannel"):
            data["backchannel"] = True  # not answered: the bot is not thinking about it
        self.bus.publish("turn", self.sid, **data)

    def on_event(self, event: Event) -> None:
        kind = event.kind
        if kind in CONNECTION_KINDS:
            if is_reconnect(event.data):  # an alert: the link was lost and is back
                self.bus.publish("reconnect", self.sid, ms=event.ms, link=kind)
            return
        if kind in WATCHED:
            self.bus.publish("event", self.sid, ms=event.ms, kind=kind)
