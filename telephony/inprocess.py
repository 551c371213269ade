"""Run an ASGI app under real uvicorn inside the current event loop, on a loopback socket.

Used by the tests, `telephony call` (the app itself) and the fakes (`FakeLLM`,
`FakeTwilioRest`): bind first so the port is known before the app is built, then serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.types import ASGIApp

__all__ = ["InProcessServer", "StartStop", "bind_loopback", "serve_app"]


def bind_loopback(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A bound listening socket, so callers know the port before the app is built."""
    # IPPROTO_TCP explicitly: asyncio only disables Nagle for it, and Nagle would hold back
    # small outbound frames until the peer's next packet acknowledges the previous one.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # uvicorn re-listens with its `backlog` when it starts serving
    return sock


class StartStop:
    """`async with` for anything with async `start()` and `stop()`."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class _EmbeddedServer(uvicorn.Server):
    """Signals belong to whoever runs this loop (a test, the CLI), not to an embedded server.

    uvicorn looks at `should_exit` every 100 ms; `stop()` also wakes the wait, so an embedded
    server (one per fake, per test) stops at once instead of at its next tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.wake = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # uvicorn's tick: date header, exit conditions
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self.wake.wait()


class InProcessServer(StartStop):
    """uvicorn serving `app` on `sock` as a task of the running loop.

    `config` goes to `uvicorn.Config` (`log_config` defaults to None: logging belongs to the
    host). `start()` returns once uvicorn accepts connections and raises its start-up error.
    """

    def __init__(self, app: ASGIApp, sock: socket.socket, **config: Any) -> None:
        self.sock = sock
        self.server = _EmbeddedServer(uvicorn.Config(app, **{"log_config": None, **config}))
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def start(self) -> None:
        server = self.server
        self._task = task = asyncio.create_task(server.serve(sockets=[self.sock]))
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise its error
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.server.should_exit = True
        self.server.wake.set()
        await task


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp, sock: socket.socket, *, ws_max_size: int = 64 * 1024
) -> AsyncIterator[uvicorn.Server]:
    """Serve the service's app (with its lifespan) on `sock` for the `async with` body, with
    `telephony serve`'s WebSocket protocol."""
    from routes.sansio import UVICORN_WS  # the composition root may reach routes

    async with InProcessServer(
        app, sock, ws_max_size=ws_max_size, lifespan="on", **UVICORN_WS
    ) as running:
        yield running.server
