"""Voice Agent mode end to end: the real app with the fake agent, Twilio caller and REST."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from telephony.deepgram import messages as dm
from telephony.deepgram.agent import AgentClient
from telephony.demo import OfflineCall, run_offline_call
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import AgentStep, Fault, Script, ScriptedFunctionCall
from telephony.sim.twilio_caller import PauseStream

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py): at 8x a loaded
# machine connected the agent socket so late that the caller's first step cut the greeting before
# it began (the History then lacked it)

MS_PER_CHAR = 30

NUMBERS = """\
numbers:
  "+15550005000": agent
  "+15550006000": quiet
profiles:
  quiet:
    mode: agent
    greeting: "Hello."
    transfer_number: "+15557770000"
    agent:
      think_prompt: "Test."
      silence_nudge_s: 1
      nudge_message: "Are you still there?"
      session_cap_action: transfer
  agent:
    mode: agent
    greeting: "Hi there."
    transfer_number: "+15557770000"
    agent:
      think_prompt: "You are a test agent."
      reply_timeout_s: 1.5
      functions:
        - name: check_order
          description: "Look up an order."
          parameters: {type: object, properties: {order: {type: string}}}
          url: "http://127.0.0.1:9/unreachable"
          timeout_s: 0.5
"""


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


async def agent_call(numbers: Path, steps: list[AgentStep], **kw) -> OfflineCall:
    kw.setdefault("max_call_ms", 8_000)
    kw.setdefault("number", "+15550005000")
    options = {"speak_ms_per_char": MS_PER_CHAR, "agent_latency_s": 0.1}
    options.update(kw.pop("deepgram_options_extra", {}))
    return await run_offline_call(
        mode="agent",
        script=Script(agent=steps),
        config_path=numbers,
        deepgram_options=options,
        **kw,
    )


def agent_log(result: OfflineCall):
    return next(c for c in result.deepgram.connections if c.endpoint == "agent")


def turns_of(result: OfflineCall) -> list[tuple[str, str]]:
    return [(t["role"], t["text"]) for t in result.as_json()["turns"]]


async def test_full_agent_call_with_end_call_after_the_goodbye(numbers: Path) -> None:
    result = await agent_call(
        numbers,
        [
            AgentStep(at_ms=1500, user_text="What are your hours?", reply_text="Nine to five."),
            AgentStep(
                at_ms=3500,
                user_text="Thanks, bye.",
                reply_text="",
                function_call=ScriptedFunctionCall("end_call", '{"reason": "done"}'),
                reply_after_function="Goodbye!",
            ),
        ],
    )
    out = result.as_json()
    assert out["mode"] == "agent"
    assert turns_of(result) == [
        ("bot", "Hi there."),
        ("caller", "What are your hours?"),
        ("bot", "Nine to five."),
        ("caller", "Thanks, bye."),
        ("bot", "Goodbye!"),
    ]
    for bot in out["turns"][0::2]:
        assert bot["heard"] == bot["text"] and not bot["interrupted"]
    meta = result.summary.transcript.turns[2].meta
    assert {"total_latency", "tts_latency", "ttt_latency"} <= set(meta)  # AgentStartedSpeaking
    # Settings came first, with μ-law both ways; the fake saw no rule broken.
    log = agent_log(result)
    assert log.received_kinds()[0] == "json:Settings"
    settings = log.received_messages(dm.Settings)[0]
    assert settings.body["audio"]["input"] == {"encoding": "mulaw", "sample_rate": 8000}
    assert settings.body["audio"]["output"]["container"] == "none"
    assert not log.violations
    # end_call: answered, then the hang-up only after the goodbye had played.
    responses = log.received_messages(dm.FunctionCallResponse)
    assert [r.name for r in responses] == ["end_call"]
    assert [r.form for r in result.rest.requests] == [{"Status": "completed"}]
    assert tts_text(result.caller.heard, MS_PER_CHAR).endswith("Goodbye!")
    stop = next(e for e in result.caller.events if e.kind == "stop")
    assert stop.ms >= max(m.echoed_at_ms for m in result.caller.marks if not m.cleared)
    assert "hangup" in [e["kind"] for e in out["events"]]  # the timeline still says so
    assert out["end_reason"] == "bot-hangup"  # issue 19: not "stop", as a caller hang-up was


async def test_barge_in_clears_and_records_heard_text(numbers: Path) -> None:
    long_reply = "I can check an order for you, tell you our opening hours, or connect you."
    result = await agent_call(
        numbers,
        [
            AgentStep(at_ms=1000, user_text="Help me.", reply_text=long_reply),
            AgentStep(at_ms=2700, user_text="Stop, just the hours.", reply_text="Nine to five."),
        ],
    )
    turns = result.as_json()["turns"]
    reply = next(t for t in turns if t["text"] == long_reply)
    assert reply["interrupted"] is True
    assert result.caller.clears, "Twilio clear was not sent"
    # Heard text is a strict prefix of the reply, as far as the echoed marks go.
    assert long_reply.startswith(reply["heard"]) and reply["heard"] != long_reply
    heard_audio_text = tts_text(result.caller.heard, MS_PER_CHAR)
    assert long_reply not in heard_audio_text  # the caller did not hear all of it
    assert "barge-in" in [e["kind"] for e in result.as_json()["events"]]
    assert turns_of(result)[-1] == ("bot", "Nine to five.")


async def test_end_call_cancelled_by_barge_in(numbers: Path) -> None:
    result = await agent_call(
        numbers,
        [
            AgentStep(
                at_ms=1000,
                user_text="Bye.",
                reply_text="",
                function_call=ScriptedFunctionCall("end_call", "{}"),
                reply_after_function="Goodbye, and thank you very much for calling us today.",
            ),
            AgentStep(at_ms=2600, user_text="Wait!", reply_text="Yes?"),
        ],
        max_call_ms=6_000,
    )
    assert result.rest.requests == []  # the goodbye was cut off: the line stays open
    assert turns_of(result)[-1] == ("bot", "Yes?")
    assert "action-cancelled" in [e["kind"] for e in result.as_json()["events"]]
    assert result.as_json()["end_reason"] == "caller-hangup"  # the bot never hung up


async def test_function_calls_unknown_and_failing_get_error_responses(numbers: Path) -> None:
    result = await agent_call(
        numbers,
        [
            AgentStep(
                at_ms=1000,
                user_text="Weather?",
                reply_text="",
                function_call=ScriptedFunctionCall("check_weather", "{}"),
                reply_after_function="I cannot check the weather.",
            ),
            AgentStep(
                at_ms=3000,
                user_text="Order 42?",
                reply_text="",
                function_call=ScriptedFunctionCall("check_order", '{"order": "42"}'),
                reply_after_function="The order system is down.",
            ),
        ],
    )
    responses = agent_log(result).received_messages(dm.FunctionCallResponse)
    assert [r.name for r in responses] == ["check_weather", "check_order"]
    assert "unknown function check_weather" in responses[0].content
    assert "error" in responses[1].content  # the webhook was unreachable
    bot = [t for r, t in turns_of(result) if r == "bot"]
    assert bot[-2:] == ["I cannot check the weather.", "The order system is down."]


async def test_audio_before_settings_applied_is_not_lost_and_no_keepalive_while_streaming(
    numbers: Path,
) -> None:
    result = await agent_call(numbers, [], max_call_ms=3_000)
    log = agent_log(result)
    assert not log.violations  # no audio before SettingsApplied, no KeepAlive while streaming
    assert "json:KeepAlive" not in log.received_kinds()
    assert log.audio_bytes == result.caller.sent_frames * 160


async def test_silent_caller_is_nudged_after_playback(numbers: Path) -> None:
    result = await agent_call(numbers, [], number="+15550006000", max_call_ms=3_500)
    injected = agent_log(result).received_messages(dm.InjectAgentMessage)
    assert [m.message for m in injected][:1] == ["Are you still there?"]
    assert "nudge" in [e["kind"] for e in result.as_json()["events"]]
    # The fake speaks the injected message: the caller heard the nudge.
    assert "Are you still there?" in tts_text(result.caller.heard, MS_PER_CHAR)


async def test_session_cap_transfers_before_deepgram_cuts_the_session(numbers: Path) -> None:
    result = await agent_call(
        numbers,
        [],
        number="+15550006000",
        max_call_ms=6_000,
        settings_overrides={"TELEPHONY_AGENT_SESSION_CAP_S": 61.5},  # acts at 1.5 s
    )
    events = [e["kind"] for e in result.as_json()["events"]]
    assert "session-cap" in events
    # The warning line played, then the transfer went through REST.
    assert "connect you with a colleague" in tts_text(result.caller.heard, MS_PER_CHAR)
    assert len(result.rest.requests) == 1
    assert "<Dial>+15557770000</Dial>" in result.rest.requests[0].form["Twiml"]
    assert result.as_json()["end_reason"] == "transferred"


def events_of(result: OfflineCall, kind: str) -> list[dict[str, Any]]:
    return [e for e in result.as_json()["events"] if e["kind"] == kind]


async def test_agent_reconnect_keeps_the_conversation_going(numbers: Path) -> None:
    # An agent that sends no History: the context is our transcript, as History entries.
    result = await agent_call(
        numbers,
        [AgentStep(at_ms=1000, user_text="What are your hours?", reply_text="Nine to five.")],
        max_call_ms=7_000,
        faults=[Fault(endpoint="agent", at_ms=2500, kind="drop")],
        deepgram_options_extra={"agent_history": False},
    )
    logs = [c for c in result.deepgram.connections if c.endpoint == "agent"]
    assert len(logs) == 2
    second = logs[1].received_messages(dm.Settings)[0].body
    assert "greeting" not in second["agent"]  # the caller already heard it
    context = second["agent"]["context"]["messages"]
    assert {"type": "History", "role": "user", "content": "What are your hours?"} in context
    assert {"type": "History", "role": "assistant", "content": "Nine to five."} in context
    assert all(m["type"] == "History" for m in context)  # Deepgram requires it on every entry
    [reconnect] = [e for e in events_of(result, "agent-connection") if e["reason"] != "start"]
    assert reconnect["source"] == "transcript"
    # The new socket plays the script again: the conversation went on after the drop.
    assert turns_of(result).count(("bot", "Nine to five.")) == 2
    assert not logs[1].violations


async def test_slow_agent_reply_is_prompted_so_the_caller_hears_something(numbers: Path) -> None:
    # The agent takes 3 s to answer; after 1.5 s of nothing we make it say something.
    result = await run_offline_call(
        mode="agent",
        number="+15550005000",
        script=Script(agent=[AgentStep(at_ms=1500, user_text="Hello?", reply_text="Hi!")]),
        config_path=numbers,
        max_call_ms=6_000,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR, "speak_first_byte_ms": 3000},
    )
    assert "reply-watchdog" in [e["kind"] for e in result.as_json()["events"]]
    injected = agent_log(result).received_messages(dm.InjectAgentMessage)
    assert "Sorry, just a moment." in [m.message for m in injected]


async def test_caller_silence_keeps_the_agent_alive_without_keepalives(numbers: Path) -> None:
    # Twilio keeps sending (silent) frames: that is audio, so no KeepAlive may be sent, and the
    # fake's idle timeout (scaled to 3 s; real ~10 s) must never fire during 5 s of silence.
    result = await agent_call(
        numbers, [], max_call_ms=5_000, deepgram_options_extra={"idle_timeout_s": 3.0}
    )
    log = agent_log(result)
    assert "json:KeepAlive" not in log.received_kinds()
    assert not log.violations and len([c for c in result.deepgram.connections]) >= 1
    assert log.closed_by == "client"  # closed by us at the end, not by the idle timeout


async def test_paused_stream_gets_keepalives_only_while_idle(
    numbers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No frames at all for 4 s: KeepAlives (scaled: after 1.5 s idle; real 8 s) keep the
    # session open past the fake's 3 s idle timeout, and none is sent while audio flows. (Not
    # 1 s: that is the fake's own "audio is flowing" window, and a stall that delays the last
    # frame on its way made a KeepAlive on time read as early.)
    monkeypatch.setitem(AgentClient.__init__.__kwdefaults__, "keepalive_idle_s", 1.5)
    result = await agent_call(
        numbers,
        [],
        max_call_ms=7_000,
        timeline=[PauseStream(at_ms=1500, ms=4000)],
        deepgram_options_extra={"idle_timeout_s": 3.0},
    )
    agents = [c for c in result.deepgram.connections if c.endpoint == "agent"]
    assert len(agents) == 1, "the agent session was lost during the pause"
    kinds = agents[0].received_kinds()
    assert "json:KeepAlive" in kinds
    assert not agents[0].violations  # includes "KeepAlive while audio flows"


async def test_agent_reconnect_hands_the_servers_history_to_the_new_socket(numbers: Path) -> None:
    # The server's History is what its LLM saw: function calls included, which our transcript
    # cannot tell. A reconnect's Settings carry that copy.
    result = await agent_call(
        numbers,
        [
            AgentStep(
                at_ms=1000,
                user_text="Order 42?",
                reply_text="",
                function_call=ScriptedFunctionCall("check_order", '{"order": "42"}'),
                reply_after_function="The order system is down.",
            )
        ],
        max_call_ms=7_000,
        faults=[Fault(endpoint="agent", at_ms=4000, kind="drop")],
    )
    first, second = [c for c in result.deepgram.connections if c.endpoint == "agent"]
    [response] = first.received_messages(dm.FunctionCallResponse)
    context = second.received_messages(dm.Settings)[0].body["agent"]["context"]["messages"]
    assert context == [
        {"type": "History", "role": "assistant", "content": "Hi there."},
        {"type": "History", "role": "user", "content": "Order 42?"},
        {
            "type": "History",
            "function_calls": [
                {
                    "id": response.id,
                    "name": "check_order",
                    "client_side": True,
                    "arguments": '{"order": "42"}',
                    "response": response.content,
                }
            ],
        },
        {"type": "History", "role": "assistant", "content": "The order system is down."},
    ]
    [reconnect] = [e for e in events_of(result, "agent-connection") if e["reason"] != "start"]
    assert reconnect["source"] == "server" and reconnect["context"] == 4
    assert not first.violations and not second.violations  # the fake checks the entry types


@contextlib.asynccontextmanager
async def slow_webhook(answer_after_s: float) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP server that answers each request `answer_after_s` after reading it."""
    requests: list[bytes] = []
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), answer_after_s)
            body = b'{"booked": true}'
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            writer.write(head + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/book", requests
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_cancelled_function_call_is_never_answered(tmp_path: Path) -> None:
    # The agent dispatches check_order speculatively, then the caller goes on talking and the
    # agent cancels it (0.8 s later): the webhook, still running, is abandoned, so its answer
    # (at 1.5 s) never becomes a FunctionCallResponse. The conversation carries on.
    async with slow_webhook(answer_after_s=1.5) as (url, requests):
        path = tmp_path / "numbers.yaml"
        path.write_text(
            NUMBERS.replace("http://127.0.0.1:9/unreachable", url).replace(
                "timeout_s: 0.5", "timeout_s: 10"
            )
        )
        result = await agent_call(
            path,
            [
                AgentStep(  # 2 s in: the greeting has played, even on a loaded 4x clock
                    at_ms=2000,
                    user_text="Order 42 please",
                    reply_text="",
                    function_call=ScriptedFunctionCall("check_order", '{"order": "42"}'),
                    reply_after_function="never said",
                    cancel_call_ms=800,
                ),
                AgentStep(at_ms=4000, user_text="Actually, never mind.", reply_text="Okay."),
            ],
            max_call_ms=7_000,
        )
        assert len(requests) == 1 and requests[0].startswith(b"POST /book")  # it was running
    log = agent_log(result)
    assert [m.functions[0].name for m in log.sent_messages(dm.FunctionCallCancelled)] == [
        "check_order"
    ]
    assert log.received_messages(dm.FunctionCallResponse) == []  # nothing on the wire
    assert not log.violations
    [cancelled] = events_of(result, "function-cancelled")
    assert cancelled["name"] == "check_order" and cancelled["stopped"] is True
    assert "action" not in cancelled
    bot = [t for r, t in turns_of(result) if r == "bot"]
    assert bot == ["Hi there.", "Okay."]


async def test_cancelled_end_call_does_not_hang_up(numbers: Path) -> None:
    # end_call is answered at once (the agent is to say goodbye); when the agent then cancels
    # it (the caller went on), the hang-up it asked for is called off.
    result = await agent_call(
        numbers,
        [
            AgentStep(
                at_ms=1000,
                user_text="Bye.",
                reply_text="",
                function_call=ScriptedFunctionCall("end_call", "{}"),
                reply_after_function="Goodbye!",
                cancel_call_ms=800,
            ),
            AgentStep(at_ms=3000, user_text="Wait, one more thing.", reply_text="Yes?"),
        ],
        max_call_ms=7_000,
    )
    assert result.rest.requests == []  # no hang-up, not even after the 3 s grace
    [cancelled] = events_of(result, "function-cancelled")
    assert cancelled["name"] == "end_call" and cancelled["action"] == "hangup"
    assert cancelled["stopped"] is False  # it had been answered
    assert "hangup" not in [e["kind"] for e in result.as_json()["events"]]
    assert turns_of(result)[-1] == ("bot", "Yes?")
    assert not agent_log(result).violations


async def test_latency_report_lands_on_the_bot_turn_it_measures(numbers: Path) -> None:
    result = await agent_call(
        numbers,
        [AgentStep(at_ms=1000, user_text="What are your hours?", reply_text="Nine to five.")],
        max_call_ms=4_000,
    )
    greeting, caller, reply = result.summary.transcript.turns  # type: ignore[union-attr]
    assert (caller.role, reply.text) == ("caller", "Nine to five.")
    # The fake: stt 50 ms, ttt 100 ms (agent_latency_s), tts 100 ms (first byte).
    assert reply.meta["latency_report"] == {
        "stt_ms": 50.0,
        "ttt_token_ms": 100.0,
        "ttt_text_ms": 100.0,
        "tts_ms": 100.0,
        "total_ms": 250.0,
    }
    assert "latency_report" not in greeting.meta  # no caller turn to measure from
    assert events_of(result, "latency-report") == []
