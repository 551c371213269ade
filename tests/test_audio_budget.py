"""Issue 21: the caller's audio budget, through real calls on loopback.

Each bypass of TELEPHONY_MAX_AUDIO_AHEAD_MS the issue found, replayed by a fake Twilio caller
that sends what it likes: 48 KB payloads, constant or backwards timestamps, timestamps that
jump ahead on every frame, and the outbound track of a transcribed call. Each must end the
stream promptly, with what the fake Deepgram received bounded by real time plus the lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from telephony.sim.deepgram_server import FakeDeepgram
from telephony.twilio import messages as tm
from tests.conftest import NUMBERS_YAML, RunningApp, finished
from tests.test_routes_twilio import call_params, closed_with, open_media, post_webhook

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

DESK = "+15550003000"
FRAME = b"\xff" * 160
LEAD_MS = 2000  # TELEPHONY_MAX_AUDIO_AHEAD_MS's default, which the test app runs with
BYTES_PER_MS = 8
FLOOD_FRAMES = 1500  # 30 s of audio if each frame were 20 ms: far past any allowance


@pytest.fixture
def numbers_yaml(tmp_path: Path) -> Path:  # conftest's, plus a transcribed desk
    path = tmp_path / "numbers.yaml"
    path.write_text(
        NUMBERS_YAML.replace(
            'numbers:\n  "+15550001000": support',
            f'numbers:\n  "+15550001000": support\n  "{DESK}": desk',
        )
        + "  desk:\n    mode: transcribe\n    transcribe: {queue: support}\n"
    )
    return path


async def open_stream(
    app: RunningApp, call_sid: str, to: str = "+15550001000"
) -> tuple[ClientConnection, tm.InboundBuilder, float]:
    """The media socket of a new call, after `start`; and when the stream started (before)."""
    resp = await post_webhook(app, call_params(call_sid, to=to))
    stream = ET.fromstring(resp.text).find(".//Stream")
    assert stream is not None, resp.text
    params = {p.get("name") or "": p.get("value") or "" for p in stream.findall("Parameter")}
    ws = await open_media(app)
    b = tm.InboundBuilder("MZ" + call_sid, call_sid, "AC1", custom_parameters=params)
    await ws.send(b.connected())
    started = asyncio.get_running_loop().time()
    tracks = ("inbound", "outbound") if to == DESK else ("inbound",)
    await ws.send(b.start(tracks=tracks))
    return ws, b, started


async def until_live(app: RunningApp, call_sid: str, upstream_of: Callable) -> None:
    """Until the call's Deepgram socket takes audio directly (what is held before that is not
    sent if the call ends first, which would prove nothing)."""
    registry = app.app.state.services.registry
    for _ in range(500):
        call = registry.live.get(call_sid)
        if call is not None and upstream_of(call.engine).live:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the Deepgram socket never went live")


async def flood(ws: ClientConnection, frames: list[str]) -> None:
    with contextlib.suppress(ConnectionClosed):  # the server closes mid-flood
        for frame in frames:
            await ws.send(frame)


def bound_bytes(started: float) -> int:
    """What the budget allows from the stream's start until now: real time plus the lead."""
    return round(((asyncio.get_running_loop().time() - started) * 1000 + LEAD_MS) * BYTES_PER_MS)


def flux_upstream(engine):
    return engine.upstream


def staff_upstream(engine):
    return engine.tracks["staff"].upstream


