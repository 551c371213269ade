"""Voice Agent `/v1/agent/converse` messages, both directions, their parsers and builders.

The Settings *body* (Deepgram's schema, passed through as a dict) is built and checked in
`agent_settings`; here `Settings` is only the message that carries it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from telephony.deepgram.messages.flux import (
    ForceEndTurn,
)
from telephony.deepgram.messages.wire import (
    _CONVERTERS,
    _SPECS,
    DeepgramMessageError,
    Unknown,
    _const,
    _message,
    _nested,
    _optional,
    _parser,
    _Spec,
    _tuple_of,
    _Wire,
    encode,
)

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
class CancelledFunction(_Wire):
    id: str  # of the FunctionCallRequest's call: send no FunctionCallResponse for it
    name: str


_CONVERTERS["tuple[CancelledFunction, ...]"] = _tuple_of(_nested(CancelledFunction))


@_message
@dataclass(slots=True)
class FunctionCallCancelled(_Wire):
    """Calls already sent that the agent dropped: the caller resumed the turn or barged in."""

    TYPE: ClassVar[str] = "FunctionCallCancelled"
    functions: tuple[CancelledFunction, ...]


@_message
@dataclass(slots=True)
class HistoryFunctionCall(_Wire):
    """One function call in a `History` message or a Settings context entry.

    Deepgram's schema requires every field but thought_signature; only id and name are required
    here, so a partial entry still joins our copy of the conversation (and goes back whole).
    """

    id: str
    name: str
    client_side: bool = True
    arguments: str = "{}"  # a JSON *string*, as in FunctionCallRequest
    response: str = ""
    thought_signature: str | None = None  # some Gemini models


_CONVERTERS["tuple[HistoryFunctionCall, ...] | None"] = _optional(
    _tuple_of(_nested(HistoryFunctionCall))
)


@_message
@dataclass(slots=True)
class History(_Wire):
    """The server's copy of one conversation message: role and content, or function calls.

    The same shape is a Settings `agent.context.messages` entry, so `to_dict()` of one is what
    a reconnect sends back.
    """

    TYPE: ClassVar[str] = "History"
    role: str | None = None  # "user" | "assistant"
    content: str | None = None
    function_calls: tuple[HistoryFunctionCall, ...] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        msg: History = _SPECS[cls].build(d)
        if msg.function_calls is None and (msg.role is None or msg.content is None):
            raise DeepgramMessageError("History: needs role and content, or function_calls")
        return msg


@_message
@dataclass(slots=True)
class LatencyReport(_Wire):
    """Per-stage latency of one reply, in seconds; each field only when it applies."""

    TYPE: ClassVar[str] = "LatencyReport"
    stt_latency: float | None = None  # audio received -> transcript
    ttt_token_latency: float | None = None  # LLM: first token of any kind
    ttt_text_latency: float | None = None
    ttt_tool_latency: float | None = None
    ttt_thinking_latency: float | None = None
    tts_latency: float | None = None  # first text token -> first audio byte
    total_latency: float | None = None  # caller's end of speech -> first audio byte


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
    | FunctionCallCancelled
    | History
    | LatencyReport
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

# Newer types we do not use (FrustrationDetected, ThinkLiveUpdated, ...) parse as Unknown.
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
    FunctionCallCancelled,
    History,
    LatencyReport,
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
