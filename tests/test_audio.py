"""telephony.audio against known values: G.711 codes, tone frequency and level, exact lengths."""

from __future__ import annotations

import itertools
import math
import random
import struct
import sys
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.audio import (
    FRAME_BYTES,
    FRAME_MS,
    MULAW_SILENCE,
    TWILIO_RATE,
    Chunker,
    Framer,
    Linear16kToMulaw,
    MulawToLinear16k,
    Resampler,
    pcm16_to_ulaw,
    read_wav_as_mulaw8k,
    silence,
    tone,
    tone_pcm16,
    ulaw_to_pcm16,
    write_wav,
)

AMP = 0.5 * 32767  # amplitude of tone(..., amplitude=0.5)


# --- helpers ---------------------------------------------------------------------------------


def samples(pcm16_le: bytes) -> array:
    out = array("h", pcm16_le)
    if sys.byteorder == "big":
        out.byteswap()
    return out


def pcm(values: list[int] | range) -> bytes:
    out = array("h", values)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def rms(x: array) -> float:
    return math.sqrt(sum(v * v for v in x) / len(x))


def goertzel_amplitude(x: array, rate: int, freq: float) -> float:
    """Amplitude of the `freq` component of x (exact for whole cycles in the window)."""
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return 2.0 * math.sqrt(max(power, 0.0)) / len(x)


def tone_energy_fraction(x: array, rate: int, freq: float) -> float:
    """Share of the signal's power that is in the sinusoid at `freq`."""
    amp = goertzel_amplitude(x, rate, freq)
    return (amp * amp / 2) / (rms(x) ** 2)


def zero_crossings(x: array) -> int:
    return sum(1 for a, b in itertools.pairwise(x) if (a < 0) != (b < 0))


def frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- constants and μ-law ---------------------------------------------------------------------


def test_constants() -> None:
    assert (MULAW_SILENCE, FRAME_BYTES, FRAME_MS, TWILIO_RATE) == (0xFF, 160, 20, 8000)
    assert FRAME_BYTES == TWILIO_RATE * FRAME_MS // 1000


def test_mulaw_of_zero_is_ff() -> None:
    assert pcm16_to_ulaw(pcm([0, 0, 0])) == b"\xff\xff\xff"


@pytest.mark.parametrize(
    ("code", "value"),
    [(0x00, -32124), (0x80, 32124), (0x7F, 0), (0xFF, 0), (0xFE, 8), (0x7E, -8), (0xF0, 120)],
)
def test_known_ulaw_decodes(code: int, value: int) -> None:
    assert samples(ulaw_to_pcm16(bytes([code]))).tolist() == [value]


@pytest.mark.parametrize(
    ("value", "code"), [(0, 0xFF), (32767, 0x80), (-32768, 0x00), (8, 0xFE), (-8, 0x7E)]
)
def test_known_ulaw_encodes(value: int, code: int) -> None:
    assert pcm16_to_ulaw(pcm([value])) == bytes([code])


def test_pcm_ulaw_pcm_error_bounded_for_every_value() -> None:
    """G.711 μ-law: segment s spans biased magnitudes [2^(s+7), 2^(s+8)) (bias 132) in steps of
    2^(s+3); decoding returns the step's middle, so |error| <= 2^(s+2) <= (|x| + 132) / 32, plus
    up to 3 for the encoder's drop of the 2 low bits (and clipping above 32635 stays inside).
    I.e. about 3.1 % of |x| + 8.
    """
    xs = array("h", range(-32768, 32768))
    ys = samples(ulaw_to_pcm16(pcm16_to_ulaw(pcm(xs))))
    worst = max(abs(y - x) - (abs(x) + 132) / 32 for x, y in zip(xs, ys, strict=True))
    assert worst <= 4
    # small values are reproduced almost exactly (segment 0 step is 8)
    assert all(abs(y - x) <= 8 for x, y in zip(xs, ys, strict=True) if abs(x) < 100)


