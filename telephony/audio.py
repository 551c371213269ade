"""Audio primitives for the Twilio <-> Deepgram bridge: μ-law, resampling, framing, chunking.

Everything here runs per 20 ms frame for hundreds of concurrent calls, so the work is done by
`audioop` (C) and the Python around it avoids per-frame copies where it can.

Byte order: all PCM16 here is little-endian (what Twilio, Deepgram and WAV use). `audioop`
works in native order, so on a big-endian host the functions byteswap at the edges.

Resampling length (see `Resampler`): `audioop.ratecv` emits output sample k (time k/out_rate)
only once the input sample after it has arrived, so per call its output length varies by a
sample. `Resampler` pads its very first output with `ceil(out/in) - 1` copies of the first
sample (a one-off delay shorter than one input sample), which makes the running total exact:
after N input samples the total output is exactly N·out/in when out/in is an integer
(8k -> 16k: every 160-sample frame gives exactly 320 samples), and otherwise within one sample
of N·out/in (never off by more than 1 from round(N·out/in)). Integer down-ratios (16k -> 8k,
48k -> 8k) are exact for inputs of a multiple of the ratio (a 320-sample frame -> 160).
"""

from __future__ import annotations

import math
import struct
import sys
import warnings
import wave
from array import array
from os import PathLike

with warnings.catch_warnings():
    # stdlib audioop (3.11/3.12) warns on import; on >= 3.13 `audioop-lts` installs the same name.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "MULAW_SILENCE",
    "TWILIO_RATE",
    "Chunker",
    "Framer",
    "Linear16kToMulaw",
    "MulawToLinear16k",
    "Resampler",
    "pcm16_to_ulaw",
    "read_wav_as_mulaw8k",
    "silence",
    "tone",
    "tone_pcm16",
    "ulaw_to_pcm16",
    "write_wav",
]

MULAW_SILENCE = 0xFF  # μ-law code of PCM 0 (0x7F decodes to 0 too, but encoders emit 0xFF)
FRAME_BYTES = 160  # one Twilio media frame: 20 ms of 8 kHz μ-law
FRAME_MS = 20
TWILIO_RATE = 8000
MULAW_BYTES_PER_MS = FRAME_BYTES // FRAME_MS  # 8: one byte per sample at 8 kHz
# Caller audio held while an upstream socket is down (reconnecting, or not yet live), per
# socket; beyond it the oldest is dropped and counted.
HOLD_MS = 10_000
# A jump in Twilio's timestamps (lost packets) is filled with silence up to this much, so the
# engine's audio clock stays the call's; a longer jump is counted, not filled.
MAX_GAP_FILL_MS = 2000

_BIG_ENDIAN = sys.byteorder == "big"
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_MULAW = 0x0007
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


# --- μ-law <-> PCM16 -------------------------------------------------------------------------


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 μ-law to little-endian PCM16 (2 bytes out per byte in)."""
    pcm = audioop.ulaw2lin(data, 2)
    return audioop.byteswap(pcm, 2) if _BIG_ENDIAN else pcm


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Encode little-endian PCM16 (even length) to G.711 μ-law (1 byte per sample)."""
    if _BIG_ENDIAN:
        data = audioop.byteswap(data, 2)
    return audioop.lin2ulaw(data, 2)


# --- resampling ------------------------------------------------------------------------------