@pytest.mark.parametrize(
    "timestamps",
    [
        pytest.param(lambda i: 0, id="constant"),
        pytest.param(lambda i: 10_000_000 - 20 * i, id="backwards"),
        pytest.param(lambda i: 2020 * i, id="jumping-ahead"),  # each frame makes a 2 s gap fill
    ],
)
async def test_timestamps_do_not_bypass_the_budget(
    running_app: RunningApp, fake_deepgram: FakeDeepgram, timestamps: Callable[[int], int]
) -> None:
    """Constant timestamps never advanced the old pace check's clock (2.5 h of audio to Flux in
    0.8 s); backwards ones neither; forward jumps made the call send 2 s of gap fill per frame,
    checked only every 50th frame. Bytes are counted whatever the timestamps say."""
    ws, b, started = await open_stream(running_app, "CAts")
    await until_live(running_app, "CAts", flux_upstream)
    await flood(ws, [b.media(FRAME, timestamps(i)) for i in range(FLOOD_FRAMES)])
    assert await closed_with(ws) == (1008, "media faster than real time")
    bound = bound_bytes(started)
    summary = await finished(running_app, "CAts")
    assert summary.end_detail == "media faster than real time"
    flux = fake_deepgram.logs("flux")[0]
    await flux.wait_closed()
    assert 0 < flux.audio_bytes <= bound


async def test_big_payloads_are_bad_frames_and_never_reach_deepgram(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    """48 KB payloads (6 s of audio each) sent 306 s of audio to Flux before the pace check
    closed the stream. A payload over a few Twilio frames is now a malformed frame: not
    forwarded, and a handful of them end the stream."""
    ws, b, started = await open_stream(running_app, "CAbig")
    await until_live(running_app, "CAbig", flux_upstream)
    big = b"\x55" * 48_000
    await flood(ws, [b.media(big, i * 6000) for i in range(60)])
    assert await closed_with(ws) == (1008, "too many malformed frames")
    summary = await finished(running_app, "CAbig")
    assert summary.stats.bad_frames == 6  # the test app allows 5
    flux = fake_deepgram.logs("flux")[0]
    await flux.wait_closed()
    assert flux.audio_bytes <= bound_bytes(started)
    assert flux.audio_bytes < len(big)  # not one of them went through


async def test_a_few_batched_frames_pass(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    """The payload cap leaves room for a sender that batches up to four Twilio frames."""
    ws, b, _ = await open_stream(running_app, "CAbatch")
    await until_live(running_app, "CAbatch", flux_upstream)
    for i in range(5):
        await ws.send(b.media(b"\x55" * 640, i * 80))
    await ws.send(b.stop())
    assert (await closed_with(ws))[0] == 1000
    summary = await finished(running_app, "CAbatch")
    assert (summary.stats.media_frames, summary.stats.bad_frames) == (5, 0)
    assert summary.stats.audio_bytes == 5 * 640


async def test_outbound_track_flood_in_transcribe_mode_is_cut_off(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    """The outbound track skipped the pace check (1 200 s of audio to Nova). It has a budget
    of its own, charged on every frame like the inbound track's."""
    ws, b, started = await open_stream(running_app, "CAout", to=DESK)
    await until_live(running_app, "CAout", staff_upstream)
    await flood(ws, [b.media(FRAME, i * 20, track="outbound") for i in range(FLOOD_FRAMES)])
    assert await closed_with(ws) == (1008, "media faster than real time")
    bound = bound_bytes(started)
    summary = await finished(running_app, "CAout")
    assert summary.end_detail == "media faster than real time"
    assert summary.stats.outbound_frames < FLOOD_FRAMES
    nova = fake_deepgram.logs("listen")
    for log in nova:
        await log.wait_closed()
    assert 0 < sum(log.audio_bytes for log in nova) <= bound


async def test_marks_are_counted_not_kept(running_app: RunningApp) -> None:
    """Every mark's name (the sender's to choose, up to the message size) was kept in the call's
    stats for as long as the summary lived: memory that grew with what a caller sent."""
    ws, b, _ = await open_stream(running_app, "CAmarks")
    name = "m" * 20_000
    for _ in range(20):
        await ws.send(b.mark(name))
    await ws.send(b.stop())
    assert (await closed_with(ws))[0] == 1000
    stats = (await finished(running_app, "CAmarks")).stats
    assert stats.marks == 20
    assert name not in repr(stats)
