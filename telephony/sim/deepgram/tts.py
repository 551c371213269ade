"""Deterministic fake speech: every character becomes a short tone of its own pitch.

Tests can therefore tell *which* text was heard: `tts_text(audio)` maps whole character
segments back to characters (reliable for ASCII; other characters share pitches). The audio is
never silent, and it is cached per character, so synthesis costs a join.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

from telephony.audio import pcm16_to_ulaw, tone_pcm16

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# Bytes per sample of the raw encodings; compressed ones (opus, ...) have no fixed rate.
SAMPLE_BYTES = {"mulaw": 1, "alaw": 1, "linear16": 2, "linear32": 4}
TTS_ENCODINGS = ("mulaw", "alaw", "linear16")


def bytes_per_ms(encoding: str, sample_rate: int) -> float | None:
    """Audio bytes per ms (μ-law 8 kHz: 8; linear16 16 kHz: 32); None if compressed."""
    width = SAMPLE_BYTES.get(encoding)
    return None if width is None else width * sample_rate / 1000


def char_freq(char: str) -> float:
    """200..3050 Hz in 30 Hz steps: under 4 kHz so it survives 8 kHz μ-law."""
    return 200.0 + (ord(char) % 96) * 30.0


@lru_cache(maxsize=2048)
def char_audio(char: str, ms: int, encoding: str = "mulaw", sample_rate: int = 8000) -> bytes:
    pcm = tone_pcm16(char_freq(char), ms, sample_rate, amplitude=0.4)
    if encoding == "linear16":
        return pcm
    if encoding == "mulaw":
        return pcm16_to_ulaw(pcm)
    if encoding == "alaw":
        return audioop.lin2alaw(pcm, 2)
    raise ValueError(f"fake TTS cannot produce {encoding!r} (expected one of {TTS_ENCODINGS})")


def tts_audio(
    text: str, ms_per_char: int, encoding: str = "mulaw", sample_rate: int = 8000
) -> bytes:
    """The fake's speech for `text`: `ms_per_char` ms per character."""
    return b"".join(char_audio(c, ms_per_char, encoding, sample_rate) for c in text)


@lru_cache(maxsize=32)
def _segments(ms: int, encoding: str, sample_rate: int) -> dict[bytes, str]:
    return {char_audio(chr(i), ms, encoding, sample_rate): chr(i) for i in range(32, 127)}


def tts_text(
    audio: bytes, ms_per_char: int, encoding: str = "mulaw", sample_rate: int = 8000
) -> str:
    """Recover the text from fake speech; bytes that are not a whole character are skipped."""
    table = _segments(ms_per_char, encoding, sample_rate)
    size = len(next(iter(table)))
    out: list[str] = []
    pos = 0
    while pos + size <= len(audio):
        char = table.get(bytes(audio[pos : pos + size]))
        if char is None:
            pos += 1  # misaligned (a cut utterance): slide until a segment matches
        else:
            out.append(char)
            pos += size
    return "".join(out)
