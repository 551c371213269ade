"""httpx over telephony/http_backend.py: a raw HTTP/1.1 server here controls exactly how bytes
arrive (split chunks, idle closes, stalls), plain and over TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import httpx
import pytest

from telephony.http_backend import AsyncioBackend, use_asyncio_backend
from telephony.http_pool import ShardedTransport

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: head and a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def chunked(*parts: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


@asynccontextmanager
async def server(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[dict]:
    state: dict = {"connections": 0}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state["connections"] += 1
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    state["port"] = srv.sockets[0].getsockname()[1]
    async with srv:
        yield state


def client(**kwargs: object) -> httpx.AsyncClient:
    transport = use_asyncio_backend(httpx.AsyncHTTPTransport(**kwargs))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(2.0, read=0.3))


def test_the_pool_connects_through_the_asyncio_backend() -> None:
    """httpx does not pass a network backend through; if it changes how its pool is built,
    this fails rather than the service quietly going back to anyio."""
    transport = use_asyncio_backend(httpx.AsyncHTTPTransport())
    assert isinstance(transport._pool._network_backend, AsyncioBackend)
    sharded = ShardedTransport(2)
    assert all(isinstance(s._pool._network_backend, AsyncioBackend) for s in sharded.shards)


async def test_a_streamed_body_arrives_whole_however_it_is_cut_and_the_connection_is_reused():
    parts = [b"data: %d\n\n" % i for i in range(50)]
    wire = chunked(*parts)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            for i in range(0, len(wire), 7):  # 7-byte pieces: cuts inside chunk headers too
                writer.write(wire[i : i + 7])
                await writer.drain()
                await asyncio.sleep(0)

    async with server(handler) as srv, client() as http:
        for _ in range(3):
            async with http.stream("POST", f"http://127.0.0.1:{srv['port']}/", content=b"{}") as r:
                got = b"".join([part async for part in r.aiter_raw()])
            assert got == b"".join(parts)
        assert srv["connections"] == 1  # kept alive


def test_under_uvloop_as_telephony_serve_runs() -> None:
    """`telephony serve` runs uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")  # uvicorn[standard] installs it
    streamed = test_a_streamed_body_arrives_whole_however_it_is_cut_and_the_connection_is_reused
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(streamed())
        runner.run(test_a_connection_the_server_closed_while_idle_is_not_reused())


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then close: the client's pooled connection is now dead

    async with server(handler) as srv, client() as http:
        url = f"http://127.0.0.1:{srv['port']}/"
        assert (await http.post(url, content=b"1")).text == "ok"
        await asyncio.sleep(0.05)  # the FIN arrives
        assert (await http.post(url, content=b"2")).text == "ok"  # no error: a new connection
        assert srv["connections"] == 2


async def test_a_stalled_stream_times_out_and_a_refused_connect_is_a_connect_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)  # then nothing

    async with server(handler) as srv, client() as http:
        async with http.stream("POST", f"http://127.0.0.1:{srv['port']}/", content=b"{}") as r:
            with pytest.raises(httpx.ReadTimeout):
                async for part in r.aiter_raw():
                    assert part == b"hello"
        port = srv["port"]
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{port}/", content=b"{}")


async def test_a_reply_the_server_cuts_short_is_an_error_not_a_short_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        await writer.drain()

    async with server(handler) as srv, client() as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with http.stream("POST", f"http://127.0.0.1:{srv['port']}/") as r:
                [part async for part in r.aiter_raw()]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    names = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    new_key = ["-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(["openssl", "req", "-x509", *new_key, *files, *names], check=True)
    return cert, key


async def test_https_works_and_checks_the_certificate(certificate: tuple[Path, Path]) -> None:
    """Real LLM endpoints are HTTPS: the TLS upgrade (start_tls) of a plain connection."""
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(chunked(b"data: secure\n\n"))
            await writer.drain()

    async with server(handler, tls=server_tls) as srv:
        url = f"https://localhost:{srv['port']}/"
        async with client(verify=ssl.create_default_context(cafile=str(cert))) as http:
            for _ in range(2):
                assert (await http.post(url, content=b"{}")).text == "data: secure\n\n"
        assert srv["connections"] == 1
        async with client() as http:  # the system's CAs do not know this certificate
            with pytest.raises(httpx.ConnectError):
                await http.post(url, content=b"{}")


async def test_the_backend_refuses_unix_sockets() -> None:
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_unix_socket("/nowhere")


async def _turns_while(work: Awaitable[object]) -> int:
    """How many times the loop turned (ran other callbacks) while `work` ran."""
    turns = 0
    loop = asyncio.get_running_loop()
    ticking = True

    def tick() -> None:
        nonlocal turns
        if ticking:
            turns += 1
            loop.call_soon(tick)

    loop.call_soon(tick)
    try:
        await work
    finally:
        ticking = False
    return turns


async def test_httpcore_locks_and_set_events_take_no_loop_trip_when_free() -> None:
    """Three such trips came before every LLM request was written (the pool's event, two
    locks), each behind every other call's ready callbacks; contended, they still wait."""
    use_asyncio_backend(httpx.AsyncHTTPTransport())
    sync = httpcore._synchronization  # type: ignore[attr-defined]
    lock, event = sync.AsyncLock(), sync.AsyncEvent()

    async def take() -> None:
        async with lock:
            pass

    assert await _turns_while(take()) == 0
    event.set()
    assert await _turns_while(event.wait(1.0)) == 0

    order: list[str] = []

    async def holder() -> None:
        async with lock:
            order.append("held")
            await asyncio.sleep(0.01)
            order.append("released")

    async def waiter() -> None:
        async with lock:
            order.append("waited")

    await asyncio.gather(holder(), waiter())
    assert order == ["held", "released", "waited"]
    unset = sync.AsyncEvent()
    unset.setup()
    asyncio.get_running_loop().call_later(0.01, unset.set)
    assert await _turns_while(unset.wait(1.0)) > 0  # an unset event is waited for
    with pytest.raises(httpcore.PoolTimeout):
        await sync.AsyncEvent().wait(0.01)
