"""The app served in-process the way `telephony serve` serves it: uvicorn with the options of
telephony/http_server.py (timeouts, connection bound, trusted proxies), with settings overrides.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from routes.app import create_app
from telephony.demo import settings_for_fakes
from telephony.http_server import uvicorn_options
from telephony.inprocess import InProcessServer, bind_loopback
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY, RunningApp

Serve = Callable[..., contextlib.AbstractAsyncContextManager[RunningApp]]


def server_factory(numbers_yaml: Path, deepgram: FakeDeepgram, rest: FakeTwilioRest) -> Serve:
    """`serve(**TELEPHONY_OVERRIDES)`: an `async with` serving a fresh app on loopback."""

    @contextlib.asynccontextmanager
    async def serve(**overrides: Any) -> AsyncIterator[RunningApp]:
        sock = bind_loopback()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = settings_for_fakes(
            numbers_yaml, url, deepgram, rest, AUTH_TOKEN, DEEPGRAM_KEY, **overrides
        )
        app = create_app(settings)
        options = {"lifespan": "on", **uvicorn_options(settings)}
        async with InProcessServer(app, sock, **options):
            yield RunningApp(url, settings, app, numbers_yaml)

    return serve


def closed_within(
    sock: socket.socket, limit_s: float, send: Callable[[], None] = lambda: None
) -> float:
    """Seconds until the server closed `sock` (reading, and calling `send` between reads);
    AssertionError if it is still open after `limit_s`. Blocking: run it in a thread."""
    started = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - started < limit_s:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            try:
                send()
            except OSError:
                return time.monotonic() - started  # reset while we wrote: closed too
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {limit_s} s")
