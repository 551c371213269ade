"""The lean callers' per-frame wire work, made cheap enough for hundreds of calls on one core.

`telephony bench` drives every call from one process on one core; what that process spends
per frame sets how many calls it can drive before its own lateness is what gets measured
(py-spy at 300 Flux calls: the callers' sends were 38 % of its samples, their receives 11 %).
So every per-frame step here does the least that still produces, and still checks, what
Twilio would:

- `FrameClock`: one timer per 1 ms slot of the 20 ms frame period, shared by every caller on
  the loop, instead of a timer per call and frame. A caller joins the slot due next, so calls
  started at different times keep their frame clocks spread over the 20 ms, as independent
  calls' are (to the millisecond); each slot's deadlines are absolute, so lateness never
  accumulates.
- `MediaText`: a caller's media message, byte for byte what `InboundBuilder.media` builds for
  the benchmark's tagged audio, from a per-call format: only the sequence number, chunk,
  timestamp and the first 8 base64 characters (the 4-byte tag, from two small tables) change
  from frame to frame; framed and masked in one step.
- `ServerFrames`: whole unmasked FIN text frames from the service are cut here (a header read);
  from any other frame on (close, ping, binary, fragments, oversized, masked, extension bits)
  the bytes go to websockets' sans-I/O parser, from that frame's first byte, and this reader
  cuts again only once websockets' parser stands at a frame boundary with nothing open.
- `media_payload`: the service's own media message shape is recognised by its prefix and
  decoded with strict base64; anything else, or anything that fails, goes to the strict
  `parse_outbound`, so a frame Twilio would reject is still counted as one.
"""

from __future__ import annotations

import asyncio
import binascii
import math
import struct
import time
import weakref
from collections.abc import Callable

from telephony.client_frames import MaskKeys, apply_mask
from telephony.sim.load import FILLER, FRAME_S, TAG
from telephony.twilio import messages as tm

SLOTS = 20  # per 20 ms frame: 1 ms apart
SLOT_S = FRAME_S / SLOTS
MAX_FRAME = 2**20  # as the callers' websockets protocol's max_size

Tick = Callable[[], None]


class FrameClock:
    """Every lean caller's 20 ms frame clock on one event loop: a timer per occupied slot."""

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> FrameClock:
        clock = _CLOCKS.get(loop)
        if clock is None:
            clock = _CLOCKS[loop] = cls(loop)
        return clock

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Deadlines are on time.monotonic()'s clock (the probes' clock); the loop's clock is the
        # same one on asyncio and uvloop (which keeps it in whole ms), but the offset is kept.
        self.offset = loop.time() - time.monotonic()
        self.origin = time.monotonic()
        self.slots: list[list[Tick]] = [[] for _ in range(SLOTS)]
        self.due = [0.0] * SLOTS  # monotonic deadline of each running slot's next firing
        self.running = [False] * SLOTS

    def join(self, tick: Tick) -> float:
        """Call `tick` every 20 ms from the slot due next; returns its first deadline (frame 0)."""
        now = time.monotonic()
        k = math.ceil((now - self.origin) / SLOT_S)
        slot = k % SLOTS
        if not self.running[slot]:
            self.running[slot] = True
            self.due[slot] = self.origin + k * SLOT_S
            self.loop.call_at(self.due[slot] + self.offset, self._fire, slot)
        self.slots[slot].append(tick)
        return self.due[slot]

    def leave(self, tick: Tick) -> None:
        for ticks in self.slots:
            if tick in ticks:
                ticks.remove(tick)
                return

    def _fire(self, slot: int) -> None:
        ticks = self.slots[slot]
        if not ticks:
            self.running[slot] = False  # restarted by the next join
            return
        due = self.due[slot] = self.due[slot] + FRAME_S
        self.loop.call_at(due + self.offset, self._fire, slot)
        for tick in tuple(ticks):  # a tick may leave (hang up)
            tick()


_CLOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FrameClock] = (
    weakref.WeakKeyDictionary()
)


