"""Per-call stereo recordings: the recorder on a fake clock, the playout's taps, the store link,
and whole calls through the app (caller left, bot right, cleared audio left out)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import warnings
import wave
from array import array
from pathlib import Path

import pytest
from sqlalchemy import select

from telephony.audio import MULAW_SILENCE, silence, tone
from telephony.demo import OfflineCall, run_offline_call
from telephony.session.segments import Segment
from telephony.session.summary import CallSummary
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.store.engine import make_engine
from telephony.store.recording import MAX_GAP_MS, CallRecorder, recording_executor
from telephony.store.schema import calls
from telephony.store.transcripts import TranscriptStore
from telephony.twilio.playout import Playout
from tests import test_store

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SIL = bytes((MULAW_SILENCE,))
db = test_store.db  # the store tests' fixture: SQLite and PostgreSQL


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def frame(n: int, size: int = 160) -> bytes:
    """A recognisable 20 ms frame: a constant μ-law code, never silence."""
    return bytes((0x10 + n % 90,)) * size


def read_wav(path: Path) -> tuple[wave._wave_params, bytes, bytes]:
    """(params, left, right) with each channel as μ-law again (lossless for what we wrote)."""
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        samples = array("h", w.readframes(params.nframes))
    left, right = array("h", samples[0::2]).tobytes(), array("h", samples[1::2]).tobytes()
    return params, audioop.lin2ulaw(left, 2), audioop.lin2ulaw(right, 2)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def sync(executor: concurrent.futures.Executor) -> None:
    """Wait until the worker has done everything submitted so far."""
    executor.submit(lambda: None).result(timeout=10)


@pytest.fixture
def executor() -> concurrent.futures.ThreadPoolExecutor:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


# --- the recorder ------------------------------------------------------------------------------


async def test_caller_track_is_continuous_on_the_call_clock(tmp_path: Path, executor) -> None:
    clock = Clock()
    rec = CallRecorder("CAcaller", tmp_path, clock=clock, executor=executor)
    expected = bytearray()
    for n in range(10):
        if n in (3, 4):  # two frames lost: silence in their place
            continue
        rec.caller(n * 20, frame(n))
    expected += frame(0) + frame(1) + frame(2) + SIL * 320
    for n in range(5, 10):
        expected += frame(n)
    rec.caller(190, frame(50))  # overlaps the last 10 ms: only its new half is kept
    expected += frame(50)[80:]
    rec.caller(210, frame(51))
    expected += frame(51)
    path = await rec.finish()

    assert path == tmp_path / "CAcaller.wav"
    params, left, right = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert params.nframes == len(expected) == 230 * 8  # 230 ms of call clock
    assert left == bytes(expected)
    assert right == SIL * len(expected)  # the bot never spoke
    assert listing(tmp_path) == ["CAcaller.wav"]  # spools gone


async def test_a_long_timestamp_jump_is_squeezed_like_the_gap_fill(tmp_path: Path, executor):
    rec = CallRecorder("CAjump", tmp_path, clock=Clock(), executor=executor)
    rec.caller(0, frame(1))
    rec.caller(20 + 10_000, frame(2))  # 10 s missing: 2 s filled, 8 s left out
    _, left, _ = read_wav(await rec.finish())
    assert left == frame(1) + SIL * (MAX_GAP_MS * 8) + frame(2)
    assert rec.squeezed_ms == 10_000 - MAX_GAP_MS


async def test_bot_audio_is_placed_where_it_plays(tmp_path: Path, executor) -> None:
    clock = Clock(50.0)
    rec = CallRecorder("CAbot", tmp_path, clock=clock, executor=executor)
    jitter = [0.004, 0.0, 0.009, 0.002, 0.006]  # arrival jitter: the anchor moves a little
    bot_frames = [frame(60 + k) for k in range(10)]
    for n in range(100):
        clock.t = 50.0 + n * 0.020 + jitter[n % 5]
        rec.caller(n * 20, frame(n))
        if n == 50:  # ts 1000 arrived 4 ms late; ts 920 (n = 46) on time anchors: now is 1004
            run_start = clock.t + 0.100  # the run plays 100 ms from now
        if 50 <= n < 60:  # sent one by one, paced, while the caller's frames keep coming
            k = n - 50
            rec.bot(bot_frames[k], run_start + k * 0.020)
    _, left, right = read_wav(await rec.finish())

    assert len(left) == len(right) == 2000 * 8
    start = 1104 * 8
    assert right[:start] == SIL * start
    assert right[start : start + 1600] == b"".join(bot_frames)  # laid end to end, no gaps
    assert right[start + 1600 :] == SIL * (len(right) - start - 1600)


async def test_a_burst_of_late_caller_frames_does_not_move_the_bot_early(
    tmp_path: Path, executor
) -> None:
    """The caller's frames stall 300 ms, then arrive at once (a loaded network or host): one
    read mid-burst reads 200 ms early, and a reply sent then was recorded that much before the
    caller heard it. The on-time frames before the stall keep the clock."""
    clock = Clock(30.0)
    rec = CallRecorder("CAburst", tmp_path, clock=clock, executor=executor)
    reply = [frame(70 + k) for k in range(5)]
    for n in range(100):
        clock.t = 30.0 + n * 0.020
        if 40 <= n <= 55:
            clock.t = 30.0 + 55 * 0.020  # ts 800-1100 all arrive at call ms 1100
        rec.caller(n * 20, frame(n))
        if n == 45:  # mid-burst, the reply, played at once: at call ms 1100
            for k, f in enumerate(reply):
                rec.bot(f, clock.t + k * 0.020)
    _, left, right = read_wav(await rec.finish())

    start = 1100 * 8
    assert right[:start] == SIL * start
    assert right[start : start + 800] == b"".join(reply)
    assert left[: 100 * 160] == b"".join(frame(n) for n in range(100))


async def test_the_anchor_follows_a_caller_clock_that_runs_slow(tmp_path: Path, executor):
    """Twilio's media clock 0.5 % slower than ours (a drift, not lateness): every frame reads
    a little earlier than the last anchor says, and still anchors, or after 10 s the bot would
    be placed 50 ms late."""
    clock = Clock(40.0)
    rec = CallRecorder("CAdrift", tmp_path, clock=clock, executor=executor)
    for n in range(500):
        clock.t = 40.0 + n * 0.0201
        rec.caller(n * 20, frame(n))
    rec.bot(frame(80), clock.t)  # plays at once: at call ms 9980, by the caller's clock
    _, _, right = read_wav(await rec.finish())
    assert right.index(frame(80)) == 9980 * 8


async def test_a_run_after_an_underrun_never_goes_over_the_audio_before_it(
    tmp_path: Path, executor
) -> None:
    """Mid-reply the next chunk came 40 ms after the first run ran dry, while the newest caller
    frame had arrived 60 ms late: the anchor reads 60 ms early, which would have put the second
    run 20 ms over the end of the first (under load the recording lost words the caller heard).
    The caller heard both runs whole, 40 ms apart."""
    clock = Clock(20.0)
    rec = CallRecorder("CArun", tmp_path, clock=clock, executor=executor)
    first = [frame(30 + k) for k in range(5)]
    second = [frame(70 + k) for k in range(5)]
    for n in range(100):
        clock.t = 20.0 + n * 0.020
        if n == 60:
            clock.t += 0.060  # this caller frame is late
        rec.caller(n * 20, frame(n))
        if n == 50:  # call ms 1000: the first run, played at once
            for k, f in enumerate(first):
                rec.bot(f, clock.t + k * 0.020)
            dry = clock.t + 0.100
        if n == 60:  # the rest of the reply, played 40 ms after the first run ran dry
            for k, f in enumerate(second):
                rec.bot(f, dry + 0.040 + k * 0.020)
    _, _, right = read_wav(await rec.finish())

    start = 1000 * 8
    assert right[start : start + 800] == b"".join(first)
    assert right[start + 800 : start + 800 + 320] == SIL * 320
    assert right[start + 1120 : start + 1920] == b"".join(second)
    assert right[start + 1920 :] == SIL * (len(right) - start - 1920)


@pytest.mark.parametrize("cut", ["clear", "end"])
async def test_bot_audio_sent_ahead_is_cut_where_a_clear_or_the_streams_end_went_out(
    tmp_path: Path, executor, cut: str
) -> None:
    """70 ms into a 200 ms run the playout had sent ahead, the caller barges in (`clear`) or
    hangs up (the stream's `end`): the rest never reached them, so the file keeps the 70 ms.
    After a clear the call goes on and the next reply is placed where it plays; after the
    end, a late send from the playout being stopped is not kept either."""
    clock = Clock(10.0)
    rec = CallRecorder(f"CA{cut}", tmp_path, clock=clock, executor=executor)
    sent = [frame(30 + k) for k in range(10)]
    second = [frame(80 + k) for k in range(3)]
    for n in range(150 if cut == "clear" else 54):
        clock.t = 10.0 + n * 0.020
        rec.caller(n * 20, frame(n))
        if n == 50:  # at call ms 1000: a run of 200 ms is sent (Twilio buffers it)
            for k, f in enumerate(sent):
                rec.bot(f, clock.t + k * 0.020)
        if n == 53 and cut == "clear":  # `clear` at call ms 1070
            clock.t += 0.010
            rec.clear(clock.t)
        if n == 100:  # the next reply, at call ms 2000
            for k, f in enumerate(second):
                rec.bot(f, clock.t + k * 0.020)
    if cut == "end":  # the stream ends at call ms 1070
        clock.t += 0.010
        rec.end(clock.t)
        rec.bot(frame(99), clock.t + 0.5)
    _, _, right = read_wav(await rec.finish())

    played = b"".join(sent)[: 70 * 8]  # three frames and half of the fourth
    assert right[: 1000 * 8] == SIL * 8000
    assert right[8000 : 8000 + len(played)] == played
    if cut == "end":
        assert right[8000 + len(played) :] == SIL * (len(right) - 8000 - len(played))
        return
    assert right[8000 + len(played) : 2000 * 8] == SIL * (16000 - 8000 - len(played))
    assert right[16000:16480] == b"".join(second)
    assert right[16480:] == SIL * (len(right) - 16480)


async def test_a_forks_end_keeps_twilios_outbound_track_whole(tmp_path: Path, executor) -> None:
    """On a fork the right channel is the person, placed by Twilio's timestamps, not the
    playout's sends: nothing of it is cut at the end."""
    clock = Clock(10.0)
    rec = CallRecorder("CAforkend", tmp_path, clock=clock, executor=executor)
    for n in range(50):
        clock.t = 10.0 + n * 0.020
        rec.caller(n * 20, frame(n))
        rec.outbound(n * 20 + 20, frame(n + 40))  # a frame ahead of the caller's, as may be
    rec.end(clock.t)
    _, _, right = read_wav(await rec.finish())
    assert right[160 : 160 + 50 * 160] == b"".join(frame(n + 40) for n in range(50))


async def test_audio_is_spooled_during_the_call_and_the_spools_removed(tmp_path: Path) -> None:
    """The shared worker thread gets the final part every 5 s; the last second of bot audio
    (a clear could still cut it) stays in memory; the WAV covers the longer track."""
    clock = Clock(0.0)
    rec = CallRecorder("CAspool", tmp_path, clock=clock)
    caller_spool = tmp_path / "CAspool.caller.ulaw.part"
    bot_spool = tmp_path / "CAspool.bot.ulaw.part"
    bot_all = bytearray()
    for n in range(600):  # 12 s of caller audio; the bot talks from 3 s on, without a break
        clock.t = n * 0.020
        rec.caller(n * 20, frame(n))
        if n >= 150:
            f = frame(n + 7)
            rec.bot(f, clock.t + 0.100)
            bot_all += f
    sync(recording_executor())
    assert caller_spool.stat().st_size == 10_000 * 8  # two 5 s chunks; 2 s still in memory
    # The bot track up to 1 s before "now" at the last hand-over (the frame of 9980 ms came).
    assert bot_spool.stat().st_size == 8_980 * 8
    clock.t += 0.020
    rec.bot(frame(1), clock.t + 0.100)  # a frame playing beyond the last caller audio
    bot_all += frame(1)
    params, left, right = read_wav(await rec.finish())

    assert not caller_spool.exists() and not bot_spool.exists()
    assert params.nframes == 3100 * 8 + len(bot_all)  # bot from 3.1 s, past the caller's end
    assert left == b"".join(frame(n) for n in range(600)) + SIL * (params.nframes - 12_000 * 8)
    assert right == SIL * (3100 * 8) + bot_all


async def test_bot_memory_stays_bounded_when_caller_frames_stop(tmp_path: Path, executor):
    """No caller audio at all (the clock anchored at the start): the bot's own length hands
    the final part to the worker, and the file is still right."""
    clock = Clock(5.0)
    rec = CallRecorder("CAquiet", tmp_path, clock=clock, executor=executor)
    bot_all = bytearray()
    for n in range(1000):  # 20 s of bot speech from call ms 500, paced 100 ms ahead
        clock.t = 5.4 + n * 0.020
        f = frame(n)
        rec.bot(f, clock.t + 0.100)
        bot_all += f
        assert len(rec._bot) <= 2 * 5000 * 8
    _, left, right = read_wav(await rec.finish())
    assert right == SIL * (500 * 8) + bot_all
    assert left == SIL * len(right)


async def test_a_failing_recording_is_logged_with_the_call_sid_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, executor
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    rec = CallRecorder("CAbroken", blocker, clock=Clock(), executor=executor)
    for n in range(300):  # 6 s: one hand-over to the worker, which fails
        rec.caller(n * 20, frame(n))
    with caplog.at_level(logging.ERROR):
        assert await rec.finish() is None
    assert any(getattr(r, "call_sid", None) == "CAbroken" for r in caplog.records)


async def test_a_bug_on_the_audio_path_stops_the_recording_not_the_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, executor
) -> None:
    rec = CallRecorder("CAbug", tmp_path, clock=Clock(), executor=executor)
    for n in range(300):
        rec.caller(n * 20, frame(n))

    def broken_clock() -> float:
        raise ValueError("bug")

    rec._clock = broken_clock
    with caplog.at_level(logging.ERROR):
        rec.caller(6000, frame(1))  # nothing raised to the call
        rec.bot(frame(2), 1.0)
        rec.clear(2.0)
        assert await rec.finish() is None
    assert [r.call_sid for r in caplog.records] == ["CAbug"]  # logged once
    assert listing(tmp_path) == []  # the spool of the first 5 s is gone too


