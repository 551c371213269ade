"""The interface a call drives, implemented by the Flux, Voice Agent and Transcribe engines.

The call owns the Twilio socket, the playout and the transcript; an engine owns its Deepgram
sockets (each under a `Link`, telephony/session/link.py) and decides what to say. Engines
report through the same `CallContext`, so transcript rows, barge-in handling and actions have
one implementation. Everything the call, the metrics and the staff UI read of an engine is
declared here, so none of them probes for attributes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from telephony.config import Profile
from telephony.logs import CallLogger
from telephony.outcome import Outcome
from telephony.settings import Settings
from telephony.transcript import Role, Transcript
from telephony.twilio.playout import Playout


class Engine(Protocol):
    async def run(self) -> None:
        """Connect upstream and converse until cancelled or the call ends."""
        ...

    def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        """One Twilio media frame (μ-law 8 kHz). Synchronous: the call hands it over before
        reading the next frame, so it writes to a socket or holds the frame, never waits."""
        ...

    def on_outbound_audio(self, timestamp_ms: int, payload: bytes) -> None:
        """Twilio's `outbound` track (a both_tracks fork: what the caller hears), synchronous
        like `on_caller_audio`. Only the transcribe engine uses it; bot streams carry none."""
        ...

    def on_dtmf(self, ms: int, digit: str) -> None: ...

    @property
    def keepalives_sent(self) -> int:
        """JSON KeepAlives sent on every Deepgram socket of the call so far (for /metrics)."""
        ...

    @property
    def interim(self) -> Mapping[Role, str]:
        """Per side, the words of a turn still in progress (the staff UI's live view)."""
        ...

    async def close(self) -> None:
        """The call is over: flush and close upstream sockets politely."""
        ...


@dataclass
class CallContext:
    """What an engine may use of its call."""

    call_sid: str
    profile_name: str
    profile: Profile
    settings: Settings
    playout: Playout
    transcript: Transcript
    log: CallLogger
    now_ms: Callable[[], int]  # the call's audio clock: end of the last caller frame received
    # REST hang-up (after the goodbye has played); the outcome is bot-hangup unless given
    hang_up: Callable[..., Awaitable[None]]
    transfer: Callable[[str], Awaitable[None]]  # REST transfer to a number
    redirect: Callable[[str], Awaitable[None]]  # REST: run this TwiML on the call instead
    # How the call is ending, said before the REST action that ends it (hang_up and transfer
    # say it themselves): e.g. the failover's redirect.
    mark_outcome: Callable[[Outcome, str], None] = lambda outcome, detail: None
    # A reply has asked for a transfer and its line is about to play: what the transfer needs
    # (a warm transfer's whisper) can be prepared meanwhile instead of after it.
    transfer_coming: Callable[[], None] = lambda: None
    handed_over: bool = False  # the failover redirect was asked for (once per call)