KEYS = MaskKeys()  # the callers' masking keys (os.urandom, drawn in bulk)
_HEAD = struct.Struct(">HB")  # call index, the frame number's high byte: base64 characters 0-3
# Characters 4-7: the frame number's low byte and two filler bytes.
_LOW = [binascii.b2a_base64(bytes((low,)) + FILLER[:2], newline=False) for low in range(256)]
# FIN + text, masked with a 16-bit length (every media message is 126..65535 bytes), the key.
_TEXT_HEADER = struct.Struct(">BBH4s")


class MediaText:
    """One caller's media messages for the benchmark's tagged frames (call index, frame
    number): `InboundBuilder.media(TAG.pack(index, n & 0xFFFF) + FILLER, n * 20)`, cheaper,
    and `frame(n)` that message as a masked WebSocket text frame (`client_frames.text_frame`'s
    bytes, a fresh key each from os.urandom drawn in bulk, as there)."""

    def __init__(self, builder: tm.InboundBuilder, index: int, keys: MaskKeys = KEYS) -> None:
        self.builder = builder
        self.index = index
        self.keys = keys
        sid = builder.stream_sid.encode().replace(b"%", b"%%")
        # Base64 packs 3 bytes in 4 characters: the tag (bytes 0-3) lands in the first 8
        # characters with filler bytes 4-5; the other 8.. are the same in every frame.
        tail = binascii.b2a_base64(TAG.pack(0, 0) + FILLER, newline=False)[8:]
        self.format = (
            b'{"event":"media","sequenceNumber":"%d","streamSid":"' + sid + b'",'
            b'"media":{"track":"inbound","chunk":"%d","timestamp":"%d","payload":"%s%s'
            + tail
            + b'"}}'
        )
        self._high = -1  # the frame number's high byte the first 4 characters were made for
        self._head = b""

    def __call__(self, n: int) -> bytes:
        builder = self.builder
        sequence = builder.sequence = builder.sequence + 1
        chunk = builder.chunk = builder.chunk + 1
        high = n >> 8 & 0xFF
        if high != self._high:  # every 256 frames: characters 0-3 are the index and this byte
            self._high = high
            self._head = binascii.b2a_base64(_HEAD.pack(self.index, high), newline=False)
        return self.format % (sequence, chunk, n * 20, self._head, _LOW[n & 0xFF])

    def frame(self, n: int) -> bytes:
        text = self(n)
        key = self.keys.next()
        return _TEXT_HEADER.pack(0x81, 0x80 | 126, len(text), key) + apply_mask(text, key)


def media_prefix(stream_sid: str) -> bytes:
    """How the service's media messages begin (twilio.messages.media_message)."""
    return b'{"event":"media","streamSid":"' + stream_sid.encode() + b'","media":{"payload":"'


def media_payload(data: bytes, prefix: bytes) -> bytes | None:
    """The audio of a media message in the service's own shape, else None (parse it strictly).

    `prefix` + base64 + `"}}` is valid JSON with exactly Twilio's fields whenever the base64
    is strict (no quote or backslash can hide in it), so accepting it here accepts nothing the
    strict parser would refuse."""
    if not (data.startswith(prefix) and data.endswith(b'"}}')):
        return None
    try:
        return binascii.a2b_base64(memoryview(data)[len(prefix) : -3], strict_mode=True)
    except ValueError:
        return None


class ServerFrames:
    """Cuts whole unmasked FIN text frames from the service's bytes; the rest, from the first
    byte of the first other frame on, is returned for websockets' parser. The caller cuts
    again once websockets' parser has nothing buffered and no fragmented message open."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """(text payloads, bytes for websockets): the texts come before those bytes."""
        buf = self.buffer + data if self.buffer else data
        texts: list[bytes] = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if first != 0x81 or second & 0x80:
                # Not ours to judge: websockets parses the rest, from this frame's first byte.
                self.buffer = b""
                return texts, buf[pos:]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if length > MAX_FRAME:  # websockets fails the connection, as it would have
                self.buffer = b""
                return texts, buf[pos:]
            end = start + length
            if end > size:
                break
            texts.append(buf[start:end])
            pos = end
        self.buffer = buf[pos:] if pos < size else b""
        return texts, b""
