"""Run the app under real uvicorn inside the current event loop (tests, `telephony call`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette


def bind_loopback(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A bound listening socket, so callers know the port before the app is built."""
    # IPPROTO_TCP explicitly: asyncio only disables Nagle for it, and Nagle would hold back
    # small outbound frames until the peer's next packet acknowledges the previous one.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def serve_app(
    app: Starlette, sock: socket.socket, *, ws_max_size: int = 64 * 1024
) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(app, log_config=None, ws_max_size=ws_max_size, lifespan="on")
    server = uvicorn.Server(config)
    # Signals belong to whoever runs this loop (a test, the CLI), not to this embedded server.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # start-up failed: raise its error
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await task
