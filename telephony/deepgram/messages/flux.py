"""Flux `/v2/listen` messages: TurnInfo and friends from the server; Configure, ForceEndTurn and
CloseStream from us (Flux has no KeepAlive)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from telephony.deepgram.messages.wire import (
    _CONVERTERS,
    _SPECS,
    DeepgramMessageError,
    Unknown,
    Word,
    _as_dict,
    _as_float,
    _as_str,
    _const,
    _fail,
    _message,
    _optional,
    _parser,
    _Spec,
    _tuple_of,
    _Wire,
    encode,
)

# --- Flux /v2/listen -----------------------------------------------------------------------

FLUX_MODELS = ("flux-general-en", "flux-general-multi")
FLUX_EVENTS = ("StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed", "EndOfTurn")
EOT_THRESHOLD_RANGE = (0.5, 1.0)
EAGER_EOT_THRESHOLD_RANGE = (0.3, 0.9)
EOT_TIMEOUT_MS_RANGE = (500, 60000)
# What flux-general-multi hears and takes as `language_hint` (docs/protocol.md §2); a region
# subtag (es-MX) is accepted and read as its base language.
FLUX_MULTI_LANGUAGES = ("en", "es", "fr", "de", "hi", "ru", "pt", "ja", "it", "nl")


def base_language(tag: str) -> str:
    """`es-MX` -> `es`: the language Flux and Aura decide by."""
    return tag.split("-", 1)[0].lower()


def language_hint_problems(hints: tuple[str, ...] | list[str]) -> list[str]:
    """Hints flux-general-multi would not know."""
    return [
        f"language_hint {h!r} is not one of {', '.join(FLUX_MULTI_LANGUAGES)}"
        for h in hints
        if base_language(h) not in FLUX_MULTI_LANGUAGES
    ]


@_message
@dataclass(slots=True)
class FluxConnected(_Wire):
    TYPE: ClassVar[str] = "Connected"
    request_id: str = ""
    sequence_id: int = 0


_CONVERTERS["tuple[str, ...] | None"] = _optional(_tuple_of(_as_str))


@_message
@dataclass(slots=True)
class TurnInfo(_Wire):
    TYPE: ClassVar[str] = "TurnInfo"
    event: str  # one of FLUX_EVENTS
    turn_index: int
    audio_window_start: float  # seconds from the connection's first audio byte
    audio_window_end: float
    transcript: str
    words: tuple[Word, ...] = ()
    end_of_turn_confidence: float = 0.0
    # EndOfTurn only: "model" | "manual" (ForceEndTurn) | "timeout" (eot_timeout_ms); open-ended
    trigger: str | None = None
    sequence_id: int = 0
    request_id: str = ""
    languages: tuple[str, ...] | None = None  # flux-general-multi: detected, most frequent first
    languages_hinted: tuple[str, ...] | None = None  # the language hints in force for this turn


@_message
@dataclass(slots=True)
class ConfigureSuccess(_Wire):
    TYPE: ClassVar[str] = "ConfigureSuccess"
    thresholds: dict[str, Any]
    keyterms: tuple[str, ...] = ()
    sequence_id: int = 0
    request_id: str = ""
    language_hints: tuple[str, ...] | None = None  # flux-general-multi: the hints now in force

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfigureSuccess:
        # Deepgram's schema allows one keyterm as a plain string. Refusing it would also leave
        # our Configure unacknowledged, and the next one waiting for ever.
        keyterms = d.get("keyterms")
        if isinstance(keyterms, str):
            d = {**d, "keyterms": [keyterms] if keyterms else []}
        success: ConfigureSuccess = _SPECS[cls].build(d)
        return success


@_message
@dataclass(slots=True)
class ConfigureFailure(_Wire):
    TYPE: ClassVar[str] = "ConfigureFailure"
    description: str | None = None  # unverified (pipecat reads error_code/description)
    sequence_id: int = 0
    request_id: str = ""


@_message
@dataclass(slots=True)
class FluxWarning(_Wire):
    TYPE: ClassVar[str] = "Warning"
    code: str = ""
    description: str = ""
    sequence_id: int = 0
    request_id: str = ""


@_message
@dataclass(slots=True)
class FluxError(_Wire):
    """Fatal: the server closes after it."""

    TYPE: ClassVar[str] = "Error"
    code: str = ""
    description: str = ""
    sequence_id: int = 0
    request_id: str | None = None  # not on Flux's Error (Deepgram's SDK has none); kept if sent


def _num(v: Any, where: str) -> float:
    """Configure thresholds: Deepgram's own example sends numbers as strings ("0.8")."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise _fail(where, f"not a number: {v[:20]!r}") from None
        if not math.isfinite(v):  # "nan", "inf", "1e999": eot_timeout_ms's int() would raise
            raise _fail(where, f"not a finite number: {v}")
    return _as_float(v, where)


