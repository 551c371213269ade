"""httpcore's network layer on plain asyncio transports, for the LLM's streamed replies.

httpx reaches the network through httpcore, and httpcore on asyncio through anyio: every read
of a streamed reply (one per token or so) enters an anyio cancel scope for its timeout, and
every request start asks each idle pooled connection whether its socket is readable, which
anyio answers by building a dict of socket attributes and polling the socket. With hundreds
of calls' replies streaming, those were a third of the LLM path's cost (`telephony bench`).
This backend is a small asyncio Protocol: reads wait on a future only when nothing is buffered
(the timeout is a plain timer then), and "readable" is whether bytes or EOF have arrived.

httpcore takes a network backend as a documented pool argument; httpx does not pass one
through, so `use_asyncio_backend` sets it on an httpx transport's pool (checked by the tests).
"""

# httpcore's interface passes each operation's `timeout` as an argument (ASYNC109).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

# As httpcore's AsyncNetworkBackend declares it (its alias lives in a private module).
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _Connection(asyncio.Protocol):
    """Bytes in a buffer, EOF and errors as flags; one reader and one writer at a time (the
    HTTP/1.1 connection above never overlaps its reads, nor its writes)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._reading: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._reading = self._reading, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_readable(self, timeout: float | None) -> None:
        self._reading = waiter = asyncio.get_running_loop().create_future()
        await _within(waiter, timeout)

    async def wait_drained(self, timeout: float | None) -> None:
        if self._drained is not None:
            await _within(asyncio.shield(self._drained), timeout)


async def _within(waiter: asyncio.Future[Any], timeout: float | None) -> None:
    if timeout is None:
        await waiter
        return
    async with asyncio.timeout(timeout):
        await waiter


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, connection: _Connection) -> None:
        self._conn = connection

    @property
    def _transport(self) -> asyncio.Transport:
        assert self._conn.transport is not None
        return self._conn.transport

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        conn = self._conn
        if not conn.buffer and not conn.eof:
            try:
                await conn.wait_readable(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no data within {timeout} s") from None
        buffer = conn.buffer
        if buffer:
            if len(buffer) <= max_bytes:  # the usual case: take it all
                data = bytes(buffer)
                buffer.clear()
            else:
                data = bytes(buffer[:max_bytes])
                del buffer[:max_bytes]
            return data
        if conn.error is not None:
            raise httpcore.ReadError(str(conn.error)) from conn.error
        return b""  # EOF

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        conn = self._conn
        if conn.eof and conn.transport is not None and conn.transport.is_closing():
            raise httpcore.WriteError("connection closed")
        try:
            self._transport.write(buffer)
            await conn.wait_drained(timeout)
        except TimeoutError:
            raise httpcore.WriteTimeout(f"not sent within {timeout} s") from None
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        conn = self._conn
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, conn, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"TLS handshake over {timeout} s") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        if tls is None:
            raise httpcore.ConnectError("TLS handshake failed: connection closed")
        conn.transport = tls
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self._conn.transport
        if info == "is_readable":  # an idle connection with bytes or EOF: the server closed it
            return bool(self._conn.buffer) or self._conn.eof
        if transport is None:
            return None
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, conn = await loop.create_connection(
                    _Connection, host, port, local_addr=local
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(conn)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for the LLM")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def no_yield_when_free() -> bool:
    """httpcore's locks and events, on asyncio, take no trip round the loop when free.

    httpcore's AsyncLock and AsyncEvent go through anyio, whose lock yields to the loop even
    when it is free and whose event does even when it is already set: three trips before each
    LLM request is written (the pool's "connection acquired" event, the connection's request
    lock, the HTTP/1.1 state lock), each waiting behind every other call's ready callbacks —
    a hop of the EndOfTurn -> reply path that grows with the load. anyio's lock has
    `fast_acquire` for this; an event already set returns at once. Contended, both wait as
    before. Applied once per process (every httpcore user gains); False if httpcore or anyio
    no longer look as expected (then nothing is changed)."""
    sync = getattr(httpcore, "_synchronization", None)
    lock_cls, event_cls = getattr(sync, "AsyncLock", None), getattr(sync, "AsyncEvent", None)
    if lock_cls is None or event_cls is None:
        return False
    if getattr(lock_cls, "_no_yield_when_free", False):
        return True
    if "fast_acquire" not in inspect.signature(anyio.Lock).parameters:
        return False
    setup, wait = lock_cls.setup, event_cls.wait

    def fast_setup(self: Any) -> None:
        setup(self)
        if self._backend == "asyncio":
            self._anyio_lock = anyio.Lock(fast_acquire=True)

    async def wait_unless_set(self: Any, timeout: float | None = None) -> None:
        if self._backend == "asyncio" and self._anyio_event.is_set():
            return
        await wait(self, timeout)

    lock_cls.setup = fast_setup
    event_cls.wait = wait_unless_set
    lock_cls._no_yield_when_free = True
    return True


def use_asyncio_backend(transport: httpx.AsyncHTTPTransport) -> httpx.AsyncHTTPTransport:
    """The transport, its pool connecting through AsyncioBackend (before any request), and
    httpcore's locks taking no loop trip when free (`no_yield_when_free`)."""
    no_yield_when_free()
    pool = transport._pool
    if not isinstance(pool, httpcore.AsyncConnectionPool):  # httpx changed: keep its default
        return transport
    pool._network_backend = AsyncioBackend()
    return transport
