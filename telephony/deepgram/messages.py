"""Deepgram WebSocket messages: one definition of each, both directions.

Covers Flux (/v2/listen), Aura (/v1/speak), the Voice Agent (/v1/agent/converse) and Nova
(/v1/listen). Every JSON message is a dataclass whose field names are the wire keys, so
`encode(msg)` builds it and `parse_*` reads it back; the real clients and the fake server in
telephony/sim share these, so they cannot disagree about the wire format. Client messages also
have small builder functions (`configure(...)`, `speak(text)`, ...) returning the JSON text.

Messages are values: nothing changes one after it is built. They are not `frozen=True` only
because a frozen dataclass's __init__ costs about three times as much, and a Flux Update carries
a Word per word, several times a second per call.

Parsing is strict about what a message needs (type, required fields, field types) and lenient
about the rest: an unknown `type` becomes `Unknown(type, raw)` rather than an error, since
Deepgram adds message types over time; unknown extra fields are ignored. Where the wire shape
is not confirmed by a primary source (see /work/shared/protocol.md) the field says "unverified".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson

__all__ = [  # noqa: RUF022 - grouped by endpoint, not sorted
    "DeepgramMessageError",
    "Unknown",
    "Word",
    "encode",
    # Flux
    "FLUX_MODELS",
    "FluxConnected",
    "TurnInfo",
    "ConfigureSuccess",
    "ConfigureFailure",
    "FluxWarning",
    "FluxError",
    "Configure",
    "ForceEndTurn",
    "CloseStream",
    "parse_flux_server",
    "parse_flux_client",
    "configure",
    "force_end_turn",
    "close_stream",
    "flux_threshold_problems",
    # Speak
    "Metadata",
    "Flushed",
    "Cleared",
    "SpeakWarning",
    "SpeakError",
    "Speak",
    "Flush",
    "Clear",
    "Close",
    "parse_speak_server",
    "parse_speak_client",
    "speak",
    "flush",
    "clear",
    "close",
    # Agent
    "Welcome",
    "SettingsApplied",
    "ConversationText",
    "UserStartedSpeaking",
    "AgentThinking",
    "AgentStartedSpeaking",
    "AgentAudioDone",
    "FunctionCall",
    "FunctionCallRequest",
    "FunctionCallResponse",
    "PromptUpdated",
    "SpeakUpdated",
    "ThinkUpdated",
    "ListenUpdated",
    "InjectionRefused",
    "AgentWarning",
    "AgentError",
    "Settings",
    "KeepAlive",
    "UpdatePrompt",
    "UpdateSpeak",
    "UpdateThink",
    "UpdateListen",
    "InjectAgentMessage",
    "InjectUserMessage",
    "parse_agent_server",
    "parse_agent_client",
    "settings",
    "agent_settings",
    "settings_problems",
    "keep_alive",
    "update_prompt",
    "update_speak",
    "inject_agent_message",
    "inject_user_message",
    "function_call_response",
    # Nova
    "Results",
    "UtteranceEnd",
    "SpeechStarted",
    "ListenMetadata",
    "ListenError",
    "Finalize",
    "parse_listen_server",
    "parse_listen_client",
    "finalize",
]


class DeepgramMessageError(ValueError):
    """A frame that is not a valid message for that endpoint; the text says why."""


# --- the generic machinery: field names are wire keys --------------------------------------


class _Wire:
    """Base of every message and nested object: `to_dict` drops None fields, adds `type`."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""  # the wire `type`; "" for nested objects (Word, FunctionCall)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE} if self.TYPE else {}
        for name in _SPECS[type(self)].names:
            value = getattr(self, name)
            if value is not None:
                out[name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        return _SPECS[cls].build(d)


def _plain(value: Any) -> Any:
    if isinstance(value, _Wire):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def encode(msg: _Wire) -> str:
    """The JSON text of a message (what goes in a WebSocket text frame)."""
    return orjson.dumps(msg.to_dict()).decode()


def _fail(where: str, why: str) -> DeepgramMessageError:
    return DeepgramMessageError(f"{where}: {why}")


def _as_str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _fail(where, f"expected a string, got {type(v).__name__}")
    return v


def _as_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"expected an integer, got {type(v).__name__}")
    return v


