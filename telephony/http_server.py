"""How `telephony serve` runs uvicorn's HTTP side: timeouts, a connection bound, trusted proxies.

uvicorn (0.55) times out only an idle keep-alive connection after a response: a connection that
sends nothing, or half a request head, or a body a byte at a time, is held for as long as the
client likes (measured: >= 95 s, with no end). `GuardedHttpProtocol` adds two deadlines to its
httptools protocol: the request head must arrive within `header_timeout_s` of the connection
opening (or of the previous response), and the body within `body_timeout_s` after the head;
past either the connection is closed. A WebSocket upgrade (the media socket) leaves both behind
with the HTTP protocol object: nothing here runs per media frame.

Forwarded headers (X-Forwarded-For, -Proto) are believed only from TELEPHONY_TRUSTED_PROXIES;
uvicorn's own default trusts loopback, so anything on the host (a sidecar, a port forward) could
name any client address and walk past the login limiter's per-client keys.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from telephony.settings import Settings

log = logging.getLogger(__name__)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for the request head and one for the body.
    `guarded_protocol` makes a subclass carrying the two timeouts."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 20.0
    _deadline: asyncio.TimerHandle | None = None

    def _arm(self, delay_s: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.debug("HTTP connection from %s closed: request %s too slow", client, what)
            # The app, if one is reading the body, sees http.disconnect.
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # the request is in: how long the app takes is not the client's doing

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:
            # Idle, no pipelined request started: the next request's head is due (uvicorn's
            # keep-alive timeout closes a silent connection sooner).
            self._arm(self.header_timeout_s, "head")

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the socket now belongs to the WebSocket protocol (whatever llhttp called)
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )


def trusted_proxies(settings: Settings) -> list[str]:
    """TELEPHONY_TRUSTED_PROXIES as a list: IPs, CIDR networks, or "*"."""
    return [item.strip() for item in settings.trusted_proxies.split(",") if item.strip()]


# Connections above TELEPHONY_MAX_CALLS (each call holds one media socket) that the bound keeps
# at least, for webhooks, status callbacks, probes and the staff UI.
HEADROOM = 100


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """`uvicorn.Config` keyword arguments for the HTTP side, from the settings."""
    proxies = trusted_proxies(settings)
    max_connections = settings.http_max_connections
    if max_connections < settings.max_calls + HEADROOM:
        max_connections = settings.max_calls + HEADROOM
        log.warning(
            "TELEPHONY_HTTP_MAX_CONNECTIONS (%d) leaves no room beside TELEPHONY_MAX_CALLS "
            "(%d) media sockets: using %d",
            settings.http_max_connections,
            settings.max_calls,
            max_connections,
        )
    return {
        "http": guarded_protocol(settings.http_header_timeout_s, settings.http_body_timeout_s),
        "timeout_keep_alive": settings.http_keepalive_s,
        "limit_concurrency": max_connections,
        # No trusted proxy: forwarded headers are ignored (uvicorn would trust loopback).
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or [],
    }