@dataclass(slots=True)
class Configure(_Wire):
    """Client -> Flux: change thresholds/keyterms mid-stream; omitted values are kept."""

    TYPE: ClassVar[str] = "Configure"
    eot_threshold: float | None = None
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int | None = None
    keyterms: tuple[str, ...] | None = None
    language_hints: tuple[str, ...] | None = None  # flux-general-multi only

    def thresholds(self) -> dict[str, float | int]:
        names = ("eot_threshold", "eager_eot_threshold", "eot_timeout_ms")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        if thresholds := self.thresholds():
            out["thresholds"] = thresholds
        if self.keyterms is not None:
            out["keyterms"] = list(self.keyterms)
        if self.language_hints is not None:
            out["language_hints"] = list(self.language_hints)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Configure:
        th = _as_dict(d.get("thresholds", {}), "Configure.thresholds")
        timeout = th.get("eot_timeout_ms")
        strings = _optional(_tuple_of(_as_str))
        return cls(
            eot_threshold=_optional(_num)(th.get("eot_threshold"), "Configure.eot_threshold"),
            eager_eot_threshold=_optional(_num)(
                th.get("eager_eot_threshold"), "Configure.eager_eot_threshold"
            ),
            eot_timeout_ms=None if timeout is None else int(_num(timeout, "eot_timeout_ms")),
            keyterms=strings(d.get("keyterms"), "Configure.keyterms"),
            language_hints=strings(d.get("language_hints"), "Configure.language_hints"),
        )


_SPECS[Configure] = _Spec(Configure, (), ())  # custom to_dict/from_dict; registered for parsers


@_message
@dataclass(slots=True)
class ForceEndTurn(_Wire):
    TYPE: ClassVar[str] = "ForceEndTurn"


@_message
@dataclass(slots=True)
class CloseStream(_Wire):
    TYPE: ClassVar[str] = "CloseStream"


FluxServerEvent = (
    FluxConnected | TurnInfo | ConfigureSuccess | ConfigureFailure | FluxWarning | FluxError
)

parse_flux_server: Callable[[str | bytes], FluxServerEvent | Unknown] = _parser(
    FluxConnected, TurnInfo, ConfigureSuccess, ConfigureFailure, FluxWarning, FluxError
)
# Flux has no KeepAlive: it parses as Unknown, and the real service closes the socket on it.
parse_flux_client: Callable[[str | bytes], Configure | ForceEndTurn | CloseStream | Unknown] = (
    _parser(Configure, ForceEndTurn, CloseStream)
)


def _range_problem(name: str, value: float | None, lo: float, hi: float) -> str | None:
    if value is None or lo <= value <= hi:
        return None
    return f"{name} must be between {lo:g} and {hi:g}, got {value:g}"


def flux_threshold_problems(
    eot_threshold: float | None = None,
    eager_eot_threshold: float | None = None,
    eot_timeout_ms: float | None = None,
) -> list[str]:
    """Why these Flux thresholds are invalid (empty: valid). Ranges from docs/protocol.md §3."""
    problems = [
        _range_problem("eot_threshold", eot_threshold, *EOT_THRESHOLD_RANGE),
        _range_problem("eager_eot_threshold", eager_eot_threshold, *EAGER_EOT_THRESHOLD_RANGE),
        _range_problem("eot_timeout_ms", eot_timeout_ms, *EOT_TIMEOUT_MS_RANGE),
    ]
    return [p for p in problems if p]


def configure(
    *,
    eot_threshold: float | None = None,
    eager_eot_threshold: float | None = None,
    eot_timeout_ms: int | None = None,
    keyterms: list[str] | tuple[str, ...] | None = None,
    language_hints: list[str] | tuple[str, ...] | None = None,
) -> str:
    """Flux `Configure`; keep one in flight (Flux caps unacked Configures; cap unverified)."""
    if problems := flux_threshold_problems(eot_threshold, eager_eot_threshold, eot_timeout_ms):
        raise DeepgramMessageError("; ".join(problems))
    return encode(
        Configure(
            eot_threshold=eot_threshold,
            eager_eot_threshold=eager_eot_threshold,
            eot_timeout_ms=eot_timeout_ms,
            keyterms=None if keyterms is None else tuple(keyterms),
            language_hints=None if language_hints is None else tuple(language_hints),
        )
    )


_FORCE_END_TURN = _const(ForceEndTurn())
_CLOSE_STREAM = _const(CloseStream())


def force_end_turn() -> str:
    return _FORCE_END_TURN


def close_stream() -> str:
    """Flux and Nova `CloseStream`."""
    return _CLOSE_STREAM
