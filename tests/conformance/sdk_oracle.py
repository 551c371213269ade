"""Deepgram's Python SDK as the test oracle: its models and connect() parameters, and a check
stricter than its own validation.

The models are tabled per endpoint and direction; `conform` fails unknown keys, missing or
mistyped fields and values outside a documented enum, none of which the SDK's models refuse.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
from deepgram.agent.v1 import types as agent_t
from deepgram.agent.v1.client import AsyncV1Client as AgentConnect
from deepgram.listen.v1 import types as nova_t
from deepgram.listen.v1.client import AsyncV1Client as NovaConnect
from deepgram.listen.v2 import types as flux_t
from deepgram.listen.v2.client import AsyncV2Client as FluxConnect
from deepgram.speak.v1 import types as speak_t
from deepgram.speak.v1.client import AsyncV1Client as SpeakConnect

from telephony.deepgram import messages as dm

ENDPOINTS = ("flux", "speak", "agent", "listen")

# --- the SDK's models, per endpoint and direction --------------------------------------------

CLIENT_MODELS: dict[str, dict[str, Any]] = {
    "flux": {
        "Configure": flux_t.ListenV2Configure,
        "ForceEndTurn": flux_t.ListenV2ForceEndTurn,
        "CloseStream": flux_t.ListenV2CloseStream,
    },
    "speak": {
        "Speak": speak_t.SpeakV1Text,
        "Flush": speak_t.SpeakV1Flush,
        "Clear": speak_t.SpeakV1Clear,
        "Close": speak_t.SpeakV1Close,
    },
    "agent": {
        "Settings": agent_t.AgentV1Settings,
        "KeepAlive": agent_t.AgentV1KeepAlive,
        "FunctionCallResponse": agent_t.AgentV1SendFunctionCallResponse,
        "InjectAgentMessage": agent_t.AgentV1InjectAgentMessage,
        "InjectUserMessage": agent_t.AgentV1InjectUserMessage,
        "UpdatePrompt": agent_t.AgentV1UpdatePrompt,
        "UpdateSpeak": agent_t.AgentV1UpdateSpeak,
        "UpdateThink": agent_t.AgentV1UpdateThink,
        "UpdateListen": agent_t.AgentV1UpdateListen,
        "ForceEndTurn": agent_t.AgentV1ForceEndTurn,
    },
    "listen": {
        "KeepAlive": nova_t.ListenV1KeepAlive,
        "Finalize": nova_t.ListenV1Finalize,
        "CloseStream": nova_t.ListenV1CloseStream,
        "Configure": nova_t.ListenV1Configure,
    },
}
SERVER_MODELS: dict[str, dict[str, Any]] = {
    "flux": {
        "Connected": flux_t.ListenV2Connected,
        "TurnInfo": flux_t.ListenV2TurnInfo,
        "ConfigureSuccess": flux_t.ListenV2ConfigureSuccess,
        "ConfigureFailure": flux_t.ListenV2ConfigureFailure,
        "Warning": flux_t.ListenV2Warning,
        "Error": flux_t.ListenV2FatalError,
    },
    # No Error: Aura reports errors in the close frame only.
    "speak": {
        "Metadata": speak_t.SpeakV1Metadata,
        "Flushed": speak_t.SpeakV1Flushed,
        "Cleared": speak_t.SpeakV1Cleared,
        "Warning": speak_t.SpeakV1Warning,
    },
    "agent": {
        "Welcome": agent_t.AgentV1Welcome,
        "SettingsApplied": agent_t.AgentV1SettingsApplied,
        "ConversationText": agent_t.AgentV1ConversationText,
        "UserStartedSpeaking": agent_t.AgentV1UserStartedSpeaking,
        "AgentThinking": agent_t.AgentV1AgentThinking,
        "AgentStartedSpeaking": agent_t.AgentV1AgentStartedSpeaking,
        "AgentAudioDone": agent_t.AgentV1AgentAudioDone,
        "FunctionCallRequest": agent_t.AgentV1FunctionCallRequest,
        "FunctionCallResponse": agent_t.AgentV1ReceiveFunctionCallResponse,
        "FunctionCallCancelled": agent_t.AgentV1FunctionCallCancelled,
        "PromptUpdated": agent_t.AgentV1PromptUpdated,
        "SpeakUpdated": agent_t.AgentV1SpeakUpdated,
        "ThinkUpdated": agent_t.AgentV1ThinkUpdated,
        "ThinkLiveUpdated": agent_t.AgentV1ThinkLiveUpdated,
        "ListenUpdated": agent_t.AgentV1ListenUpdated,
        "InjectionRefused": agent_t.AgentV1InjectionRefused,
        "History": agent_t.AgentV1History,  # a union: conversation text or function calls
        "LatencyReport": agent_t.AgentV1LatencyReport,
        "FrustrationDetected": agent_t.AgentV1FrustrationDetected,
        "Warning": agent_t.AgentV1Warning,
        "Error": agent_t.AgentV1Error,
    },
    "listen": {
        "Results": nova_t.ListenV1Results,
        "UtteranceEnd": nova_t.ListenV1UtteranceEnd,
        "SpeechStarted": nova_t.ListenV1SpeechStarted,
        "Metadata": nova_t.ListenV1Metadata,
        "Error": nova_t.ListenV1Error,
        "ConfigureSuccess": nova_t.ListenV1ConfigureSuccess,
        "ConfigureFailure": nova_t.ListenV1ConfigureFailure,
    },
}
CONNECT: dict[str, Callable[..., Any]] = {
    "flux": FluxConnect.connect,
    "speak": SpeakConnect.connect,
    "agent": AgentConnect.connect,
    "listen": NovaConnect.connect,
}
PARSERS: dict[str, Callable[[str], Any]] = {
    "flux": dm.parse_flux_server,
    "speak": dm.parse_speak_server,
    "agent": dm.parse_agent_server,
    "listen": dm.parse_listen_server,
}


# --- strict validation against an SDK annotation ---------------------------------------------

NoneType = type(None)


def literal_values(args: tuple[Any, ...]) -> list[Any]:
    return [v for a in args if get_origin(a) is Literal for v in get_args(a)] + [
        a for a in args if isinstance(a, str)
    ]


def _is(value: Any, allowed: Any) -> bool:
    return value == allowed and type(value) is type(allowed)  # True is not 1


def strict_problems(tp: Any, value: Any, where: str = "$") -> list[str]:
    """Why `value` (decoded JSON) is not exactly an instance of the SDK annotation `tp`.

    Stricter than pydantic's own validation: unknown keys fail (the SDK's models allow
    extras), nothing is coerced ("1" is no int), and an open enum (Fern's `Literal[...] | Any`)
    must hold one of its documented values.
    """
    origin = get_origin(tp)
    if tp is Any:
        return []
    if origin is Annotated:
        return strict_problems(get_args(tp)[0], value, where)
    if origin in (Union, types.UnionType):
        return _union_problems(get_args(tp), value, where)
    if origin is Literal:
        allowed = get_args(tp)
        ok = any(_is(value, a) for a in allowed)
        return [] if ok else [f"{where}: {value!r} is not one of {list(allowed)}"]
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            return [f"{where}: expected an array, got {type(value).__name__}"]
        (item,) = get_args(tp) or (Any,)
        return [p for i, v in enumerate(value) for p in strict_problems(item, v, f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        item = get_args(tp)[1] if get_args(tp) else Any
        return [p for k, v in value.items() for p in strict_problems(item, v, f"{where}.{k}")]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return _model_problems(tp, value, where)
    checks: dict[Any, Callable[[Any], bool]] = {
        str: lambda v: isinstance(v, str),
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    }
    if tp in checks:
        ok = checks[tp](value)
        return [] if ok else [f"{where}: expected {tp.__name__}, got {type(value).__name__}"]
    raise TypeError(f"{where}: no rule for the annotation {tp!r}")


def _union_problems(args: tuple[Any, ...], value: Any, where: str) -> list[str]:
    if value is None:
        return [] if NoneType in args else [f"{where}: null is not allowed"]
    members = [a for a in args if a is not NoneType]
    literals = [v for a in members if get_origin(a) is Literal for v in get_args(a)]
    if literals and Any in members:  # an open enum: hold our values to the documented ones
        ok = any(_is(value, a) for a in literals)
        return [] if ok else [f"{where}: {value!r} is not one of {literals}"]
    attempts = [strict_problems(m, value, where) for m in members]
    if any(not a for a in attempts):
        return []
    return min(attempts, key=len)  # the member it came closest to


def _model_problems(model: type[pydantic.BaseModel], value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({model.__name__}), got {type(value).__name__}"]
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    problems = [
        f"{where}.{k}: unknown key ({model.__name__} has no such field)"
        for k in value
        if k not in fields
    ]
    for key, info in fields.items():
        if key in value:
            problems += strict_problems(info.annotation, value[key], f"{where}.{key}")
        elif info.is_required() or _always_sent(key, info):
            problems.append(f"{where}.{key}: missing (required by {model.__name__})")
    return problems


def _always_sent(key: str, info: Any) -> bool:
    """A `type` with a fixed default: the SDK fills it in and always sends it (e.g. a context
    entry's "History"), so a message without it is not what Deepgram's own client sends."""
    return key == "type" and get_origin(info.annotation) is Literal and info.default is not None


def conform(tp: Any, value: Any) -> list[str]:
    """Strict problems, plus whatever the SDK's own validation says."""
    problems = strict_problems(tp, value)
    try:
        pydantic.TypeAdapter(tp).validate_python(value)
    except pydantic.ValidationError as exc:
        problems.append(f"the SDK's validation: {exc}")
    return problems


def message_problems(models: Mapping[str, Any], msg: dict[str, Any], endpoint: str) -> list[str]:
    kind = msg.get("type")
    if kind not in models:
        return [f"{endpoint} {kind!r}: Deepgram's SDK has no such message for this direction"]
    return [f"{endpoint} {kind}: {p}" for p in conform(models[kind], msg)]


# --- the parameters the SDK's connect() offers -----------------------------------------------


def sdk_query_names(endpoint: str) -> set[str]:
    skip = {"self", "authorization", "request_options"}
    return set(inspect.signature(CONNECT[endpoint]).parameters) - skip
