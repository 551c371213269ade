"""A call's transcript: caller and bot turns and timeline events, on the call's audio clock.

Both engines (Flux and Agent) write here, so rows have one shape in both modes. Times are
integer milliseconds of call audio time (Twilio's media.timestamp), never wall-clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["caller", "bot"]


@dataclass(slots=True)
class Turn:
    index: int
    role: Role
    text: str
    start_ms: int
    end_ms: int
    heard: str | None = None  # bot turns: the text the caller actually heard
    interrupted: bool = False
    interrupted_at_ms: int | None = None
    latency_ms: int | None = None  # bot turns: caller end of speech -> first bot audio sent
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Event:
    ms: int
    kind: str  # barge-in, dtmf, transfer, hangup, reconnect, error, ...
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "kind": self.kind, **self.data}


@dataclass
class Transcript:
    turns: list[Turn] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Persistence hooks (the write-behind store subscribes); called on the event loop, must
    # not block.
    on_turn: Callable[[Turn], None] | None = None
    on_event: Callable[[Event], None] | None = None

    def add_turn(self, role: Role, text: str, start_ms: int, end_ms: int, **kw: Any) -> Turn:
        """A finished turn (caller turns arrive whole)."""
        return self.close_turn(self.open_turn(role, text, start_ms, end_ms, **kw))

    def open_turn(self, role: Role, text: str, start_ms: int, end_ms: int, **kw: Any) -> Turn:
        """A turn that has begun (bot speech): it takes its place in the order now."""
        turn = Turn(len(self.turns), role, text, start_ms, end_ms, **kw)
        self.turns.append(turn)
        return turn

    def close_turn(self, turn: Turn) -> Turn:
        """The turn's fields are final: hand it to persistence."""
        if self.on_turn is not None:
            self.on_turn(turn)
        return turn

    def event(self, ms: int, kind: str, **data: Any) -> Event:
        event = Event(ms, kind, data)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        return event