def _as_float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(where, f"expected a number, got {type(v).__name__}")
    return float(v)


def _as_bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, f"expected a boolean, got {type(v).__name__}")
    return v


def _as_dict(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, f"expected an object, got {type(v).__name__}")
    return v


def _as_list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(where, f"expected an array, got {type(v).__name__}")
    return v


def _tuple_of(item: Callable[[Any, str], Any]) -> Callable[[Any, str], tuple[Any, ...]]:
    def convert(v: Any, where: str) -> tuple[Any, ...]:
        items = _as_list(v, where)
        try:
            return tuple([item(x, where) for x in items])
        except DeepgramMessageError:
            for i, x in enumerate(items):  # again, to name the index of the bad item
                item(x, f"{where}[{i}]")
            raise

    return convert


def _nested(cls: type[_Wire]) -> Callable[[Any, str], Any]:
    def convert(v: Any, where: str) -> Any:
        try:
            return cls.from_dict(_as_dict(v, where))
        except DeepgramMessageError as exc:
            raise _fail(where, str(exc)) from None

    return convert


def _optional(conv: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda v, where: None if v is None else conv(v, where)


# Annotation text (this module uses postponed annotations) -> converter. Nested types are
# added as they are defined; `_message` refuses an annotation missing here at import time.
_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "str": _as_str,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "dict[str, Any]": _as_dict,
    "tuple[str, ...]": _tuple_of(_as_str),
    "tuple[int, ...]": _tuple_of(_as_int),
}
for _name in ("str", "int", "float", "bool", "dict[str, Any]"):
    _CONVERTERS[f"{_name} | None"] = _optional(_CONVERTERS[_name])


@dataclass(slots=True)
class _Spec:
    cls: type
    names: tuple[str, ...]
    # name, convert, required, and the field's place for error text ("TurnInfo.words"), built
    # once here: formatting it per field per message was most of a Flux Update's parse time.
    fields: tuple[tuple[str, Callable[[Any, str], Any], bool, str], ...]

    def build(self, d: Mapping[str, Any]) -> Any:
        kwargs: dict[str, Any] = {}
        for name, convert, required, where in self.fields:
            if name in d:
                kwargs[name] = convert(d[name], where)
            elif required:
                raise _fail(self.cls.TYPE or self.cls.__name__, f"missing {name!r}")  # type: ignore[attr-defined]
        return self.cls(**kwargs)


_SPECS: dict[type, _Spec] = {}
_W = TypeVar("_W", bound=type)


def _message(cls: _W) -> _W:
    """Register a message dataclass: derive its parser from the field annotations."""
    fields = []
    for f in dataclasses.fields(cls):
        if f.type not in _CONVERTERS:
            raise TypeError(f"{cls.__name__}.{f.name}: no converter for {f.type!r}")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        where = f"{cls.TYPE or cls.__name__}.{f.name}"  # type: ignore[attr-defined]
        fields.append((f.name, _CONVERTERS[f.type], required, where))
    _SPECS[cls] = _Spec(cls, tuple(f[0] for f in fields), tuple(fields))
    return cls


@dataclass(slots=True)
class Unknown:
    """A message whose `type` this module does not know (kept whole, never an error)."""

    type: str
    raw: dict[str, Any]


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DeepgramMessageError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DeepgramMessageError("expected a JSON object")
    if not isinstance(data.get("type"), str):
        raise DeepgramMessageError("missing or non-string 'type'")
    return data


def _parser(*classes: type[_Wire]) -> Callable[[str | bytes], Any]:
    table = {c.TYPE: c for c in classes}

    def parse(text: str | bytes) -> Any:
        data = _load(text)
        cls = table.get(data["type"])
        return Unknown(data["type"], data) if cls is None else cls.from_dict(data)

    return parse


