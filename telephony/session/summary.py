"""What a call leaves behind: its stream's counters and its summary.

Apart from `Call` because the store, the registry, the demo and the tests build and read
summaries without running a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telephony.outcome import Outcome
from telephony.transcript import Transcript


@dataclass(slots=True)
class StreamStats:
    """What arrived on the socket; the basis for gap filling and audit."""

    media_frames: int = 0  # the inbound track (the caller)
    outbound_frames: int = 0  # the outbound track of a both_tracks fork
    audio_bytes: int = 0
    last_timestamp_ms: int = -1
    audio_end_ms: int = 0  # call clock at the end of the last frame received
    sequence_gaps: int = 0  # messages missing by sequenceNumber
    timestamp_gap_ms: int = 0  # audio missing by media.timestamp jumps (filled + unfilled)
    filled_gap_ms: int = 0  # of that, replaced by silence on the engine's audio
    unfilled_gap_ms: int = 0  # of that, beyond MAX_GAP_FILL_MS per jump: engine runs behind
    timestamp_overlaps: int = 0  # frames whose timestamp went backwards (hostile stream)
    bad_frames: int = 0
    dtmf: list[tuple[int, str]] = field(default_factory=list)
    # Marks echoed: counted, not kept (their names are the caller's to choose, up to the message
    # size, and a summary outlives its call in the registry's recent list).
    marks: int = 0


@dataclass(slots=True)
class CallSummary:
    """A call as the store records it: who, which profile, when, how it ended, and what was
    said (`transcript`) and received (`stats`)."""

    call_sid: str
    stream_sid: str
    profile: str
    from_number: str
    to_number: str
    started_at: float
    ended_at: float = 0.0
    end_reason: Outcome | str = ""  # an Outcome once the call has ended
    end_detail: str = ""  # the free-text why: "stop", "server draining", "engine failed: …"
    stats: StreamStats = field(default_factory=StreamStats)
    transcript: Transcript = field(default_factory=Transcript)
