"""The Voice Agent client against the fake Deepgram (which enforces the agent's rules)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from telephony.config import Profile
from telephony.deepgram import messages as dm
from telephony.deepgram.agent import AgentClient
from telephony.deepgram.socket import DeepgramClosed
from telephony.session.deepgram_options import agent_settings
from telephony.sim.deepgram_server import (
    AgentStep,
    FakeDeepgram,
    Fault,
    Script,
    ScriptedFunctionCall,
    tts_audio,
)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

KEY = "k"
FRAME = b"\xff" * 160
MS_PER_CHAR = 5
Event = dm.AgentServerEvent | bytes


def profile(**overrides: Any) -> Profile:
    data: dict[str, Any] = {
        "mode": "agent",
        "greeting": None,
        "agent": {
            "think_prompt": "You are Acme's phone assistant.",
            "keyterms": ["Acme"],
            "eot_threshold": 0.8,
            "functions": [
                {
                    "name": "lookup_order",
                    "description": "Find an order",
                    "parameters": {
                        "type": "object",
                        "properties": {"order": {"type": "string"}},
                    },
                    "url": "https://hooks.example.com/orders",
                    "timeout_s": 2,
                }
            ],
        },
    }
    data.update(overrides)
    return Profile.model_validate(data)


def fake(script: Script | None = None, **kw: Any) -> FakeDeepgram:
    opts: dict[str, Any] = {"realtime": False, "speak_ms_per_char": MS_PER_CHAR}
    opts["agent_latency_s"] = 0.01
    return FakeDeepgram(api_key=KEY, script=script, **{**opts, **kw})


class Drain:
    """Consumes events() in the background (as the engine does) into a queue."""

    def __init__(self, client: AgentClient) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(client))

    async def _run(self, client: AgentClient) -> None:
        async for event in client.events():
            await self.queue.put(event)

    async def until(self, done: Callable[[Event], bool], within: float = 5.0) -> list[Event]:
        """Events up to and including the first one `done` accepts."""
        out: list[Event] = []
        async with asyncio.timeout(within):
            while True:
                event = await self.queue.get()
                out.append(event)
                if done(event):
                    return out


@contextlib.asynccontextmanager
async def session(
    dg: FakeDeepgram, body: dict[str, Any], **kw: Any
) -> AsyncIterator[tuple[AgentClient, Drain]]:
    client = AgentClient(dg.url, KEY, body, **kw)
    await client.connect()
    drain = Drain(client)
    try:
        yield client, drain
    finally:
        await client.close()
        await drain.task  # ends cleanly: the close was ours


async def feed(client: AgentClient, frames: int, start_ms: int = 0) -> None:
    for i in range(frames):
        client.send_audio(start_ms + i * 20, FRAME)


def of(cls: type) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, cls)


# --- Settings ---------------------------------------------------------------------------------


def test_settings_for_profile_body() -> None:
    body = agent_settings(profile(greeting="Hi, Acme here."), tags=["t1"])
    fmt = {"encoding": "mulaw", "sample_rate": 8000}
    assert body["audio"] == {"input": fmt, "output": {**fmt, "container": "none"}}
    agent = body["agent"]
    assert agent["listen"]["provider"] == {
        "type": "deepgram",
        "version": "v2",
        "model": "flux-general-en",
        "eot_threshold": 0.8,
        "keyterms": ["Acme"],
    }
    assert agent["think"]["provider"] == {"type": "open_ai", "model": "gpt-4o-mini"}
    assert agent["think"]["prompt"] == "You are Acme's phone assistant."
    assert agent["speak"]["provider"] == {"type": "deepgram", "model": "aura-2-thalia-en"}
    assert agent["greeting"] == "Hi, Acme here."
    assert body["tags"] == ["t1"] and "context" not in agent
    functions = {f["name"]: f for f in agent["think"]["functions"]}
    assert set(functions) == {"end_call", "lookup_order"}  # no transfer without a number
    assert functions["lookup_order"] == {
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
    }  # url and timeout stay ours
    assert functions["end_call"]["parameters"] == {"type": "object", "properties": {}}

    with_transfer = agent_settings(profile(transfer_number="+15551234567"))
    names = [f["name"] for f in with_transfer["agent"]["think"]["functions"]]
    assert names == ["end_call", "transfer_call", "lookup_order"]


def test_hang_up_and_transfer_wait_for_the_end_of_turn_and_profiles_can_opt_in() -> None:
    # Built-ins are never dispatched for a turn the caller resumes; a profile's function is
    # only when its YAML says defer_until_eot: true (Deepgram's default is false).
    body = agent_settings(profile(transfer_number="+15551234567"))
    functions = {f["name"]: f for f in body["agent"]["think"]["functions"]}
    assert functions["end_call"]["defer_until_eot"] is True
    assert functions["transfer_call"]["defer_until_eot"] is True
    assert "defer_until_eot" not in functions["lookup_order"]
    agent = profile().agent
    assert agent is not None
    deferred = agent.functions[0].model_copy(update={"defer_until_eot": True})
    opted = profile(agent={**agent.model_dump(), "functions": [deferred.model_dump()]})
    (_, lookup) = agent_settings(opted)["agent"]["think"]["functions"]
    assert lookup["name"] == "lookup_order" and lookup["defer_until_eot"] is True


def test_settings_for_nova_listen_and_reconnect_context() -> None:
    nova = profile(agent={"think_prompt": "p", "listen_model": "nova-3", "keyterms": ["Zed"]})
    context = [{"type": "History", "role": "user", "content": "hello"}]
    body = agent_settings(nova, context=context)
    provider = body["agent"]["listen"]["provider"]
    assert provider == {"type": "deepgram", "model": "nova-3", "keyterms": ["Zed"]}  # no v2
    assert body["agent"]["context"] == {"messages": context}
    assert "greeting" not in body["agent"]


async def test_fake_accepts_profile_settings_sent_first() -> None:
    body = agent_settings(profile(greeting="Hi.", transfer_number="+15551234567"))
    async with fake() as dg, session(dg, body) as (client, drain):
        events = await drain.until(of(dm.AgentAudioDone))  # the greeting is spoken
        assert isinstance(events[0], dm.SettingsApplied)
        assert client.settings_applied.is_set() and client.request_id
        log = dg.logs("agent")[0]
    await log.wait_closed()
    assert log.received_kinds()[0] == "json:Settings"
    assert log.received_messages(dm.Settings)[0].body == body
    assert log.query == {} and log.auth == "token"
    assert log.close_code == 1000 and log.closed_by == "client"
    assert not log.violations


# --- caller audio -----------------------------------------------------------------------------


async def test_audio_before_settings_applied_is_buffered_then_flushed_in_order() -> None:
    async with fake() as dg:
        client = AgentClient(dg.url, KEY, agent_settings(profile()))
        await feed(client, 10, start_ms=1000)  # before the socket exists
        await client.connect()
        await feed(client, 13, start_ms=1200)  # Settings sent, SettingsApplied not yet read
        assert client.bytes_sent == 0 and not client.settings_applied.is_set()
        drain = Drain(client)
        await drain.until(of(dm.SettingsApplied))
        assert client.bytes_sent == 20 * 160  # flushed before SettingsApplied is handed out
        await feed(client, 7, start_ms=1660)  # live now; 30 frames in all, tail of 2
        await client.close()
        await drain.task
        log = dg.logs("agent")[0]
        await log.wait_closed()
    assert client.first_audio_ms == 1000 and client.dropped_bytes == 0
    assert log.received_kinds()[0] == "json:Settings"
    audio = [d for _, k, d in log.received if k == "audio"]
    assert audio == [640] * 7 + [320]  # 80 ms messages, the tail sent at close
    assert log.audio_bytes == 30 * 160  # counted after SettingsApplied: nothing lost
    assert not log.violations  # in particular no "audio before SettingsApplied"


async def test_early_audio_is_bounded_oldest_dropped() -> None:
    async with fake() as dg:
        client = AgentClient(dg.url, KEY, agent_settings(profile()), max_buffered_ms=100)
        await client.connect()
        await feed(client, 20)  # 400 ms before SettingsApplied; room for 100 ms
        drain = Drain(client)
        await drain.until(of(dm.SettingsApplied))
        await client.close()
        await drain.task
        log = dg.logs("agent")[0]
        await log.wait_closed()
    assert client.dropped_bytes == 15 * 160
    assert client.first_audio_ms == 15 * 20  # the newest 5 frames were kept
    assert log.audio_bytes == 5 * 160 and not log.violations


# --- conversation -----------------------------------------------------------------------------


async def test_scripted_step_arrives_through_events() -> None:
    reply = "We open at nine."
    script = Script(agent=[AgentStep(200, "when do you open", reply, speech_ms=200)])
    async with fake(script) as dg, session(dg, agent_settings(profile())) as (c, drain):
        await drain.until(of(dm.SettingsApplied))
        await feed(c, 30)  # 600 ms: the step starts at 200 and the caller stops at 400
        events = await drain.until(of(dm.LatencyReport))
        log = dg.logs("agent")[0]
    typed = [e for e in events if not isinstance(e, bytes)]
    assert [type(e) for e in typed] == [
        dm.UserStartedSpeaking,
        dm.ConversationText,
        dm.History,  # the server's copy of each message follows it
        dm.AgentThinking,
        dm.AgentStartedSpeaking,
        dm.ConversationText,
        dm.History,
        dm.AgentAudioDone,
        dm.LatencyReport,  # after the reply it measures
    ]
    assert typed[1] == dm.ConversationText("user", "when do you open")
    assert typed[2] == dm.History(role="user", content="when do you open")
    assert typed[4].ttt_latency == 0.01  # type: ignore[union-attr]
    assert typed[5] == dm.ConversationText("assistant", reply)
    assert typed[6] == dm.History(role="assistant", content=reply)
    assert typed[8].ttt_token_latency == 0.01  # type: ignore[union-attr]
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, bytes))
    assert events[first_audio - 2 : first_audio] == typed[5:7]  # audio after text and History
    audio = b"".join(e for e in events if isinstance(e, bytes))
    assert audio == tts_audio(reply, MS_PER_CHAR)  # μ-law 8 kHz, as Settings asked
    assert len(audio) == len(reply) * MS_PER_CHAR * 8
    assert not log.violations


async def test_function_call_round_trip() -> None:
    call = ScriptedFunctionCall("lookup_order", {"order": "42"})
    step = AgentStep(100, "where is order 42", "Checking.", call, "It ships today.", speech_ms=100)
    body = agent_settings(profile())
    async with fake(Script(agent=[step])) as dg, session(dg, body) as (client, drain):
        await drain.until(of(dm.SettingsApplied))
        await feed(client, 20)
        events = await drain.until(of(dm.FunctionCallRequest))
        request = events[-1]
        assert isinstance(request, dm.FunctionCallRequest)
        (fc,) = request.functions
        assert fc.name == "lookup_order" and fc.client_side
        assert orjson.loads(fc.arguments) == {"order": "42"}
        await client.function_result(fc.id, fc.name, '{"status":"shipped"}')
        events = await drain.until(of(dm.AgentAudioDone))
        assert dm.ConversationText("assistant", "It ships today.") in events
        log = dg.logs("agent")[0]
    responses = log.received_messages(dm.FunctionCallResponse)
    assert responses == [dm.FunctionCallResponse(fc.id, "lookup_order", '{"status":"shipped"}')]
    assert not log.violations


async def test_prompt_update_and_injections() -> None:
    text_step = AgentStep(None, "I pressed 5", "You pressed five.")
    body = agent_settings(profile())
    async with fake(Script(agent=[text_step])) as dg, session(dg, body) as (client, drain):
        await client.update_prompt("Be brief.")  # waits for SettingsApplied by itself
        await drain.until(of(dm.PromptUpdated))
        await client.inject_user_message("I pressed 5")
        events = await drain.until(of(dm.AgentAudioDone))
        assert dm.ConversationText("assistant", "You pressed five.") in events
        await client.inject_agent_message("Are you still there?")
        events = await drain.until(of(dm.AgentAudioDone))
        assert dm.ConversationText("assistant", "Are you still there?") in events
        log = dg.logs("agent")[0]
    kinds = log.received_kinds()
    assert kinds.index("json:UpdatePrompt") > kinds.index("json:Settings")
    assert log.received_messages(dm.UpdatePrompt) == [dm.UpdatePrompt("Be brief.")]
    assert not log.violations


# --- keep-alive -------------------------------------------------------------------------------


async def test_keepalive_only_while_audio_is_idle() -> None:
    async with fake(idle_timeout_s=3.0) as dg:
        body = agent_settings(profile())
        # Idle 1.5 s before a KeepAlive: the fake calls audio "flowing" for 1 s after it *read*
        # the last chunk, which a loaded loop reads late (at 1.0 s the two clocks raced).
        async with session(dg, body, keepalive_idle_s=1.5) as (client, drain):
            await drain.until(of(dm.SettingsApplied))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(75):  # 1.5 s of audio in real time, as Twilio sends it
                client.send_audio(i * 20, FRAME)
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
            assert client.keepalives_sent == 0
            await asyncio.sleep(3.6)  # audio stopped: longer than the fake's idle timeout
            assert client.keepalives_sent >= 1
            assert not drain.task.done()  # no CLIENT_MESSAGE_TIMEOUT, no close
            log = dg.logs("agent")[0]
            assert not log.closed
    kinds = log.received_kinds()
    streamed = [i for i, k in enumerate(kinds) if k == "audio"][:18]  # 75 frames: 18 chunks
    assert "json:KeepAlive" not in kinds[: streamed[-1]]  # none while streaming
    assert "json:KeepAlive" in kinds[streamed[-1] :]
    assert not log.sent_messages(dm.AgentError)
    assert not log.violations


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        (Fault("agent", 100, "error"), "INTERNAL_SERVER_ERROR"),
        (Fault("agent", 100, "drop"), "closed"),
        (Fault("agent", 100, "close", code=1000, reason="bye"), "closed: 1000 bye"),
    ],
    ids=["error", "drop", "clean-close"],
)
async def test_error_or_unasked_close_is_fatal(fault: Fault, match: str) -> None:
    async with fake(Script(faults=[fault])) as dg:
        client = AgentClient(dg.url, KEY, agent_settings(profile()))
        await client.connect()
        events: list[Event] = []
        with pytest.raises(DeepgramClosed, match=match):
            async with asyncio.timeout(5):
                async for event in client.events():
                    events.append(event)
                    if isinstance(event, dm.SettingsApplied):
                        await feed(client, 10)
        assert dm.SettingsApplied() in events
        await client.close()  # tolerates the socket being gone
        await client.close()


async def test_our_close_ends_events_quietly() -> None:
    async with fake() as dg:
        client = AgentClient(dg.url, KEY, agent_settings(profile()))
        await client.connect()
        drain = Drain(client)
        await drain.until(of(dm.SettingsApplied))
        await client.close()
        await asyncio.wait_for(drain.task, 2)  # no DeepgramClosed
        client.send_audio(0, FRAME)  # after close: dropped, not raised


async def test_no_welcome_is_fatal() -> None:
    async def mute(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(mute, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = AgentClient(
            f"ws://127.0.0.1:{port}", KEY, agent_settings(profile()), welcome_timeout_s=0.2
        )
        with pytest.raises(DeepgramClosed, match="no Welcome"):
            await client.connect()
        await client.close()


def test_invalid_settings_body_fails_before_connecting() -> None:
    with pytest.raises(dm.DeepgramMessageError, match="unknown field"):
        AgentClient("ws://127.0.0.1:1", KEY, {**agent_settings(profile()), "bogus": 1})
