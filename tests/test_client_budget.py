"""The per-client request budget of `telephony serve` (telephony/http_server.py ClientBudget):
one address flooding requests gets 429 from the protocol, before routing, while other clients
and trusted proxies go on being served."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from telephony.http_server import REFUSAL_LOG_S, ClientBudget
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.twilio.security import sign
from tests.conftest import AUTH_TOKEN
from tests.served_app import Serve, server_factory

OTHER_CLIENT = "127.0.0.2"  # Linux routes all of 127/8 to loopback
RATE = 5
BURST = 4 * RATE  # sent well within a second: at most 2 windows, 2 x RATE admitted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_rate_requests_a_second_and_others_are_counted_apart() -> None:
    clock = Clock()
    budget = ClientBudget(3, [], clock=clock)
    assert [budget.admit("203.0.113.1") for _ in range(5)] == [True] * 3 + [False] * 2
    assert budget.admit("203.0.113.2")  # another client has its own count
    clock.now += 1.0  # the next window: the flooder may again
    assert [budget.admit("203.0.113.1") for _ in range(4)] == [True] * 3 + [False]
    assert budget.refused_total == 3


def test_counts_are_forgotten_when_the_window_turns_so_memory_stays_bounded() -> None:
    clock = Clock()
    budget = ClientBudget(1, [], clock=clock)
    for i in range(1000):
        budget.admit(f"2001:db8::{i:x}")
    clock.now += 1.0
    budget.admit("203.0.113.9")
    assert len(budget._counts) == 1


def test_trusted_proxies_are_exempt_and_nothing_else_is() -> None:
    budget = ClientBudget(1, ["10.0.0.0/8", "192.0.2.7"], clock=Clock())
    for proxy in ("10.1.2.3", "192.0.2.7"):
        assert all(budget.admit(proxy) for _ in range(10))
    assert [budget.admit("192.0.2.8") for _ in range(2)] == [True, False]
    everyone = ClientBudget(1, ["*"], clock=Clock())
    assert all(everyone.admit("203.0.113.1") for _ in range(10))


def test_refusals_are_logged_as_a_summary_not_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    budget = ClientBudget(1, [], clock=clock)
    with caplog.at_level(logging.WARNING, logger="telephony.http_server"):
        for second in range(3):
            clock.now = 100.0 + second
            for _ in range(50):
                budget.admit("203.0.113.66")
        clock.now = 100.0 + REFUSAL_LOG_S + 1
        budget.admit("203.0.113.66")
        budget.admit("203.0.113.66")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "203.0.113.66" in lines[0] and "refused 1 request" in lines[0]
    assert "refused 147 request(s)" in lines[1], lines[1]


# --- served -----------------------------------------------------------------------------------


@pytest.fixture
def serve(numbers_yaml: Path, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest) -> Serve:
    return server_factory(numbers_yaml, fake_deepgram, fake_rest)


async def statuses(url: str, count: int, source: str | None = None) -> list[int]:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=url, transport=transport) as client:
        return [(await client.get("/healthz")).status_code for _ in range(count)]


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send `request` on a fresh connection; everything the server sent before closing."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_a_flooding_client_is_answered_429_and_another_client_is_not(serve: Serve) -> None:
    async with serve(TELEPHONY_HTTP_CLIENT_RATE=RATE) as app:
        codes = await statuses(app.url, BURST)
        assert codes[:RATE] == [200] * RATE
        assert set(codes) == {200, 429}
        assert codes.count(200) <= 2 * RATE
        # The flood's address is spent; the good caller's is not.
        assert await statuses(app.url, 2, source=OTHER_CLIENT) == [200, 200]


async def test_a_refused_request_is_answered_before_its_body_is_read(serve: Serve) -> None:
    """Over the budget, even a huge POST costs the server one status line: 429, nosniff,
    Retry-After, and the connection closed without reading the rest (within the budget, the
    route would have answered 413 for the declared 1 MB)."""
    async with serve(TELEPHONY_HTTP_CLIENT_RATE=1) as app:
        await statuses(app.url, 2)
        head = (
            b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1000000\r\n\r\n"
        )
        # Only the body's start: bytes still unread at the close would reset the connection.
        answer = await asyncio.to_thread(raw_exchange, app.url, head + b"a=1&" * 100)
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:200]
        lowered = answer.lower()
        assert b"retry-after: 1\r\n" in lowered and b"x-content-type-options: nosniff" in lowered


async def next_window() -> int:
    """Sleep to just after the budget's next one-second window starts (it counts whole seconds
    of time.monotonic, the clock of this in-process server); that window's number."""
    now = time.monotonic()
    await asyncio.sleep(math.ceil(now) - now + 0.005)
    return int(time.monotonic())


async def test_media_upgrades_count_against_the_budget(serve: Serve) -> None:
    async with serve(TELEPHONY_HTTP_CLIENT_RATE=2) as app:
        url = app.settings.media_stream_url
        headers = {"X-Twilio-Signature": sign(AUTH_TOKEN, url, {})}
        # The requests spending the budget and the upgrade must fall in one window; on a loaded
        # machine they may not, and only then is a try inconclusive.
        for _ in range(3):
            window = await next_window()
            spent = await statuses(app.url, 3)
            try:
                async with websockets.connect(url, additional_headers=headers):
                    admitted = True
            except InvalidStatus as refused:
                assert refused.response.status_code == 429
                admitted = False
            if int(time.monotonic()) != window:
                continue
            assert spent == [200, 200, 429]
            assert not admitted, "an upgrade over the budget was admitted"
            return
        pytest.fail("no try fitted in one budget window")


async def test_a_trusted_proxy_is_not_limited(serve: Serve) -> None:
    """Behind a proxy every client shares its address: the proxy limits by the real one."""
    async with serve(TELEPHONY_HTTP_CLIENT_RATE=2, TELEPHONY_TRUSTED_PROXIES="127.0.0.1") as app:
        assert await statuses(app.url, 12) == [200] * 12


async def test_zero_turns_the_budget_off(serve: Serve) -> None:
    async with serve(TELEPHONY_HTTP_CLIENT_RATE=0) as app:
        assert await statuses(app.url, 30) == [200] * 30
