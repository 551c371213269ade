"""Deepgram message definitions, the fake's script format and its fake speech, without sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from telephony.deepgram import messages as dm
from telephony.sim.deepgram_server import (
    AgentStep,
    FakeDeepgram,
    Fault,
    Script,
    ScriptedTurn,
    ScriptError,
    serve_forever,
    tts_audio,
    tts_text,
)

SERVER_EVENTS = [
    (dm.parse_flux_server, dm.FluxConnected(request_id="r", sequence_id=0)),
    (
        dm.parse_flux_server,
        dm.TurnInfo(
            event="EndOfTurn",
            turn_index=2,
            audio_window_start=0.48,
            audio_window_end=2.31,
            transcript="I need to cancel",
            words=(dm.Word("I", 0.98, 0.52, 0.6),),
            end_of_turn_confidence=0.91,
            trigger="model",
            sequence_id=7,
            request_id="r",
            languages=("en", "es"),
        ),
    ),
    (dm.parse_flux_server, dm.ConfigureSuccess({"eot_threshold": 0.8}, ("Acme",), 12, "r")),
    (dm.parse_flux_server, dm.ConfigureFailure(None, 13, "r")),
    (dm.parse_flux_server, dm.FluxWarning("SOME_CODE", "careful", 14, "r")),
    (dm.parse_flux_server, dm.FluxError("INTERNAL_SERVER_ERROR", "bad", 15)),
    (dm.parse_speak_server, dm.Metadata("r", "aura-2-thalia-en", "1", "u")),
    (dm.parse_speak_server, dm.Flushed(0)),
    (dm.parse_speak_server, dm.Cleared(1)),
    (dm.parse_speak_server, dm.SpeakWarning("too many flushes", "X")),
    (dm.parse_agent_server, dm.Welcome("r")),
    (dm.parse_agent_server, dm.SettingsApplied()),
    (dm.parse_agent_server, dm.ConversationText("user", "hi")),
    (dm.parse_agent_server, dm.UserStartedSpeaking()),
    (dm.parse_agent_server, dm.AgentThinking("hmm")),
    (dm.parse_agent_server, dm.AgentStartedSpeaking(1.2, 0.3, 0.6)),
    (dm.parse_agent_server, dm.AgentAudioDone()),
    (
        dm.parse_agent_server,
        dm.FunctionCallRequest((dm.FunctionCall("fc_1", "end_call", '{"reason":"done"}', True),)),
    ),
    (
        dm.parse_agent_server,
        dm.FunctionCallCancelled((dm.CancelledFunction("fc_1", "end_call"),)),
    ),
    (dm.parse_agent_server, dm.History(role="user", content="hi")),
    (
        dm.parse_agent_server,
        dm.History(function_calls=(dm.HistoryFunctionCall("fc_1", "f", True, "{}", "ok"),)),
    ),
    (dm.parse_agent_server, dm.LatencyReport(0.1, 0.3, 0.35, None, None, 0.2, 0.65)),
    (dm.parse_agent_server, dm.InjectionRefused("busy")),
    (dm.parse_agent_server, dm.AgentError("CLIENT_MESSAGE_TIMEOUT", "idle")),
    (dm.parse_agent_server, dm.PromptUpdated()),
    (
        dm.parse_listen_server,
        dm.Results(
            "hello there",
            is_final=True,
            speech_final=True,
            start=3.4,
            duration=1.02,
            confidence=0.97,
            words=(dm.Word("hello", 0.99, 3.5, 3.7),),
            metadata={"request_id": "r"},
        ),
    ),
    (dm.parse_listen_server, dm.UtteranceEnd(4.2, (0, 1))),
    (dm.parse_listen_server, dm.SpeechStarted(3.4, (0,))),
    (dm.parse_listen_server, dm.ListenMetadata("r", "deprecated", "abc", "now", 12.5, 1)),
]


@pytest.mark.parametrize(("parse", "event"), SERVER_EVENTS)
def test_server_events_round_trip(parse: object, event: dm._Wire) -> None:
    text = dm.encode(event)
    assert orjson.loads(text)["type"] == event.TYPE
    assert parse(text) == event  # type: ignore[operator]


def test_wire_shapes_match_protocol_examples() -> None:
    results = orjson.loads(dm.encode(dm.Results("hi", is_final=False)))
    assert results["channel"]["alternatives"][0]["transcript"] == "hi"
    request = orjson.loads(dm.encode(dm.FunctionCallRequest((dm.FunctionCall("fc_1", "f", "{}"),))))
    assert request["functions"] == [
        {"id": "fc_1", "name": "f", "arguments": "{}", "client_side": True}
    ]
    # None fields are omitted, not sent as null.
    assert "trigger" not in orjson.loads(dm.encode(dm.TurnInfo("Update", 0, 0.0, 0.1, "x")))


def test_unknown_type_is_kept_and_malformed_raises() -> None:
    unknown = dm.parse_agent_server('{"type":"SomethingNew","role":"user"}')
    assert unknown == dm.Unknown("SomethingNew", {"type": "SomethingNew", "role": "user"})
    for bad in ("not json", "[1,2]", '{"no":"type"}', '{"type":"TurnInfo","event":"Update"}'):
        with pytest.raises(dm.DeepgramMessageError):
            dm.parse_flux_server(bad)
    with pytest.raises(dm.DeepgramMessageError, match="turn_index"):
        dm.parse_flux_server(
            '{"type":"TurnInfo","event":"Update","turn_index":"0","audio_window_start":0,'
            '"audio_window_end":0,"transcript":""}'
        )


def test_newer_agent_messages_parse_as_the_sdk_shapes_them() -> None:
    # Shapes from Deepgram's Python SDK 7.17 models (deepgram/agent/v1/types); extra fields
    # are ignored, as everywhere.
    cancelled = dm.parse_agent_server(
        '{"type":"FunctionCallCancelled","functions":[{"id":"fc_9","name":"end_call","x":1}]}'
    )
    assert cancelled == dm.FunctionCallCancelled((dm.CancelledFunction("fc_9", "end_call"),))
    calls = dm.parse_agent_server(
        '{"type":"History","function_calls":[{"id":"a","name":"f","client_side":false,'
        '"arguments":"{}","response":"done","thought_signature":"t"}]}'
    )
    assert calls == dm.History(
        function_calls=(dm.HistoryFunctionCall("a", "f", False, "{}", "done", "t"),)
    )
    report = dm.parse_agent_server('{"type":"LatencyReport","stt_latency":0.12,"x":1}')
    assert report == dm.LatencyReport(stt_latency=0.12)  # every other field optional
    for bad in (
        '{"type":"History","role":"user"}',  # neither a message nor function calls
        '{"type":"History","function_calls":[{"name":"f"}]}',
        '{"type":"FunctionCallCancelled"}',
        '{"type":"LatencyReport","total_latency":"1"}',
    ):
        with pytest.raises(dm.DeepgramMessageError):
            dm.parse_agent_server(bad)


def test_lenient_flux_and_nova_fields() -> None:
    # flux-general-multi reports languages; EndOfTurn's trigger is an open enum.
    turn = dm.parse_flux_server(
        '{"type":"TurnInfo","event":"EndOfTurn","turn_index":0,"audio_window_start":0,'
        '"audio_window_end":1,"transcript":"hola","trigger":"timeout","languages":["es","en"]}'
    )
    assert isinstance(turn, dm.TurnInfo)
    assert (turn.trigger, turn.languages) == ("timeout", ("es", "en"))
    # Deepgram's schema allows one keyterm as a plain string.
    for keyterms, expected in (('"Acme"', ("Acme",)), ('""', ()), ('["A","B"]', ("A", "B"))):
        ok = dm.parse_flux_server(
            f'{{"type":"ConfigureSuccess","thresholds":{{}},"keyterms":{keyterms}}}'
        )
        assert isinstance(ok, dm.ConfigureSuccess) and ok.keyterms == expected
    with pytest.raises(dm.DeepgramMessageError):
        dm.parse_flux_server('{"type":"ConfigureSuccess","thresholds":{},"keyterms":7}')
    # A Nova Results without is_final is not final.
    results = dm.parse_listen_server(
        '{"type":"Results","channel":{"alternatives":[{"transcript":"hi"}]}}'
    )
    assert isinstance(results, dm.Results) and results.is_final is False


def test_settings_context_entries_are_history_messages() -> None:
    context = [
        {"role": "user", "content": "hi"},  # the builder adds the type
        {"type": "History", "function_calls": [{"id": "a", "name": "f"}]},
    ]
    body = dm.agent_settings(prompt="p", context_messages=context)
    messages = body["agent"]["context"]["messages"]
    assert messages[0] == {"type": "History", "role": "user", "content": "hi"}
    assert dm.settings_problems(body) == []
    wrong = dm.agent_settings(prompt="p", context_messages=[{"type": "Message", "role": "user"}])
    assert dm.settings_problems(wrong) == [
        "agent.context.messages[0]: type must be 'History', got 'Message'"
    ]
    untyped = {**body, "agent": {**body["agent"], "context": {"messages": [{"role": "user"}]}}}
    with pytest.raises(dm.DeepgramMessageError, match=r"messages\[0\]: type must be 'History'"):
        dm.settings(untyped)
    partial = {"type": "History", "role": "user"}
    bad = {**body, "agent": {**body["agent"], "context": {"messages": [partial]}}}
    assert dm.settings_problems(bad) == [
        "agent.context.messages[0]: History: needs role and content, or function_calls"
    ]


def test_client_builders() -> None:
    assert orjson.loads(dm.configure(eot_threshold=0.8, eot_timeout_ms=3000, keyterms=["A"])) == {
        "type": "Configure",
        "thresholds": {"eot_threshold": 0.8, "eot_timeout_ms": 3000},
        "keyterms": ["A"],
    }
    with pytest.raises(dm.DeepgramMessageError):
        dm.configure(eot_threshold=0.2)
    for empty in ("", "   "):
        with pytest.raises(dm.DeepgramMessageError):
            dm.speak(empty)
    assert orjson.loads(dm.speak("Hi")) == {"type": "Speak", "text": "Hi"}
    assert orjson.loads(dm.function_call_response("fc_1", "f", "{}")) == {
        "type": "FunctionCallResponse",
        "id": "fc_1",
        "name": "f",
        "content": "{}",
    }
    assert orjson.loads(dm.inject_agent_message("hi", "queue"))["behavior"] == "queue"
    assert "behavior" not in orjson.loads(dm.inject_agent_message("hi"))
    simple = (dm.force_end_turn, dm.close_stream, dm.flush, dm.clear, dm.close, dm.finalize)
    assert [orjson.loads(f())["type"] for f in simple] == [
        "ForceEndTurn",
        "CloseStream",
        "Flush",
        "Clear",
        "Close",
        "Finalize",
    ]
    assert dm.parse_agent_client(dm.keep_alive()) == dm.KeepAlive()
    assert isinstance(dm.parse_flux_client(dm.keep_alive()), dm.Unknown)  # not a Flux message


def test_settings_validation_and_the_telephony_helper() -> None:
    body = dm.agent_settings(prompt="p", greeting="Hello", keyterms=["Acme"])
    assert body["audio"]["input"] == {"encoding": "mulaw", "sample_rate": 8000}
    assert body["agent"]["listen"]["provider"]["version"] == "v2"
    parsed = dm.parse_agent_client(dm.settings(body))
    assert isinstance(parsed, dm.Settings) and parsed.body == body
    assert dm.settings_problems({"audio": {}, "agent": {}, "voice": 1}) == ["unknown field 'voice'"]
    with pytest.raises(dm.DeepgramMessageError, match="agent"):
        dm.settings({"audio": {}})


def test_script_from_yaml_and_validation(tmp_path: Path) -> None:
    doc = """