def _const(msg: _Wire) -> str:
    return encode(msg)


# --- shared nested objects -----------------------------------------------------------------


@_message
@dataclass(slots=True)
class Word(_Wire):
    """A word with times in seconds from the connection's first audio byte (Flux and Nova)."""

    word: str
    confidence: float = 1.0
    start: float | None = None  # Flux: may be absent
    end: float | None = None
    speaker: int | None = None  # Nova with diarize=true: 0, 1, ... per voice on the channel


_CONVERTERS["tuple[Word, ...]"] = _tuple_of(_nested(Word))


# --- Flux /v2/listen -----------------------------------------------------------------------

FLUX_MODELS = ("flux-general-en", "flux-general-multi")
FLUX_EVENTS = ("StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed", "EndOfTurn")
EOT_THRESHOLD_RANGE = (0.5, 1.0)
EAGER_EOT_THRESHOLD_RANGE = (0.3, 0.9)
EOT_TIMEOUT_MS_RANGE = (500, 60000)


@_message
@dataclass(slots=True)
class FluxConnected(_Wire):
    TYPE: ClassVar[str] = "Connected"
    request_id: str = ""
    sequence_id: int = 0


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
    trigger: str | None = None  # EndOfTurn only: "model" | "manual" ("timeout" unverified)
    sequence_id: int = 0
    request_id: str = ""


@_message
@dataclass(slots=True)
class ConfigureSuccess(_Wire):
    TYPE: ClassVar[str] = "ConfigureSuccess"
    thresholds: dict[str, Any]
    keyterms: tuple[str, ...] = ()
    sequence_id: int = 0
    request_id: str = ""


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
    request_id: str = ""


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
    """Why these Flux thresholds are invalid (empty: valid). Ranges from protocol.md §3."""
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


# --- Aura /v1/speak ------------------------------------------------------------------------


@_message
@dataclass(slots=True)
class Metadata(_Wire):
    """Speak: sent once when the socket opens."""

    TYPE: ClassVar[str] = "Metadata"
    request_id: str = ""
    model_name: str = ""
    model_version: str = ""
    model_uuid: str = ""


@_message
@dataclass(slots=True)
class Flushed(_Wire):
    TYPE: ClassVar[str] = "Flushed"
    sequence_id: int = 0


@_message
@dataclass(slots=True)
class Cleared(_Wire):
    TYPE: ClassVar[str] = "Cleared"
    sequence_id: int = 0


@_message
@dataclass(slots=True)
class SpeakWarning(_Wire):
    TYPE: ClassVar[str] = "Warning"
    description: str = ""
    code: str = ""


@_message
@dataclass(slots=True)
class SpeakError(_Wire):
    """Speak `Error` (shape unverified: mirrors Warning)."""

    TYPE: ClassVar[str] = "Error"
    description: str = ""
    code: str = ""


@_message
@dataclass(slots=True)
class Speak(_Wire):
    TYPE: ClassVar[str] = "Speak"
    text: str


@_message
@dataclass(slots=True)
class Flush(_Wire):
    TYPE: ClassVar[str] = "Flush"


@_message
@dataclass(slots=True)
class Clear(_Wire):
    TYPE: ClassVar[str] = "Clear"


@_message
@dataclass(slots=True)
class Close(_Wire):
    TYPE: ClassVar[str] = "Close"


SpeakServerEvent = Metadata | Flushed | Cleared | SpeakWarning | SpeakError

parse_speak_server: Callable[[str | bytes], SpeakServerEvent | Unknown] = _parser(
    Metadata, Flushed, Cleared, SpeakWarning, SpeakError
)
parse_speak_client: Callable[[str | bytes], Speak | Flush | Clear | Close | Unknown] = _parser(
    Speak, Flush, Clear, Close
)


