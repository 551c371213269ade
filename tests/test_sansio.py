"""Frames handed to the call as uvicorn parses them (routes/sansio.py `frame_pump`), and the
plain ASGI reading every other server gets: same frames, same order, same endings."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.websockets import WebSocket, WebSocketState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from routes import sansio
from routes.sansio import UVICORN_WS
from routes.twilio import StarletteTwilioSocket
from telephony.inprocess import InProcessServer, bind_loopback
from telephony.session.media_socket import CLOSE_ERROR, StreamEnd

WHO = contextvars.ContextVar("who", default="nobody")


pytestmark = pytest.mark.both_loops  # asyncio's loop and uvloop: see tests/conftest.py


Outcome = dict[str, Any]
Pumped = Callable[[StarletteTwilioSocket, list[str | bytes]], Awaitable[StreamEnd | None]]


async def serve_one(
    direct: bool,
    pumped: Pumped,
    client: Callable[[Any], Awaitable[None]],
    uvicorn_ws: dict[str, Any] = UVICORN_WS,
) -> Outcome:
    """One WebSocket served by uvicorn (websockets-sansio): the app reads one frame the
    ordinary way (as the handshake does), then pumps; `client` drives the other end. Not
    `direct`: receive is wrapped, as any middleware or other server would leave it, so the
    plain ASGI reading is used."""
    outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if not direct:
            plain = receive

            async def receive() -> Any:
                return await plain()

        ws = WebSocket(scope, receive, send)
        await ws.accept()
        socket = StarletteTwilioSocket(ws)
        first = await socket.receive()
        frames: list[str | bytes] = []
        result: Outcome = {"direct": socket._pump is not None, "first": first, "frames": frames}
        try:
            result["end"] = await pumped(socket, frames)
        except Exception as exc:
            result["error"] = exc
            await socket.close(CLOSE_ERROR, "internal error")
        else:
            if result["end"] is not None:
                await socket.close(result["end"].code, result["end"].reason)
        result["client_state"] = ws.client_state
        outcome.set_result(result)

    sock = bind_loopback()
    async with InProcessServer(app, sock, **uvicorn_ws):
        async with connect(f"ws://127.0.0.1:{sock.getsockname()[1]}/") as ws:
            await client(ws)
        return await asyncio.wait_for(outcome, 5)


async def closed_with(ws: Any) -> tuple[int, str]:
    """The close code and reason the server ends the connection with."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def collect_until(word: str) -> Pumped:
    async def pumped(socket: StarletteTwilioSocket, frames: list[str | bytes]) -> StreamEnd | None:
        def handler(frame: str | bytes) -> StreamEnd | None:
            frames.append(frame)
            return StreamEnd("told to stop", 1000) if frame == word else None

        return await socket.pump(handler)

    return pumped


WAYS = [pytest.param(True, id="direct"), pytest.param(False, id="asgi")]


@pytest.mark.parametrize("direct", WAYS)
async def test_every_frame_reaches_the_handler_in_order_until_it_ends_the_stream(
    direct: bool,
) -> None:
    sent = [f"frame {i}" for i in range(200)]

    async def client(ws: Any) -> None:
        await ws.send("hello")
        for i, text in enumerate(sent):
            await ws.send(text if i % 7 else text.encode())  # binary frames too
        await ws.send("stop")
        await ws.send("after the end")  # never handed over
        assert await closed_with(ws) == (1000, "told to stop")

    result = await serve_one(direct, collect_until("stop"), client)
    assert result["direct"] is direct
    assert result["first"] == "hello"
    want = [text if i % 7 else text.encode() for i, text in enumerate(sent)]
    assert result["frames"] == [*want, "stop"]
    assert result["end"] == StreamEnd("told to stop", 1000)


@pytest.mark.parametrize("direct", WAYS)
async def test_the_peer_leaving_ends_the_pump_and_starlette_knows(direct: bool) -> None:
    async def client(ws: Any) -> None:
        await ws.send("hello")
        await ws.send("one")
        await ws.send("two")

    result = await serve_one(direct, collect_until("never"), client)
    assert result["frames"] == ["one", "two"]
    assert result["end"] is None
    assert result["client_state"] is WebSocketState.DISCONNECTED


async def test_frames_that_came_before_the_pump_go_first() -> None:
    """Frames queued while the app was busy after its last read are handled first, in order,
    and the connection goes on being read afterwards."""
    gate = asyncio.Event()

    async def pumped(socket: StarletteTwilioSocket, frames: list[str | bytes]) -> StreamEnd | None:
        await gate.wait()  # the client's first frames queue up meanwhile
        return await collect_until("stop")(socket, frames)

    async def client(ws: Any) -> None:
        await ws.send("hello")
        for i in range(5):
            await ws.send(f"early {i}")
        await asyncio.sleep(0.1)
        gate.set()
        await asyncio.sleep(0.05)
        await ws.send("late")
        await ws.send("stop")
        await closed_with(ws)

    result = await serve_one(True, pumped, client)
    assert result["frames"] == [*(f"early {i}" for i in range(5)), "late", "stop"]


async def test_a_failing_handler_fails_the_pump_not_the_connection() -> None:
    """The handler runs inside uvicorn's data_received: its error must come out of the pump
    (the call logs it and closes with 1011), never into uvicorn, which would drop the socket."""

    async def pumped(socket: StarletteTwilioSocket, frames: list[str | bytes]) -> StreamEnd | None:
        def handler(frame: str | bytes) -> StreamEnd | None:
            frames.append(frame)
            if frame == "bad":
                raise ValueError("handler broke")
            return None

        return await socket.pump(handler)

    async def client(ws: Any) -> None:
        await ws.send("hello")
        await asyncio.sleep(0.1)  # the pump is in place: the handler runs in data_received
        await ws.send("fine")
        await ws.send("bad")
        await ws.send("ignored")
        assert await closed_with(ws) == (1011, "internal error")

    result = await serve_one(True, pumped, client)
    assert str(result["error"]) == "handler broke"
    assert result["frames"] == ["fine", "bad"]


