"""Deterministic fake speech: every character becomes a short tone of its own pitch.

Tests can therefore tell *which* text was heard: `tts_text(audio)` maps whole character
segments back to characters (reliable for ASCII; other characters share pitches). The audio is
never silent, and it is cached per character, so synthesis costs a join.
"""

from __future__ import annotations

import bisect
import re
import warnings
from functools import lru_cache
from itertools import combinations

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


_GAP = re.compile(rb"\xff{80,}")  # 10 ms or more of μ-law silence: fake speech has none


def _without_gaps(audio: bytes) -> tuple[bytes, list[int]]:
    """μ-law audio with its silences cut out, and the positions in the result where one was."""
    out = bytearray()
    joins: list[int] = []
    pos = 0
    for gap in _GAP.finditer(audio):
        out += audio[pos : gap.start()]
        joins.append(len(out))
        pos = gap.end()
    out += audio[pos:]
    return bytes(out), joins


def tts_text(
    audio: bytes,
    ms_per_char: int,
    encoding: str = "mulaw",
    sample_rate: int = 8000,
    *,
    across_gaps: bool = False,
) -> str:
    """Recover the text from fake speech; bytes that are not a whole character are skipped.
    `across_gaps` (μ-law): read a character split by silence (a playout underrun, heard as a
    gap mid-word) as whole."""
    table = _segments(ms_per_char, encoding, sample_rate)
    size = len(next(iter(table)))
    joins: list[int] = []
    if across_gaps and encoding == "mulaw":
        audio, joins = _without_gaps(audio)
    out: list[str] = []
    pos = 0
    while pos < len(audio):
        char = table.get(bytes(audio[pos : pos + size]))
        if char is not None:
            out.append(char)
            pos += size
            continue
        # A tone has a zero sample now and then (every tone starts on one): one next to a
        # cut silence went with it. Give one back at some of the cuts inside this segment.
        cuts = joins[bisect.bisect_left(joins, pos) : bisect.bisect_left(joins, pos + size)]
        for given in (c for n in range(1, len(cuts) + 1) for c in combinations(cuts, n)):
            end = pos + size - len(given)
            parts, at = [], pos
            for cut in given:
                parts += [audio[at:cut], b"\xff"]
                at = cut
            char = table.get(b"".join([*parts, audio[at:end]]))
            if char is not None:
                out.append(char)
                pos = end
                break
        else:
            pos += 1  # misaligned (a cut utterance): slide until a segment matches
    return "".join(out)
