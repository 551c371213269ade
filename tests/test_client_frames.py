"""telephony/client_frames.py: frames websockets' own server parser reads back exactly, each
masked with its own key, keys drawn from os.urandom in bulk."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from telephony import client_frames
from telephony.client_frames import MaskKeys, binary_frame, text_frame

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)


def parsed(data: bytes) -> list[tuple[Opcode, bytes, bool]]:
    server = ServerProtocol(state=State.OPEN, max_size=None)
    server.receive_data(data)
    assert server.parser_exc is None
    return [(f.opcode, bytes(f.data), f.fin) for f in server.events_received()]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_websockets_reads_back_every_length(length: int) -> None:
    payload = bytes(i % 251 for i in range(length))
    text = ("é" * length)[:length].encode()
    frames = binary_frame(payload) + text_frame(text)
    assert parsed(frames) == [(Opcode.BINARY, payload, True), (Opcode.TEXT, text, True)]


def test_every_frame_has_its_own_key_and_the_payload_is_masked() -> None:
    payload = b"\x00" * 64  # masked zeros are the key repeated
    frames = [binary_frame(payload) for _ in range(3000)]  # across several draws
    keys = [frame[2:6] for frame in frames]
    assert len(set(keys)) > 2990  # 4 random bytes: a repeat or two is chance, not reuse
    assert all(frame[6:] == key * 16 for frame, key in zip(frames, keys, strict=True))


def test_keys_come_from_os_urandom_in_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(client_frames.os, "urandom", urandom)
    keys = MaskKeys(per_draw=8)
    got = [keys.next() for _ in range(20)]
    assert draws == [32, 32, 32]
    assert all(len(k) == 4 for k in got)
    assert len(set(got)) == 20
