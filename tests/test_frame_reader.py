"""routes/frame_reader.py against websockets itself: any client byte stream, cut anywhere,
yields the same messages in the same order, the same replies (pongs, closes) and the same
failures as websockets' parser alone (under a miniature of uvicorn's handling); and the reader
does parse the ordinary frames."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import websockets.utils
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from routes import frame_reader
from routes.frame_reader import FrameReader, can_read

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

MAX_SIZE = 4096


class Transport:
    def __init__(self) -> None:
        self.protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


class UvicornLike:
    """What uvicorn's websockets-sansio protocol does with received bytes, in miniature: run
    websockets, assemble messages, decode text (1007 if not UTF-8), answer control frames."""

    def __init__(self) -> None:
        self.conn = ServerProtocol(state=State.OPEN, max_size=MAX_SIZE)
        self.transport = Transport()
        self.messages: list[str | bytes] = []
        self.sent = b""
        self.frames: list[bytes] = []
        self.text = False
        self.close_sent = False

    def data_received(self, data: bytes) -> None:
        if self.close_sent:  # uvicorn closed the transport: nothing more is read
            return
        self.conn.receive_data(data)
        if self.conn.parser_exc is not None:  # uvicorn closes without reading the events
            self.close_sent = True
            self.sent += b"".join(self.conn.data_to_send())
            return
        for frame in self.conn.events_received():
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.text = frame.opcode is Opcode.TEXT
                self.frames = [frame.data]
            elif frame.opcode is Opcode.CONT:
                self.frames.append(frame.data)
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT) and frame.fin:
                self._message(b"".join(self.frames))
        self.sent += b"".join(self.conn.data_to_send())

    def _message(self, data: bytes) -> None:
        if self.close_sent:  # uvicorn drops messages once it has closed
            return
        if not self.text:
            self.messages.append(data)
            return
        try:
            self.messages.append(data.decode())
        except UnicodeDecodeError:
            self.messages.append("<1007>")
            if self.conn.state is State.OPEN:  # (a close may have been received meanwhile)
                self.conn.send_close(1007)
            self.close_sent = True

    def app_closes(self) -> None:
        """The app sends a close (the call's time limit, say) while the client still sends."""
        if self.conn.state is State.OPEN:
            self.conn.send_close(1000)
            self.close_sent = True
            self.sent += b"".join(self.conn.data_to_send())


def reference(chunks: list[bytes], app_closes_at: int | None = None) -> UvicornLike:
    server = UvicornLike()
    for i, chunk in enumerate(chunks):
        if i == app_closes_at:
            server.app_closes()
        server.data_received(chunk)
    return server


def through_reader(
    chunks: list[bytes], stop_after: int | None = None, app_closes_at: int | None = None
) -> tuple[UvicornLike, int]:
    """The chunks through a FrameReader in front of the server; the number of messages the
    reader parsed itself. `stop_after`: the pump ends after that many messages."""
    server = UvicornLike()
    parsed = 0

    def deliver(message: str | bytes) -> bool:
        nonlocal parsed
        parsed += 1
        server.messages.append(message)
        return stop_after is None or len(server.messages) < stop_after

    assert can_read(server)
    reader = FrameReader(server, deliver)
    reader.install()
    assert server.transport.protocol is reader
    for i, chunk in enumerate(chunks):
        if i == app_closes_at:
            server.app_closes()
        server.transport.protocol.data_received(chunk)
    reader.uninstall()
    assert server.transport.protocol is server
    server.sent += b"".join(server.conn.data_to_send())
    return server, parsed


# What a client may send: the ordinary frames and every other kind.
TEXT = st.text(max_size=300).map(lambda t: ("text", t.encode()))
BINARY = st.binary(max_size=300).map(lambda b: ("binary", b))
kinds = st.one_of(
    TEXT,
    TEXT,
    BINARY,
    st.binary(min_size=1, max_size=8).map(lambda b: ("bad utf-8", b"\xff" + b)),
    st.binary(max_size=20).map(lambda b: ("ping", b)),
    st.binary(max_size=20).map(lambda b: ("pong", b)),
    st.lists(st.binary(max_size=40), min_size=2, max_size=4).map(lambda p: ("fragments", p)),
    st.integers(MAX_SIZE - 2, MAX_SIZE + 2).map(lambda n: ("binary", b"x" * n)),  # the limit
    st.integers(65536, 65600).map(lambda n: ("binary", b"y" * n)),  # 64-bit length
    st.just(("close", b"")),
    st.just(("unfinished", b"a")),  # a first fragment, then no continuation: protocol error
)


def new_client() -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://test/"), state=State.OPEN, max_size=None)


def client_bytes(messages: list[tuple[str, Any]]) -> bytes:
    client = new_client()
    out = b""
    for kind, data in messages:
        if kind in ("text", "bad utf-8"):
            client.send_text(data)
        elif kind == "binary":
            client.send_binary(data)
        elif kind == "ping":
            client.send_ping(data)
        elif kind == "pong":
            client.send_pong(data)
        elif kind == "fragments":
            client.send_text(data[0], fin=False)
            for i, part in enumerate(data[1:], 2):
                client.send_continuation(part, fin=i == len(data))
        elif kind == "unfinished":  # by another client: this one would refuse what follows
            other = new_client()
            other.send_text(data, fin=False)
            out += b"".join(client.data_to_send()) + b"".join(other.data_to_send())
        elif kind == "close":
            client.send_close(1000)
            break
    return out + b"".join(client.data_to_send())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(kinds, max_size=12),
    st.lists(st.integers(0, 10**6), max_size=8),
    st.none() | st.integers(0, 8),
)
def test_same_messages_replies_and_failures_as_websockets_alone(
    messages: list[tuple[str, Any]], points: list[int], app_closes_at: int | None
) -> None:
    chunks = cut(client_bytes(messages), points)
    want = reference(chunks, app_closes_at)
    got, _ = through_reader(chunks, app_closes_at=app_closes_at)
    if want.conn.parser_exc is None and "<1007>" not in want.messages:
        assert got.messages == want.messages
        assert got.sent == want.sent
        assert got.conn.parser_exc is None
        assert got.conn.state is want.conn.state
        assert got.conn.close_rcvd == want.conn.close_rcvd
        return
    # A stream the connection fails on (websockets' error, or text that is not UTF-8): the
    # same messages up to the failure, and the connection is failed. uvicorn drops what came
    # in the same read as a frame websockets fails on, and answers control frames read with
    # bad text before closing; the reader hands the frames over one by one, so it may deliver
    # those messages, or report the bad text where websockets alone reported a later error.
    assert got.messages[: len(want.messages)] == want.messages
    assert got.conn.parser_exc is not None or "<1007>" in got.messages


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=10), st.lists(st.integers(0, 10**6), max_size=8))
def test_ordinary_frames_are_parsed_by_the_reader(
    messages: list[tuple[str, Any]], points: list[int]
) -> None:
    chunks = cut(client_bytes(messages), points)
    got, parsed = through_reader(chunks)
    assert parsed == len(messages)
    assert got.messages == [data.decode() for _, data in messages]