def test_ulaw_pcm_ulaw_is_identity_except_negative_zero() -> None:
    codes = bytes(range(256))
    back = pcm16_to_ulaw(ulaw_to_pcm16(codes))
    expected = bytearray(codes)
    expected[0x7F] = 0xFF  # 0x7F and 0xFF both decode to 0, which encodes as 0xFF
    assert back == bytes(expected)


# --- resampling ------------------------------------------------------------------------------


def resample_in_frames(resampler: Resampler, data: bytes, frame_bytes: int) -> list[bytes]:
    return [resampler.process(f) for f in frames(data, frame_bytes)]


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "in_frame"), [(8000, 16000, 160), (16000, 8000, 320)]
)
def test_resampled_sine_keeps_frequency_level_and_has_no_clicks(
    in_rate: int, out_rate: int, in_frame: int
) -> None:
    source = tone_pcm16(1000, 1000, rate=in_rate)
    outs = resample_in_frames(Resampler(in_rate, out_rate), source, 2 * in_frame)
    out_frame = in_frame * out_rate // in_rate
    assert {len(o) for o in outs} == {2 * out_frame}  # every 20 ms frame -> exactly 20 ms
    y = samples(b"".join(outs))
    assert len(y) == out_rate

    assert tone_energy_fraction(y, out_rate, 1000) > 0.97
    assert abs(zero_crossings(y) - 2000) <= 2
    level_db = 20 * math.log10(rms(y) / rms(samples(source)))
    assert abs(level_db) < 1.0

    # a sine's largest step between samples is A·2πf/fs; a frame-edge glitch would exceed it
    max_step = AMP * 2 * math.pi * 1000 / out_rate
    assert max(abs(b - a) for a, b in itertools.pairwise(y)) <= max_step * 1.05


def test_mulaw_to_linear16k_tone() -> None:
    conv = MulawToLinear16k()
    outs = [conv.convert(f) for f in frames(tone(1000, 1000), FRAME_BYTES)]
    assert {len(o) for o in outs} == {640}
    y = samples(b"".join(outs))
    assert tone_energy_fraction(y, 16000, 1000) > 0.97
    assert abs(zero_crossings(y) - 2000) <= 2
    assert abs(20 * math.log10(rms(y) / (AMP / math.sqrt(2)))) < 1.0


def test_linear16k_to_mulaw_tone() -> None:
    conv = Linear16kToMulaw()
    outs = [conv.convert(f) for f in frames(tone_pcm16(1000, 1000, rate=16000), 640)]
    assert {len(o) for o in outs} == {FRAME_BYTES}
    y = samples(ulaw_to_pcm16(b"".join(outs)))
    assert tone_energy_fraction(y, 8000, 1000) > 0.97
    assert abs(zero_crossings(y) - 2000) <= 2
    assert abs(20 * math.log10(rms(y) / (AMP / math.sqrt(2)))) < 1.0


RATE_PAIRS = [
    (8000, 16000),
    (16000, 8000),
    (8000, 24000),
    (24000, 8000),
    (8000, 48000),
    (48000, 8000),
    (8000, 44100),
    (44100, 8000),
    (16000, 24000),
    (22050, 16000),
    (8000, 8000),
]


