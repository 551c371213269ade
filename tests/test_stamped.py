"""The load generator's kernel receive times (telephony/sim/stamped.py), over real loopback
sockets on asyncio's loop and on uvloop (which restarts a transport's own reading after
connection_made: the case that silently made every stamp stale)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from telephony.sim.stamped import StampedTransport, kernel_stamps_available

pytestmark = [
    pytest.mark.both_loops,  # see tests/conftest.py
    pytest.mark.skipif(not kernel_stamps_available(), reason="needs SO_TIMESTAMPNS (Linux)"),
]


class Recorder(asyncio.Protocol):
    """Wraps its transport and notes every read with its stamp and the time it ran."""

    def __init__(self) -> None:
        self.stamped: StampedTransport | None = None
        self.reads: list[tuple[bytes, float, float]] = []  # data, received_at, read at
        self.eof = asyncio.Event()
        self.lost = asyncio.Event()
        self.got = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stamped = StampedTransport(transport, self)

    def data_received(self, data: bytes) -> None:
        assert self.stamped is not None
        self.reads.append((data, self.stamped.received_at, time.monotonic()))
        self.got.set()

    def eof_received(self) -> bool:
        self.eof.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.stamped is not None
        self.stamped.detach()
        self.lost.set()

    @property
    def data(self) -> bytes:
        return b"".join(d for d, _, _ in self.reads)


async def pair() -> tuple[Recorder, socket.socket]:
    """A Recorder connected (as the client) to a plain blocking peer socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Recorder, *listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    await asyncio.sleep(0.01)  # the loop runs the transport's own start-up callbacks
    return proto, peer


async def next_read(proto: Recorder) -> None:
    proto.got.clear()
    await asyncio.wait_for(proto.got.wait(), 2)


async def test_a_read_carries_when_the_bytes_arrived_not_when_the_loop_got_to_them() -> None:
    proto, peer = await pair()
    try:
        sent = time.monotonic()
        peer.sendall(b"frame")
        time.sleep(0.05)  # noqa: ASYNC251  # the loop is busy: the bytes wait in the socket
        await next_read(proto)
        data, received_at, read_at = proto.reads[-1]
        assert data == b"frame"
        # Stamped on arrival (microseconds after the send), read 50 ms later.
        assert sent <= received_at + 0.002 and received_at < sent + 0.01
        assert read_at - received_at >= 0.045
    finally:
        peer.close()


async def test_every_read_after_the_start_is_stamped_and_goes_through_the_wrapper() -> None:
    proto, peer = await pair()
    try:
        for i in range(20):
            peer.sendall(b"%d;" % i)
            await next_read(proto)
        assert proto.data == b"".join(b"%d;" % i for i in range(20))
        assert proto.stamped is not None
        assert proto.stamped.reads == len(proto.reads) and proto.stamped.stamped_reads == 20
        stamps = [stamp for _, stamp, _ in proto.reads]
        assert stamps == sorted(stamps)
    finally:
        peer.close()


async def test_writes_and_flow_control_go_to_the_right_places() -> None:
    proto, peer = await pair()
    stamped = proto.stamped
    assert stamped is not None
    try:
        stamped.write(b"hello")  # the wrapped transport writes
        peer.settimeout(2)
        assert peer.recv(100) == b"hello"
        stamped.pause_reading()
        assert not stamped.is_reading()
        peer.sendall(b"held")
        await asyncio.sleep(0.05)
        assert proto.data == b""  # nobody reads while paused, not even the wrapped transport
        stamped.resume_reading()
        await next_read(proto)
        assert proto.data == b"held"
    finally:
        peer.close()


async def test_the_peer_closing_ends_the_connection() -> None:
    proto, peer = await pair()
    peer.sendall(b"last")
    peer.close()
    await asyncio.wait_for(proto.lost.wait(), 2)
    assert proto.data == b"last" and proto.eof.is_set()


async def test_closing_here_closes_the_socket_for_the_peer() -> None:
    """The duplicate descriptor must not keep the connection open after close()."""
    proto, peer = await pair()
    assert proto.stamped is not None
    try:
        proto.stamped.close()
        await asyncio.wait_for(proto.lost.wait(), 2)
        peer.settimeout(2)
        assert peer.recv(100) == b""  # end of stream, not a timeout
    finally:
        peer.close()


async def test_the_wrapped_transport_closing_on_its_own_closes_the_socket_too() -> None:
    """A write error closes the loop's transport without us: connection_lost's detach() must
    let go of the duplicate, or the peer never learns the call ended."""
    proto, peer = await pair()
    assert proto.stamped is not None
    try:
        proto.stamped._transport.abort()
        await asyncio.wait_for(proto.lost.wait(), 2)
        peer.settimeout(2)
        assert peer.recv(100) == b""  # end of stream, not a timeout
    finally:
        peer.close()