def test_the_reader_resumes_after_websockets_handled_a_frame() -> None:
    """A ping between media frames goes to websockets (which queues the pong); the frames
    after it are the reader's again, in the same read and later ones."""
    first = client_bytes([("text", b"a"), ("ping", b"p"), ("text", b"b")])
    got, parsed = through_reader([first, client_bytes([("text", b"c"), ("text", b"d")])])
    assert got.messages == ["a", "b", "c", "d"]
    assert parsed == 4
    assert got.sent == b"\x8a\x01p"  # the pong, unmasked from the server


def test_frames_are_unmasked_without_websockets_c_extension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """websockets' pure-Python apply_mask (its C extension missing) takes the key as bytes."""
    monkeypatch.setattr(frame_reader, "apply_mask", websockets.utils.apply_mask)
    got, parsed = through_reader([client_bytes([("text", b"hello"), ("binary", b"\x00\x01")])])
    assert got.messages == ["hello", b"\x00\x01"]
    assert parsed == 2


def test_a_partial_frame_when_the_pump_ends_goes_to_websockets() -> None:
    """Bytes of the next frame held by the reader are not lost when the pump ends: websockets
    gets them and the message reaches uvicorn's queue (here: the server's list)."""
    data = client_bytes([("text", b"one"), ("text", b"two"), ("text", b"three")])
    first_two = len(client_bytes([("text", b"one"), ("text", b"two")]))
    got, parsed = through_reader([data[: first_two + 3], data[first_two + 3 :]], stop_after=1)
    assert parsed == 1  # "one"; the pump ended there
    assert got.messages == ["one", "two", "three"]


def test_a_half_read_frame_at_install_is_left_to_websockets() -> None:
    """websockets has read a frame's header and waits for its payload: that frame is
    websockets' to finish; the reader starts with the next."""
    data = client_bytes([("text", b"x" * 200), ("text", b"next")])
    server = UvicornLike()
    server.data_received(data[:8])  # header and mask of the first frame, nothing buffered
    assert not server.conn.reader.buffer
    parsed: list[str | bytes] = []

    def deliver(message: str | bytes) -> bool:
        parsed.append(message)
        server.messages.append(message)
        return True

    reader = FrameReader(server, deliver)
    reader.install()
    second = len(data) - len(client_bytes([("text", b"next")]))
    reader.data_received(data[8:second])
    reader.data_received(data[second:])
    assert server.messages == ["x" * 200, "next"]
    assert parsed == ["next"]


def test_negotiated_extensions_keep_the_reader_out() -> None:
    server = UvicornLike()
    server.conn.extensions = [object()]  # e.g. permessage-deflate: RSV1 frames
    assert not can_read(server)


def test_frames_trickling_in_byte_by_byte() -> None:
    """A client sending one byte per read: held here (each byte appended, not copied with all
    that came before) until each frame is whole, then parsed as usual."""
    messages = [("text", b"x" * 300), ("ping", b"p"), ("binary", b"y" * 4000), ("text", b"z")]
    data = client_bytes(messages)
    chunks = [data[i : i + 1] for i in range(len(data))]
    got, parsed = through_reader(chunks)
    assert got.messages == reference(chunks).messages == ["x" * 300, b"y" * 4000, "z"]
    assert parsed == 3
    assert got.sent == b"\x8a\x01p"


def test_after_the_pump_ends_every_byte_is_websockets() -> None:
    """Between the pump's end and the reader's removal, later reads go to websockets (and so
    to uvicorn's queue), never to the ended call."""
    chunks = [client_bytes([("text", word)]) for word in (b"one", b"two", b"three", b"four")]
    got, parsed = through_reader(chunks, stop_after=1)
    assert parsed == 1
    assert got.messages == ["one", "two", "three", "four"]
