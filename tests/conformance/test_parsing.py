"""(c) Deepgram's messages through our parsers.

SDK response instances with every optional field set, serialized by the SDK, parse in our
parsers with equal values for every field we model.
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from deepgram.agent.v1 import types as agent_t
from deepgram.listen.v1 import types as nova_t
from deepgram.listen.v2 import types as flux_t
from deepgram.speak.v1 import types as speak_t

from telephony.deepgram import messages as dm
from tests.conformance.sdk_oracle import PARSERS, SERVER_MODELS, conform


def _words(n: int = 2) -> list[dict[str, Any]]:
    return [
        {"word": w, "confidence": 0.98, "start": 0.52 + i / 4, "end": 0.7 + i / 4}
        for i, w in enumerate(["cancel", "order", "now"][:n])
    ]


def _turn_info(event: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "TurnInfo",
        "request_id": "5d3e-req",
        "sequence_id": 7,
        "event": event,
        "turn_index": 2,
        "audio_window_start": 0.48,
        "audio_window_end": 2.31,
        "transcript": "cancel order",
        "words": _words(),
        "end_of_turn_confidence": 0.91,
        "languages": ["en"],
        "languages_hinted": ["en", "es"],
        **extra,
    }


NOVA_RESULTS: dict[str, Any] = {
    "type": "Results",
    "channel_index": [0, 1],
    "duration": 1.02,
    "start": 3.4,
    "is_final": True,
    "speech_final": True,
    "from_finalize": False,
    "channel": {
        "alternatives": [
            {
                "transcript": "Hi, card 4111.",
                "confidence": 0.97,
                "languages": ["en"],
                "languages_hinted": ["en"],
                "words": [
                    {
                        "word": w,
                        "punctuated_word": p,
                        "start": 3.5 + i / 4,
                        "end": 3.7 + i / 4,
                        "confidence": 0.99,
                        "language": "en",
                        "speaker": 1,
                    }
                    for i, (w, p) in enumerate([("hi", "Hi,"), ("card", "card"), ("4111", "4111.")])
                ],
            }
        ]
    },
    "metadata": {
        "request_id": "0b1c-req",
        "model_info": {"name": "2-general-nova", "version": "2024-01-18.26916", "arch": "nova-3"},
        "model_uuid": "c0d1a8a5-5b6e-4c8e-9a1e-6f1f1d1f2e3a",
        "diarize_info": {"model_uuid": "7d5e6f70-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "arch": "v1"},
    },
    "entities": [
        {
            "label": "CARDINAL",
            "value": "4111",
            "raw_value": "four one one one",
            "confidence": 0.9,
            "start_word": 2,
            "end_word": 3,
        }
    ],
}

# (id, endpoint, SDK model, data, optional fields realistically left unset)
SDK_RESPONSES: list[tuple[str, str, Any, dict[str, Any], set[str]]] = [
    (
        "flux-Connected",
        "flux",
        flux_t.ListenV2Connected,
        {"request_id": "r", "sequence_id": 0},
        set(),
    ),
    *[
        (f"flux-TurnInfo-{e}", "flux", flux_t.ListenV2TurnInfo, _turn_info(e), {"$.trigger"})
        for e in ("StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed")
    ],
    *[
        (
            f"flux-TurnInfo-EndOfTurn-{t}",
            "flux",
            flux_t.ListenV2TurnInfo,
            _turn_info("EndOfTurn", trigger=t),
            set(),
        )
        for t in ("model", "manual", "timeout")
    ],
    (
        "flux-ConfigureSuccess",
        "flux",
        flux_t.ListenV2ConfigureSuccess,
        {
            "request_id": "r",
            "sequence_id": 12,
            "thresholds": {
                "eager_eot_threshold": 0.5,
                "eot_threshold": 0.8,
                "eot_timeout_ms": 3000,
            },
            "keyterms": ["Acme", "Roadrunner"],
            "language_hints": ["en", "fr"],
            "numerals": True,
        },
        set(),
    ),
    (
        "flux-ConfigureFailure",
        "flux",
        flux_t.ListenV2ConfigureFailure,
        {
            "request_id": "r",
            "sequence_id": 13,
            "code": "CONFIGURE_ALREADY_PENDING",
            "description": "another Configure is pending",
        },
        set(),
    ),
    (
        "flux-Warning",
        "flux",
        flux_t.ListenV2Warning,
        {
            "request_id": "r",
            "sequence_id": 14,
            "code": "FORCE_END_TURN_NO_ACTIVE_TURN",
            "description": "no turn is open",
        },
        set(),
    ),
    (
        "flux-Error",
        "flux",
        flux_t.ListenV2FatalError,
        {"sequence_id": 15, "code": "INTERNAL_SERVER_ERROR", "description": "sorry"},
        set(),
    ),
    (
        "speak-Metadata",
        "speak",
        speak_t.SpeakV1Metadata,
        {
            "request_id": "r",
            "model_name": "aura-2-thalia-en",
            "model_version": "2025-04-07.0",
            "model_uuid": "ecb7c1d5-c7d4-4ab5-9e8a-1b0d8c5b4f1d",
            "additional_model_uuids": ["0b5f2a10-8a5b-4c8e-9d3f-2a1b0c9d8e7f"],
        },
        set(),
    ),
    (
        "speak-Flushed",
        "speak",
        speak_t.SpeakV1Flushed,
        {"type": "Flushed", "sequence_id": 0},
        set(),
    ),
    (
        "speak-Cleared",
        "speak",
        speak_t.SpeakV1Cleared,
        {"type": "Cleared", "sequence_id": 1},
        set(),
    ),
    (
        "speak-Warning",
        "speak",
        speak_t.SpeakV1Warning,
        {"description": "Flush limit exceeded", "code": "FLUSH_LIMIT"},
        set(),
    ),
    ("agent-Welcome", "agent", agent_t.AgentV1Welcome, {"request_id": "r"}, set()),
    ("agent-SettingsApplied", "agent", agent_t.AgentV1SettingsApplied, {}, set()),
    (
        "agent-ConversationText",
        "agent",
        agent_t.AgentV1ConversationText,
        {
            "role": "assistant",
            "content": "Sure.",
            "conversational_behavior": "default",
            "languages_hinted": ["en"],
            "languages": ["en"],
        },
        set(),
    ),
    ("agent-UserStartedSpeaking", "agent", agent_t.AgentV1UserStartedSpeaking, {}, set()),
    ("agent-AgentThinking", "agent", agent_t.AgentV1AgentThinking, {"content": "hmm"}, set()),
    (
        "agent-AgentStartedSpeaking",
        "agent",
        agent_t.AgentV1AgentStartedSpeaking,
        {"total_latency": 1.2, "tts_latency": 0.3, "ttt_latency": 0.6},
        set(),
    ),
    ("agent-AgentAudioDone", "agent", agent_t.AgentV1AgentAudioDone, {}, set()),
    (
        "agent-FunctionCallRequest",
        "agent",
        agent_t.AgentV1FunctionCallRequest,
        {
            "functions": [
                {
                    "id": "fc_1",
                    "name": "end_call",
                    "arguments": '{"reason":"done"}',
                    "client_side": True,
                    "thought_signature": "sig",
                }
            ]
        },
        set(),
    ),
    (
        "agent-FunctionCallResponse",
        "agent",
        agent_t.AgentV1ReceiveFunctionCallResponse,
        {"id": "fc_2", "name": "lookup", "content": '{"ok":true}'},
        set(),
    ),
    (
        "agent-FunctionCallCancelled",
        "agent",
        agent_t.AgentV1FunctionCallCancelled,
        {"functions": [{"id": "fc_1", "name": "end_call"}]},
        set(),
    ),
    ("agent-PromptUpdated", "agent", agent_t.AgentV1PromptUpdated, {}, set()),
    ("agent-SpeakUpdated", "agent", agent_t.AgentV1SpeakUpdated, {}, set()),
    ("agent-ThinkUpdated", "agent", agent_t.AgentV1ThinkUpdated, {}, set()),
    ("agent-ListenUpdated", "agent", agent_t.AgentV1ListenUpdated, {}, set()),
    ("agent-ThinkLiveUpdated", "agent", agent_t.AgentV1ThinkLiveUpdated, {}, set()),
    (
        "agent-InjectionRefused",
        "agent",
        agent_t.AgentV1InjectionRefused,
        {"message": "busy"},
        set(),
    ),
    (
        "agent-History-content",
        "agent",
        agent_t.AgentV1HistoryContent,
        {"role": "user", "content": "Where is my order?"},
        set(),
    ),
    (
        "agent-History-function_calls",
        "agent",
        agent_t.AgentV1HistoryFunctionCalls,
        {
            "function_calls": [
                {
                    "id": "fc_1",
                    "name": "lookup",
                    "client_side": False,
                    "arguments": '{"order":"1"}',
                    "response": '{"status":"shipped"}',
                    "thought_signature": "sig",
                }
            ]
        },
        set(),
    ),
    (
        "agent-LatencyReport",
        "agent",
        agent_t.AgentV1LatencyReport,
        {
            "stt_latency": 0.2,
            "ttt_token_latency": 0.3,
            "ttt_text_latency": 0.4,
            "ttt_tool_latency": 0.1,
            "ttt_thinking_latency": 0.05,
            "tts_latency": 0.25,
            "total_latency": 0.9,
        },
        set(),
    ),
    (
        "agent-FrustrationDetected",
        "agent",
        agent_t.AgentV1FrustrationDetected,
        {"count": 2, "escalated": False},
        set(),
    ),
    (
        "agent-Warning",
        "agent",
        agent_t.AgentV1Warning,
        {"description": "prompt too long", "code": "PROMPT_TOO_LONG"},
        set(),
    ),
    (
        "agent-Error",
        "agent",
        agent_t.AgentV1Error,
        {"description": "idle", "code": "CLIENT_MESSAGE_TIMEOUT"},
        set(),
    ),
    ("listen-Results", "listen", nova_t.ListenV1Results, NOVA_RESULTS, set()),
    (
        "listen-UtteranceEnd",
        "listen",
        nova_t.ListenV1UtteranceEnd,
        {"channel": [0, 1], "last_word_end": 4.2},
        set(),
    ),
    (
        "listen-SpeechStarted",
        "listen",
        nova_t.ListenV1SpeechStarted,
        {"channel": [0], "timestamp": 3.4},
        set(),
    ),
    (
        "listen-Metadata",
        "listen",
        nova_t.ListenV1Metadata,
        {
            "transaction_key": "deprecated",
            "request_id": "r",
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "created": "2026-03-01T10:00:00.000Z",
            "duration": 12.5,
            "channels": 1,
        },
        set(),
    ),
    (
        "listen-Error",
        "listen",
        nova_t.ListenV1Error,
        {
            "variant": "SchemaError",
            "description": "could not parse the message",
            "code": "UNPARSABLE_CLIENT_MESSAGE",
            "message": '{"type":"Bogus"}',
        },
        set(),
    ),
    (
        "listen-ConfigureSuccess",
        "listen",
        nova_t.ListenV1ConfigureSuccess,
        {"request_id": "r", "keyterms": ["Acme"]},
        set(),
    ),
    (
        "listen-ConfigureFailure",
        "listen",
        nova_t.ListenV1ConfigureFailure,
        {"request_id": "r", "code": "CONFIGURE_ALREADY_PENDING", "description": "pending"},
        set(),
    ),
]
# Server messages we deliberately do not model: they parse as Unknown and are skipped. Each
# answers something we never send (Nova Configure, UpdateThink_Live) or a feature we do not
# use (frustration detection).
NOT_MODELLED = {
    "agent-ThinkLiveUpdated",
    "agent-FrustrationDetected",
    "listen-ConfigureSuccess",
    "listen-ConfigureFailure",
}


def unset_optionals(instance: pydantic.BaseModel, where: str = "$") -> list[str]:
    """Optional fields left unset, anywhere in a model instance."""
    out = []
    for name, info in type(instance).model_fields.items():
        key, value = info.alias or name, getattr(instance, name)
        if value is None:
            out.append(f"{where}.{key}")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, pydantic.BaseModel):
                out += unset_optionals(item, f"{where}.{key}")
    return out


def disagreements(ours: Any, theirs: Any, where: str = "$") -> list[str]:
    """Where our re-encoded message says something else than Deepgram's, for keys both have."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [
            p
            for k in ours
            if k in theirs
            for p in disagreements(ours[k], theirs[k], f"{where}.{k}")
        ]
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return [f"{where}: {len(ours)} items, Deepgram's {len(theirs)}"]
        pairs = enumerate(zip(ours, theirs, strict=True))
        return [p for i, (a, b) in pairs for p in disagreements(a, b, f"{where}[{i}]")]
    return [] if ours == theirs else [f"{where}: ours {ours!r}, Deepgram's {theirs!r}"]