def _first_pad(in_rate: int, out_rate: int) -> int:
    """Samples to prepend to ratecv's first output: ceil(out/in) - 1 (1 for 8k -> 16k, 0 down)."""
    return -(-out_rate // in_rate) - 1


class Resampler:
    """Stateful mono PCM16 resampler (linear interpolation, `audioop.ratecv`).

    The ratecv state is kept between calls, so feeding a signal frame by frame gives exactly
    the same samples as feeding it at once: no clicks at frame edges. An odd trailing byte (a
    sample split across calls) is held until the next call.

    Length: the first output is padded with `ceil(out/in) - 1` copies of its first sample, so
    total output after N input samples is exactly N·out/in for integer up-ratios and within one
    sample of it otherwise (see the module docstring). No anti-alias filter by default:
    `weight_a`/`weight_b` are ratecv's one-pole smoothing weights (`weight_b=0` disables it).
    """

    __slots__ = ("_carry", "_pad", "_state", "_weight_a", "_weight_b", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int, weight_a: int = 1, weight_b: int = 0) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._weight_a = weight_a
        self._weight_b = weight_b
        self._state: tuple | None = None
        self._carry = b""
        self._pad = _first_pad(in_rate, out_rate)

    def process(self, pcm16: bytes) -> bytes:
        """Resample a chunk of little-endian PCM16; returns the output available so far."""
        if self._carry:
            pcm16 = self._carry + pcm16
            self._carry = b""
        if len(pcm16) & 1:
            self._carry = bytes(pcm16[-1:])
            pcm16 = pcm16[:-1]
        if self.in_rate == self.out_rate:
            return bytes(pcm16)
        if _BIG_ENDIAN:
            pcm16 = audioop.byteswap(pcm16, 2)
        out, self._state = audioop.ratecv(
            pcm16, 2, 1, self.in_rate, self.out_rate, self._state, self._weight_a, self._weight_b
        )
        if self._pad and out:
            out = out[:2] * self._pad + out
            self._pad = 0
        return audioop.byteswap(out, 2) if _BIG_ENDIAN else out

    def reset(self) -> None:
        """Forget all history (start of a new, unrelated stream)."""
        self._state = None
        self._carry = b""
        self._pad = _first_pad(self.in_rate, self.out_rate)


class MulawToLinear16k:
    """Twilio μ-law 8 kHz -> PCM16 16 kHz (Flux linear16), stateful: 160 bytes -> 640 bytes."""

    __slots__ = ("_resampler",)

    def __init__(self) -> None:
        self._resampler = Resampler(TWILIO_RATE, 16000)

    def convert(self, ulaw_frame: bytes) -> bytes:
        """Convert one chunk of μ-law (any length; 20 ms frames give exactly 640 bytes each)."""
        return self._resampler.process(ulaw_to_pcm16(ulaw_frame))


class Linear16kToMulaw:
    """PCM16 16 kHz -> μ-law 8 kHz for Twilio, stateful: 640 bytes -> 160 bytes.

    Plain 2:1 decimation (no anti-alias filter): content above 4 kHz folds down. Fine for
    speech synthesised for telephony; ask the TTS for 8 kHz μ-law directly when possible.
    """

    __slots__ = ("_resampler",)

    def __init__(self) -> None:
        self._resampler = Resampler(16000, TWILIO_RATE)

    def convert(self, pcm16: bytes) -> bytes:
        """Convert a chunk of little-endian PCM16 at 16 kHz (odd bytes are carried over)."""
        return pcm16_to_ulaw(self._resampler.process(pcm16))


# --- framing and chunking --------------------------------------------------------------------


class Framer:
    """Cut a byte stream into fixed frames (default: 20 ms of μ-law = 160 bytes).

    Each `push` hands out every whole frame buffered, so at most `frame_bytes - 1` bytes stay
    behind; removing the consumed prefix therefore moves fewer than `frame_bytes` bytes per
    call (O(n) overall, no quadratic re-copying). A push of exactly one frame onto an empty
    buffer (Twilio's normal case) returns the input object without copying.
    """

    __slots__ = ("_buf", "_pad", "frame_bytes")

    def __init__(self, frame_bytes: int = FRAME_BYTES, pad: int = MULAW_SILENCE) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        if not 0 <= pad <= 0xFF:
            raise ValueError(f"pad must be a byte value, got {pad}")
        self.frame_bytes = frame_bytes
        self._pad = pad
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered that do not make a whole frame yet."""
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete frames now available (possibly none)."""
        n = self.frame_bytes
        buf = self._buf
        if not buf and len(data) == n:
            return [bytes(data)]  # no copy when data is already bytes
        buf += data
        end = len(buf) - len(buf) % n
        if not end:
            return []
        with memoryview(buf) as view:
            frames = [view[i : i + n].tobytes() for i in range(0, end, n)]
        del buf[:end]
        return frames

    def flush(self) -> bytes | None:
        """Return the buffered partial frame padded to a whole frame, or None when empty."""
        if not self._buf:
            return None
        frame = bytes(self._buf).ljust(self.frame_bytes, bytes((self._pad,)))
        self._buf.clear()
        return frame

    def clear(self) -> None:
        """Drop any buffered partial frame."""
        self._buf.clear()


class Chunker:
    """Group audio into N-ms chunks for Deepgram (default 80 ms of μ-law 8 kHz = 640 bytes).

    `push` returns every whole chunk buffered, concatenated into one bytes object (the caller
    sends it as one binary message): normally exactly one chunk, several only if the input
    arrived in a burst. Bytes are never lost or duplicated across boundaries, and neither
    `push` nor `flush` ever returns empty bytes — an empty binary frame closes Deepgram's
    /v1/listen stream.
    """

    __slots__ = ("_buf", "chunk_bytes")

    def __init__(self, chunk_ms: int = 80, bytes_per_ms: int = 8) -> None:
        if chunk_ms <= 0 or bytes_per_ms <= 0:
            raise ValueError(
                f"chunk_ms and bytes_per_ms must be positive: {chunk_ms}, {bytes_per_ms}"
            )
        self.chunk_bytes = chunk_ms * bytes_per_ms
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered short of a whole chunk."""
        return len(self._buf)

    def push(self, data: bytes) -> bytes | None:
        """Add bytes; return all whole chunks buffered (a multiple of chunk_bytes) or None."""
        buf = self._buf
        buf += data
        size = len(buf)
        if size < self.chunk_bytes:
            return None
        if size == self.chunk_bytes:  # the common path: 4 Twilio frames -> one 80 ms chunk
            out = bytes(buf)
            buf.clear()
            return out
        end = size - size % self.chunk_bytes
        with memoryview(buf) as view:
            out = view[:end].tobytes()
        del buf[:end]
        return out

    def flush(self) -> bytes | None:
        """Return whatever is buffered (shorter than a chunk), or None — never b""."""
        if not self._buf:
            return None
        out = bytes(self._buf)
        self._buf.clear()
        return out


# --- generators ------------------------------------------------------------------------------


def silence(ms: int, encoding: str = "mulaw", rate: int = TWILIO_RATE) -> bytes:
    """`ms` of silence: μ-law 0xFF bytes, or PCM16 zeros for encoding "linear16"."""
    samples = rate * ms // 1000
    if encoding == "mulaw":
        return bytes((MULAW_SILENCE,)) * samples
    if encoding == "linear16":
        return bytes(2 * samples)
    raise ValueError(f"unknown encoding {encoding!r} (expected 'mulaw' or 'linear16')")


def tone_pcm16(freq_hz: float, ms: int, rate: int = TWILIO_RATE, amplitude: float = 0.5) -> bytes:
    """A sine of `freq_hz` lasting `ms` as little-endian PCM16 (amplitude: 1.0 = full scale)."""
    peak = amplitude * 32767.0
    step = 2.0 * math.pi * freq_hz / rate
    samples = array("h", (round(peak * math.sin(step * i)) for i in range(rate * ms // 1000)))
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples.tobytes()


def tone(freq_hz: float, ms: int, rate: int = TWILIO_RATE, amplitude: float = 0.5) -> bytes:
    """A sine of `freq_hz` lasting `ms` as μ-law at `rate` (one byte per sample)."""
    return pcm16_to_ulaw(tone_pcm16(freq_hz, ms, rate, amplitude))


# --- WAV -------------------------------------------------------------------------------------


def _read_riff(raw: bytes) -> tuple[int, int, int, int, bytes]:
    """Parse a RIFF/WAVE file: (format tag, channels, rate, bits per sample, sample data)."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    block_align = 0
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = raw[pos + 8 : pos + 8 + size]  # clamped: streaming writers leave size unset
        if chunk_id == b"fmt ":
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                (tag,) = struct.unpack_from("<H", body, 24)  # first 2 bytes of the SubFormat GUID
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk before fmt chunk")
            whole = len(body) - len(body) % block_align if block_align else len(body)
            return (*fmt, body[:whole])
        pos += 8 + size + (size & 1)  # chunks are word aligned
    raise ValueError("WAV file has no data chunk")


def read_wav_as_mulaw8k(path: str | PathLike[str]) -> bytes:
    """Load a WAV file as Twilio audio: μ-law, 8 kHz, mono.

    Accepts PCM (8-bit unsigned, 16/24/32-bit signed) or μ-law (format 7), mono or multi-
    channel (averaged to mono), at any sample rate (linear-interpolation resampling).
    """
    with open(path, "rb") as f:
        tag, channels, rate, bits, data = _read_riff(f.read())
    if tag == _WAVE_FORMAT_MULAW and bits == 8:
        if channels == 1 and rate == TWILIO_RATE:
            return data
        pcm = audioop.ulaw2lin(data, 2)
    elif tag == _WAVE_FORMAT_PCM and bits in (8, 16, 24, 32):
        width = bits // 8
        if width == 1:
            data = audioop.bias(data, 1, -128)  # WAV 8-bit is unsigned
        elif _BIG_ENDIAN:
            data = audioop.byteswap(data, width)
        pcm = audioop.lin2lin(data, width, 2) if width != 2 else data
    else:
        raise ValueError(f"unsupported WAV encoding: format {tag:#06x}, {bits} bits")
    pcm = _downmix(pcm, channels)
    if rate != TWILIO_RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, TWILIO_RATE, None)
        pad = _first_pad(rate, TWILIO_RATE)
        if pad and pcm:
            pcm = pcm[:2] * pad + pcm
    return audioop.lin2ulaw(pcm, 2)


def _downmix(pcm: bytes, channels: int) -> bytes:
    """Average native-order PCM16 interleaved channels to mono."""
    if channels == 1:
        return pcm
    if channels == 2:
        return audioop.tomono(pcm, 2, 0.5, 0.5)
    if channels < 1:
        raise ValueError(f"bad channel count {channels}")
    samples = array("h", pcm)
    return array(
        "h",
        (sum(samples[i : i + channels]) // channels for i in range(0, len(samples), channels)),
    ).tobytes()


def write_wav(path: str | PathLike[str], pcm16: bytes, rate: int, channels: int = 1) -> None:
    """Write little-endian interleaved PCM16 as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
