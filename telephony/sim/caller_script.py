"""What a fake Twilio caller does on its call: its audio, its timeline of actions on the call
clock, and the stream format its `start` announces."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from telephony.audio import read_wav_as_mulaw8k
from telephony.twilio import messages as tm

AudioSource = bytes | bytearray | memoryview

# --- audio sources: `silence(ms)` and `tone(freq_hz, ms)` come from telephony.audio ----------

wav = read_wav_as_mulaw8k  # a WAV file converted to μ-law 8 kHz mono


# --- the call's script: actions on the call clock ------------------------------------------


@dataclass(frozen=True, slots=True)
class SendDtmf:
    at_ms: int
    digit: str


@dataclass(frozen=True, slots=True)
class PauseStream:
    """No frames for `ms` (a network gap): the frames are lost and the next timestamp jumps.

    The source stays aligned to the call clock, so the audio of the gap is never heard.
    """

    at_ms: int
    ms: int


@dataclass(frozen=True, slots=True)
class SendRaw:
    """Send this frame verbatim (malformed-input tests); it takes no sequenceNumber."""

    at_ms: int
    data: str | bytes


@dataclass(frozen=True, slots=True)
class HangUp:
    """The caller hangs up: `stop`, then close."""

    at_ms: int


Action = SendDtmf | PauseStream | SendRaw | HangUp


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """What `start` announces; Twilio never varies it, tests of wrong formats do."""

    encoding: str = tm.MULAW_ENCODING
    sample_rate: int = tm.SAMPLE_RATE
    channels: int = 1
    tracks: tuple[str, ...] = ("inbound",)


@dataclass(frozen=True)
class StreamScript:
    """The streaming half of `FakeTwilioCaller.dial`'s options (documented there)."""

    audio: AudioSource
    timeline: Sequence[Action]
    realtime: bool
    tail_ms: int | None
    ws_sign: bool | str
    connect_url: str | None
    stream_format: StreamFormat
    parameter_overrides: Mapping[str, str | None]
    hangup: asyncio.Event | None
    keep_audio: bool
    max_call_ms: int
    agent_audio: AudioSource = b""
    updates: asyncio.Queue[str] | None = None
    offset_ms: int = 0  # call clock at this stream's timestamp 0 (a later stream of the call)
