"""The HTTP server's side of issue 21: slow and idle clients are cut off, connections are
bounded, forwarded headers are believed only from trusted proxies, the access log keeps no
query strings, and every response says nosniff.

In-process (telephony/http_server.py's options, small timeouts from the settings) and once as
the real `telephony serve` process, which is what the defaults protect.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import weakref
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets

from telephony.http_server import HEADROOM, GuardedHttpProtocol
from telephony.logs import hide_query_strings
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.twilio.security import sign
from tests.conftest import AUTH_TOKEN
from tests.serve_process import scripted_yaml, serve_process
from tests.served_app import Serve, closed_within, server_factory
from tests.staff_helpers import ADMIN, STAFF, add_accounts, login

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

SHORT = {"TELEPHONY_HTTP_HEADER_TIMEOUT_S": 0.6, "TELEPHONY_HTTP_BODY_TIMEOUT_S": 0.6}
LIMIT_S = 5.0  # generous: a connection still open then is held, not slow to close


@pytest.fixture
def serve(numbers_yaml: Path, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest) -> Serve:
    return server_factory(numbers_yaml, fake_deepgram, fake_rest)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=2)


async def held_for(
    url: str, opening: bytes, send: Callable[[socket.socket], None] | None = None
) -> float:
    """Seconds until the server closed a connection that sent `opening` (then `send`...)."""
    sock = connect(url)
    try:
        if opening:
            sock.sendall(opening)
        return await asyncio.to_thread(
            closed_within, sock, LIMIT_S, (lambda: send(sock)) if send else (lambda: None)
        )
    finally:
        sock.close()


# --- slow and idle clients --------------------------------------------------------------------


async def test_idle_partial_head_and_slow_body_connections_are_closed(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(**SHORT) as app:
        assert await held_for(app.url, b"") < LIMIT_S  # connected, never sent a byte
        assert await held_for(app.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") < LIMIT_S
        trickle = iter(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200)
        # One byte every 0.1 s: never idle, yet the head is never done (slowloris).
        assert await held_for(app.url, b"", lambda s: s.send(bytes([next(trickle)]))) < LIMIT_S
        slow_body = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nname=a"
        assert await held_for(app.url, slow_body) < LIMIT_S
        # Ordinary requests on one kept-alive connection are unaffected.
        async with app.http() as client:
            for _ in range(2):
                assert (await client.get("/healthz")).status_code == 200
                await asyncio.sleep(0.4)
            assert (await client.get("/healthz")).status_code == 200
    # The login handler, cut off while reading its body, is not an application error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_media_socket_outlives_the_http_deadlines(serve: Serve) -> None:
    """The upgrade leaves the head and body deadlines behind: a call's socket is not cut at
    them (here it waits, silent, for its `start`, which may take up to 10 s)."""
    async with serve(**SHORT) as app:
        url = app.settings.media_stream_url
        signature = sign(AUTH_TOKEN, url, {})
        async with websockets.connect(
            url, additional_headers={"X-Twilio-Signature": signature}
        ) as ws:
            with pytest.raises(TimeoutError):  # nothing arrives, not even a close
                await asyncio.wait_for(ws.recv(), 2.0)


async def test_the_http_protocol_an_upgrade_leaves_is_freed_at_once(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call's media socket is an upgrade: the HTTP protocol it leaves behind must go with
    reference counting alone (left in a cycle, each call's would wait for a full garbage
    collection, which stalls every live call: tests/test_call_memory.py)."""
    left: list[weakref.ref[GuardedHttpProtocol]] = []
    upgrade = GuardedHttpProtocol.handle_websocket_upgrade

    def watched(self: GuardedHttpProtocol) -> None:
        left.append(weakref.ref(self))
        upgrade(self)

    monkeypatch.setattr(GuardedHttpProtocol, "handle_websocket_upgrade", watched)
    async with serve() as app:
        url = app.settings.media_stream_url
        headers = {"X-Twilio-Signature": sign(AUTH_TOKEN, url, {})}
        gc.collect()
        gc.disable()
        try:
            async with websockets.connect(url, additional_headers=headers):
                await asyncio.sleep(0.1)
                alive = [ref() is not None for ref in left]
        finally:
            gc.enable()
    assert alive == [False]  # one upgrade, its HTTP protocol already gone mid-call