def speak(text: str) -> str:
    """Aura `Speak`. Empty text is a 400 on the real service, so it never leaves here."""
    if not text or not text.strip():
        raise DeepgramMessageError("Speak: empty text")
    return encode(Speak(text))


_FLUSH, _CLEAR, _CLOSE = _const(Flush()), _const(Clear()), _const(Close())


def flush() -> str:
    """Aura `Flush` (max 20 per 60 s: flush per reply or sentence, never per token)."""
    return _FLUSH


def clear() -> str:
    return _CLEAR


def close() -> str:
    return _CLOSE


# --- Voice Agent /v1/agent/converse --------------------------------------------------------


@_message
@dataclass(slots=True)
class Welcome(_Wire):
    TYPE: ClassVar[str] = "Welcome"
    request_id: str = ""


@_message
@dataclass(slots=True)
class SettingsApplied(_Wire):
    TYPE: ClassVar[str] = "SettingsApplied"


@_message
@dataclass(slots=True)
class ConversationText(_Wire):
    TYPE: ClassVar[str] = "ConversationText"
    role: str  # "user" | "assistant"
    content: str


@_message
@dataclass(slots=True)
class UserStartedSpeaking(_Wire):
    TYPE: ClassVar[str] = "UserStartedSpeaking"


@_message
@dataclass(slots=True)
class AgentThinking(_Wire):
    TYPE: ClassVar[str] = "AgentThinking"
    content: str = ""


@_message
@dataclass(slots=True)
class AgentStartedSpeaking(_Wire):
    TYPE: ClassVar[str] = "AgentStartedSpeaking"
    total_latency: float = 0.0
    tts_latency: float = 0.0
    ttt_latency: float = 0.0


@_message
@dataclass(slots=True)
class AgentAudioDone(_Wire):
    """The server finished *sending* the reply; the caller has not necessarily heard it."""

    TYPE: ClassVar[str] = "AgentAudioDone"


@_message
@dataclass(slots=True)
class FunctionCall(_Wire):
    id: str
    name: str
    arguments: str  # a JSON *string*
    client_side: bool = True


_CONVERTERS["tuple[FunctionCall, ...]"] = _tuple_of(_nested(FunctionCall))


@_message
@dataclass(slots=True)
class FunctionCallRequest(_Wire):
    TYPE: ClassVar[str] = "FunctionCallRequest"
    functions: tuple[FunctionCall, ...]


@_message
@dataclass(slots=True)
class FunctionCallResponse(_Wire):
    """Client -> server for client-side functions; server -> client for server-side ones."""

    TYPE: ClassVar[str] = "FunctionCallResponse"
    id: str
    name: str
    content: str


@_message
@dataclass(slots=True)
class PromptUpdated(_Wire):
    TYPE: ClassVar[str] = "PromptUpdated"


@_message
@dataclass(slots=True)
class SpeakUpdated(_Wire):
    TYPE: ClassVar[str] = "SpeakUpdated"


@_message
@dataclass(slots=True)
class ThinkUpdated(_Wire):
    TYPE: ClassVar[str] = "ThinkUpdated"


@_message
@dataclass(slots=True)
class ListenUpdated(_Wire):
    TYPE: ClassVar[str] = "ListenUpdated"


@_message
@dataclass(slots=True)
class InjectionRefused(_Wire):
    TYPE: ClassVar[str] = "InjectionRefused"
    message: str = ""


@_message
@dataclass(slots=True)
class AgentWarning(_Wire):
    TYPE: ClassVar[str] = "Warning"
    code: str = ""
    description: str = ""


@_message
@dataclass(slots=True)
class AgentError(_Wire):
    """Fatal: e.g. CLIENT_MESSAGE_TIMEOUT, UNPARSABLE_CLIENT_MESSAGE."""

    TYPE: ClassVar[str] = "Error"
    code: str = ""
    description: str = ""


# Settings' top-level keys per Deepgram's "Configure the Voice Agent" page; others are rejected.
SETTINGS_KEYS = frozenset(
    {"type", "tags", "experimental", "mip_opt_out", "flags", "audio", "agent"}
)


