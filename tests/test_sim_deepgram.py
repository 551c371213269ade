"""The fake Deepgram server, driven by real websockets clients on a loopback port.

Scripts are keyed on audio time, so audio is fed faster than real time and the expected events
are exact. Behaviours marked "unverified" in docs/protocol.md say so where tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from telephony.deepgram import messages as dm
from telephony.sim.deepgram_server import (
    AgentStep,
    FakeDeepgram,
    Fault,
    Script,
    ScriptedTurn,
    tts_text,
)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}
FLUX = "/v2/listen?model=flux-general-en&encoding=mulaw&sample_rate=8000"
SPEAK = "/v1/speak?model=aura-2-thalia-en&encoding=mulaw&sample_rate=8000&container=none"
NOVA = "/v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000"
AGENT = "/v1/agent/converse"
FRAME = b"\xff" * 160  # 20 ms of μ-law silence: the fake only counts bytes

MakeFake = Callable[..., Awaitable[FakeDeepgram]]


@pytest.fixture
async def make_fake() -> AsyncIterator[MakeFake]:
    fakes: list[FakeDeepgram] = []

    async def make(**kwargs: Any) -> FakeDeepgram:
        kwargs.setdefault("realtime", False)
        fake = FakeDeepgram(**kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        await fake.stop()


def dial(fake: FakeDeepgram, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    kw.setdefault("ping_interval", None)
    return connect(fake.url + path, additional_headers=AUTH if headers is None else headers, **kw)


async def feed(ws: ClientConnection, ms: int) -> None:
    for _ in range(ms // 20):
        await ws.send(FRAME)


@dataclass
class Got:
    events: list[Any] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    close_code: int | None = None
    close_reason: str | None = None

    def names(self) -> list[str]:
        """TurnInfo as its event name, everything else as its wire type."""
        out = []
        for e in self.events:
            if isinstance(e, dm.TurnInfo):
                out.append(e.event)
            else:
                out.append(e.type if isinstance(e, dm.Unknown) else e.TYPE)
        return out

    def turns(self) -> list[dm.TurnInfo]:
        return [e for e in self.events if isinstance(e, dm.TurnInfo)]


async def collect(
    ws: ClientConnection,
    parse: Callable[[str], Any],
    *,
    until: Callable[[Any], bool] | None = None,
    within: float = 2.0,
) -> Got:
    """Read until `until(event)`, the socket closes, or `within` seconds pass."""
    got = Got()
    try:
        async with asyncio.timeout(within):
            async for data in ws:
                if isinstance(data, bytes):
                    got.audio += data
                    continue
                event = parse(data)
                got.events.append(event)
                if until is not None and until(event):
                    return got
    except (TimeoutError, ConnectionClosed):
        pass
    got.close_code, got.close_reason = ws.close_code, ws.close_reason
    return got


def is_type(name: str) -> Callable[[Any], bool]:
    return lambda e: getattr(e, "TYPE", None) == name or getattr(e, "event", None) == name


# --- handshake --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Token wrong-key"},
        {"Authorization": f"Bearer {KEY}"},  # an API key is not a JWT
        {"Authorization": "Bearer jwt:wrong-key"},
    ],
)
async def test_handshake_without_valid_credentials_is_401(
    make_fake: MakeFake, headers: dict[str, str]
) -> None:
    fake = await make_fake()
    with pytest.raises(InvalidStatus) as info:
        async with dial(fake, FLUX, headers):
            pass
    assert info.value.response.status_code == 401
    assert fake.connections == [] and fake.rejections[0].status == 401


@pytest.mark.parametrize(
    ("headers", "subprotocols", "method"),
    [
        (AUTH, None, "token"),
        ({"Authorization": f"token {KEY}"}, None, "token"),
        ({"Authorization": f"Bearer jwt:{KEY}"}, None, "bearer"),
        ({}, ["token", KEY], "subprotocol"),
    ],
)
async def test_handshake_accepts_token_bearer_and_subprotocol(
    make_fake: MakeFake, headers: dict[str, str], subprotocols: list[str] | None, method: str
) -> None:
    fake = await make_fake()
    async with dial(fake, FLUX, headers, subprotocols=subprotocols) as ws:
        first = dm.parse_flux_server(await ws.recv())
        assert isinstance(first, dm.FluxConnected) and first.sequence_id == 0
    log = await fake.wait_for_connection("flux")
    assert log.auth == method
    assert KEY not in str(log.headers)  # credentials are masked in the log


async def test_unknown_path_is_404(make_fake: MakeFake) -> None:
    fake = await make_fake()
    with pytest.raises(InvalidStatus) as info:
        async with dial(fake, "/v3/listen?model=flux-general-en"):
            pass
    assert info.value.response.status_code == 404


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v2/listen?model=flux", "model"),
        ("/v2/listen?encoding=mulaw&sample_rate=8000", "model"),
        ("/v2/listen?model=flux-general-en&encoding=mulaw", "sample_rate"),
        ("/v2/listen?model=flux-general-en&encoding=mp3&sample_rate=8000", "encoding"),
        ("/v2/listen?model=flux-general-en&encoding=mulaw&sample_rate=11025", "sample_rate"),
        ("/v2/listen?model=flux-general-en&eot_threshold=0.3", "eot_threshold"),
        ("/v2/listen?model=flux-general-en&eager_eot_threshold=0.95", "eager_eot_threshold"),
        ("/v2/listen?model=flux-general-en&eot_timeout_ms=100", "eot_timeout_ms"),
        ("/v2/listen?model=flux-general-en&punctuate=true", "punctuate"),
        ("/v2/listen?model=flux-general-en&smart_format=true", "smart_format"),
        ("/v2/listen?model=flux-general-en&language=en", "language"),
        ("/v2/listen?model=flux-general-en&diarize=true", "diarize"),
        ("/v1/speak?model=aura-2-thalia-en&encoding=mulaw&container=wav", "container"),
        ("/v1/speak?model=aura-2-thalia-en&encoding=mp3", "encoding"),
        ("/v1/speak?model=nova-3", "model"),
        ("/v1/speak?encoding=mulaw&sample_rate=24000", "sample_rate"),
        ("/v1/listen?model=nova-3&utterance_end_ms=1000", "interim_results"),
        ("/v1/listen?model=flux-general-en", "/v2/listen"),
        ("/v1/listen?model=nova-3&encoding=mulaw", "sample_rate"),
        ("/v1/listen?model=nova-3&endpointing=soon", "endpointing"),
        ("/v1/agent/converse?model=x", "no query parameters"),
    ],
)
async def test_bad_query_is_400_with_a_reason(make_fake: MakeFake, path: str, needle: str) -> None:
    fake = await make_fake()
    with pytest.raises(InvalidStatus) as info:
        async with dial(fake, path):
            pass
    assert info.value.response.status_code == 400
    assert needle in orjson.loads(info.value.response.body)["err_msg"]


async def test_too_many_connections_is_429(make_fake: MakeFake) -> None:
    fake = await make_fake(max_connections=1)
    async with dial(fake, FLUX) as ws:
        await ws.recv()
        with pytest.raises(InvalidStatus) as info:
            async with dial(fake, FLUX):
                pass
        assert info.value.response.status_code == 429


# --- Flux -------------------------------------------------------------------------------------

FIVE_WORDS = ScriptedTurn(200, 1200, "please cancel my order now")


async def test_flux_scripted_turn_exact_sequence(make_fake: MakeFake) -> None:
    second = ScriptedTurn(1600, 2000, "thanks")
    fake = await make_fake(script=Script(turns=[FIVE_WORDS, second]))
    async with dial(fake, FLUX) as ws:
        await feed(ws, 2200)
        got = await collect(ws, dm.parse_flux_server, until=lambda e: e.sequence_id == 8)
    turns = got.turns()
    assert [(t.event, t.audio_window_end, t.transcript) for t in turns] == [
        ("StartOfTurn", 0.2, "please"),
        ("Update", 0.45, "please cancel"),
        ("Update", 0.7, "please cancel my"),
        ("Update", 0.95, "please cancel my order"),
        ("EndOfTurn", 1.2, "please cancel my order now"),
        ("StartOfTurn", 1.6, "thanks"),
        ("Update", 1.85, "thanks"),
        ("EndOfTurn", 2.0, "thanks"),
    ]
    assert [e.sequence_id for e in got.events] == list(range(9))  # Connected is 0
    end = turns[4]
    assert end.trigger == "model" and end.turn_index == 0 and end.audio_window_start == 0.2
    assert [(w.word, w.start, w.end) for w in end.words] == [
        ("please", 0.2, 0.4),
        ("cancel", 0.4, 0.6),
        ("my", 0.6, 0.8),
        ("order", 0.8, 1.0),
        ("now", 1.0, 1.2),
    ]
    assert {t.turn_index for t in turns[5:]} == {1}  # increments right after EndOfTurn
    assert all(t.trigger is None for t in turns if t.event != "EndOfTurn")
    assert fake.violations() == []


@pytest.mark.parametrize("eager", [True, False])
async def test_flux_eager_end_of_turn_only_when_enabled(make_fake: MakeFake, eager: bool) -> None:
    turn = ScriptedTurn(200, 1400, "cancel my order", eager_ms=1000)
    fake = await make_fake(script=Script(turns=[turn]))
    path = FLUX + ("&eager_eot_threshold=0.5" if eager else "")
    async with dial(fake, path) as ws:
        await feed(ws, 1500)
        got = await collect(ws, dm.parse_flux_server, until=is_type("EndOfTurn"))
    names = got.names()
    assert names[0] == "Connected" and names[-1] == "EndOfTurn"
    assert ("EagerEndOfTurn" in names) is eager
    turns = got.turns()
    if eager:
        eager_event = turns[names.index("EagerEndOfTurn") - 1]
        assert eager_event.audio_window_end == 1.0 and eager_event.transcript == "cancel my order"
        after = names[names.index("EagerEndOfTurn") + 1 :]
        assert after == ["EndOfTurn"]  # no Updates while awaiting the end
    assert turns[-1].transcript == "cancel my order" and turns[-1].audio_window_end == 1.4


async def test_flux_eager_then_resumed_then_end_with_changed_text(make_fake: MakeFake) -> None:
    turn = ScriptedTurn(
        200,
        2000,
        "cancel my",
        eager_ms=700,
        resumed=True,
        final_text="cancel my order please",
        resumed_ms=1000,
    )
    fake = await make_fake(script=Script(turns=[turn]))
    async with dial(fake, FLUX + "&eager_eot_threshold=0.4") as ws:
        await feed(ws, 2100)
        got = await collect(ws, dm.parse_flux_server, until=is_type("EndOfTurn"))
    assert [(t.event, t.audio_window_end, t.transcript) for t in got.turns()] == [
        ("StartOfTurn", 0.2, "cancel"),
        ("Update", 0.45, "cancel my"),
        ("EagerEndOfTurn", 0.7, "cancel my"),
        ("TurnResumed", 1.0, "cancel my order"),
        ("Update", 1.25, "cancel my order"),
        ("Update", 1.5, "cancel my order please"),
        ("Update", 1.75, "cancel my order please"),
        ("EndOfTurn", 2.0, "cancel my order please"),
    ]


async def test_flux_json_keepalive_closes_with_no_status(make_fake: MakeFake) -> None:
    fake = await make_fake()
    async with dial(fake, FLUX) as ws:
        await feed(ws, 100)
        await ws.send(dm.keep_alive())
        got = await collect(ws, dm.parse_flux_server)
    assert got.close_code == 1005  # deepgram-python-sdk#649
    log = fake.connections[0]
    await log.wait_closed()
    assert log.close_code == 1005 and log.closed_by == "server"
    assert any("KeepAlive" in v for v in log.violations)
    assert "json:KeepAlive" in log.received_kinds()


async def test_flux_pings_keep_it_alive_and_silence_closes_net0001(make_fake: MakeFake) -> None:
    # The ~60 s no-audio timeout is the maintainers' figure (unverified); shrunk here.
    fake = await make_fake(flux_idle_timeout_s=0.3, tick_s=0.02)
    async with dial(fake, FLUX) as ws:
        await ws.recv()  # Connected
        for _ in range(8):  # 0.8 s of pings, no audio
            await asyncio.sleep(0.1)
            await ws.ping()
        assert ws.close_code is None
        got = await collect(ws, dm.parse_flux_server, within=1.5)  # now stop pinging
    assert (got.close_code, got.close_reason) == (1011, "NET-0001")
    assert fake.connections[0].received_kinds().count("ping") == 8


async def test_flux_idle_without_audio_closes(make_fake: MakeFake) -> None:
    fake = await make_fake(flux_idle_timeout_s=0.2, tick_s=0.02)
    async with dial(fake, FLUX) as ws:
        await feed(ws, 100)
        got = await collect(ws, dm.parse_flux_server, within=1.5)
    assert (got.close_code, got.close_reason) == (1011, "NET-0001")


async def test_flux_force_end_turn_is_manual_and_ignored_without_a_turn(
    make_fake: MakeFake,
) -> None:
    fake = await make_fake(script=Script(turns=[FIVE_WORDS]))
    async with dial(fake, FLUX) as ws:
        await ws.send(dm.force_end_turn())  # no open turn: a Warning, nothing else
        warned = await collect(ws, dm.parse_flux_server, until=is_type("Warning"))
        await feed(ws, 700)
        await ws.send(dm.force_end_turn())
        got = await collect(ws, dm.parse_flux_server, until=is_type("EndOfTurn"))
        await feed(ws, 1000)  # the scripted end time passes: nothing more for that turn
        later = await collect(ws, dm.parse_flux_server, within=0.3)
    end = got.turns()[-1]
    assert (end.event, end.trigger, end.transcript) == ("EndOfTurn", "manual", "please cancel my")
    assert end.audio_window_end == 0.7
    assert got.names().count("EndOfTurn") == 1 and later.events == []
    assert warned.events[-1].code == "FORCE_END_TURN_NO_ACTIVE_TURN"


async def test_flux_configure_success_and_failure(make_fake: MakeFake) -> None:
    fake = await make_fake()
    async with dial(fake, FLUX + "&keyterm=Acme") as ws:
        await ws.recv()
        await ws.send(dm.configure(eot_threshold=0.8, eot_timeout_ms=3000, keyterms=["Zed"]))
        ok = dm.parse_flux_server(await ws.recv())
        # Deepgram's own example sends thresholds as strings; out of range -> failure.
        await ws.send('{"type":"Configure","thresholds":{"eot_threshold":"0.2"}}')
        bad = dm.parse_flux_server(await ws.recv())
        await ws.send(dm.configure(eager_eot_threshold=0.5))
        ok2 = dm.parse_flux_server(await ws.recv())
    assert isinstance(ok, dm.ConfigureSuccess)
    assert ok.thresholds == {"eot_threshold": 0.8, "eot_timeout_ms": 3000}
    assert ok.keyterms == ("Zed",) and ok.sequence_id == 1
    assert isinstance(bad, dm.ConfigureFailure) and bad.sequence_id == 2
    assert isinstance(ok2, dm.ConfigureSuccess)
    assert ok2.thresholds == {
        "eot_threshold": 0.8,
        "eot_timeout_ms": 3000,
        "eager_eot_threshold": 0.5,
    }


async def test_flux_close_stream_ends_with_update_and_no_status(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(turns=[FIVE_WORDS]))
    async with dial(fake, FLUX) as ws:
        await feed(ws, 900)
        await ws.send(dm.close_stream())
        got = await collect(ws, dm.parse_flux_server)
    assert got.close_code == 1005
    assert "EndOfTurn" not in got.names()
    last = got.turns()[-1]
    assert (last.event, last.transcript, last.audio_window_end) == (
        "Update",
        "please cancel my order",
        0.9,
    )


async def test_flux_turn_never_ends_when_audio_stops_mid_turn(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(turns=[FIVE_WORDS]))
    async with dial(fake, FLUX) as ws:
        await feed(ws, 600)
        got = await collect(ws, dm.parse_flux_server, within=0.4)  # wall time passes, no audio
    assert got.names() == ["Connected", "StartOfTurn", "Update"]  # 0.2 s, 0.45 s; no end


async def test_flux_stuck_fault_suppresses_end_until_force_end_turn(make_fake: MakeFake) -> None:
    fault = Fault("flux", at_ms=500, kind="stuck")
    fake = await make_fake(script=Script(turns=[FIVE_WORDS], faults=[fault]))
    async with dial(fake, FLUX) as ws:
        await feed(ws, 3000)
        stuck = await collect(ws, dm.parse_flux_server, within=0.3)
        await ws.send(dm.force_end_turn())
        got = await collect(ws, dm.parse_flux_server, until=is_type("EndOfTurn"))
    assert "EndOfTurn" not in stuck.names() and stuck.names().count("Update") > 4
    assert got.turns()[-1].trigger == "manual"
    assert got.turns()[-1].transcript == "please cancel my order now"


async def test_flux_eot_threshold_one_leaves_only_the_timeout(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(turns=[FIVE_WORDS]))
    async with dial(fake, FLUX + "&eot_threshold=1.0&eot_timeout_ms=500") as ws:
        await feed(ws, 1800)
        got = await collect(ws, dm.parse_flux_server, until=is_type("EndOfTurn"))
    end = got.turns()[-1]
    assert end.audio_window_end == 1.7  # last word ends at 1.2 s, + 500 ms
    assert end.trigger == "timeout"  # this trigger value is unverified


async def test_flux_tagged_script_and_linear16_audio_clock(make_fake: MakeFake) -> None:
    fake = await make_fake()
    fake.set_script("b", Script(turns=[ScriptedTurn(100, 300, "tagged")]))
    path = "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000&tag=b"
    async with dial(fake, path) as ws:
        await ws.send(b"\x00" * 32 * 400)  # 400 ms at 32 bytes/ms, in one frame
        got = await collect(ws, dm.parse_flux_server, until=is_type("EndOfTurn"))
    assert got.turns()[-1].transcript == "tagged"
    log = fake.connections[0]
    assert (log.tag, log.index, log.audio_ms) == ("b", 0, 400.0)


# --- Aura /v1/speak ---------------------------------------------------------------------------


async def test_speak_flush_sends_deterministic_audio_then_flushed(make_fake: MakeFake) -> None:
    fake = await make_fake(speak_ms_per_char=20)
    text = "Sure, one moment."
    async with dial(fake, SPEAK) as ws:
        await ws.send(dm.speak("Sure, "))
        await ws.send(dm.speak("one moment."))
        await ws.send(dm.flush())
        got = await collect(ws, dm.parse_speak_server, until=is_type("Flushed"))
    assert got.names() == ["Metadata", "Flushed"]
    assert len(got.audio) == 20 * len(text) * 8
    assert tts_text(bytes(got.audio), 20) == text
    assert got.audio.count(0xFF) < len(got.audio) // 10  # not silence
    sent = fake.connections[0].sent_kinds()
    assert sent[-1] == "json:Flushed" and set(sent[1:-1]) == {"audio"}  # audio strictly before
    assert max(d for _, k, d in fake.connections[0].sent if k == "audio") == 1600


async def test_speak_clear_stops_audio_and_confirms(make_fake: MakeFake) -> None:
    # 4 s of speech sent at 4x real time: ~1 s to send all of it, so Clear lands mid-way.
    fake = await make_fake(realtime=True, speak_ms_per_char=100, speak_first_byte_ms=0)
    text = "x" * 40
    async with dial(fake, SPEAK) as ws:
        await ws.send(dm.speak(text))
        await ws.send(dm.flush())
        await collect(ws, dm.parse_speak_server, until=is_type("Metadata"))
        first = await ws.recv()
        assert isinstance(first, bytes)
        await ws.send(dm.clear())
        got = await collect(ws, dm.parse_speak_server, until=is_type("Cleared"))
        after = await collect(ws, dm.parse_speak_server, within=0.5)
    total = len(first) + len(got.audio)
    assert 0 < total < 100 * 40 * 8 // 2
    assert got.names() == ["Cleared"] and after.audio == bytearray() and after.events == []


async def test_speak_flush_limit_warns_and_refuses(make_fake: MakeFake) -> None:
    fake = await make_fake(flush_limit=2, flush_window_s=60, speak_ms_per_char=5)
    async with dial(fake, SPEAK) as ws:
        for word in ("one", "two", "three"):
            await ws.send(dm.speak(word))
            await ws.send(dm.flush())
        got = await collect(ws, dm.parse_speak_server, within=0.5)
    assert got.names().count("Flushed") == 2 and "Warning" in got.names()
    assert tts_text(bytes(got.audio), 5) == "onetwo"  # the third flush produced no audio
    assert fake.connections[0].violations


async def test_speak_empty_text_is_a_violation_and_closes(make_fake: MakeFake) -> None:
    fake = await make_fake()
    async with dial(fake, SPEAK) as ws:
        await ws.send('{"type":"Speak","text":""}')
        got = await collect(ws, dm.parse_speak_server)
    assert got.close_code == 1008  # the wire behaviour for empty text is unverified
    assert fake.connections[0].violations == ["Speak with empty text"]


async def test_speak_close_message_closes_1000(make_fake: MakeFake) -> None:
    fake = await make_fake()
    async with dial(fake, SPEAK) as ws:
        await ws.send(dm.close())
        got = await collect(ws, dm.parse_speak_server)
    assert got.close_code == 1000


# --- Voice Agent ------------------------------------------------------------------------------


def agent_settings(greeting: str | None = None, tags: list[str] | None = None) -> str:
    return dm.settings(dm.agent_settings(prompt="Be brief.", greeting=greeting, tags=tags))


async def test_agent_welcome_settings_and_a_scripted_exchange(make_fake: MakeFake) -> None:
    step = AgentStep(at_ms=200, user_text="Where is my order?", reply_text="On its way.")
    fake = await make_fake(script=Script(agent=[step]), speak_ms_per_char=10)
    async with dial(fake, AGENT) as ws:
        welcome = dm.parse_agent_server(await ws.recv())
        await feed(ws, 100)  # before Settings: ignored
        await ws.send(agent_settings())
        applied = await collect(ws, dm.parse_agent_server, until=is_type("SettingsApplied"))
        await feed(ws, 1000)
        got = await collect(ws, dm.parse_agent_server, until=is_type("AgentAudioDone"))
    assert isinstance(welcome, dm.Welcome) and welcome.request_id
    assert applied.names() == ["SettingsApplied"]
    assert got.names() == [
        "UserStartedSpeaking",
        "ConversationText",
        "History",
        "AgentThinking",
        "AgentStartedSpeaking",
        "ConversationText",
        "History",
        "AgentAudioDone",
    ]
    texts = [(e.role, e.content) for e in got.events if isinstance(e, dm.ConversationText)]
    assert texts == [("user", "Where is my order?"), ("assistant", "On its way.")]
    assert tts_text(bytes(got.audio), 10) == "On its way."
    log = fake.connections[0]
    assert log.violations == ["audio before SettingsApplied (ignored)"]
    assert log.audio_ms == 1000  # only audio after SettingsApplied counts


async def test_agent_function_call_waits_for_the_response(make_fake: MakeFake) -> None:
    step = AgentStep(
        at_ms=100,
        user_text="Cancel it",
        reply_text="unused",
        function_call={"name": "cancel_order", "arguments": {"order": "A1"}},
        reply_after_function="Cancelled.",
    )
    fake = await make_fake(script=Script(agent=[step]), speak_ms_per_char=10)
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(agent_settings())
        await feed(ws, 1000)
        got = await collect(ws, dm.parse_agent_server, until=is_type("FunctionCallRequest"))
        quiet = await collect(ws, dm.parse_agent_server, within=0.3)
        request = got.events[-1]
        call = request.functions[0]
        await ws.send(dm.function_call_response(call.id, call.name, '{"ok":true}'))
        reply = await collect(ws, dm.parse_agent_server, until=is_type("AgentAudioDone"))
    assert (call.id, call.name, call.client_side) == ("fc_1", "cancel_order", True)
    assert orjson.loads(call.arguments) == {"order": "A1"}
    assert quiet.events == [] and quiet.audio == bytearray()
    assert tts_text(bytes(reply.audio), 10) == "Cancelled."
    responses = fake.connections[0].received_messages(dm.FunctionCallResponse)
    assert responses == [dm.FunctionCallResponse("fc_1", "cancel_order", '{"ok":true}')]


async def test_agent_cancels_a_speculative_call_and_refuses_its_late_answer(
    make_fake: MakeFake,
) -> None:
    steps = [
        AgentStep(
            at_ms=100,
            user_text="Book it",
            reply_text="unused",
            function_call={"name": "book", "arguments": {}},
            reply_after_function="Booked.",
            speech_ms=100,
            cancel_call_ms=300,
        ),
        AgentStep(at_ms=800, user_text="no wait", reply_text="Okay.", speech_ms=100),
    ]
    fake = await make_fake(script=Script(agent=steps), speak_ms_per_char=10)
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(agent_settings())
        await feed(ws, 400)  # the request goes out at 200 ms of audio
        got = await collect(ws, dm.parse_agent_server, until=is_type("FunctionCallRequest"))
        call = got.events[-1].functions[0]
        await feed(ws, 300)  # 300 ms later the caller has gone on: cancelled
        cancel = await collect(ws, dm.parse_agent_server, until=is_type("FunctionCallCancelled"))
        await ws.send(dm.function_call_response(call.id, call.name, "{}"))  # too late
        await feed(ws, 800)
        rest = await collect(ws, dm.parse_agent_server, until=is_type("AgentAudioDone"))
    assert cancel.events[-1] == dm.FunctionCallCancelled((dm.CancelledFunction(call.id, "book"),))
    said = [e.content for e in rest.events if isinstance(e, dm.ConversationText)]
    assert said == ["no wait", "Okay."]  # the cancelled step's reply is never spoken
    assert fake.connections[0].violations == [
        f"FunctionCallResponse for cancelled call {call.id!r}"
    ]


async def test_agent_refuses_context_entries_that_are_not_history(make_fake: MakeFake) -> None:
    body = dm.agent_settings(prompt="p")
    body["agent"]["context"] = {"messages": [{"role": "user", "content": "hi"}]}  # no type
    fake = await make_fake()
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"type": "Settings", **body}).decode())
        got = await collect(ws, dm.parse_agent_server)
    (error,) = got.events
    assert isinstance(error, dm.AgentError) and error.code == "INVALID_SETTINGS"
    assert "type must be 'History'" in error.description and got.close_code == 1008


async def test_agent_keepalive_while_streaming_is_a_violation(make_fake: MakeFake) -> None:
    fake = await make_fake()
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(agent_settings())
        await ws.send(dm.keep_alive())  # no audio yet: fine
        await feed(ws, 200)
        await ws.send(dm.keep_alive())  # audio is flowing: trap 5
        await ws.send(dm.update_prompt("Be terse."))
        got = await collect(ws, dm.parse_agent_server, until=is_type("PromptUpdated"))
    assert got.names() == ["SettingsApplied", "PromptUpdated"]
    assert fake.connections[0].violations == ["KeepAlive while audio is flowing"]


async def test_agent_idle_client_gets_client_message_timeout(make_fake: MakeFake) -> None:
    fake = await make_fake(idle_timeout_s=0.3, tick_s=0.02)
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(agent_settings())
        got = await collect(ws, dm.parse_agent_server, within=2.0)
    error = got.events[-1]
    assert isinstance(error, dm.AgentError) and error.code == "CLIENT_MESSAGE_TIMEOUT"
    assert got.close_code is not None and got.close_code != 1000


@pytest.mark.parametrize(
    "first",
    [dm.keep_alive(), '{"type":"Settings","audio":{},"agent":{},"voice":"x"}', "not json"],
)
async def test_agent_requires_valid_settings_first(make_fake: MakeFake, first: str) -> None:
    fake = await make_fake()
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(first)
        got = await collect(ws, dm.parse_agent_server)
    assert got.names() == ["Error"] and got.close_code == 1008  # close code unverified
    assert fake.connections[0].violations


async def test_agent_greeting_then_barge_in_cancels_speech(make_fake: MakeFake) -> None:
    step = AgentStep(at_ms=100, user_text="stop", reply_text="ok")
    fake = await make_fake(
        script=Script(agent=[step]), realtime=True, speak_first_byte_ms=0, speak_ms_per_char=100
    )
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(agent_settings(greeting="Thanks for calling Acme, how can I help?"))
        await collect(ws, dm.parse_agent_server, until=is_type("ConversationText"))
        await feed(ws, 100)  # the caller talks over the greeting
        got = await collect(ws, dm.parse_agent_server, until=is_type("UserStartedSpeaking"))
        await ws.send(dm.inject_agent_message("Hello?"))  # user is speaking: refused
        refused = await collect(ws, dm.parse_agent_server, until=is_type("InjectionRefused"))
    greeting_bytes = 100 * len("Thanks for calling Acme, how can I help?") * 8
    assert len(got.audio) < greeting_bytes // 2
    assert "AgentAudioDone" not in got.names()
    assert refused.names() == ["InjectionRefused"] and refused.audio == bytearray()


async def test_agent_script_chosen_by_settings_tag(make_fake: MakeFake) -> None:
    fake = await make_fake(speak_ms_per_char=5)
    fake.set_script("vip", Script(agent=[AgentStep(None, "hello", "Welcome back.")]))
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(agent_settings(tags=["vip"]))
        await ws.send(dm.inject_user_message("Hello"))
        got = await collect(ws, dm.parse_agent_server, until=is_type("AgentAudioDone"))
    assert ("assistant", "Welcome back.") in [
        (e.role, e.content) for e in got.events if isinstance(e, dm.ConversationText)
    ]
    assert fake.connections[0].tag == "vip"


# --- Nova /v1/listen --------------------------------------------------------------------------


async def test_nova_interim_final_vad_and_utterance_end(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(turns=[ScriptedTurn(200, 1000, "check my balance")]))
    path = NOVA + "&interim_results=true&utterance_end_ms=1000&vad_events=true&endpointing=300"
    async with dial(fake, path) as ws:
        await feed(ws, 2200)
        got = await collect(ws, dm.parse_listen_server, until=is_type("UtteranceEnd"))
    assert got.names() == [
        "SpeechStarted",
        "Results",
        "Results",
        "Results",
        "Results",
        "UtteranceEnd",
    ]
    results = [e for e in got.events if isinstance(e, dm.Results)]
    assert [(r.is_final, r.speech_final, r.transcript) for r in results] == [
        (False, False, "check"),  # 0.45 s (words start at 0.2, 0.467, 0.733)
        (False, False, "check my"),  # 0.7 s
        (False, False, "check my balance"),  # 0.95 s
        (True, True, "check my balance"),  # 1.0 s
    ]
    assert got.events[0].timestamp == 0.2 and got.events[-1].last_word_end == 1.0


async def test_nova_keepalive_keeps_it_alive_then_idle_closes_net0001(make_fake: MakeFake) -> None:
    fake = await make_fake(idle_timeout_s=0.3, tick_s=0.02)
    async with dial(fake, NOVA) as ws:
        for _ in range(6):
            await asyncio.sleep(0.1)
            await ws.send(dm.keep_alive())
        assert ws.close_code is None
        got = await collect(ws, dm.parse_listen_server, within=1.5)
    assert (got.close_code, got.close_reason) == (1011, "NET-0001")
    assert fake.connections[0].violations == []


async def test_nova_binary_keepalive_is_a_violation(make_fake: MakeFake) -> None:
    fake = await make_fake()
    async with dial(fake, NOVA) as ws:
        await ws.send(dm.keep_alive().encode())
        await ws.send(dm.close_stream())
        await collect(ws, dm.parse_listen_server)
    assert fake.connections[0].violations == [
        "KeepAlive sent as a binary frame (it must be a text frame)"
    ]


@pytest.mark.parametrize("closer", [b"", dm.close_stream()])
async def test_nova_close_stream_or_empty_frame_sends_final_and_metadata(
    make_fake: MakeFake, closer: bytes | str
) -> None:
    fake = await make_fake(script=Script(turns=[ScriptedTurn(100, 2000, "one two three four")]))
    async with dial(fake, NOVA + "&interim_results=true") as ws:
        await feed(ws, 1000)
        await ws.send(closer)
        got = await collect(ws, dm.parse_listen_server)
    assert got.close_code == 1000
    assert got.names()[-2:] == ["Results", "Metadata"]
    final, meta = got.events[-2], got.events[-1]
    assert final.is_final and final.transcript == "one two"  # words start at 0.1, 0.575, ...
    assert meta.duration == 1.0 and meta.transaction_key == "deprecated"


async def test_nova_finalize_marks_from_finalize(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(turns=[ScriptedTurn(100, 2000, "one two three four")]))
    async with dial(fake, NOVA) as ws:
        await feed(ws, 600)
        await ws.send(dm.finalize())
        got = await collect(ws, dm.parse_listen_server, until=is_type("Results"))
        await feed(ws, 1600)
        rest = await collect(ws, dm.parse_listen_server, until=is_type("Results"))
    first, second = got.events[-1], rest.events[-1]
    assert (first.from_finalize, first.is_final, first.transcript) == (True, True, "one two")
    assert (second.from_finalize, second.speech_final, second.transcript) == (
        False,
        True,
        "three four",
    )


# --- faults -----------------------------------------------------------------------------------


async def test_fault_drop_gives_1006_and_the_reconnect_is_healthy(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(faults=[Fault("flux", at_ms=300, kind="drop")]))
    async with dial(fake, FLUX) as ws:
        await feed(ws, 600)
        got = await collect(ws, dm.parse_flux_server)
    assert got.close_code == 1006
    async with dial(fake, FLUX) as ws2:
        await feed(ws2, 600)
        healthy = await collect(ws2, dm.parse_flux_server, within=0.3)
    assert healthy.close_code is None
    assert [c.close_code for c in fake.connections] == [1006, None]


async def test_fault_close_with_code_on_the_second_connection(make_fake: MakeFake) -> None:
    fault = Fault("listen", at_ms=200, kind="close", code=4008, reason="bye", connection=1)
    fake = await make_fake()
    fake.inject_fault(fault)
    async with dial(fake, NOVA) as ws:
        await feed(ws, 400)
        first = await collect(ws, dm.parse_listen_server, within=0.3)
    async with dial(fake, NOVA) as ws:
        await feed(ws, 400)
        second = await collect(ws, dm.parse_listen_server)
    assert first.close_code is None
    assert (second.close_code, second.close_reason) == (4008, "bye")


async def test_fault_silent_keeps_reading_but_sends_nothing(make_fake: MakeFake) -> None:
    fault = Fault("flux", at_ms=500, kind="silent")
    fake = await make_fake(script=Script(turns=[FIVE_WORDS], faults=[fault]))
    async with dial(fake, FLUX) as ws:
        await feed(ws, 2000)
        got = await collect(ws, dm.parse_flux_server, within=0.4)
        await ws.send(dm.keep_alive())  # would normally close the socket
        after = await collect(ws, dm.parse_flux_server, within=0.3)
    assert got.names() == ["Connected", "StartOfTurn", "Update"]
    assert after.events == [] and after.close_code is None
    assert fake.connections[0].audio_ms == 2000


async def test_fault_error_sends_error_then_1011(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(faults=[Fault("flux", 0, "error", reason="boom")]))
    async with dial(fake, FLUX) as ws:
        got = await collect(ws, dm.parse_flux_server)
    assert got.names() == ["Connected", "Error"] and got.close_code == 1011
    assert got.events[-1].description == "boom"


async def test_fault_error_on_speak_is_only_a_close_frame(make_fake: MakeFake) -> None:
    # Aura has no JSON Error: the close frame's code and reason are the error.
    fake = await make_fake(script=Script(faults=[Fault("speak", 0, "error", reason="boom")]))
    async with dial(fake, SPEAK) as ws:
        got = await collect(ws, dm.parse_speak_server)
    assert got.names() == ["Metadata"]
    assert (got.close_code, got.close_reason) == (1011, "boom")


async def test_agent_fault_fires_on_audio_after_settings(make_fake: MakeFake) -> None:
    fake = await make_fake(script=Script(faults=[Fault("agent", 200, "close", code=1013)]))
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(agent_settings())
        await feed(ws, 400)
        got = await collect(ws, dm.parse_agent_server)
    assert got.close_code == 1013


async def test_agent_updates_force_end_turn_and_unknown_messages(make_fake: MakeFake) -> None:
    fake = await make_fake()
    body = dm.agent_settings(prompt="p", listen_model="nova-3")  # not Flux: no ForceEndTurn
    async with dial(fake, AGENT) as ws:
        await ws.recv()
        await ws.send(dm.settings(body))
        await ws.send(dm.update_speak({"provider": {"type": "deepgram", "model": "aura-2-x"}}))
        await ws.send(dm.force_end_turn())
        await ws.send('{"type":"Bogus"}')
        got = await collect(ws, dm.parse_agent_server)
    assert got.names() == ["SettingsApplied", "SpeakUpdated", "Warning", "Error"]
    assert got.events[2].code == "FORCE_END_TURN_UNSUPPORTED"
    assert got.events[3].code == "UNPARSABLE_CLIENT_MESSAGE" and got.close_code == 1011
