"""Caller audio to a listening socket: sent, held while (re)connecting, replayed, forgotten."""

from __future__ import annotations

from websockets.exceptions import ConnectionClosedError

from telephony.session.upstream import Upstream


class Socket:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.fail_after = fail_after

    async def send(self, ts: int, payload: bytes) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionClosedError(None, None)
        self.sent.append((ts, payload))


def frame(i: int) -> tuple[int, bytes]:
    return i * 20, bytes([i % 256]) * 160


async def test_held_until_live_then_replay_then_held_then_direct() -> None:
    up = Upstream()
    for i in range(3):
        await up.push(*frame(i))  # before the socket is up: held
    socket = Socket()
    await up.go_live(socket.send, [frame(-2), frame(-1)])
    await up.push(*frame(3))
    assert socket.sent == [frame(i) for i in (-2, -1, 0, 1, 2, 3)]
    assert up.sent_since(None) == socket.sent  # all of it kept for a replay
    assert up.sent_since(20) == [frame(i) for i in (1, 2, 3)]
    assert up.last_sent_ms() == 60


async def test_holding_is_bounded_and_drops_are_counted() -> None:
    up = Upstream(pending_frames=5)
    for i in range(8):
        await up.push(*frame(i))
    assert up.dropped_frames == 3
    socket = Socket()
    await up.go_live(socket.send, [])
    assert socket.sent == [frame(i) for i in range(3, 8)]  # the newest five


async def test_a_send_on_a_closed_socket_holds_the_frame_for_the_next_one() -> None:
    up = Upstream()
    first = Socket(fail_after=2)
    await up.go_live(first.send, [])
    for i in range(4):
        await up.push(*frame(i))
    assert not up.live and first.sent == [frame(0), frame(1)]
    second = Socket()
    await up.go_live(second.send, up.sent_since(None))
    assert second.sent == [frame(i) for i in range(4)]  # nothing lost in the switch


async def test_settled_audio_is_forgotten_and_a_closing_socket_holds_nothing() -> None:
    up = Upstream()
    socket = Socket()
    await up.go_live(socket.send, [])
    for i in range(10):
        await up.push(*frame(i))
    up.forget_before(100)
    assert up.sent_since(None) == [frame(i) for i in range(5, 10)]
    up.live = up.accepting = False
    await up.push(*frame(10))
    await up.go_live(socket.send, [])
    assert socket.sent[-1] == frame(9)  # frame 10 came after close: not held, not sent


async def test_the_recent_window_is_bounded() -> None:
    up = Upstream(recent_frames=4)
    socket = Socket()
    await up.go_live(socket.send, [])
    for i in range(10):
        await up.push(*frame(i))
    assert up.sent_since(None) == [frame(i) for i in range(6, 10)]