@dataclass(slots=True)
class Settings(_Wire):
    """The agent's one `Settings`: the body is passed through as a dict (Deepgram's schema)."""

    TYPE: ClassVar[str] = "Settings"
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, **{k: v for k, v in self.body.items() if k != "type"}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Settings:
        return cls({k: v for k, v in d.items() if k != "type"})


_SPECS[Settings] = _Spec(Settings, (), ())


@_message
@dataclass(slots=True)
class KeepAlive(_Wire):
    """Agent and Nova only (text frame). On Flux it kills the socket."""

    TYPE: ClassVar[str] = "KeepAlive"


@_message
@dataclass(slots=True)
class UpdatePrompt(_Wire):
    TYPE: ClassVar[str] = "UpdatePrompt"
    prompt: str


@_message
@dataclass(slots=True)
class UpdateSpeak(_Wire):
    TYPE: ClassVar[str] = "UpdateSpeak"
    speak: dict[str, Any]


@_message
@dataclass(slots=True)
class UpdateThink(_Wire):
    TYPE: ClassVar[str] = "UpdateThink"
    think: dict[str, Any]


@_message
@dataclass(slots=True)
class UpdateListen(_Wire):
    TYPE: ClassVar[str] = "UpdateListen"
    listen: dict[str, Any]


@_message
@dataclass(slots=True)
class InjectAgentMessage(_Wire):
    TYPE: ClassVar[str] = "InjectAgentMessage"
    message: str
    behavior: str | None = None  # "default" | "queue" | "interrupt"


@_message
@dataclass(slots=True)
class InjectUserMessage(_Wire):
    TYPE: ClassVar[str] = "InjectUserMessage"
    content: str


AgentServerEvent = (
    Welcome
    | SettingsApplied
    | ConversationText
    | UserStartedSpeaking
    | AgentThinking
    | AgentStartedSpeaking
    | AgentAudioDone
    | FunctionCallRequest
    | FunctionCallResponse
    | PromptUpdated
    | SpeakUpdated
    | ThinkUpdated
    | ListenUpdated
    | InjectionRefused
    | AgentWarning
    | AgentError
)
AgentClientMessage = (
    Settings
    | KeepAlive
    | UpdatePrompt
    | UpdateSpeak
    | UpdateThink
    | UpdateListen
    | InjectAgentMessage
    | InjectUserMessage
    | FunctionCallResponse
    | ForceEndTurn
)

# History, LatencyReport and other newer types parse as Unknown.
parse_agent_server: Callable[[str | bytes], AgentServerEvent | Unknown] = _parser(
    Welcome,
    SettingsApplied,
    ConversationText,
    UserStartedSpeaking,
    AgentThinking,
    AgentStartedSpeaking,
    AgentAudioDone,
    FunctionCallRequest,
    FunctionCallResponse,
    PromptUpdated,
    SpeakUpdated,
    ThinkUpdated,
    ListenUpdated,
    InjectionRefused,
    AgentWarning,
    AgentError,
)
parse_agent_client: Callable[[str | bytes], AgentClientMessage | Unknown] = _parser(
    Settings,
    KeepAlive,
    UpdatePrompt,
    UpdateSpeak,
    UpdateThink,
    UpdateListen,
    InjectAgentMessage,
    InjectUserMessage,
    FunctionCallResponse,
    ForceEndTurn,
)


def settings_problems(body: Mapping[str, Any]) -> list[str]:
    """Why a Settings body would be rejected (empty: acceptable). Shape checks only."""
    problems = [f"unknown field {k!r}" for k in body if k not in SETTINGS_KEYS]
    if body.get("type", "Settings") != "Settings":
        problems.append(f"type must be 'Settings', got {body.get('type')!r}")
    for key in ("audio", "agent"):
        if not isinstance(body.get(key), dict):
            problems.append(f"missing or non-object {key!r}")
    audio = body.get("audio")
    if isinstance(audio, dict):
        for side in ("input", "output"):
            if side in audio and not isinstance(audio[side], dict):
                problems.append(f"audio.{side} must be an object")
    if "tags" in body and not (
        isinstance(body["tags"], list) and all(isinstance(t, str) for t in body["tags"])
    ):
        problems.append("tags must be a list of strings")
    return problems