def noise(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return pcm([rng.randint(-20000, 20000) for _ in range(n)])


def random_splits(data: bytes, seed: int, max_len: int = 900) -> list[bytes]:
    """Cut at random byte positions, odd ones included (a sample split across calls)."""
    rng = random.Random(seed)
    parts, pos = [], 0
    while pos < len(data):
        step = rng.randint(0, max_len)
        parts.append(data[pos : pos + step])
        pos += step
    return parts


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_piecewise_resampling_equals_whole(in_rate: int, out_rate: int) -> None:
    source = noise(4000, seed=in_rate + out_rate)
    whole = samples(Resampler(in_rate, out_rate).process(source))
    r = Resampler(in_rate, out_rate)
    piecewise = samples(b"".join(r.process(p) for p in random_splits(source, seed=in_rate)))
    assert len(piecewise) == len(whole)
    assert max(abs(a - b) for a, b in zip(whole, piecewise, strict=True)) <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_output_length_is_exact_over_time(in_rate: int, out_rate: int) -> None:
    r = Resampler(in_rate, out_rate)
    rng = random.Random(out_rate)
    total_in = total_out = 0
    for _ in range(300):
        n = rng.randint(0, 500)
        total_in += n
        total_out += len(r.process(bytes(2 * n))) // 2
        expected = total_in * out_rate / in_rate
        if total_in and out_rate % in_rate == 0:
            assert total_out == expected  # integer up-ratio: exact after every call
        else:
            assert abs(total_out - round(expected)) <= 1
            assert abs(total_out - expected) < 1


def test_resampler_reset_starts_over() -> None:
    source = tone_pcm16(440, 100)
    r = Resampler(8000, 16000)
    first = r.process(source)
    r.process(b"\x01")  # leave a carried byte and state behind
    r.reset()
    assert r.process(source) == first


def test_resampler_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        Resampler(0, 8000)


# --- Framer ----------------------------------------------------------------------------------

byte_chunks = st.lists(st.binary(max_size=700), max_size=25)


@settings(max_examples=150, deadline=None)
@given(byte_chunks)
def test_framer_reassembles_input_with_ff_padding(chunks: list[bytes]) -> None:
    framer = Framer()
    out: list[bytes] = []
    fed = 0
    for chunk in chunks:
        out += framer.push(chunk)
        fed += len(chunk)
        assert framer.pending == fed % FRAME_BYTES
    tail = framer.flush()
    data = b"".join(chunks)
    if len(data) % FRAME_BYTES:
        assert tail is not None
        out.append(tail)
    else:
        assert tail is None
    assert all(len(f) == FRAME_BYTES for f in out)
    assert b"".join(out) == data + b"\xff" * (-len(data) % FRAME_BYTES)
    assert framer.pending == 0 and framer.flush() is None


def test_framer_pcm_frames_and_zero_padding() -> None:
    framer = Framer(frame_bytes=640, pad=0)
    assert framer.push(b"\x01" * 1000) == [b"\x01" * 640]
    assert framer.pending == 360
    assert framer.flush() == b"\x01" * 360 + b"\x00" * 280


def test_framer_whole_frame_passes_through() -> None:
    framer = Framer()
    frame = bytes(range(160))
    assert framer.push(frame) == [frame]
    assert framer.push(b"") == []
    assert framer.push(frame[:10]) == []
    assert framer.push(frame[10:] + frame) == [frame, frame]
    framer.push(b"abc")
    framer.clear()
    assert framer.flush() is None


# --- Chunker ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(byte_chunks, st.sampled_from([(80, 8), (20, 8), (80, 32), (7, 3)]))
def test_chunker_loses_and_duplicates_nothing(chunks: list[bytes], shape: tuple[int, int]) -> None:
    chunker = Chunker(*shape)
    size = shape[0] * shape[1]
    assert chunker.chunk_bytes == size
    out: list[bytes] = []
    for chunk in chunks:
        got = chunker.push(chunk)
        if got is not None:
            assert got and len(got) % size == 0
            out.append(got)
        assert chunker.pending < size
    tail = chunker.flush()
    if tail is not None:
        assert 0 < len(tail) < size
        out.append(tail)
    assert b"".join(out) == b"".join(chunks)
    assert chunker.flush() is None


def test_chunker_four_twilio_frames_make_one_80ms_chunk() -> None:
    chunker = Chunker()
    payloads = [bytes([i]) * FRAME_BYTES for i in range(9)]
    got = [chunker.push(p) for p in payloads]
    assert got[:3] == [None, None, None]
    assert got[3] == b"".join(payloads[:4])
    assert got[4:7] == [None, None, None]
    assert got[7] == b"".join(payloads[4:8])
    assert chunker.flush() == payloads[8]


def test_chunker_burst_returns_all_whole_chunks_at_once() -> None:
    chunker = Chunker(chunk_ms=80, bytes_per_ms=32)  # linear16 16 kHz: 2560-byte chunks
    assert chunker.push(b"\x00" * 6000) == b"\x00" * 5120
    assert chunker.flush() == b"\x00" * 880
    assert chunker.push(b"") is None
    assert chunker.flush() is None


# --- generators ------------------------------------------------------------------------------


def test_silence() -> None:
    assert silence(20) == b"\xff" * 160
    assert silence(80, "linear16", rate=16000) == b"\x00" * 2560
    assert silence(0) == b""
    with pytest.raises(ValueError):
        silence(20, "opus")


@pytest.mark.parametrize(("freq", "rate"), [(1000, 8000), (440, 8000), (1000, 16000)])
def test_tone_frequency_and_level(freq: int, rate: int) -> None:
    y = samples(ulaw_to_pcm16(tone(freq, 500, rate=rate)))
    assert len(y) == rate // 2
    assert tone_energy_fraction(y, rate, freq) > 0.99
    assert abs(zero_crossings(y) - freq) <= 2  # 2 per cycle, 0.5 s
    assert goertzel_amplitude(y, rate, freq) == pytest.approx(AMP, rel=0.02)
    assert max(samples(tone_pcm16(freq, 500, rate=rate))) == pytest.approx(AMP, abs=1)


# --- WAV -------------------------------------------------------------------------------------


def riff(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    pad = b"\x00" if len(data) % 2 else b""
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk to skip
    body += b"data" + struct.pack("<I", len(data)) + data + pad
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_wav_round_trip_16k_stereo(tmp_path: Path) -> None:
    mono = samples(tone_pcm16(1000, 500, rate=16000))
    stereo = array("h", [0]) * (2 * len(mono))
    stereo[0::2] = mono
    stereo[1::2] = mono
    path = tmp_path / "tone.wav"
    write_wav(path, pcm(stereo), rate=16000, channels=2)

    ulaw = read_wav_as_mulaw8k(path)
    assert len(ulaw) == 500 * 8
    y = samples(ulaw_to_pcm16(ulaw))
    assert tone_energy_fraction(y, 8000, 1000) > 0.97
    assert abs(zero_crossings(y) - 1000) <= 2
    assert abs(20 * math.log10(rms(y) / (AMP / math.sqrt(2)))) < 1.0


def test_wav_mulaw_8k_mono_is_returned_as_is(tmp_path: Path) -> None:
    data = tone(1000, 100) + b"\x12"  # odd length exercises chunk padding
    path = tmp_path / "ulaw.wav"
    path.write_bytes(riff(7, 1, 8000, 8, data))
    assert read_wav_as_mulaw8k(path) == data


def test_wav_8bit_unsigned_11025(tmp_path: Path) -> None:
    y16 = samples(tone_pcm16(500, 400, rate=11025))
    unsigned = bytes((v >> 8) + 128 for v in y16)
    path = tmp_path / "u8.wav"
    path.write_bytes(riff(1, 1, 11025, 8, unsigned))
    ulaw = read_wav_as_mulaw8k(path)
    assert abs(len(ulaw) - round(len(y16) * 8000 / 11025)) <= 1
    y = samples(ulaw_to_pcm16(ulaw))
    assert abs(zero_crossings(y) - 400) <= 2
    assert goertzel_amplitude(y, 8000, 500) == pytest.approx(AMP, rel=0.1)


def test_wav_rejects_non_wav(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError):
        read_wav_as_mulaw8k(path)
    path.write_bytes(riff(3, 1, 8000, 32, b"\x00" * 8))  # IEEE float: unsupported
    with pytest.raises(ValueError):
        read_wav_as_mulaw8k(path)
