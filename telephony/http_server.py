"""How `telephony serve` runs uvicorn's HTTP side: timeouts, a connection bound, trusted proxies.

uvicorn (0.55) times out only an idle keep-alive connection after a response: a connection that
sends nothing, or half a request head, or a body a byte at a time, is held for as long as the
client likes (measured: >= 95 s, with no end). `GuardedHttpProtocol` adds two deadlines to its
httptools protocol: the request head must arrive within `header_timeout_s` of the connection
opening (or of the previous response), and the body within `body_timeout_s` after the head;
past either the connection is closed. A WebSocket upgrade (the media socket) leaves both behind
with the HTTP protocol object: nothing here runs per media frame.

`ClientBudget` bounds the requests (media upgrades included) one client address may start per
second: past it the request is answered 429 by the protocol itself, before a task, a route or
a body read, so a flood from one address costs a dictionary lookup per request. Trusted
proxies are exempt: behind one, every client shares its address, and the proxy limits by the
real one (infra/nginx.conf).

Forwarded headers (X-Forwarded-For, -Proto) are believed only from TELEPHONY_TRUSTED_PROXIES;
uvicorn's own default trusts loopback, so anything on the host (a sidecar, a port forward) could
name any client address and walk past the login limiter's per-client keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from telephony.settings import Settings

log = logging.getLogger(__name__)


def _refusal(status: bytes, text: bytes, retry_after_s: int | None = None) -> bytes:
    """A whole response the protocol writes itself (then closes the connection, so nothing more
    the client sent on it, a body or pipelined requests, is read). nosniff like every app
    response (routes/app.py SecurityHeaders)."""
    head = [
        b"HTTP/1.1 " + status,
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(text),
        b"x-content-type-options: nosniff",
        b"connection: close",
    ]
    if retry_after_s is not None:
        head.append(b"retry-after: %d" % retry_after_s)
    return b"\r\n".join(head) + b"\r\n\r\n" + text


# Over the client's budget; past the connection bound (uvicorn's own 503 had no nosniff);
# unparsable (uvicorn's own 400, likewise).
TOO_MANY_REQUESTS = _refusal(b"429 Too Many Requests", b"too many requests\n", retry_after_s=1)
BUSY = _refusal(b"503 Service Unavailable", b"service busy\n", retry_after_s=1)
BAD_REQUEST = _refusal(b"400 Bad Request", b"invalid HTTP request\n")
# A refusal summary is logged at most this often (one line per refused request would let the
# flood fill the log instead).
REFUSAL_LOG_S = 60.0


class ClientBudget:
    """At most `rate` requests per client address in each one-second window.

    Counts live in a dict that is emptied when the window turns over, so memory is bounded by
    the addresses seen in one second (each needed a connection). Fixed windows let a client
    burst to twice the rate across a boundary; that is headroom, not a hole: the flood is
    still cut to `rate` a second."""

    def __init__(self, rate: int, exempt: list[str], clock: Any = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._any_exempt = "*" in exempt
        self._exempt_nets = [
            ipaddress.ip_network(item, strict=False) for item in exempt if item != "*"
        ]
        self._exempt_cache: dict[str, bool] = {}
        self._window = -1
        self._counts: dict[str, int] = {}
        self.refused_total = 0
        self._refused_since_log = 0
        self._refused_clients: set[str] = set()
        self._logged_at = float("-inf")

    def _exempt(self, address: str) -> bool:
        known = self._exempt_cache.get(address)
        if known is None:
            if self._any_exempt:
                known = True
            else:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError:  # a unix socket path or similar: not a client address
                    ip = None
                known = ip is None or any(ip in net for net in self._exempt_nets)
            if len(self._exempt_cache) < 10_000:
                self._exempt_cache[address] = known
        return known

    def admit(self, address: str) -> bool:
        """Count one request from `address`; False when it is over the budget."""
        now = self._clock()
        window = int(now)
        if window != self._window:
            self._window = window
            self._counts.clear()
        count = self._counts.get(address, 0) + 1
        self._counts[address] = count
        if count <= self.rate or self._exempt(address):
            return True
        self.refused_total += 1
        self._refused_since_log += 1
        if len(self._refused_clients) < 100:
            self._refused_clients.add(address)
        if now - self._logged_at >= REFUSAL_LOG_S:
            self._log_refusals(now)
        return False

    def _log_refusals(self, now: float) -> None:
        log.warning(
            "HTTP client budget (TELEPHONY_HTTP_CLIENT_RATE=%d/s): refused %d request(s) from "
            "%s since the last report",
            self.rate,
            self._refused_since_log,
            ", ".join(sorted(self._refused_clients)[:5])
            + (" and others" if len(self._refused_clients) > 5 else ""),
        )
        self._logged_at = now
        self._refused_since_log = 0
        self._refused_clients.clear()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for the request head and one for the body,
    and a per-client request budget. `guarded_protocol` makes a subclass carrying the two
    timeouts and the budget (shared by every connection of the server)."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 20.0
    budget: ClassVar[ClientBudget | None] = None
    _deadline: asyncio.TimerHandle | None = None
    _refused = False

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

    def data_received(self, data: bytes) -> None:
        if not self._refused:  # after a refusal, whatever was still buffered is dropped
            super().data_received(data)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        budget = self.budget
        if budget is not None and self.client and not budget.admit(self.client[0]):
            self._refuse(TOO_MANY_REQUESTS)
            return
        if self._over_connection_bound():
            log.warning("HTTP request refused: over TELEPHONY_HTTP_MAX_CONNECTIONS")
            self._refuse(BUSY)
            return
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def _over_connection_bound(self) -> bool:
        """uvicorn's limit_concurrency test, made here so the 503 is ours. A media upgrade is
        let through, as uvicorn does: TELEPHONY_MAX_CALLS bounds calls."""
        limit = self.limit_concurrency
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            return False
        return not (self.parser.should_upgrade() and self._should_upgrade())

    def _refuse(self, response: bytes) -> None:
        """Answer and close: the rest of this connection's bytes are never parsed."""
        self._refused = True
        self._disarm()
        self.transport.write(response)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refused = True
        self.transport.write(BAD_REQUEST)
        self.transport.close()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._disarm()  # the request is in: how long the app takes is not the client's doing

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:
            # Idle, no pipelined request started: the next request's head is due (uvicorn's
            # keep-alive timeout closes a silent connection sooner).
            self._arm(self.header_timeout_s, "head")

    def handle_websocket_upgrade(self) -> None:
        if self._refused:
            return
        self._disarm()  # the socket now belongs to the WebSocket protocol (whatever llhttp called)
        super().handle_websocket_upgrade()
        # This protocol is done with; its parser holds its methods (a cycle uvicorn breaks in
        # connection_lost, which an upgraded connection never calls here): let it go, so
        # every call's media upgrade is freed by reference counting.
        self.parser = None  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(
    header_timeout_s: float, body_timeout_s: float, budget: ClientBudget | None = None
) -> type[HttpToolsProtocol]:
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s, "budget": budget},
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
    budget = ClientBudget(settings.http_client_rate, proxies) if settings.http_client_rate else None
    return {
        "http": guarded_protocol(
            settings.http_header_timeout_s, settings.http_body_timeout_s, budget
        ),
        "timeout_keep_alive": settings.http_keepalive_s,
        "limit_concurrency": max_connections,
        # No trusted proxy: forwarded headers are ignored (uvicorn would trust loopback).
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or [],
    }
