"""Caller audio to a listening socket: sent, held while (re)connecting, replayed, forgotten."""

from __future__ import annotations

from telephony.session.upstream import Upstream


class Socket:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.fail_after = fail_after

    def send(self, ts: int, payload: bytes) -> bool:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            return False  # the socket closed
        self.sent.append((ts, payload))
        return True


def frame(i: int) -> tuple[int, bytes]:
    return i * 20, bytes([i % 256]) * 160


def test_held_until_live_then_replay_then_held_then_direct() -> None:
    up = Upstream()
    for i in range(3):
        up.push(*frame(i))  # before the socket is up: held
    socket = Socket()
    up.go_live(socket.send, [frame(-2), frame(-1)])
    up.push(*frame(3))
    assert socket.sent == [frame(i) for i in (-2, -1, 0, 1, 2, 3)]
    assert up.sent_since(None) == socket.sent  # all of it kept for a replay
    assert up.sent_since(20) == [frame(i) for i in (1, 2, 3)]
    assert up.last_sent_ms() == 60


def test_holding_is_bounded_and_drops_are_counted() -> None:
    up = Upstream(pending_bytes=5 * 160)
    for i in range(8):
        up.push(*frame(i))
    assert up.dropped_frames == 3
    socket = Socket()
    up.go_live(socket.send, [])
    assert socket.sent == [frame(i) for i in range(3, 8)]  # the newest five


def test_a_send_on_a_closed_socket_holds_the_frame_for_the_next_one() -> None:
    up = Upstream()
    first = Socket(fail_after=2)
    up.go_live(first.send, [])
    for i in range(4):
        up.push(*frame(i))
    assert not up.live and first.sent == [frame(0), frame(1)]
    second = Socket()
    up.go_live(second.send, up.sent_since(None))
    assert second.sent == [frame(i) for i in range(4)]  # nothing lost in the switch


def test_settled_audio_is_forgotten_and_a_closing_socket_holds_nothing() -> None:
    up = Upstream()
    socket = Socket()
    up.go_live(socket.send, [])
    for i in range(10):
        up.push(*frame(i))
    up.forget_before(100)
    assert up.sent_since(None) == [frame(i) for i in range(5, 10)]
    up.live = up.accepting = False
    up.push(*frame(10))
    up.go_live(socket.send, [])
    assert socket.sent[-1] == frame(9)  # frame 10 came after close: not held, not sent


def test_the_recent_window_is_bounded() -> None:
    up = Upstream(recent_bytes=16 * 160)
    socket = Socket()
    up.go_live(socket.send, [])
    for i in range(40):
        up.push(*frame(i))
        assert 0 < len(up.sent_since(None)) <= 16  # trimmed to 15 frames once over 16
    kept = up.sent_since(None)
    assert len(kept) in (15, 16) and kept == [frame(i) for i in range(40 - len(kept), 40)]


def test_a_socket_that_closes_during_the_replay_leaves_the_rest_held_in_order() -> None:
    up = Upstream()
    for i in range(3):
        up.push(*frame(i))  # held while connecting
    short_lived = Socket(fail_after=3)
    assert not up.go_live(short_lived.send, [frame(-2), frame(-1)])
    assert not up.live and short_lived.sent == [frame(-2), frame(-1), frame(0)]
    up.push(*frame(3))  # still not live: held behind the rest
    third = Socket()
    assert up.go_live(third.send, up.sent_since(None))
    assert third.sent == [frame(i) for i in range(-2, 4)]  # each frame once, in order


def test_a_socket_given_up_for_good_drops_what_waited_and_holds_nothing_more() -> None:
    up = Upstream()
    for i in range(3):
        up.push(*frame(i))  # held while connecting
    up.stop()
    up.push(*frame(3))
    socket = Socket()
    assert up.go_live(socket.send, [])
    assert socket.sent == []  # nothing was kept for a socket that never comes


def test_memory_is_bounded_in_bytes_whatever_the_frame_size() -> None:
    """Issue 21: the windows were bounded in frames of any size (1 500 x 48 KB frames: 72 MB
    per stream). In bytes, counting each frame at least as a whole Twilio frame, both windows
    stay within their bounds for huge frames and tiny ones alike."""
    from telephony.session.upstream import PENDING_BYTES, RECENT_BYTES

    for size in (48_000, 642, 160, 1):
        up = Upstream()
        for i in range(2000):
            up.push(i * 20, bytes([i % 256]) * size)  # not live yet: held
        socket = Socket()
        assert up.go_live(socket.send, [])
        held = socket.sent[:]  # what was held goes first: the newest, within the bound
        assert sum(len(audio) for _, audio in held) <= PENDING_BYTES
        assert len(held) <= PENDING_BYTES // 160
        assert held[-1][0] == 1999 * 20
        assert up.dropped_bytes == (2000 - len(held)) * size
        for i in range(2000, 6000):
            up.push(i * 20, bytes([i % 256]) * size)
        kept = up.sent_since(None)
        assert sum(len(audio) for _, audio in kept) <= RECENT_BYTES
        assert len(kept) <= RECENT_BYTES // 160
        assert kept[-1] == (5999 * 20, bytes([5999 % 256]) * size)  # the newest are kept
        assert len(socket.sent) == 4000 + len(held)  # bounds never hold sending back


def test_forgetting_keeps_the_window_in_place_and_its_size_right() -> None:
    """The window's deques live as long as the call: replacing them at each turn's end made
    young objects holding every frame since, scanned item by item by each young collection."""
    up = Upstream(recent_bytes=8 * 160)
    socket = Socket()
    up.go_live(socket.send, [])
    for i in range(6):
        up.push(*frame(i))
    window = (up._recent_ts, up._recent)
    up.forget_before(60)
    assert up._recent_ts is window[0] and up._recent is window[1]
    assert up.sent_since(None) == [frame(i) for i in (3, 4, 5)]
    for i in range(6, 11):  # the size followed the forgetting: 8 frames fit before a trim
        up.push(*frame(i))
    assert up.sent_since(None) == [frame(i) for i in range(3, 11)]