async def test_outbound_track_is_the_right_channel_at_its_timestamps(tmp_path: Path, executor):
    """A both_tracks fork (transcribe mode): the person on the call is the right channel."""
    rec = CallRecorder("CAfork", tmp_path, clock=Clock(), executor=executor)
    for n in range(10):
        rec.caller(n * 20, frame(n))
        if n != 4:  # one outbound frame lost: silence in its place
            rec.outbound(n * 20, frame(40 + n))
    _, left, right = read_wav(await rec.finish())
    assert left == b"".join(frame(n) for n in range(10))
    assert right == b"".join(SIL * 160 if n == 4 else frame(40 + n) for n in range(10))


@pytest.mark.parametrize("earlier_ms", [3000, 1000, None])  # longer, shorter, none at all
async def test_a_continuation_rewrites_the_call_recording_after_its_start(
    tmp_path: Path, executor, earlier_ms: int | None
) -> None:
    """After a transfer the fork's recorder starts at the call time it continues from and
    rewrites `<CallSid>.wav`: the earlier part cut (or padded) to exactly that, then its own."""
    start_ms = 2000
    earlier = b""
    if earlier_ms is not None:
        first = CallRecorder("CAxfer", tmp_path, clock=Clock(), executor=executor)
        for n in range(earlier_ms // 20):
            first.caller(n * 20, frame(n))
        await first.finish()
        earlier = b"".join(frame(n) for n in range(earlier_ms // 20))[: start_ms * 8]
    fork = CallRecorder("CAxfer", tmp_path, clock=Clock(), executor=executor, start_ms=start_ms)
    for n in range(50):
        fork.caller(start_ms + n * 20, frame(n + 7))
        fork.outbound(start_ms + n * 20, frame(n + 60))
    path = await fork.finish()

    assert path == tmp_path / "CAxfer.wav" and listing(tmp_path) == ["CAxfer.wav"]
    params, left, right = read_wav(path)
    assert params.nframes == (start_ms + 1000) * 8
    prefix = earlier + SIL * (start_ms * 8 - len(earlier))
    assert left == prefix + b"".join(frame(n + 7) for n in range(50))
    assert right == SIL * (start_ms * 8) + b"".join(frame(n + 60) for n in range(50))


# --- the playout's taps ------------------------------------------------------------------------


async def test_playout_reports_each_frame_with_its_play_time_and_the_clear() -> None:
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    playout = Playout(send, "MZ1", lead_ms=1000)
    frames: list[tuple[bytes, float]] = []
    clears: list[float] = []
    playout.on_frame = lambda f, at: frames.append((f, at))
    playout.on_clear = clears.append
    task = asyncio.create_task(playout.run())
    try:
        seg = Segment("s0", "hi")
        playout.add_audio(frame(1) + frame(2) + frame(3), seg)
        playout.end_segment(seg)
        for _ in range(100):
            if len(frames) == 3:
                break
            await asyncio.sleep(0.01)
        assert [f for f, _ in frames] == [frame(1), frame(2), frame(3)]
        start = frames[0][1]
        assert [round((at - start) * 1000) for _, at in frames] == [0, 20, 40]
        await playout.clear()  # the mark is unechoed: there is audio to clear
        assert len(clears) == 1 and clears[0] >= start
        await playout.clear()  # nothing left to clear: no clear sent, no tap
        assert len(clears) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- the store link ----------------------------------------------------------------------------


async def test_call_ended_links_the_recording_without_touching_other_columns(db) -> None:
    store = TranscriptStore(db.engine, flush_interval=0.01)
    await store.start()
    summary = CallSummary("CArec", "MZ1", "support", "+1555", "+1666", started_at=1000.0)
    summary.ended_at, summary.end_reason = 1010.0, "stop"
    store.call_started("CArec", profile="support", mode="flux", started_at=1000.0)
    store.call_ended(summary, mode="flux")
    await store.stop()
    await store.start()
    store.call_ended(summary, recording_path="/rec/CArec.wav")  # no mode: kept
    await store.stop()
    await store.start()
    store.call_ended(summary)  # neither: the link stays
    await store.stop()
    call = await store.get_call("CArec")
    assert call["recording_path"] == "/rec/CArec.wav"
    assert call["mode"] == "flux" and call["end_reason"] == "stop" and call["ended_at"] == 1010.0


# --- whole calls through the app ---------------------------------------------------------------

MS_PER_CHAR = 30

NUMBERS = """\
numbers:
  "+15550001000": recorded
profiles:
  recorded:
    mode: flux
    recording: true
    greeting: "Hi."
    responder:
      type: scripted
      rules:
        - {pattern: "hours", reply: "We are open. Nine to five on weekdays, closed weekends."}
        - {pattern: "bye", reply: "Goodbye!", action: hangup}
      fallback: "Sorry?"
"""


async def recorded_call(tmp_path: Path, turns: list[ScriptedTurn], audio: bytes) -> OfflineCall:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return await run_offline_call(
        number="+15550001000",
        script=Script(turns=turns),
        config_path=path,
        audio=audio,
        max_call_ms=10_000,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
    )


async def recording_of(database: str, call_sid: str) -> Path:
    engine = make_engine(database)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(select(calls).where(calls.c.sid == call_sid))).one()
    finally:
        await engine.dispose()
    assert row.recording_path, "the call was not linked to its recording"
    assert row.ended_at is not None
    return Path(row.recording_path)


def rms(audio: bytes, start_ms: float, end_ms: float) -> int:
    chunk = audio[int(start_ms * 8) : int(end_ms * 8)]
    return audioop.rms(audioop.ulaw2lin(chunk, 2), 2) if chunk else 0


async def test_a_recorded_call_has_the_caller_left_and_the_bot_right(
    tmp_path: Path, database: str, recordings_dir: Path
) -> None:
    # The caller really speaks (a tone) while the fake Flux hears "What are your hours?".
    audio = silence(1000) + tone(440, 800) + silence(4000) + tone(660, 600)
    result = await recorded_call(
        tmp_path,
        [
            ScriptedTurn(start_ms=1000, end_ms=1800, text="What are your hours?"),
            ScriptedTurn(start_ms=5800, end_ms=6400, text="Okay bye."),
        ],
        audio,
    )
    assert result.summary is not None and result.summary.end_reason == "bot-hangup"
    path = await recording_of(database, result.caller.call_sid)
    assert path == recordings_dir / f"{result.caller.call_sid}.wav" and path.is_file()
    assert listing(recordings_dir) == [path.name]  # no spools left
    params, left, right = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert abs(params.nframes / 8 - result.summary.stats.audio_end_ms) <= 20

    # Left: the caller's audio exactly where it was on the call clock.
    assert left[: len(audio)] == audio
    assert rms(left, 1000, 1800) > 1000 and rms(left, 100, 950) == 0 and rms(left, 2000, 5700) == 0

    # Right: the bot, where the caller heard it (the fake caller's play-out), nothing else.
    heard = result.caller.heard_segments
    words = tts_text(right, MS_PER_CHAR, across_gaps=True)  # an underrun splits a word
    assert words.startswith("Hi.We are open.Nine to five")
    assert words == tts_text(result.caller.heard, MS_PER_CHAR, across_gaps=True)
    greeting = heard[0]
    first_audio_ms = next(i for i, b in enumerate(right) if b != MULAW_SILENCE) / 8
    assert abs(first_audio_ms - greeting.start_ms) <= 25
    for seg in heard:
        assert rms(right, seg.start_ms + 25, seg.end_ms - 25) > 1000
    assert rms(right, heard[0].end_ms + 25, heard[1].start_ms - 25) == 0


async def test_a_barge_in_leaves_the_cleared_reply_out_of_the_recording(
    tmp_path: Path, database: str
) -> None:
    result = await recorded_call(
        tmp_path,
        [
            ScriptedTurn(start_ms=1000, end_ms=1800, text="What are your hours?"),
            # The reply starts ~1.9 s; "We are open." (360 ms) has played by 2.6 s.
            ScriptedTurn(start_ms=2700, end_ms=3300, text="Sorry, goodbye."),
        ],
        silence(10_000),
    )
    caller = result.caller
    # The service had sent the rest of the reply; the fake Twilio dropped it on `clear`.
    assert caller.clears and caller.cleared_bytes > 0
    clear_ms = caller.clears[0]
    _, _, right = read_wav(await recording_of(database, caller.call_sid))

    reply, goodbye = caller.heard_segments[1], caller.heard_segments[-1]
    # Read across underrun gaps: the service's playout and the fake caller's ran dry at
    # different moments under load, splitting different characters.
    recorded = tts_text(right, MS_PER_CHAR, across_gaps=True)
    heard = tts_text(caller.heard, MS_PER_CHAR, across_gaps=True)
    assert recorded.startswith("Hi.We are open.") and recorded.endswith("Goodbye!")
    assert "on weekdays" not in recorded
    # What was recorded is what the caller heard (give or take the character cut by `clear`).
    short, long = sorted((recorded.removesuffix("Goodbye!"), heard.removesuffix("Goodbye!")))
    assert long.startswith(short) and len(long) - len(short) <= 1
    assert rms(right, reply.start_ms + 25, clear_ms - 25) > 1000  # played: recorded
    assert rms(right, clear_ms + 25, goodbye.start_ms - 25) == 0  # cleared: silent
    assert goodbye.start_ms - clear_ms > 300  # (a real stretch of silence was checked)


# --- a transfer that stays transcribed, and transcribe mode: the person on the right ----------

TRANSFER_NUMBER = "+15557770000"
TRANSFER_YAML = f"""\
numbers:
  "+15550007000": recorded-bot
  "+15550005000": recorded-desk
profiles:
  recorded-bot:
    mode: flux
    recording: true
    greeting: "Hi."
    transfer_number: "{TRANSFER_NUMBER}"
    transcribe_after_transfer: true
    responder:
      type: scripted
      rules: [{{pattern: "human", reply: "Transferring you now.", action: transfer}}]
      fallback: "Sorry?"
  recorded-desk:
    mode: transcribe
    recording: true
    transcribe: {{dial: "+15550009002"}}
"""
# Call clock of the caller's tone after the transfer; fork time of the person's answer.
CALLER_TONE_MS = (5000, 5600)
AGENT_TONE_MS = (600, 1400)
CALLER_AUDIO = (
    silence(1000)
    + tone(440, 800)  # "I want a human"
    + silence(CALLER_TONE_MS[0] - 1800)
    + tone(880, CALLER_TONE_MS[1] - CALLER_TONE_MS[0])
    + silence(1500)
)


def transfer_config(directory: Path) -> Path:
    path = directory / "transfer-numbers.yaml"
    path.write_text(TRANSFER_YAML)
    return path


async def recorded_transfer_call(directory: Path) -> OfflineCall:
    """A recorded Flux call whose bot hands over to a person (Twilio's fork continues the
    transcript). The caller asks for a human (a 440 Hz tone) and later says something else
    (880 Hz); the person answers with a 500 Hz tone while the fake Nova hears "Hello this is
    Sam", 600 ms into the fork. Both parties' audio is known, so the WAV can be checked."""
    agent_start, agent_end = AGENT_TONE_MS
    return await run_offline_call(
        number="+15550007000",
        script=Script(turns=[ScriptedTurn(start_ms=1000, end_ms=1800, text="I want a human")]),
        staff_script=Script(turns=[ScriptedTurn(agent_start, agent_end, "Hello this is Sam")]),
        agent_audio=silence(agent_start) + tone(500, agent_end - agent_start) + silence(600),
        config_path=transfer_config(directory),
        audio=CALLER_AUDIO,
        max_call_ms=CALLER_TONE_MS[1] + 1500,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
    )


async def test_a_transferred_call_is_recorded_whole_on_the_call_clock(
    tmp_path: Path, database: str, recordings_dir: Path
) -> None:
    """The fork's tracks after a transfer go into the call's one WAV: caller left, bot then
    the person right, where the stored turns say they are."""
    result = await recorded_transfer_call(tmp_path)
    sid = result.caller.call_sid
    assert len(result.parts) == 2, "the call was not transferred"
    path = await recording_of(database, sid)
    assert listing(recordings_dir) == [path.name]  # one file, no spools left
    params, left, right = read_wav(path)
    engine = make_engine(database)
    try:
        call = await TranscriptStore(engine).get_call(sid)
    finally:
        await engine.dispose()
    [handover] = [e for e in call["events"] if e["kind"] == "handover"]
    at = handover["ms"]
    end_ms = result.parts[-1].stats.audio_end_ms
    assert abs(params.nframes / 8 - end_ms) <= 20  # the whole call, not the bot's part

    # Right: the bot until the handover, then the person, on the fork's clock from `at`.
    # An underrun under load (the next chunk sent late) is silence the caller heard mid-word.
    words = tts_text(right[: at * 8], MS_PER_CHAR, across_gaps=True)
    assert words == "Hi.Transferring you now."
    assert rms(right, at + 25, at + AGENT_TONE_MS[0] - 25) == 0
    staff = [t for t in call["turns"] if t["role"] == "staff"]
    assert [t["text"] for t in staff] == ["Hello this is Sam"]
    assert abs(staff[0]["start_ms"] - (at + AGENT_TONE_MS[0])) <= 40
    assert rms(right, staff[0]["start_ms"] + 50, staff[0]["end_ms"] - 50) > 1000  # lines up
    assert rms(right, at + AGENT_TONE_MS[1] + 25, end_ms) == 0

    # Left: the caller throughout; before the handover exactly as sent.
    assert left[: at * 8] == CALLER_AUDIO[: at * 8]
    # The fork's caller audio: on the service's call clock from `at`. The fake caller's clock
    # ran on while the fork connected, so its audio lands about that much earlier (as a real
    # call's would: what is said while Twilio opens the fork is not streamed); the two clocks
    # also round to whole frames differently.
    start, end = CALLER_TONE_MS
    onset_ms = next(i for i in range(at * 8, len(left)) if left[i] != MULAW_SILENCE) / 8
    assert start - 300 <= onset_ms <= start + 45, (onset_ms, start)
    shift = start - onset_ms
    assert rms(left, onset_ms, end - shift) > 1000 and rms(left, end - shift + 1, end_ms) == 0
    # Every turn starts inside the recording.
    assert all(t["start_ms"] < params.nframes / 8 for t in call["turns"])


async def test_a_transcribe_mode_recording_has_the_person_on_the_right(
    tmp_path: Path, database: str
) -> None:
    agent_audio = silence(700) + tone(500, 900) + silence(400)
    caller_audio = silence(200) + tone(440, 400) + silence(1400)
    result = await run_offline_call(
        number="+15550005000",
        mode="transcribe",
        config_path=transfer_config(tmp_path),
        audio=caller_audio,
        agent_audio=agent_audio,
        staff_script=Script(turns=[ScriptedTurn(700, 1600, "Hello")]),
        script=Script(turns=[ScriptedTurn(200, 600, "Hi")]),
    )
    _, left, right = read_wav(await recording_of(database, result.caller.call_sid))
    assert left[: len(caller_audio)] == caller_audio
    assert right[: len(agent_audio)] == agent_audio  # outbound frames, at their timestamps


@pytest.mark.parametrize("jump_ms", [1_000_000, 10**15])
async def test_an_outbound_timestamp_far_ahead_cannot_grow_the_recording(
    tmp_path: Path, executor, jump_ms: int
) -> None:
    """Issue 21: the outbound track is placed by its timestamp, which the sender picks; one
    frame 17 min (or 30 000 years) ahead had the recorder pad, spool and write that much
    silence. It is placed at most MAX_GAP_MS ahead of the call's present."""
    clock = Clock()
    rec = CallRecorder("CAahead", tmp_path, clock=clock, executor=executor)
    for n in range(10):
        rec.caller(n * 20, frame(n))
        rec.outbound(n * 20, frame(40 + n))
    rec.outbound(jump_ms, frame(70))
    clock.t += 0.02
    rec.outbound(jump_ms + 20, frame(71))  # and on from there at real time: still bounded
    path = await rec.finish()
    assert path is not None
    _, left, right = read_wav(path)
    assert left.startswith(b"".join(frame(n) for n in range(10)))  # then padded to the right's
    assert len(right) <= (200 + MAX_GAP_MS + 40) * 8
    assert right[: 10 * 160] == b"".join(frame(40 + n) for n in range(10))
    assert right.endswith(frame(70) + frame(71))
