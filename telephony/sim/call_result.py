"""What a fake Twilio caller observed on one call, and the clock its events are timed on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from telephony.sim.playout import HeardSegment, MarkEcho
from telephony.sim.webhook import TwimlAnswer


class Whispered(NamedTuple):
    """A `<Dial><Number url>` Twilio followed when the person answered: what they heard."""

    number: str
    url: str
    http_status: int | None
    said: list[str]  # the <Say> texts, played to that person only
    error: str | None = None


class Event(NamedTuple):
    ms: float  # call clock: ms since the stream opened (negative = before, e.g. the webhook)
    kind: str
    detail: str


@dataclass
class CallResult:
    call_sid: str
    stream_sid: str
    to: str
    from_number: str
    http_status: int | None = None
    twiml: str = ""
    verbs: list[str] = field(default_factory=list)  # top-level TwiML verbs, in order
    said: list[str] = field(default_factory=list)
    hung_up: bool = False  # TwiML ended the call with <Hangup/> or <Reject/>
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    fork: bool = False  # a one-way <Start><Stream> (the service must send nothing on it)
    track: str | None = None  # its <Stream track=...>
    dialled: list[str] = field(default_factory=list)  # <Dial> targets: numbers, "queue:NAME"
    forks: list[CallResult] = field(default_factory=list)  # streams opened by later TwiML
    whispers: list[Whispered] = field(default_factory=list)  # <Number url> TwiML, callee only
    ws_status: int | None = None  # HTTP status when the upgrade was refused
    heard: bytes = b""  # μ-law actually played; cleared and unplayed audio excluded
    heard_segments: list[HeardSegment] = field(default_factory=list)
    received_audio_bytes: int = 0
    cleared_bytes: int = 0
    unplayed_bytes: int = 0  # still buffered when the call ended
    marks: list[MarkEcho] = field(default_factory=list)
    unechoed_marks: list[str] = field(default_factory=list)  # pending when the call ended
    clears: list[float] = field(default_factory=list)
    outbound_errors: list[str] = field(default_factory=list)  # Twilio warnings 319xx
    close_code: int | None = None
    close_reason: str = ""
    closed_by: Literal["caller", "server"] | None = None
    sent_frames: int = 0
    events: list[Event] = field(default_factory=list)
    error: str | None = None  # transport failure (connection refused, bad TwiML, ...)
    after_stream: TwimlAnswer | None = None  # the verbs after <Connect>, see `ran_after_stream`
    ran_after_stream: bool = False  # the server ended the stream and Twilio ran them

    def mark(self, name: str) -> MarkEcho | None:
        return next((m for m in self.marks if m.name == name), None)

    def take(self, answer: TwimlAnswer) -> None:
        """Record what the TwiML said (the webhook's answer, or a REST update's)."""
        self.verbs, self.said, self.hung_up = answer.verbs, answer.said, answer.hung_up
        self.after_stream = answer.after_stream
        self.dialled += answer.dialled
        self.stream_url, self.parameters = answer.stream_url, answer.parameters
        self.fork, self.track = answer.fork, answer.track
        self.error = self.error or answer.error


def loop_now() -> float:
    """The fake caller's clock: the running loop's, like the service's, so both agree on a
    call's timings whatever clock the loop keeps (tests run some calls on a faster one)."""
    return asyncio.get_running_loop().time()


class CallClock:
    """Timestamps events on the call clock. Until the stream opens, times are kept raw and
    converted later, so the webhook shows up at negative ms."""

    def __init__(self, result: CallResult) -> None:
        self.result = result
        self.origin: float | None = None
        self._raw: list[tuple[float, str, str]] = []

    def start(self, origin: float) -> None:
        self.origin = origin

    def ms(self, now: float) -> float:
        return (now - (self.origin if self.origin is not None else now)) * 1000

    def event(self, kind: str, detail: str = "", now: float | None = None) -> None:
        self._raw.append((loop_now() if now is None else now, kind, detail))

    def finish(self) -> None:
        origin = self.origin
        if origin is None:  # no stream: times count from the dial
            origin = self._raw[0][0] if self._raw else 0.0
        self.result.events = [Event((t - origin) * 1000, k, d) for t, k, d in self._raw]