def sdk_json(model: type[pydantic.BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """The SDK's own serialization of a valid, complete instance."""
    instance = model.model_validate(data)
    return orjson.loads(instance.json())


@pytest.mark.parametrize(
    ("endpoint", "model", "data", "unset_ok"),
    [pytest.param(*case[1:], id=case[0]) for case in SDK_RESPONSES],
)
def test_sdk_responses_parse_with_equal_values(
    request: pytest.FixtureRequest,
    endpoint: str,
    model: type[pydantic.BaseModel],
    data: dict[str, Any],
    unset_ok: set[str],
) -> None:
    instance = model.model_validate(data)
    assert set(unset_optionals(instance)) <= unset_ok  # every optional field is set
    theirs = orjson.loads(instance.json())
    assert conform(SERVER_MODELS[endpoint][theirs["type"]], theirs) == []
    parsed = PARSERS[endpoint](orjson.dumps(theirs))
    if request.node.callspec.id in NOT_MODELLED:
        assert isinstance(parsed, dm.Unknown)
        return
    assert not isinstance(parsed, dm.Unknown), f"{theirs['type']} parsed as Unknown"
    assert disagreements(parsed.to_dict(), theirs) == []


def test_every_sdk_server_message_has_a_case() -> None:
    covered = {
        (e, orjson.loads(m.model_validate(d).json())["type"]) for _, e, m, d, _ in SDK_RESPONSES
    }
    assert covered == {(e, name) for e, models in SERVER_MODELS.items() for name in models}


def test_flux_turn_info_keeps_languages_and_trigger() -> None:
    """flux-general-multi reports the languages it heard; EndOfTurn says what ended the turn."""
    theirs = sdk_json(flux_t.ListenV2TurnInfo, _turn_info("EndOfTurn", trigger="timeout"))
    ours = dm.parse_flux_server(orjson.dumps(theirs)).to_dict()
    assert {k: ours.get(k) for k in ("languages", "trigger")} == {
        "languages": ["en"],
        "trigger": "timeout",
    }


def test_flux_configure_success_with_one_string_keyterm() -> None:
    """The SDK types ConfigureSuccess.keyterms as a string or a list of strings."""
    theirs = sdk_json(
        flux_t.ListenV2ConfigureSuccess,
        {
            "request_id": "r",
            "sequence_id": 3,
            "thresholds": {"eot_threshold": 0.8},
            "keyterms": "Acme",
        },
    )
    parsed = dm.parse_flux_server(orjson.dumps(theirs))
    assert isinstance(parsed, dm.ConfigureSuccess) and list(parsed.keyterms) == ["Acme"]


def test_nova_results_without_is_final() -> None:
    """`is_final` is optional in the SDK's Results: absent means not final."""
    data = {k: v for k, v in NOVA_RESULTS.items() if k != "is_final"}
    theirs = sdk_json(nova_t.ListenV1Results, data)
    parsed = dm.parse_listen_server(orjson.dumps(theirs))
    assert isinstance(parsed, dm.Results) and parsed.is_final is False
