"""The recording's waveform (telephony/store/waveform.py and /calls/{sid}/waveform.json): per
channel, the loudest sample of each slice as a 0..100 level on a -60..0 dBFS scale."""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path

import pytest

from telephony.store import waveform
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts, store_call
from tests.test_staff_ui import TURNS, client_as

RATE = 8000


def write_wav(path: Path, left: list[int], right: list[int]) -> None:
    """A stereo PCM16 WAV, one (left, right) sample pair per entry."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        pairs = zip(left, right, strict=True)
        out.writeframes(b"".join(struct.pack("<hh", a, b) for a, b in pairs))


def tone(seconds: float, amplitude: int) -> list[int]:
    n = int(seconds * RATE)
    return [round(amplitude * math.sin(2 * math.pi * 440 * i / RATE)) for i in range(n)]


def test_levels_are_logarithmic_from_the_floor_to_full_scale() -> None:
    assert waveform.level(0) == 0
    assert waveform.level(32) == 0  # about -60 dBFS: the floor
    assert waveform.level(32767) == 100
    assert waveform.level(1036) == 50  # -30 dBFS: half way on the scale, ~3% on a linear one
    assert waveform.level(-5) == 0


def test_each_channel_shows_when_its_side_spoke(tmp_path: Path) -> None:
    """Caller (left) loud in the first second, the heard side (right) in the second."""
    path = tmp_path / "call.wav"
    silence = [0] * RATE
    write_wav(path, tone(1, 20_000) + silence, silence + tone(1, 3_000))
    wave_ = waveform.compute(path, max_buckets=20)
    assert wave_.duration_ms == 2000 and wave_.bucket_ms == 100.0
    assert len(wave_.left) == len(wave_.right) == 20
    assert all(v == 93 for v in wave_.left[:10])  # -4.3 dBFS and wave_.left[10:] == [0] * 10
    assert wave_.right[:10] == [0] * 10 and all(v == 65 for v in wave_.right[10:])  # -20.8 dBFS


def test_a_long_call_is_bounded_to_max_buckets_and_short_slices_to_10_ms(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    write_wav(path, [100] * (RATE * 30), [0] * (RATE * 30))
    long = waveform.compute(path, max_buckets=1000)
    assert len(long.left) <= 1000 and long.bucket_ms == 30.0
    short = tmp_path / "short.wav"
    write_wav(short, [100] * RATE, [0] * RATE)
    assert waveform.compute(short).bucket_ms == 10.0  # never finer than 10 ms


def test_the_cache_sees_a_rewritten_recording(tmp_path: Path) -> None:
    """A transfer's continuation rewrites the WAV (store/recording.py): the page must not keep
    drawing the bot part alone."""
    path = tmp_path / "rewritten.wav"
    write_wav(path, [0] * RATE, [0] * RATE)
    assert waveform.cached(path).duration_ms == 1000
    tmp = tmp_path / "next.wav"
    write_wav(tmp, [0] * (3 * RATE), [0] * (3 * RATE))
    os.replace(tmp, path)
    assert waveform.cached(path).duration_ms == 3000


def test_a_mono_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(bytes(RATE * 2))
    with pytest.raises(ValueError, match="not a stereo"):
        waveform.compute(path)


async def test_the_route_serves_levels_and_404s_without_a_recording(
    running_app: RunningApp, database: str, tmp_path: Path
) -> None:
    await add_accounts(database)
    sid, bare, broken = "CA" + "5" * 32, "CA" + "6" * 32, "CA" + "7" * 32
    wav = tmp_path / f"{sid}.wav"
    write_wav(wav, tone(0.5, 20_000), [0] * (RATE // 2))
    junk = tmp_path / f"{broken}.wav"
    junk.write_bytes(b"RIFF not really")
    await store_call(database, sid, turns=TURNS, recording_path=str(wav))
    await store_call(database, bare, turns=TURNS)
    await store_call(database, broken, turns=TURNS, recording_path=str(junk))
    async with client_as(running_app, STAFF) as client:
        resp = await client.get(f"/calls/{sid}/waveform.json")
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
        assert resp.headers["cache-control"] == "private, no-cache"
        body = resp.json()
        assert body["duration_ms"] == 500 and len(body["left"]) == 50
        assert min(body["left"]) >= 90 and max(body["right"]) == 0
        assert (await client.get(f"/calls/{bare}/waveform.json")).status_code == 404
        assert (await client.get(f"/calls/{broken}/waveform.json")).status_code == 404
        page = await client.get(f"/calls/{sid}")
        assert f'data-src="/calls/{sid}/waveform.json"' in page.text
        assert 'role="img"' in page.text
