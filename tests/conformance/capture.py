"""What crosses the wire in offline calls in all three modes and in direct client sessions.

Every text frame the fakes receive, every message they send and every URL's query parameters,
per endpoint; the runs provoke every server message type the fakes can send. `conftest.py`
runs the capture once per session (per xdist worker); the client helpers here also
drive the fidelity tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

import routes.app
from telephony.config import load_config
from telephony.deepgram import messages as dm
from telephony.deepgram.agent import AgentClient
from telephony.deepgram.connection import NOVA_KEEPALIVE, KeepAliveSpec, open_socket
from telephony.deepgram.flux import FluxClient, FluxOptions
from telephony.deepgram.listen import ListenClient, ListenOptions
from telephony.deepgram.speak import FlushBudget, SpeakClient
from telephony.demo import OfflineCall, run_offline_call
from telephony.session.deepgram_options import agent_settings
from telephony.sim.deepgram.base import Session
from telephony.sim.deepgram_server import (
    AgentStep,
    FakeDeepgram,
    Fault,
    Script,
    ScriptedFunctionCall,
    ScriptedTurn,
)
from telephony.sim.twilio_caller import PauseStream

KEY = "conformance-key"
FRAME = b"\xff" * 160  # 20 ms of μ-law silence

NUMBERS = """\
numbers:
  "+15550001000": flux
  "+15550002000": eager
  "+15550005000": agent
  "+15550007000": nova
profiles:
  flux:
    mode: flux
    greeting: "Hi."
    responder:
      type: scripted
      rules:
        - {pattern: "hours", reply: "We are open. Nine to five on weekdays, closed weekends."}
        - {pattern: "bye", reply: "Goodbye!", action: hangup}
      fallback: "Sorry?"
    flux: {keyterms: [Acme], eot_timeout_ms: 3000}
  eager:
    mode: flux
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: test-model
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
    flux: {eot_threshold: 0.7, eager_eot_threshold: 0.5}
  agent:
    mode: agent
    greeting: "Hi there."
    transfer_number: "+15557770000"
    agent:
      think_prompt: "You are a test agent."
      keyterms: [Acme]
  nova:
    mode: transcribe
    transcribe:
      dial: "+15559990000"
      smart_format: true
      punctuate: true
      diarize: true
      numerals: true
      profanity_filter: true
      redact: [pci, ssn]
      keyterms: [Acme]
      tags: [desk]