turns:
  - {start_ms: 500, end_ms: 2000, text: "cancel my order", eager_ms: 1700}
agent:
  - at_ms: 400
    user_text: hi
    reply_text: Hello!
    function_call: {name: lookup, arguments: {id: 7}}
faults:
  - {endpoint: flux, at_ms: 3000, kind: drop}
"""
    path = tmp_path / "script.yaml"
    path.write_text(doc)
    script = Script.from_yaml(path)
    assert script == Script.from_yaml(doc)
    assert script.turns == [ScriptedTurn(500, 2000, "cancel my order", eager_ms=1700)]
    step = script.agent[0]
    assert isinstance(step, AgentStep) and step.call is not None
    assert step.call.arguments_json == '{"id":7}'
    assert script.faults == [Fault("flux", 3000, "drop")]
    bad = [
        {"turns": [{"start_ms": 5, "end_ms": 1, "text": "x"}]},
        {"turns": [{"start_ms": 0, "end_ms": 9, "text": "x", "resumed": True}]},
        {"faults": [{"endpoint": "speak", "at_ms": 0, "kind": "stuck"}]},
        {"faults": [{"endpoint": "flux", "at_ms": 0, "kind": "explode"}]},
        {"turns": [{"start_ms": 0, "end_ms": 9, "txt": "x"}]},
        {"scenes": []},
    ]
    for data in bad:
        with pytest.raises(ScriptError):
            Script.from_dict(data)


def test_fake_speech_is_deterministic_and_decodable() -> None:
    audio = tts_audio("Hello, world!", 60)
    assert len(audio) == 60 * 13 * 8
    assert audio == tts_audio("Hello, world!", 60)
    assert tts_text(b"\x01\x02" + audio + audio[:100], 60) == "Hello, world!"
    assert tts_audio("a", 60) != tts_audio("b", 60)
    pcm = tts_audio("Hi", 20, "linear16", 24000)
    assert len(pcm) == 2 * 20 * 24 * 2 and tts_text(pcm, 20, "linear16", 24000) == "Hi"


@pytest.mark.parametrize("gap", [80, 160, 333])
def test_fake_speech_split_by_silence_reads_whole_across_gaps(gap: int) -> None:
    """A playout underrun puts silence mid-word: every cut position, including next to a
    tone's own zero samples (which the silence swallows), reads back as the whole text."""
    text = "Hi.Transferring you now."
    audio = tts_audio(text, 30)
    for pos in range(len(audio)):
        split = b"\xff" * 800 + audio[:pos] + b"\xff" * gap + audio[pos:] + b"\xff" * 100
        assert tts_text(split, 30, across_gaps=True) == text, pos
    assert tts_text(audio[:3000] + b"\xff" * gap + audio[3000:], 30) != text  # strict reading


async def _emulator_on_a_free_port() -> tuple[int, asyncio.Task[None]]:
    """The emulator on a port just found free (and /v1/read on the next one): another test
    worker can take either in between, so a start that finds one taken tries again."""
    for _ in range(5):
        probe = FakeDeepgram()
        await probe.start()
        port = probe.port
        await probe.stop()  # a free port to reuse
        task = asyncio.create_task(serve_forever(port))
        await asyncio.sleep(0.05)
        if not (task.done() and isinstance(task.exception(), OSError)):
            return port, task
    pytest.fail("no two free ports in a row for the emulator")


async def test_emulator_serves_until_cancelled() -> None:
    port, task = await _emulator_on_a_free_port()
    try:
        for _ in range(100):
            try:
                async with connect(
                    f"ws://127.0.0.1:{port}/v1/agent/converse",
                    additional_headers={"Authorization": "Token test-key"},
                ) as ws:
                    assert isinstance(dm.parse_agent_server(await ws.recv()), dm.Welcome)
                    break
            except OSError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("emulator never accepted a connection")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
