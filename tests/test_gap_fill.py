"""Lost caller audio is replaced by silence so the engine's clock stays on the call clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from telephony.audio import MAX_GAP_FILL_MS
from telephony.config import load_config
from telephony.session.call import Call
from telephony.session.handshake import CallSetup
from telephony.session.media_intake import SILENCE_FRAME
from telephony.session.summary import CallSummary
from telephony.twilio import messages as tm
from tests.conftest import NUMBERS_YAML, RunningApp, finished
from tests.media_sockets import ListSocket
from tests.test_routes_twilio import closed_with, start_stream

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

VOICE = b"\x55" * 160  # one 20 ms frame that is not silence, to tell real audio from fill
MAX_FRAMES = 10_000


class RecordingEngine:
    def __init__(self) -> None:
        self.audio: list[tuple[int, int, bytes]] = []  # (timestamp, length, payload)
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        await self.stopped.wait()

    def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        # An unbounded fill must fail the test (the call ends in error), not hang it.
        assert len(self.audio) < MAX_FRAMES, "engine flooded"
        self.audio.append((timestamp_ms, len(payload), payload))

    def on_dtmf(self, ms: int, digit: str) -> None:
        pass

    async def close(self) -> None:
        self.stopped.set()


@pytest.fixture
def setup_for(tmp_path: Path):
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS_YAML)
    profile = load_config(path).profiles["support"]

    def build(b: tm.InboundBuilder) -> CallSetup:
        start = tm.parse_inbound(b.start())
        assert isinstance(start, tm.Start)
        return CallSetup(start=start, profile_name="support", profile=profile)

    return build


async def run_call(
    setup_for, timestamps: list[int], *, with_engine: bool = True
) -> tuple[CallSummary, RecordingEngine]:
    """Stream one VOICE frame at each timestamp through a real `Call`."""
    b = tm.InboundBuilder("MZgap", "CAgap", "AC1")
    setup = setup_for(b)
    frames = [b.media(VOICE, ts) for ts in timestamps]
    engine = RecordingEngine()
    factory = (lambda ctx: engine) if with_engine else None
    # The frames come at once, not in real time: the lead covers the fills (which are charged
    # to the audio budget like the audio they stand in for).
    call = Call(ListSocket(frames), setup, engine_factory=factory, max_audio_ahead_ms=10_000)
    summary = await asyncio.wait_for(call.run(), 2)
    # Gone without `stop`: a lost stream, not a hang-up.
    assert (summary.end_reason, summary.end_detail) == ("error", "twilio closed the socket")
    return summary, engine


def fills(engine: RecordingEngine) -> list[tuple[int, int]]:
    return [(ts, n) for ts, n, data in engine.audio if data != VOICE]


def gap_events(summary: CallSummary) -> list[dict]:
    return [e.as_dict() for e in summary.transcript.events if e.kind == "gap-filled"]


async def test_no_gap_forwards_exactly_the_frames(setup_for) -> None:
    summary, engine = await run_call(setup_for, [0, 20, 40, 60])
    assert engine.audio == [(ts, 160, VOICE) for ts in (0, 20, 40, 60)]
    stats = summary.stats
    assert (stats.timestamp_gap_ms, stats.filled_gap_ms, stats.timestamp_overlaps) == (0, 0, 0)
    assert stats.audio_end_ms == 80


async def test_gap_is_filled_with_silence_frames_before_the_real_frame(setup_for) -> None:
    summary, engine = await run_call(setup_for, [0, 20, 100])  # 40..100 lost: 60 ms
    assert [(ts, n) for ts, n, _ in engine.audio] == [
        (0, 160),
        (20, 160),
        (40, 160),
        (60, 160),
        (80, 160),
        (100, 160),
    ]
    assert [data for _, _, data in engine.audio[2:5]] == [SILENCE_FRAME] * 3
    assert all(data is SILENCE_FRAME for _, _, data in engine.audio[2:5])  # shared, not copied
    assert engine.audio[-1][2] == VOICE
    assert sum(n for _, n, _ in engine.audio) == (100 + 20) * 8  # engine clock == call clock
    stats = summary.stats
    assert (stats.timestamp_gap_ms, stats.filled_gap_ms, stats.unfilled_gap_ms) == (60, 60, 0)
    assert (stats.media_frames, stats.audio_bytes) == (3, 3 * 160)  # fill is not "received"


async def test_gap_not_a_multiple_of_a_frame_ends_with_a_short_frame(setup_for) -> None:
    _, engine = await run_call(setup_for, [0, 70])  # 20..70 lost: 50 ms
    assert fills(engine) == [(20, 160), (40, 160), (60, 80)]
    assert set(engine.audio[3][2]) == {0xFF}
    assert sum(n for _, n, _ in engine.audio) == (70 + 20) * 8


async def test_huge_jump_is_filled_only_up_to_the_bound(setup_for) -> None:
    summary, engine = await run_call(setup_for, [0, 10_020])  # 10 s lost
    stats = summary.stats
    assert stats.filled_gap_ms == MAX_GAP_FILL_MS == 2000
    assert stats.unfilled_gap_ms == 8000
    assert stats.timestamp_gap_ms == 10_000
    filled = fills(engine)
    assert len(filled) == 100 and filled[0] == (20, 160) and filled[-1] == (2000, 160)
    assert engine.audio[-1] == (10_020, 160, VOICE)
    assert stats.audio_end_ms == 10_040  # the call clock still follows Twilio
    assert gap_events(summary) == [
        {"ms": 20, "kind": "gap-filled", "filled_ms": 2000, "unfilled_ms": 8000}
    ]


async def test_absurd_timestamp_does_not_loop_or_crash(setup_for) -> None:
    # The largest timestamp the parser takes (18 digits): the fill stops at its bound.
    summary, engine = await run_call(setup_for, [0, 10**17])
    assert summary.stats.filled_gap_ms == MAX_GAP_FILL_MS
    assert len(engine.audio) == 2 + MAX_GAP_FILL_MS // 20


async def test_timestamp_past_64_bits_is_a_malformed_frame(setup_for) -> None:
    summary, engine = await run_call(setup_for, [0, 10**30, 20])
    assert summary.stats.bad_frames == 1  # skipped and counted; the call goes on
    assert summary.stats.filled_gap_ms == 0
    assert [ms for ms, _, _ in engine.audio] == [0, 20]


async def test_backwards_timestamp_is_forwarded_and_counted(setup_for) -> None:
    summary, engine = await run_call(setup_for, [0, 20, 40, 20, 60])
    assert engine.audio == [(ts, 160, VOICE) for ts in (0, 20, 40, 20, 60)]  # nothing filled
    stats = summary.stats
    assert stats.timestamp_overlaps == 1
    assert (stats.timestamp_gap_ms, stats.filled_gap_ms) == (0, 0)
    assert stats.audio_end_ms == 80


async def test_transcript_records_long_fills_only(setup_for) -> None:
    long_gap, _ = await run_call(setup_for, [0, 220])  # 200 ms
    assert gap_events(long_gap) == [{"ms": 20, "kind": "gap-filled", "filled_ms": 200}]
    short_gap, _ = await run_call(setup_for, [0, 60])  # 40 ms
    assert short_gap.stats.filled_gap_ms == 40
    assert gap_events(short_gap) == []


async def test_without_engine_gaps_are_only_counted(setup_for) -> None:
    summary, engine = await run_call(setup_for, [0, 100], with_engine=False)
    assert engine.audio == []
    assert (summary.stats.timestamp_gap_ms, summary.stats.filled_gap_ms) == (80, 80)
    assert summary.stats.audio_end_ms == 120


async def test_call_summary_reports_filled_gap(running_app: RunningApp) -> None:
    ws, b = await start_stream(running_app, "CAgap1")
    for ts in (0, 20, 300, 320):  # 40..300 lost: 260 ms
        await ws.send(b.media(b"\xff" * 160, ts))
    await ws.send(b.stop())
    await closed_with(ws)
    summary = await finished(running_app, "CAgap1")
    assert (summary.stats.filled_gap_ms, summary.stats.unfilled_gap_ms) == (260, 0)
    assert summary.stats.audio_end_ms == 340
    assert {"ms": 40, "kind": "gap-filled", "filled_ms": 260} in [
        e.as_dict() for e in summary.transcript.events
    ]
