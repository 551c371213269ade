"""(a) What our clients send, against the SDK's request models.

Every message captured on the fake's side of the wire during offline calls in all three modes
and direct client sessions, and every builder's output, validates strictly against the SDK's
request models: unknown keys, missing or mistyped fields and values outside a documented enum
all fail. The query parameters on every URL we open are ones the SDK's connect() offers for
that endpoint.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from telephony.deepgram import messages as dm
from telephony.deepgram.connection import KEEPALIVE_MESSAGE
from tests.conformance.capture import Wire
from tests.conformance.sdk_oracle import CLIENT_MODELS, ENDPOINTS, message_problems, sdk_query_names


def _agent_settings_full() -> str:
    return dm.settings(
        dm.agent_settings(
            prompt="You are helpful.",
            greeting="Hello.",
            listen_model="flux-general-en",
            functions=[{"name": "f", "description": "d", "parameters": {"type": "object"}}],
            context_messages=[
                {"type": "History", "role": "user", "content": "hi"},
                {"type": "History", "role": "assistant", "content": "hello"},
            ],
            eot_threshold=0.7,
            eot_timeout_ms=5000,
            keyterms=["Acme"],
            tags=["t"],
        )
    )


# Every builder's output, with each option it has.
BUILT: list[tuple[str, str]] = [
    (
        "flux",
        dm.configure(
            eot_threshold=0.8,
            eager_eot_threshold=0.5,
            eot_timeout_ms=3000,
            keyterms=["Acme"],
            language_hints=["en", "fr"],
        ),
    ),
    ("flux", dm.configure(keyterms=[])),
    ("flux", dm.force_end_turn()),
    ("flux", dm.close_stream()),
    ("speak", dm.speak("Sure, one moment.")),
    ("speak", dm.flush()),
    ("speak", dm.clear()),
    ("speak", dm.close()),
    ("agent", _agent_settings_full()),
    ("agent", dm.settings(dm.agent_settings(prompt="p", listen_model="nova-3"))),
    ("agent", dm.keep_alive()),
    ("agent", dm.update_prompt("Be brief.")),
    ("agent", dm.update_speak({"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}})),
    ("agent", dm.inject_agent_message("One moment.")),
    *[("agent", dm.inject_agent_message("x", b)) for b in ("default", "queue", "interrupt")],
    ("agent", dm.inject_user_message("Hello?")),
    ("agent", dm.function_call_response("fc_1", "end_call", '{"ok": true}')),
    ("listen", dm.keep_alive()),
    ("listen", KEEPALIVE_MESSAGE),
    ("listen", dm.finalize()),
    ("listen", dm.close_stream()),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_client_messages_validate_strictly_against_the_sdk(wire: Wire, endpoint: str) -> None:
    messages = wire.sent[endpoint] + [orjson.loads(t) for e, t in BUILT if e == endpoint]
    problems = [p for m in messages for p in message_problems(CLIENT_MODELS[endpoint], m, endpoint)]
    assert problems == []


def test_the_runs_captured_every_message_our_clients_send(wire: Wire) -> None:
    expected = {
        "flux": {"Configure", "ForceEndTurn", "CloseStream"},
        "speak": {"Speak", "Flush", "Clear", "Close"},
        "agent": {
            "Settings",
            "KeepAlive",
            "FunctionCallResponse",
            "InjectAgentMessage",
            "InjectUserMessage",
            "UpdatePrompt",
        },
        "listen": {"KeepAlive", "Finalize", "CloseStream"},
    }
    for endpoint, kinds in expected.items():
        assert kinds <= {m["type"] for m in wire.sent[endpoint]}, endpoint
    # The offline calls alone cover each mode's everyday messages.
    calls = {name: call.deepgram for name, call in wire.calls.items()}
    flux = {k for log in calls["flux"].logs("flux") for k in log.received_kinds()}
    speak = {k for log in calls["flux"].logs("speak") for k in log.received_kinds()}
    agent = {k for log in calls["agent"].logs("agent") for k in log.received_kinds()}
    nova = {k for log in calls["nova"].logs("listen") for k in log.received_kinds()}
    assert {"json:CloseStream"} <= flux
    assert {"json:Speak", "json:Flush", "json:Clear", "json:Close"} <= speak
    assert {"json:Settings", "json:KeepAlive", "json:FunctionCallResponse"} <= agent
    assert {"json:KeepAlive", "json:Finalize", "json:CloseStream"} <= nova


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_query_parameters_we_send_are_offered_by_the_sdk_connect(wire: Wire, endpoint: str) -> None:
    offered = sdk_query_names(endpoint)
    used = {name for query in wire.queries[endpoint] for name in query}
    assert wire.queries[endpoint], "no connection to check"
    assert used - offered == set()


def _settings(wire: Wire) -> list[dict[str, Any]]:
    return [m for m in wire.sent["agent"] if m["type"] == "Settings"]


def test_agent_context_entries_are_history_messages(wire: Wire) -> None:
    """2026: every `agent.context.messages` entry carries `"type": "History"` (the reconnect's
    Settings carry the conversation so far)."""
    entries = [
        entry
        for s in _settings(wire)
        for entry in (s["agent"].get("context") or {}).get("messages", [])
    ]
    assert entries, "no Settings with context: the agent call did not reconnect"
    assert [e for e in entries if e.get("type") != "History"] == []


def test_call_ending_functions_wait_for_the_end_of_turn(wire: Wire) -> None:
    """2026: the agent may dispatch a function before the turn is confirmed; `end_call` and
    `transfer_call` must carry `defer_until_eot: true` so they never run on a turn the caller
    goes on with."""
    functions = [f for s in _settings(wire) for f in s["agent"]["think"].get("functions", [])]
    builtin = [f for f in functions if f["name"] in ("end_call", "transfer_call")]
    assert {f["name"] for f in builtin} == {"end_call", "transfer_call"}
    assert [f["name"] for f in builtin if f.get("defer_until_eot") is not True] == []
