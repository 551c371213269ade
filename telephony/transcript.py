"""A call's transcript: caller, bot and staff turns and timeline events, on the call's clock.

Every engine (Flux, Agent, Transcribe) writes here, so rows have one shape in all modes. Times
are integer milliseconds of call audio time (Twilio's media.timestamp), never wall-clock.
The session writes it and the store keeps it; both import it from here (neither from the
other). Event kinds are `EventKind`s, so a misspelt kind fails where it is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

Role = Literal["caller", "bot", "staff"]  # staff: the person a call is forwarded to


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


class EventKind(StrEnum):
    """Every kind of timeline event a call records (the staff UI shows the kind as written)."""

    # the caller and the bot
    BARGE_IN = "barge-in"
    DTMF = "dtmf"
    SPECULATION_USED = "speculation-used"
    ACTION_CANCELLED = "action-cancelled"
    HANGUP = "hangup"
    TRANSFER = "transfer"
    WHISPER = "whisper"  # a warm transfer: what the person who answers hears first
    HANDOVER = "handover"  # a transferred call's transcription continues the bot's transcript
    NUDGE = "nudge"  # the caller was silent: a reprompt (session/idle.py)
    IDLE_GOODBYE = "idle-goodbye"  # silent through every reprompt: goodbye, then hang-up
    FILLER = "filler"  # a reply slow to come: "One moment." first (profile filler)
    REPLY_WATCHDOG = "reply-watchdog"
    LLM_FALLBACK = "llm-fallback"  # an LLM backend failed a turn; the next one answers it
    ERROR = "error"
    # Deepgram links: one event per connection (telephony/session/link.py), and giving up
    FLUX_CONNECTION = "flux-connection"
    SPEAK_CONNECTION = "speak-connection"
    AGENT_CONNECTION = "agent-connection"
    LISTEN_CONNECTION = "listen-connection"
    UPSTREAM_FAILED = "upstream-failed"
    TRANSCRIPTION_FAILED = "transcription-failed"
    # Flux
    FLUX_CONFIGURED = "flux-configured"
    TURN_WATCHDOG = "turn-watchdog"
    # the Voice Agent
    AGENT_THINKING = "agent-thinking"
    FUNCTION_CALL = "function-call"
    FUNCTION_CANCELLED = "function-cancelled"
    LATENCY_REPORT = "latency-report"
    WARNING = "warning"
    INJECTION_REFUSED = "injection-refused"
    PROMPT_UPDATED = "prompt-updated"
    SESSION_CAP = "session-cap"
    # the stream and the call
    GAP_FILLED = "gap-filled"
    TIME_LIMIT = "time-limit"
    DRAIN = "drain"
    STREAM_STATUS = "stream-status"  # Twilio's status callbacks
    CALL_STATUS = "call-status"


# Each Deepgram link's connection event: reason "start" for the first, `planned` for one we
# chose (a new Aura voice: telephony/session/link.py `swap`), else a reconnect after a loss.
CONNECTION_KINDS = frozenset(
    {
        EventKind.FLUX_CONNECTION,
        EventKind.SPEAK_CONNECTION,
        EventKind.AGENT_CONNECTION,
        EventKind.LISTEN_CONNECTION,
    }
)


def is_reconnect(data: Mapping[str, Any] | None) -> bool:
    """Does this connection event replace a socket that was lost?"""
    data = data or {}
    return data.get("reason", "start") != "start" and not data.get("planned")


# What cut a bot reply off before the caller heard all of it (`Turn.meta["cut_by"]`).
CUT_BY_CALLER = "caller"  # barge-in
CUT_BY_DROP = "drop"  # the speech source (Aura, the agent socket) died mid-reply
CUT_BY_CALL_END = "call-end"  # hang-up, transfer, drain: the call ended while it played


@dataclass(slots=True)
class Event:
    ms: int
    kind: str  # an EventKind when recorded here; as stored when read back
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "kind": self.kind, **self.data}


class TranscriptListener(Protocol):
    """Told of every closed turn and every event of a transcript (e.g. the call's metrics)."""

    def on_turn(self, turn: Turn) -> None: ...

    def on_event(self, event: Event) -> None: ...


@dataclass
class Transcript:
    turns: list[Turn] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Persistence hooks (the write-behind store subscribes); called on the event loop, must
    # not block.
    on_turn: Callable[[Turn], None] | None = None
    on_event: Callable[[Event], None] | None = None
    # Further subscribers (metrics), told after the hooks above; the same rules apply.
    listeners: list[TranscriptListener] = field(default_factory=list)
    # Live-only signals (who is speaking, what they are saying so far), for the staff UI's live
    # views: told, never stored. `signal(kind, data)`; kinds: "interim" (role, text), "opened"
    # (a turn began: idx, role).
    live: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)
    # A stream that continues a call's transcript (transcription after a transfer) numbers
    # its turns after the ones already stored.
    first_index: int = 0

    def add_turn(self, role: Role, text: str, start_ms: int, end_ms: int, **kw: Any) -> Turn:
        """A finished turn (caller turns arrive whole)."""
        return self.close_turn(self.open_turn(role, text, start_ms, end_ms, **kw))

    def open_turn(self, role: Role, text: str, start_ms: int, end_ms: int, **kw: Any) -> Turn:
        """A turn that has begun (bot speech): it takes its place in the order now."""
        turn = Turn(self.first_index + len(self.turns), role, text, start_ms, end_ms, **kw)
        self.turns.append(turn)
        if self.live:
            self.signal("opened", idx=turn.index, role=role)
        return turn

    def signal(self, kind: str, **data: Any) -> None:
        """A live-only signal (see `live`); nothing is kept."""
        for hook in self.live:
            hook(kind, data)

    def close_turn(self, turn: Turn) -> Turn:
        """The turn's fields are final: hand it to persistence."""
        if self.on_turn is not None:
            self.on_turn(turn)
        for listener in self.listeners:
            listener.on_turn(turn)
        return turn

    def event(self, ms: int, kind: EventKind | str, **data: Any) -> Event:
        """Record an event; `kind` must be an EventKind (its value accepted: ValueError if not)."""
        event = Event(ms, EventKind(kind), data)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        for listener in self.listeners:
            listener.on_event(event)
        return event