async def test_connections_beyond_the_bound_are_answered_503(serve: Serve) -> None:
    bound = {
        "TELEPHONY_MAX_CALLS": 1,
        "TELEPHONY_HTTP_MAX_CONNECTIONS": 1 + HEADROOM,
        "TELEPHONY_HTTP_HEADER_TIMEOUT_S": 30,
    }
    async with serve(**bound) as app:
        idle = [connect(app.url) for _ in range(1 + HEADROOM)]
        try:
            await asyncio.sleep(0.2)  # accepted
            async with app.http() as client:
                busy = await client.get("/healthz")
                assert busy.status_code == 503
                assert busy.headers.get_list("x-content-type-options") == ["nosniff"]
                assert busy.headers["retry-after"] == "1"
        finally:
            for sock in idle:
                sock.close()
        await asyncio.sleep(0.2)
        async with app.http() as client:
            assert (await client.get("/healthz")).status_code == 200


# --- trusted proxies --------------------------------------------------------------------------


async def rotating_logins(app_url: str, name: str, count: int, same: bool = False) -> list[int]:
    codes = []
    async with httpx.AsyncClient(base_url=app_url) as client:
        for i in range(count):
            client.headers["x-forwarded-for"] = "198.51.100.7" if same else f"203.0.113.{i + 1}"
            codes.append((await login(client, name, "wrong-guess-123")).status_code)
    return codes


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    serve: Serve, database: str
) -> None:
    async with serve() as app:  # default: no trusted proxies, loopback included
        await add_accounts(database)
        # Rotating X-Forwarded-For used to give every guess a fresh limiter key.
        assert await rotating_logins(app.url, STAFF[0], 6) == [401] * 5 + [429]
    async with serve(TELEPHONY_TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1") as app:
        # Behind a trusted proxy each client has its own key: one client cannot lock an
        # account for everyone behind the proxy...
        assert await rotating_logins(app.url, STAFF[0], 6) == [401] * 6
        # ...and one client is still limited.
        assert await rotating_logins(app.url, ADMIN[0], 6, same=True) == [401] * 5 + [429]


# --- logs and headers -------------------------------------------------------------------------


async def test_access_log_has_no_query_strings(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    hide_query_strings()
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    async with serve() as app, app.http() as client:
        await client.get("/calls?q=personal-search-term&from=2026-01-01")
        await client.get("/healthz?probe=1")
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/calls" in line for line in lines), lines
    assert not any("personal-search-term" in line or "?" in line for line in lines), lines


async def test_every_response_says_nosniff(serve: Serve) -> None:
    async with serve() as app, app.http() as client:
        responses = [
            await client.get("/healthz"),
            await client.get("/readyz"),
            await client.get("/login"),
            await client.get("/calls"),  # 401, plain text
            await client.get("/calls", headers={"accept": "text/html"}),  # 303 to /login
            await client.get("/no-such-page"),
            await client.get("/static/staff.css"),
            await client.post("/twilio/status", data={}),  # unsigned: refused
        ]
    for resp in responses:
        assert resp.headers.get_list("x-content-type-options") == ["nosniff"], (
            resp.request.url,
            resp.status_code,
        )


async def test_the_servers_own_400_says_nosniff_too(serve: Serve) -> None:
    """uvicorn answers an unparsable request itself, before any app: that answer carried no
    nosniff until the protocol wrote its own."""
    async with serve() as app:
        sock = connect(app.url)
        try:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            answer = await asyncio.to_thread(sock.recv, 4096)
        finally:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"\r\nx-content-type-options: nosniff\r\n" in answer.lower()


# --- the real `telephony serve` ------------------------------------------------------------------


async def test_telephony_serve_cuts_idle_connections_trusts_no_proxy_and_logs_no_queries(
    tmp_path: Path, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> None:
    async with serve_process(
        tmp_path,
        scripted_yaml({"hours": "Nine to five."}),
        fake_deepgram,
        fake_rest,
        TELEPHONY_LOG_LEVEL="INFO",
        TELEPHONY_HTTP_HEADER_TIMEOUT_S="1",
    ) as server:
        assert await held_for(server.url, b"GET / HTTP/1.1\r\n") < LIMIT_S
        await add_accounts(f"sqlite+aiosqlite:///{server.db}")
        assert await rotating_logins(server.url, STAFF[0], 6) == [401] * 5 + [429]
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.get("/calls?q=personal-search-term")
        await asyncio.sleep(0.3)
        log = server.output()
    assert '"GET /calls HTTP/1.1" 401' in log and "personal-search-term" not in log