async def test_the_handler_runs_in_the_calls_own_context() -> None:
    """Log lines from the audio path carry the call SID (a context variable of the call's
    task), though the handler is called from the transport's callback."""

    async def pumped(socket: StarletteTwilioSocket, frames: list[str | bytes]) -> StreamEnd | None:
        WHO.set("CAcontext")

        def handler(frame: str | bytes) -> StreamEnd | None:
            frames.append(WHO.get())
            return StreamEnd("done", 1000)

        return await socket.pump(handler)

    async def client(ws: Any) -> None:
        await ws.send("hello")
        await asyncio.sleep(0.1)  # the pump is in place, reading was not paused in between
        await ws.send("who?")
        await closed_with(ws)

    result = await serve_one(True, pumped, client)
    assert result["frames"] == ["CAcontext"]


async def test_a_close_from_another_task_ends_the_pump() -> None:
    """The time limit and the drain close the stream while the call is pumping."""

    async def pumped(socket: StarletteTwilioSocket, frames: list[str | bytes]) -> StreamEnd | None:
        async def close_soon() -> None:
            await asyncio.sleep(0.05)
            await socket.close(1000, "time limit")

        closer = asyncio.create_task(close_soon())
        end = await collect_until("never")(socket, frames)
        await closer
        return end

    async def client(ws: Any) -> None:
        await ws.send("hello")
        await ws.send("one")
        assert await closed_with(ws) == (1000, "time limit")

    result = await serve_one(True, pumped, client)
    assert result["frames"] == ["one"]
    assert result["end"] is None


async def mixed_traffic(
    monkeypatch: pytest.MonkeyPatch, uvicorn_ws: dict[str, Any] = UVICORN_WS
) -> int:
    """Ordinary frames are parsed by routes/frame_reader.py, and large ones; pings (answered)
    and fragmented messages in between go through websockets; all arrive in order. Returns
    how many the reader parsed."""
    parsed: list[str | bytes] = []

    class CountingReader(sansio.FrameReader):
        def __init__(self, protocol: Any, deliver: Callable[[str | bytes], bool]) -> None:
            def counting(message: str | bytes) -> bool:
                parsed.append(message)
                return deliver(message)

            super().__init__(protocol, counting)

    monkeypatch.setattr(sansio, "FrameReader", CountingReader)
    sent: list[str | bytes] = []

    async def client(ws: Any) -> None:
        await ws.send("hello")
        await asyncio.sleep(0.05)  # the pump is in place
        for i in range(300):
            if i % 50 == 10:
                await (await ws.ping())  # the pong comes back
            if i % 50 == 20:
                sent.append(f"fragmented {i}")
                await ws.send([f"fragmented {i}"[:5], f"fragmented {i}"[5:]])
            if i % 50 == 30:
                sent.append("z" * 70000)  # 64-bit length
                await ws.send(sent[-1])
            sent.append(f"frame {i} " + "x" * (i % 200))
            await ws.send(sent[-1] if i % 9 else sent[-1].encode())
            if i % 9 == 0:
                sent[-1] = sent[-1].encode()  # type: ignore[union-attr]
        await ws.send("stop")
        assert await closed_with(ws) == (1000, "told to stop")

    result = await serve_one(True, collect_until("stop"), client, uvicorn_ws)
    assert result["frames"] == [*sent, "stop"]
    assert not any(str(m).startswith("fragmented") for m in parsed)
    return len(parsed)


async def test_ordinary_frames_go_through_the_frame_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await mixed_traffic(monkeypatch) == 307  # all but the fragmented ones


async def test_with_compression_negotiated_websockets_reads_every_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that accepts permessage-deflate (the client here offers it) gets compressed
    frames, which only websockets can read: the reader stays out, nothing is lost."""
    assert await mixed_traffic(monkeypatch, {**UVICORN_WS, "ws_per_message_deflate": True}) == 0


@pytest.mark.parametrize("ours", [True, False], ids=["ours", "uvicorn's own"])
async def test_a_shutdown_just_as_the_peer_closes_does_not_raise(ours: bool) -> None:
    """uvicorn's shutdown calls each connection's `shutdown()`; one whose peer's Close was
    answered a moment ago (the transport closing, `connection_lost` not yet run) made
    uvicorn's own protocol send a second Close, which websockets refuses: the exception ended
    the server's shutdown before the app's lifespan shutdown (the store's last flush)."""
    base = sansio._SansIOProtocol
    raised: list[BaseException] = []

    class Probe(sansio.MediaSocketProtocol if ours else base):  # type: ignore[misc,name-defined]
        def handle_close(self, event: Any) -> None:
            super().handle_close(event)
            try:
                self.shutdown()  # what the server's shutdown does, in this very loop turn
            except Exception as exc:
                raised.append(exc)

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        with contextlib.suppress(Exception):
            while True:
                await ws.receive_text()

    sock = bind_loopback()
    async with InProcessServer(app, sock, **{**UVICORN_WS, "ws": Probe}):
        async with connect(f"ws://127.0.0.1:{sock.getsockname()[1]}/") as ws:
            await ws.send("hello")
        await asyncio.sleep(0.05)
    assert [type(e).__name__ for e in raised] == ([] if ours else ["InvalidState"])
