"""(b) What our fakes send, against the SDK's response models.

Every message our fakes sent in the capture runs validates as strictly against the SDK's
response models, and the runs produced every server message type the fakes can send.
"""

from __future__ import annotations

import pytest

from telephony.deepgram import messages as dm
from tests.conformance.capture import Wire
from tests.conformance.sdk_oracle import ENDPOINTS, SERVER_MODELS, message_problems


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_fake_server_messages_validate_strictly_against_the_sdk(wire: Wire, endpoint: str) -> None:
    messages = wire.received[endpoint]
    problems = [p for m in messages for p in message_problems(SERVER_MODELS[endpoint], m, endpoint)]
    assert problems == []


def test_the_runs_captured_every_message_the_fakes_can_send(wire: Wire) -> None:
    expected = {
        "flux": {
            "Connected",
            "TurnInfo",
            "ConfigureSuccess",
            "ConfigureFailure",
            "Warning",
            "Error",
        },
        "speak": {"Metadata", "Flushed", "Cleared", "Warning"},
        "agent": {
            "Welcome",
            "SettingsApplied",
            "ConversationText",
            "UserStartedSpeaking",
            "AgentThinking",
            "AgentStartedSpeaking",
            "AgentAudioDone",
            "FunctionCallRequest",
            "PromptUpdated",
            "SpeakUpdated",
            "InjectionRefused",
            "Warning",
            "Error",
        },
        "listen": {"Results", "UtteranceEnd", "SpeechStarted", "Metadata", "Error"},
    }
    for endpoint, kinds in expected.items():
        assert {m["type"] for m in wire.received[endpoint]} >= kinds, endpoint
    turns = [m for m in wire.received["flux"] if m["type"] == "TurnInfo"]
    assert {m["event"] for m in turns} == set(dm.FLUX_EVENTS)
    assert {m.get("trigger") for m in turns if m["event"] == "EndOfTurn"} >= {
        "model",
        "manual",
        "timeout",
    }
    results = [m for m in wire.received["listen"] if m["type"] == "Results"]
    assert {(m["is_final"], m["speech_final"], m["from_finalize"]) for m in results} >= {
        (False, False, False),  # interim
        (True, True, False),  # endpointing
        (True, False, True),  # Finalize
    }
    # The transcribe call, every option on: speakers, punctuated words and the diarizer.
    logs = wire.calls["nova"].deepgram.logs("listen")
    results = [m.to_dict() for log in logs for m in log.sent_messages(dm.Results)]
    words = [w for m in results for w in m["channel"]["alternatives"][0]["words"]]
    assert words and all("speaker" in w and "punctuated_word" in w for w in words)
    assert all("diarize_info" in m["metadata"] for m in results)
