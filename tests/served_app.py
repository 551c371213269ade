"""The app served in-process the way `telephony serve` serves it: uvicorn with the options of
telephony/http_server.py (timeouts, connection bound, trusted proxies), with settings overrides.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telephony.http_server import uvicorn_options
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from tests.conftest import RunningApp, served_with_fakes

Serve = Callable[..., contextlib.AbstractAsyncContextManager[RunningApp]]


def server_factory(numbers_yaml: Path, deepgram: FakeDeepgram, rest: FakeTwilioRest) -> Serve:
    """`serve(**TELEPHONY_OVERRIDES)`: an `async with` serving a fresh app on loopback."""

    def serve(**overrides: Any) -> contextlib.AbstractAsyncContextManager[RunningApp]:
        return served_with_fakes(numbers_yaml, deepgram, rest, uvicorn_options, **overrides)

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
