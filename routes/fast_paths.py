"""Which per-frame shortcuts this process runs with, said once at start-up.

The fast paths reach into uvicorn's, websockets' and httpcore's internals (each falls back to
the public path when what it expects is not there), so a library upgrade could silently
switch one off and cost a tenth of a core at 200 calls. pyproject.toml caps those libraries at
the versions the paths were measured with; this line makes any fallback visible in the log.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import types

import httpx

from routes.frame_reader import CONN_ATTRIBUTES
from routes.sansio import sansio_available
from telephony.client_frames import apply_mask
from telephony.deepgram import ping_clock
from telephony.http_backend import AsyncioBackend, no_yield_when_free, use_asyncio_backend
from telephony.http_pool import tls_context

log = logging.getLogger(__name__)

LIBRARIES = ("uvicorn", "websockets", "httpx", "httpcore", "starlette")


def fast_paths() -> dict[str, bool]:
    """Each shortcut and whether it is active (as far as can be told before a call)."""
    from websockets.server import ServerProtocol

    transport = use_asyncio_backend(httpx.AsyncHTTPTransport(verify=tls_context()))
    pool = getattr(transport, "_pool", None)
    conn = ServerProtocol()
    return {
        "uvloop": _running_loop_module().startswith("uvloop"),
        # media socket: several frames per write, frames handed over as parsed
        "sansio-media-socket": sansio_available(),
        "frame-reader": all(hasattr(conn, name) for name in CONN_ATTRIBUTES),
        "c-masking": isinstance(apply_mask, types.BuiltinFunctionType),  # else pure Python
        "llm-asyncio-backend": isinstance(getattr(pool, "_network_backend", None), AsyncioBackend),
        # httpcore's free locks and set events take no trip round the loop (each request)
        "httpcore-no-yield-when-free": no_yield_when_free(),
        # every Deepgram socket's pings from one loop timer, not a task each
        "shared-ping-clock": ping_clock.SUPPORTED,
    }


def log_fast_paths() -> dict[str, bool]:
    active = fast_paths()
    versions = ", ".join(f"{name} {_version(name)}" for name in LIBRARIES)
    on = [name for name, ok in active.items() if ok]
    off = [name for name, ok in active.items() if not ok]
    log.info(
        "fast paths on: %s; off: %s (%s)",
        ", ".join(on) or "none",
        ", ".join(off) or "none",
        versions,
    )
    if off:
        log.warning("fast paths off (per-call CPU cost is higher): %s", ", ".join(off))
    return active


def _running_loop_module() -> str:
    try:
        return type(asyncio.get_running_loop()).__module__
    except RuntimeError:  # not in a loop (a check from a plain script)
        return ""


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"
