"""Nova `/v1/listen` messages: Results, UtteranceEnd, SpeechStarted, Metadata, Error from the
server; KeepAlive/Finalize/CloseStream from us."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from telephony.deepgram.messages.agent import (
    KeepAlive,
)
from telephony.deepgram.messages.flux import (
    CloseStream,
)
from telephony.deepgram.messages.wire import (
    _CONVERTERS,
    _SPECS,
    Unknown,
    Word,
    _as_bool,
    _as_dict,
    _as_float,
    _as_list,
    _as_str,
    _const,
    _message,
    _optional,
    _parser,
    _Spec,
    _Wire,
)

# --- Nova /v1/listen -----------------------------------------------------------------------


@dataclass(slots=True)
class Results(_Wire):
    """A transcript segment; flattened from `channel.alternatives[0]` on the wire."""

    TYPE: ClassVar[str] = "Results"
    transcript: str
    is_final: bool = False  # absent on some Results (Deepgram's schema makes it optional)
    speech_final: bool = False
    from_finalize: bool = False
    start: float = 0.0  # seconds from the connection's first audio byte
    duration: float = 0.0
    confidence: float = 1.0
    words: tuple[Word, ...] = ()
    channel_index: tuple[int, ...] = (0, 1)
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        alt = {
            "transcript": self.transcript,
            "confidence": self.confidence,
            "words": [w.to_dict() for w in self.words],
        }
        out: dict[str, Any] = {
            "type": self.TYPE,
            "channel_index": list(self.channel_index),
            "duration": self.duration,
            "start": self.start,
            "is_final": self.is_final,
            "speech_final": self.speech_final,
            "from_finalize": self.from_finalize,
            "channel": {"alternatives": [alt]},
        }
        if self.metadata is not None:
            out["metadata"] = self.metadata
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Results:
        channel = _as_dict(d.get("channel"), "Results.channel")
        alts = _as_list(channel.get("alternatives"), "Results.channel.alternatives")
        alt = _as_dict(alts[0], "Results.channel.alternatives[0]") if alts else {}
        return cls(
            transcript=_as_str(alt.get("transcript", ""), "Results.transcript"),
            is_final=_as_bool(d.get("is_final", False), "Results.is_final"),
            speech_final=_as_bool(d.get("speech_final", False), "Results.speech_final"),
            from_finalize=_as_bool(d.get("from_finalize", False), "Results.from_finalize"),
            start=_as_float(d.get("start", 0.0), "Results.start"),
            duration=_as_float(d.get("duration", 0.0), "Results.duration"),
            confidence=_as_float(alt.get("confidence", 0.0), "Results.confidence"),
            words=_CONVERTERS["tuple[Word, ...]"](alt.get("words", []), "Results.words"),
            channel_index=_CONVERTERS["tuple[int, ...]"](
                d.get("channel_index", [0, 1]), "Results.channel_index"
            ),
            metadata=_optional(_as_dict)(d.get("metadata"), "Results.metadata"),
        )


_SPECS[Results] = _Spec(Results, (), ())


@_message
@dataclass(slots=True)
class UtteranceEnd(_Wire):
    """Needs interim_results and utterance_end_ms."""

    TYPE: ClassVar[str] = "UtteranceEnd"
    last_word_end: float
    channel: tuple[int, ...] = (0, 1)


@_message
@dataclass(slots=True)
class SpeechStarted(_Wire):
    """Needs vad_events=true."""

    TYPE: ClassVar[str] = "SpeechStarted"
    timestamp: float
    channel: tuple[int, ...] = (0,)


@_message
@dataclass(slots=True)
class ListenMetadata(_Wire):
    """Nova's summary, sent when the stream closes (CloseStream or an empty binary frame)."""

    TYPE: ClassVar[str] = "Metadata"
    request_id: str = ""
    transaction_key: str = "deprecated"
    sha256: str = ""
    created: str = ""
    duration: float = 0.0
    channels: int = 1


@_message
@dataclass(slots=True)
class ListenError(_Wire):
    """Nova JSON `Error` (Nova mostly reports errors in the close frame)."""

    TYPE: ClassVar[str] = "Error"
    code: str = ""  # deprecated on the wire: legacy frames only
    description: str = ""
    variant: str | None = None  # the category: "SchemaError" = a client text it could not parse
    message: str | None = None  # SchemaError: the client message it could not parse


@_message
@dataclass(slots=True)
class Finalize(_Wire):
    TYPE: ClassVar[str] = "Finalize"


ListenServerEvent = Results | UtteranceEnd | SpeechStarted | ListenMetadata | ListenError

parse_listen_server: Callable[[str | bytes], ListenServerEvent | Unknown] = _parser(
    Results, UtteranceEnd, SpeechStarted, ListenMetadata, ListenError
)
parse_listen_client: Callable[[str | bytes], KeepAlive | Finalize | CloseStream | Unknown] = (
    _parser(KeepAlive, Finalize, CloseStream)
)

_FINALIZE = _const(Finalize())


def finalize() -> str:
    """Nova `Finalize`: flush pending audio into a final (from_finalize=true)."""
    return _FINALIZE
