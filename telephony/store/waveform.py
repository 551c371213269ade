"""A call recording's waveform for the call page: per channel, the loudest sample of each
short slice of the call, as a level from 0 (silence, -60 dBFS or quieter) to 100 (full scale).

Computed from the stereo WAV (store/recording.py: the caller left, what the caller heard
right) when the page asks, in a worker thread: reading an hour's recording is about 115 MB, so
never on the event loop. The result is small (at most `MAX_BUCKETS` levels per channel) and
kept in a small cache keyed by the file's identity, since a WAV only changes when a
transfer's continuation rewrites it.

Levels are logarithmic: a caller speaking softly at -30 dBFS would be a flat line on a linear
scale next to the bot's full-scale audio.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
import wave
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # stdlib audioop on 3.11/3.12
    import audioop

MAX_BUCKETS = 2000  # levels per channel: more than a page is wide, few enough to send as JSON
MIN_BUCKET_MS = 10
FLOOR_DB = 60.0  # -60 dBFS and below draw as silence
READ_BUCKETS = 256  # slices read from the file at a time (memory stays ~a second of audio)
CACHE_SIZE = 32

_FULL_SCALE = 32768.0


@dataclass(frozen=True)
class Waveform:
    duration_ms: int
    bucket_ms: float  # call time each level covers
    left: list[int]  # caller
    right: list[int]  # what the caller heard

    def as_json(self) -> dict[str, object]:
        return {
            "duration_ms": self.duration_ms,
            "bucket_ms": self.bucket_ms,
            "left": self.left,
            "right": self.right,
        }


def level(peak: int) -> int:
    """0..100 for a PCM16 peak: 0 at or below -FLOOR_DB dBFS, 100 at full scale."""
    if peak <= 0:
        return 0
    db = 20.0 * math.log10(min(peak, _FULL_SCALE) / _FULL_SCALE)
    return max(0, min(100, round((db + FLOOR_DB) * 100.0 / FLOOR_DB)))


def compute(path: Path, max_buckets: int = MAX_BUCKETS) -> Waveform:
    """The waveform of a stereo PCM16 WAV (blocking: run it in a thread)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 2 or wav.getsampwidth() != 2:
            raise ValueError(f"{path.name}: not a stereo 16-bit recording")
        rate, frames = wav.getframerate(), wav.getnframes()
        per_bucket = max(rate * MIN_BUCKET_MS // 1000, math.ceil(frames / max_buckets), 1)
        left: list[int] = []
        right: list[int] = []
        while chunk := wav.readframes(per_bucket * READ_BUCKETS):
            step = per_bucket * 4  # bytes of one slice: 2 channels x 2 bytes
            for at in range(0, len(chunk), step):
                piece = chunk[at : at + step]
                left.append(level(audioop.max(audioop.tomono(piece, 2, 1, 0), 2)))
                right.append(level(audioop.max(audioop.tomono(piece, 2, 0, 1), 2)))
    return Waveform(
        duration_ms=frames * 1000 // rate,
        bucket_ms=per_bucket * 1000 / rate,
        left=left,
        right=right,
    )


_cache: OrderedDict[tuple[str, int, int, int], Waveform] = OrderedDict()
_cache_lock = threading.Lock()


def cached(path: Path) -> Waveform:
    """`compute`, remembered for the file as it is now (path, inode, size, mtime)."""
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    result = compute(path)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return result
