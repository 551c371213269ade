"""The lean callers' cheap per-frame wire work (telephony/sim/lean_wire.py) against the strict
paths it stands in for: the same bytes out, the same messages accepted and refused."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.frames import Frame, Opcode

from telephony.sim.lean_wire import (
    SLOT_S,
    SLOTS,
    FrameClock,
    MediaText,
    ServerFrames,
    media_payload,
    media_prefix,
)
from telephony.sim.load import FILLER, FRAME_S, TAG
from telephony.twilio import messages as tm

SID = "MZ" + "a" * 32


def builders() -> tuple[tm.InboundBuilder, tm.InboundBuilder]:
    return tuple(  # type: ignore[return-value]
        tm.InboundBuilder(SID, "CA" + "b" * 32, "AC" + "c" * 32, custom_parameters={"k": "v"})
        for _ in range(2)
    )


@pytest.mark.parametrize("index", [0, 1, 299, 0xFFFE])
def test_media_text_is_the_builders_message(index: int) -> None:
    strict, lean = builders()
    text = MediaText(lean, index)
    strict.start(), lean.start()  # the counters are shared with every other message
    for n in [0, 1, 2, 255, 256, 65535, 65536, 70001]:
        expected = strict.media(TAG.pack(index, n & 0xFFFF) + FILLER, n * 20).encode()
        assert text(n) == expected
        assert strict.mark("m") == lean.mark("m")
    framed = text.frame(3)  # a masked text frame websockets reads back as the message
    parsed = ServerProtocolReader.read(framed)
    assert parsed == strict.media(TAG.pack(index, 3) + FILLER, 60).encode()


class ServerProtocolReader:
    """A client frame read the way a server reads it (websockets' sans-I/O parser)."""

    @staticmethod
    def read(data: bytes) -> bytes:
        from websockets.streams import StreamReader

        reader = StreamReader()
        reader.feed_data(data)
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            frame: Frame = done.value
            assert frame.opcode is Opcode.TEXT and frame.fin
            return bytes(frame.data)
        raise AssertionError("frame not whole")


def service_media(payload: bytes) -> bytes:
    return tm.media_message(SID, payload).encode()


def strict(data: bytes) -> tm.OutboundMessage | None:
    try:
        return tm.parse_outbound(data, SID)
    except tm.MessageError:
        return None


@pytest.mark.parametrize(
    "data",
    [
        service_media(bytes(range(160))),
        service_media(b""),
        service_media(b"\xff" * 480),
        # refused by the strict parser too, or handed to it (None here)
        service_media(b"x").replace(b"eA==", b"eA="),  # bad padding
        service_media(b"xyz").replace(b'"}}', b'"} }'),
        service_media(b"xyz").replace(b"eHl6", b"eH\\/6"),  # an escape: strict decides
        service_media(b"xyz").replace(b"eHl6", b'eH"6'),
        service_media(b"xyz").replace(SID.encode(), b"MZ" + b"b" * 32),
        service_media(b"xyz").replace(b'"}}', b'","extra":1}}'),
        service_media(b"xyz") + b" ",
        b'{"event":"mark","streamSid":"' + SID.encode() + b'","mark":{"name":"m"}}',
    ],
)
def test_media_payload_accepts_only_what_the_strict_parser_accepts(data: bytes) -> None:
    lean = media_payload(data, media_prefix(SID))
    if lean is not None:
        assert strict(data) == tm.OutboundMedia(lean)


def unmasked(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False, extensions=[])


def test_server_frames_cut_text_and_hand_the_rest_to_websockets() -> None:
    texts = [b"a" * 10, b"b" * 200, b"c" * 70_000]
    stream = b"".join(unmasked(Opcode.TEXT, t) for t in texts)
    frames = ServerFrames()
    got: list[bytes] = []
    for cut in range(0, len(stream), 7):  # any split of the bytes
        out, rest = frames.feed(stream[cut : cut + 7])
        got += out
        assert rest == b""
    assert got == texts and frames.buffer == b""
    ping = unmasked(Opcode.PING, b"p")
    tail = unmasked(Opcode.TEXT, b"after")
    out, rest = frames.feed(unmasked(Opcode.TEXT, b"x") + ping[:1])
    assert out == [b"x"] and rest == b""
    out, rest = frames.feed(ping[1:] + tail)
    assert out == [] and rest == ping + tail  # from the ping's first byte on
    out, rest = frames.feed(unmasked(Opcode.TEXT, b"frag", fin=False))
    assert out == [] and rest.startswith(b"\x01")
    masked = Frame(Opcode.TEXT, b"m").serialize(mask=True, extensions=[])
    assert ServerFrames().feed(masked) == ([], masked)


async def test_frame_clock_spreads_callers_over_slots_on_absolute_deadlines() -> None:
    clock = FrameClock(asyncio.get_running_loop())
    seen: dict[int, list[float]] = {0: [], 1: []}
    starts = [clock.join(lambda: seen[0].append(time.monotonic()))]
    await asyncio.sleep(SLOT_S * 5)
    starts.append(clock.join(lambda: seen[1].append(time.monotonic())))
    await asyncio.sleep(FRAME_S * 10)
    for k in (0, 1):
        assert len(seen[k]) >= 8
        # Never early, and frame n is late against frame 0's deadline + n * 20 ms, not against
        # the previous frame (loaded CI: a generous bound).
        lags = [t - (starts[k] + n * FRAME_S) for n, t in enumerate(seen[k])]
        assert min(lags) > -0.0011 and sorted(lags)[len(lags) // 2] < 0.05
    phase = (starts[1] - starts[0]) / SLOT_S % SLOTS
    assert round(phase) != 0  # a caller who joins later takes a later slot
    for ticks in clock.slots:
        for tick in list(ticks):
            clock.leave(tick)
    assert not any(clock.slots)


def test_media_payload_takes_the_services_own_media() -> None:
    for payload in (bytes(range(160)), b"", b"\xff" * 480):
        assert media_payload(service_media(payload), media_prefix(SID)) == payload
