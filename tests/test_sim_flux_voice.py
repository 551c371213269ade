"""Voiced Flux scripts: the fake finds turns in the audio content, as the real service does.

Audio is fed faster than real time; times are the connection's own audio seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from telephony.audio import silence, tone, tone_pcm16
from telephony.deepgram import messages as dm
from telephony.sim.deepgram_server import FakeDeepgram, Fault, Script, ScriptedTurn, ScriptError

AUTH = {"Authorization": "Token test-key"}
FLUX = "/v2/listen?model=flux-general-en&encoding=mulaw&sample_rate=8000"
CHUNK = 640  # 80 ms of μ-law 8 kHz, as the client sends
TEXTS = ["I need to cancel my order", "it is order one two three"]

MakeFake = Callable[..., Awaitable[FakeDeepgram]]


@pytest.fixture
async def make_fake() -> AsyncIterator[MakeFake]:
    fakes: list[FakeDeepgram] = []

    async def make(**kwargs: Any) -> FakeDeepgram:
        fake = FakeDeepgram(realtime=False, **kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        await fake.stop()


def voiced(*turns: str | ScriptedTurn, **kw: Any) -> Script:
    said = [t if isinstance(t, ScriptedTurn) else ScriptedTurn.said(t) for t in turns]
    return Script(turns=said, voiced=True, **kw)


def dial(fake: FakeDeepgram, path: str = FLUX) -> Any:
    return connect(fake.url + path, additional_headers=AUTH, ping_interval=None)


async def send(ws: ClientConnection, audio: bytes, chunk: int = CHUNK) -> None:
    for i in range(0, len(audio), chunk):
        await ws.send(audio[i : i + chunk])


async def turns(
    ws: ClientConnection, until: str | None = "EndOfTurn", count: int = 1, within: float = 1.0
) -> list[dm.TurnInfo]:
    """TurnInfo messages until the `count`-th `until` event (or close / `within` s)."""
    out: list[dm.TurnInfo] = []
    try:
        async with asyncio.timeout(within):
            async for data in ws:
                msg = dm.parse_flux_server(data)
                if isinstance(msg, dm.TurnInfo):
                    out.append(msg)
                    if until and sum(t.event == until for t in out) == count:
                        break
    except (TimeoutError, ConnectionClosed):
        pass
    return out


def events(got: list[dm.TurnInfo]) -> list[str]:
    return [t.event for t in got]


def ends(got: list[dm.TurnInfo]) -> list[dm.TurnInfo]:
    return [t for t in got if t.event == "EndOfTurn"]


def window(t: dm.TurnInfo) -> tuple[float, float]:
    return t.audio_window_start, t.audio_window_end


def near(a: tuple[float, float], b: tuple[float, float], tol: float = 0.05) -> bool:
    return abs(a[0] - b[0]) <= tol and abs(a[1] - b[1]) <= tol


async def test_turn_is_found_in_the_audio(make_fake: MakeFake) -> None:
    fake = await make_fake(script=voiced(TEXTS[0]))
    async with dial(fake) as ws:
        await send(ws, silence(1000) + tone(440, 1500) + silence(1000))
        got = await turns(ws)
    names = events(got)
    assert names[0] == "StartOfTurn" and names[-1] == "EndOfTurn"
    assert set(names[1:-1]) == {"Update"} and len(names) >= 6  # ~every 250 ms
    start, end = got[0], got[-1]
    assert abs(start.audio_window_start - 1.0) <= 0.05
    assert start.transcript == "I"  # words come progressively
    counts = [len(t.words) for t in got]
    assert counts == sorted(counts) and counts[-1] == 6
    assert near(window(end), (1.0, 2.5))
    assert (end.transcript, end.trigger, end.turn_index) == (TEXTS[0], "model", 0)
    assert end.words[0].start == end.audio_window_start
    assert end.words[-1].end == end.audio_window_end
    assert fake.violations() == []


async def test_two_turns_get_the_texts_in_order(make_fake: MakeFake) -> None:
    fake = await make_fake(script=voiced(*TEXTS))
    speech = tone(440, 600) + silence(600)
    async with dial(fake) as ws:
        await send(ws, silence(500) + speech + speech)
        got = await turns(ws, count=2)
    done = ends(got)
    assert [t.transcript for t in done] == TEXTS
    assert [t.turn_index for t in done] == [0, 1]
    assert near(window(done[0]), (0.5, 1.1)) and near(window(done[1]), (1.7, 2.3))


async def test_short_pause_stays_in_the_turn_and_texts_run_out(make_fake: MakeFake) -> None:
    fake = await make_fake(script=voiced("only one"))
    pause = silence(300)  # under end_silence_ms (400)
    async with dial(fake) as ws:
        await send(ws, tone(440, 500) + pause + tone(440, 500) + silence(600))
        await send(ws, tone(440, 500) + silence(600))  # no text left: not a turn
        got = await turns(ws, until=None, within=0.3)
    assert events(got).count("StartOfTurn") == 1
    assert near(window(ends(got)[0]), (0.0, 1.3))


async def test_reconnect_replay_reuses_the_unfinished_turns_text(make_fake: MakeFake) -> None:
    fake = await make_fake()
    fake.set_script("r", voiced(*TEXTS))
    path = FLUX + "&tag=r"
    async with dial(fake, path) as ws:
        await send(ws, silence(1000) + tone(440, 800))
        first = await turns(ws, until="Update")  # the server is mid-turn
        assert ws.transport is not None
        ws.transport.abort()  # the client's socket dies: no EndOfTurn on this connection
    assert events(first)[0] == "StartOfTurn"
    async with dial(fake, path) as ws:
        # The client replays from the start of the open turn, then the caller goes on.
        await send(ws, tone(440, 1500) + silence(1000) + tone(440, 500) + silence(600))
        got = await turns(ws, count=2)
    done = ends(got)
    assert done[0].transcript == TEXTS[0] and near(window(done[0]), (0.0, 1.5))
    assert done[1].transcript == TEXTS[1] and near(window(done[1]), (2.5, 3.0))
    assert [c.index for c in fake.logs("flux")] == [0, 1]


@pytest.mark.parametrize("kind", ["drop", "silent"])
async def test_server_fault_mid_turn_leaves_the_text_for_the_reconnect(
    make_fake: MakeFake, kind: str
) -> None:
    fault = Fault("flux", at_ms=1500, kind=kind)  # type: ignore[arg-type]
    fake = await make_fake(script=voiced(*TEXTS, faults=[fault]))
    async with dial(fake) as ws:
        await send(ws, silence(1000) + tone(440, 1000) + silence(1000))
        first = await turns(ws, within=0.3)
    assert ends(first) == []  # dropped, or computed but never delivered
    async with dial(fake) as ws:
        await send(ws, tone(440, 1000) + silence(600))
        got = await turns(ws)
    assert [t.transcript for t in ends(got)] == [TEXTS[0]]


async def test_stuck_fault_holds_the_turn_until_force_end_turn(make_fake: MakeFake) -> None:
    fault = Fault("flux", at_ms=200, kind="stuck")
    fake = await make_fake(script=voiced(*TEXTS, faults=[fault]))
    async with dial(fake) as ws:
        await send(ws, tone(440, 500) + silence(2000))
        held = await turns(ws, within=0.3)
        await ws.send(dm.force_end_turn())
        got = await turns(ws)
    assert "StartOfTurn" in events(held) and ends(held) == []
    assert [(t.transcript, t.trigger) for t in ends(got)] == [(TEXTS[0], "manual")]


async def test_eager_then_resumed_with_final_text(make_fake: MakeFake) -> None:
    turn = ScriptedTurn.said("order one two", final_text="order one two three")
    fake = await make_fake(script=voiced(turn))
    async with dial(fake, FLUX + "&eager_eot_threshold=0.5") as ws:
        await send(ws, tone(440, 600) + silence(300) + tone(440, 500) + silence(600))
        got = await turns(ws)
    names = [n for n in events(got) if n != "Update"]
    assert names == [
        "StartOfTurn",
        *["EagerEndOfTurn", "TurnResumed"],
        "EagerEndOfTurn",
        "EndOfTurn",
    ]
    eager, again = (t for t in got if t.event == "EagerEndOfTurn")
    assert eager.transcript == "order one two" and near(window(eager), (0.0, 0.6))
    end = got[-1]
    assert end.transcript == again.transcript == "order one two three"
    assert near(window(end), (0.0, 1.4)) and window(again) == window(end)


async def test_linear16_16k(make_fake: MakeFake) -> None:
    fake = await make_fake(script=voiced(TEXTS[0], end_silence_ms=600))
    path = "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"
    audio = silence(1000, "linear16", 16000) + tone_pcm16(440, 1500, 16000)
    async with dial(fake, path) as ws:
        await send(ws, audio + silence(1000, "linear16", 16000), chunk=2555)  # ragged chunks
        got = await turns(ws)
    end = got[-1]
    assert end.transcript == TEXTS[0] and near(window(end), (1.0, 2.5))
    assert abs(fake.connections[0].audio_ms - 3500) <= 20


def test_voiced_script_from_yaml() -> None:
    script = Script.from_yaml(
        """
voiced: true
end_silence_ms: 500
turns:
  - "second in time, first in list"
  - {text: "order one", final_text: "order one two"}
  - {start_ms: 0, end_ms: 10, text: "timed"}
"""
    )
    assert script.voiced and script.end_silence_ms == 500
    assert [t.final for t in script.turns] == [
        "second in time, first in list",
        "order one two",
        "timed",
    ]
    with pytest.raises(ScriptError):
        Script.from_dict({"voiced": True, "turns": [{"text": "x", "eager_ms": 3}]})
    with pytest.raises(ScriptError):
        Script(voiced=True, end_silence_ms=0)
