"""The media socket's two shortcuts through uvicorn's websockets-sansio protocol (what
`telephony serve` runs): several messages in one write, and frames handed over as parsed.

ASGI gives a WebSocket app one message per `send` and one per `receive`. Per call that is 50
inbound frames a second, each put on a queue by the protocol and taken off it by the call's
task after a wake-up, and every outbound frame its own write. On hundreds of calls those layers
cost more than the frames' own handling (measured with `telephony bench`), so where the server
is uvicorn's sans-I/O protocol these reach its connection object directly (and, while a call
pumps, routes/frame_reader.py parses its ordinary frames ahead of websockets). Under any other
server both return None and the call uses plain ASGI.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Send

from routes.frame_reader import FrameReader, can_read
from telephony.session.media_socket import FrameHandler, StreamEnd

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import (
        WebSocketsSansIOProtocol as _SansIOProtocol,
    )
except ImportError:  # an older uvicorn: plain ASGI
    _SansIOProtocol = None  # type: ignore[assignment,misc]

Pump = Callable[[FrameHandler], Awaitable[StreamEnd | None]]

if _SansIOProtocol is not None:

    class MediaSocketProtocol(_SansIOProtocol):
        """uvicorn's sans-I/O protocol, but a server shutdown leaves a closing socket alone.

        When the peer's Close frame arrives, websockets answers it and uvicorn closes the
        transport; until `connection_lost` (a loop turn later) the socket is still among the
        server's connections. uvicorn's `shutdown` then sends a second Close, websockets refuses
        it (InvalidState), and the exception ends uvicorn's shutdown before the app's lifespan
        shutdown, which flushes the store's last rows."""

        def shutdown(self) -> None:
            if self.transport.is_closing():
                self.stop_keepalive()
                return
            super().shutdown()

    _WS_PROTOCOL: Any = MediaSocketProtocol
else:
    _WS_PROTOCOL = "auto"

# How `telephony serve` (and an in-process serve_app) runs uvicorn's WebSocket side.
# permessage-deflate is declined (RFC 7692 lets a server): it would cost a zlib pass per 20 ms
# frame each way and a compressor's memory per call, for base64 audio on a server-to-server
# link, and it keeps FrameReader out.
UVICORN_WS: dict[str, Any] = {"ws": _WS_PROTOCOL, "ws_per_message_deflate": False}


def sansio_available() -> bool:
    """Whether this uvicorn has the sans-I/O WebSocket protocol the shortcuts reach into."""
    return _SansIOProtocol is not None


def _protocol(callable_: Receive | Send) -> Any:
    """uvicorn's connection object behind an ASGI receive/send (bound methods of it)."""
    protocol = getattr(callable_, "__self__", None)
    if _SansIOProtocol is None or not isinstance(protocol, _SansIOProtocol):
        return None
    return protocol


def batch_writer(send: Send) -> Callable[[list[str]], None] | None:
    """Several text messages in one transport write; None under any other server.

    The playout sends a wake-up's frames together (3 x 20 ms), so this cuts outbound writes to
    a third. The frames are framed by the connection's own sans-I/O protocol object, exactly as
    uvicorn's send would, and the same closed-socket states are refused (OSError, or websockets'
    InvalidState once the peer has closed).
    """
    protocol = _protocol(send)
    if protocol is None:
        return None
    conn, transport = protocol.conn, protocol.transport

    def write(texts: list[str]) -> None:
        if protocol.close_sent or transport.is_closing():
            raise OSError("media socket closed")
        for text in texts:
            conn.send_text(text.encode())
        transport.write(b"".join(conn.data_to_send()))

    return write


def frame_pump(receive: Receive) -> Pump | None:
    """`TwilioSocket.pump` that runs the handler inside the protocol's `data_received`, as
    each frame is parsed; None under any other server.

    uvicorn puts each message on the connection's asyncio.Queue, pauses reading, and wakes the
    app's task, which takes it and resumes reading: per frame a future, a task step and two
    reading toggles. While a call pumps, a stand-in for that queue hands text and binary
    messages to the handler at once; everything else (the disconnect) goes on the real queue
    and ends the pump, so Starlette reads it afterwards as usual. Reading is never paused: the
    handler finishes each frame before the next is parsed (the audio path does not await), so
    frames are handled in order and at the pace they arrive.
    """
    protocol = _protocol(receive)
    if protocol is None:
        return None

    async def pump(handler: FrameHandler) -> StreamEnd | None:
        done: asyncio.Future[StreamEnd | None] = asyncio.get_running_loop().create_future()
        queue: asyncio.Queue[Any] = protocol.queue
        # The handler runs in this task's context (log lines carry the call SID), not in the
        # context of the transport callback it is called from.
        direct = _DirectQueue(queue, handler, done, contextvars.copy_context())
        while not queue.empty() and not done.done():  # what arrived before the pump, first
            direct.put_nowait(queue.get_nowait())
        if done.done():
            return done.result()
        reader = FrameReader(protocol, direct.deliver) if can_read(protocol) else None
        if protocol.read_paused:  # uvicorn paused after the last message the app read
            protocol.transport.resume_reading()
        # uvicorn pauses reading after queueing a message unless it believes it already has.
        protocol.read_paused = True
        protocol.queue = direct
        if reader is not None:
            reader.install()
        try:
            return await done
        finally:
            if reader is not None:
                reader.uninstall()
            protocol.queue = queue
            protocol.read_paused = False  # true again: reading was never paused meanwhile

    return pump


class _DirectQueue:
    """Stands in for the connection's receive queue while a call pumps its frames."""

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        handler: FrameHandler,
        done: asyncio.Future[StreamEnd | None],
        context: contextvars.Context,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.done = done
        self.context = context

    def put_nowait(self, message: dict[str, Any]) -> None:
        if self.done.done():
            self.queue.put_nowait(message)  # the call is ending: nobody reads these
        elif message["type"] != "websocket.receive":
            self.queue.put_nowait(message)  # the disconnect: Starlette reads it after the pump
            self.done.set_result(None)
        else:
            text = message.get("text")
            self.deliver(text if text is not None else message["bytes"])

    def deliver(self, data: str | bytes) -> bool:
        """One message to the handler (or, once the pump has ended, to the real queue);
        False once the pump has ended."""
        done = self.done
        if done.done():
            key = "text" if isinstance(data, str) else "bytes"
            self.queue.put_nowait({"type": "websocket.receive", key: data})
            return False
        try:
            end = self.context.run(self.handler, data)
        except Exception as exc:  # never into uvicorn's data_received: it would drop the socket
            done.set_exception(exc)
            return False
        if end is not None:
            done.set_result(end)
            return False
        return True

    # uvicorn's receive() is not called while the pump runs; these keep it whole if it were.
    async def get(self) -> Any:
        return await self.queue.get()

    def empty(self) -> bool:
        return self.queue.empty()