def settings(body: Mapping[str, Any]) -> str:
    """The agent `Settings` message from a dict (with or without "type")."""
    if problems := settings_problems(body):
        raise DeepgramMessageError("Settings: " + "; ".join(problems))
    return encode(Settings(dict(body)))


def agent_settings(
    *,
    prompt: str,
    greeting: str | None = None,
    listen_model: str = "flux-general-en",
    think_provider: Mapping[str, Any] | None = None,
    speak_model: str = "aura-2-thalia-en",
    functions: list[Mapping[str, Any]] | None = None,
    context_messages: list[Mapping[str, Any]] | None = None,
    eot_threshold: float | None = None,
    eot_timeout_ms: int | None = None,
    keyterms: list[str] | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """A Settings body for Twilio: μ-law 8 kHz both ways, so payloads pass through untouched."""
    listen: dict[str, Any] = {"type": "deepgram", "model": listen_model}
    if listen_model.startswith("flux"):
        listen["version"] = "v2"  # selects Flux
    for key, value in (
        ("eot_threshold", eot_threshold),
        ("eot_timeout_ms", eot_timeout_ms),
        ("keyterms", keyterms),
    ):
        if value is not None:
            listen[key] = value
    think: dict[str, Any] = {
        "provider": dict(think_provider or {"type": "open_ai", "model": "gpt-4o-mini"}),
        "prompt": prompt,
    }
    if functions:
        think["functions"] = [dict(f) for f in functions]
    agent: dict[str, Any] = {
        "listen": {"provider": listen},
        "think": think,
        "speak": {"provider": {"type": "deepgram", "model": speak_model}},
    }
    if greeting:
        agent["greeting"] = greeting
    if context_messages:
        agent["context"] = {"messages": [dict(m) for m in context_messages]}
    mulaw = {"encoding": "mulaw", "sample_rate": 8000}
    body: dict[str, Any] = {"audio": {"input": mulaw, "output": {**mulaw, "container": "none"}}}
    body["agent"] = agent
    if tags:
        body["tags"] = list(tags)
    return body


_KEEP_ALIVE = _const(KeepAlive())


def keep_alive() -> str:
    """Agent/Nova `KeepAlive` text frame: only while *not* sending audio (never on Flux)."""
    return _KEEP_ALIVE


def update_prompt(prompt: str) -> str:
    return encode(UpdatePrompt(prompt))


def update_speak(speak: Mapping[str, Any]) -> str:
    return encode(UpdateSpeak(dict(speak)))


def inject_agent_message(message: str, behavior: str | None = None) -> str:
    if not message:
        raise DeepgramMessageError("InjectAgentMessage: empty message")
    return encode(InjectAgentMessage(message, behavior))


def inject_user_message(content: str) -> str:
    if not content:
        raise DeepgramMessageError("InjectUserMessage: empty content")
    return encode(InjectUserMessage(content))


def function_call_response(id: str, name: str, content: str) -> str:
    """Reply to a client-side FunctionCallRequest with the same id and name."""
    return encode(FunctionCallResponse(id, name, content))


# --- Nova /v1/listen -----------------------------------------------------------------------


@dataclass(slots=True)
class Results(_Wire):
    """A transcript segment; flattened from `channel.alternatives[0]` on the wire."""

    TYPE: ClassVar[str] = "Results"
    transcript: str
    is_final: bool
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
            is_final=_as_bool(d.get("is_final"), "Results.is_final"),
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
    """Nova JSON `Error` (unverified: Nova mostly reports errors in the close frame)."""

    TYPE: ClassVar[str] = "Error"
    code: str = ""
    description: str = ""


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