"""
# Test stimuli our clients never send (they provoke the fakes' Error messages).
BOGUS = '{"type":"Bogus"}'


@dataclass
class Wire:
    """What crossed the wire in the capture runs, per endpoint (decoded JSON)."""

    sent: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    received: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    queries: dict[str, list[dict[str, list[str]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    calls: dict[str, OfflineCall] = field(default_factory=dict)


@contextlib.contextmanager
def _recording_client_text(into: list[tuple[str, str]]) -> Iterator[None]:
    """Every text frame the fakes receive, exactly as it came (their logs keep it parsed)."""
    parse = Session._parse

    def recording(self: Session, text: str, now: float) -> Any:
        into.append((self.endpoint, text))
        return parse(self, text, now)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Session, "_parse", recording)
        yield


async def collect_events(events: Any, into: list[Any]) -> None:
    with contextlib.suppress(Exception):
        async for event in events:
            into.append(event)


async def until(events: list[Any], predicate: Callable[[Any], bool], within: float = 5) -> Any:
    async with asyncio.timeout(within):
        while not any(predicate(e) for e in events):  # noqa: ASYNC110 - a reader task fills it
            await asyncio.sleep(0.01)
    return next(e for e in events if predicate(e))


def is_turn(event: str, trigger: str | None = None) -> Callable[[Any], bool]:
    return lambda e: (
        isinstance(e, dm.TurnInfo)
        and e.event == event
        and (trigger is None or e.trigger == trigger)
    )


async def _flux_session(fakes: list[FakeDeepgram]) -> None:
    """Configure (applied and refused), a turn ended by eot_timeout_ms and one by ForceEndTurn,
    then an Error on a second connection."""
    script = Script(
        turns=[
            ScriptedTurn(200, 1400, "one two three", eager_ms=600),  # words end at 600 ms
            ScriptedTurn(1600, 3000, "four five six"),
        ]
    )
    fake = FakeDeepgram(api_key=KEY, script=script)
    fakes.append(fake)
    async with fake:
        options = FluxOptions(eot_timeout_ms=500, keyterms=("Acme",), tag="conformance")
        client = FluxClient(fake.url, KEY, options)
        await client.connect()
        events: list[Any] = []
        reader = asyncio.create_task(collect_events(client.events(), events))
        await client.configure(eot_threshold=0.8, keyterms=["Acme", "Roadrunner"])
        await until(events, lambda e: isinstance(e, dm.ConfigureSuccess))
        await client.configure(language_hints=["fr"])  # flux-general-en: refused
        await until(events, lambda e: isinstance(e, dm.ConfigureFailure))
        await client.force_end_turn()  # no turn yet: a Warning
        await until(events, lambda e: isinstance(e, dm.FluxWarning))
        for i in range(100):  # 2 s: the first turn times out, the second is open
            client.send_audio(i * 20, FRAME)
        await until(events, lambda e: is_turn("StartOfTurn")(e) and e.turn_index == 1)
        await client.force_end_turn()
        await until(events, is_turn("EndOfTurn", "manual"))
        await client.close()
        await reader
    failing = FakeDeepgram(api_key=KEY, script=Script(faults=[Fault("flux", 100, "error")]))
    fakes.append(failing)
    async with failing:
        client = FluxClient(failing.url, KEY, FluxOptions())
        await client.connect()
        events = []
        reader = asyncio.create_task(collect_events(client.events(), events))
        for i in range(10):
            client.send_audio(i * 20, FRAME)
        await asyncio.wait_for(reader, 5)  # DeepgramClosed on the Error ends it
        await client.abort()


async def _speak_session(fakes: list[FakeDeepgram]) -> None:
    """Speak, Flush, a refused Flush (Warning), Clear and Close."""
    fake = FakeDeepgram(api_key=KEY, flush_limit=1, speak_ms_per_char=1)
    fakes.append(fake)
    async with fake:
        client = SpeakClient(fake.url, KEY, "aura-2-thalia-en", budget=FlushBudget(limit=5))
        await client.connect()
        events: list[Any] = []
        reader = asyncio.create_task(collect_events(client.events(), events))
        await client.speak("Hello there.")
        await client.flush(force=True)
        await until(events, lambda e: isinstance(e, dm.Flushed))
        await client.speak("And again.")
        await client.flush(force=True)  # over the fake's limit of 1: a Warning
        await until(events, lambda e: isinstance(e, dm.SpeakWarning))
        await client.clear()
        await until(events, lambda e: isinstance(e, dm.Cleared))
        await client.close()
        await reader


async def _agent_session(fakes: list[FakeDeepgram], numbers: Path) -> None:
    """Mid-call control messages, an InjectionRefused, a Warning and an Error."""
    fake = FakeDeepgram(api_key=KEY)
    fakes.append(fake)
    profile = load_config(numbers).profiles["agent"]
    async with fake:
        client = AgentClient(fake.url, KEY, agent_settings(profile, tags=["conformance"]))
        await client.connect()
        events: list[Any] = []
        reader = asyncio.create_task(collect_events(client.events(), events))
        await client.settings_applied.wait()
        await until(events, lambda e: isinstance(e, dm.AgentStartedSpeaking))  # the greeting
        await client.inject_agent_message("One moment.")  # while it speaks: refused
        await until(events, lambda e: isinstance(e, dm.InjectionRefused))
        await client.inject_agent_message("Still there?", behavior="queue")
        await client.update_prompt("Be terse.")
        await until(events, lambda e: isinstance(e, dm.PromptUpdated))
        voice = {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}
        await client.ws.send(dm.update_speak(voice))
        await until(events, lambda e: isinstance(e, dm.SpeakUpdated))
        await client.ws.send(dm.force_end_turn())  # Flux listen, nobody speaking: ignored
        await client.inject_user_message("Hello?")
        await until(events, lambda e: isinstance(e, dm.ConversationText) and e.role == "user")
        await client.ws.send(BOGUS)
        await asyncio.wait_for(reader, 5)  # Error UNPARSABLE_CLIENT_MESSAGE, then the close
        await client.close()
    nova_listen = FakeDeepgram(api_key=KEY)
    fakes.append(nova_listen)
    async with nova_listen:  # ForceEndTurn without Flux listening: a Warning
        body = dm.agent_settings(prompt="p", listen_model="nova-3", keyterms=["Acme"])
        client = AgentClient(nova_listen.url, KEY, body)
        await client.connect()
        events = []
        reader = asyncio.create_task(collect_events(client.events(), events))
        await client.settings_applied.wait()
        await client.ws.send(dm.force_end_turn())
        await until(events, lambda e: isinstance(e, dm.AgentWarning))
        await client.close()
        await reader


async def _nova_session(fakes: list[FakeDeepgram]) -> None:
    """A KeepAlive while idle, then an Error for a message Nova cannot parse."""
    fake = FakeDeepgram(api_key=KEY, script=Script(turns=[ScriptedTurn(100, 600, "Hi, there.")]))
    fakes.append(fake)
    async with fake:
        client = ListenClient(fake.url, KEY, ListenOptions(tags=("conformance",)))
        await client.connect()
        events: list[Any] = []
        reader = asyncio.create_task(collect_events(client.events(), events))
        for i in range(90):  # the turn, then utterance_end_ms (1 s) more
            client.send_audio(i * 20, FRAME)
        await until(events, lambda e: isinstance(e, dm.UtteranceEnd))
        await client.finish()
        await reader
    failing = FakeDeepgram(api_key=KEY)
    fakes.append(failing)
    async with failing:
        ws = await open_socket(f"{failing.url}/v1/listen?model=nova-3", KEY)
        await ws.send(BOGUS)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.recv(), 5)
        await ws.close()


async def capture(numbers: Path) -> Wire:
    wire = Wire()
    texts: list[tuple[str, str]] = []
    fakes: list[FakeDeepgram] = []
    fast = {"speak_ms_per_char": 30}
    llm = {"first_token_delay_ms": 100, "tokens_per_s": 400}
    with _recording_client_text(texts), pytest.MonkeyPatch.context() as mp:
        # Scaled keep-alive rules, so short calls idle long enough to send KeepAlives.
        mp.setitem(AgentClient.__init__.__kwdefaults__, "keepalive_idle_s", 0.5)
        mp.setattr(
            "telephony.deepgram.listen.NOVA_KEEPALIVE", KeepAliveSpec(NOVA_KEEPALIVE.rule, 0.3)
        )
        # The four calls are independent (each has its own fakes and app): run together, but
        # one app's start-up migrations at a time (alembic's module-level context is shared).
        lock = asyncio.Lock()
        migrate = routes.app.upgrade

        async def one_at_a_time(*args: Any, **kwargs: Any) -> None:
            async with lock:
                await migrate(*args, **kwargs)

        mp.setattr(routes.app, "upgrade", one_at_a_time)
        calls = await asyncio.gather(
            # Flux mode: a question, a barge-in during the answer, goodbye and hang-up.
            run_offline_call(
                number="+15550001000",
                script=Script(
                    turns=[
                        ScriptedTurn(start_ms=1000, end_ms=1800, text="What are your hours?"),
                        ScriptedTurn(start_ms=2700, end_ms=3300, text="Sorry, goodbye."),
                    ]
                ),
                config_path=numbers,
                deepgram_options=fast,
                llm_options=llm,
                max_call_ms=8_000,
            ),
            # Eager end of turn, then the caller goes on (EagerEndOfTurn, TurnResumed).
            run_offline_call(
                number="+15550002000",
                script=Script(
                    turns=[
                        ScriptedTurn(
                            start_ms=600,
                            end_ms=2200,
                            eager_ms=1200,
                            text="I want to cancel",
                            resumed=True,
                            final_text="I want to cancel my order please",
                        )
                    ]
                ),
                config_path=numbers,
                deepgram_options=fast,
                llm_options=llm,
                max_call_ms=4_000,
            ),
            # Agent mode: a dropped socket (Settings again, with the conversation as context), a
            # pause on the stream (KeepAlive), a question, then end_call (FunctionCallResponse).
            run_offline_call(
                mode="agent",
                number="+15550005000",
                script=Script(
                    agent=[
                        AgentStep(at_ms=800, user_text="What can you do?", reply_text="Lots."),
                        AgentStep(
                            at_ms=2000,
                            user_text="Bye.",
                            reply_text="",
                            function_call=ScriptedFunctionCall("end_call", '{"reason": "done"}'),
                            reply_after_function="Goodbye!",
                        ),
                    ],
                    # After the first exchange is done (its text is the context resent), before
                    # the second: with room for a loaded machine's delays either side.
                    faults=[Fault("agent", 1700, "drop")],
                ),
                config_path=numbers,
                deepgram_options={**fast, "agent_latency_s": 0.1},
                timeline=[PauseStream(at_ms=2000, ms=1200)],
                max_call_ms=10_000,
            ),
            # Transcribe mode: both sides, every Nova option on, a network gap (KeepAlive).
            run_offline_call(
                mode="transcribe",
                number="+15550007000",
                config_path=numbers,
                timeline=[PauseStream(at_ms=4000, ms=1000)],
            ),
        )
        wire.calls.update(zip(("flux", "eager", "agent", "nova"), calls, strict=True))
        fakes += [c.deepgram for c in wire.calls.values()]
        # Each session, too, has its own fake: run together.
        await asyncio.gather(
            _flux_session(fakes),
            _speak_session(fakes),
            _agent_session(fakes, numbers),
            _nova_session(fakes),
        )
    for endpoint, text in texts:
        if text != BOGUS:
            wire.sent[endpoint].append(orjson.loads(text))
    for fake in fakes:
        for log in fake.connections:
            wire.queries[log.endpoint].append(log.query)
            for msg in log.sent_messages():
                wire.received[log.endpoint].append(orjson.loads(dm.encode(msg)))
    return wire
