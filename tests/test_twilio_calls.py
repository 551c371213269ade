"""TwilioCalls (REST hang-up / transfer) against the fake Twilio REST endpoint.

One fake server per module (uvicorn takes ~0.2 s to shut down), reset before each test.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import httpx
import pytest
import pytest_asyncio

from telephony.retry import Backoff, RetryPolicy
from telephony.sim.twilio_rest import DEFAULT_ACCOUNT_SID, FakeTwilioRest
from telephony.twilio.calls import (
    MAX_TWIML_CHARS,
    TwilioCalls,
    TwilioCallsError,
    send_with_retries,
)

TOKEN = "test-auth-token"
CALL = "CA" + "1" * 32
AGENT = "+15551234567"


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(auth_token=TOKEN) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTwilioRest) -> FakeTwilioRest:
    server.requests.clear()
    server.ended.clear()
    server.fail_next, server.fail_status, server.on_request = 0, 500, None
    server.fail_retry_after = None
    return server


def calls_for(fake: FakeTwilioRest, token: str = TOKEN, retries: int = 2) -> TwilioCalls:
    return TwilioCalls(
        account_sid=DEFAULT_ACCOUNT_SID, auth_token=token, api_url=fake.url, retries=retries
    )


def mock_calls(handler: httpx.MockTransport, token: str = TOKEN) -> TwilioCalls:
    http = httpx.AsyncClient(transport=handler)
    return TwilioCalls(account_sid=DEFAULT_ACCOUNT_SID, auth_token=token, http=http)


async def test_hang_up_posts_status_completed_with_basic_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"sid": CALL, "status": "completed"})

    calls = mock_calls(httpx.MockTransport(handler))
    await calls.hang_up(CALL)
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == (
        f"https://api.twilio.com/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Calls/{CALL}.json"
    )
    expected = base64.b64encode(f"{DEFAULT_ACCOUNT_SID}:{TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(request.content.decode()) == [("Status", "completed")]


async def test_hang_up_against_fake(fake: FakeTwilioRest) -> None:
    async with calls_for(fake) as calls:
        await calls.hang_up(CALL)
    assert [(r.call_sid, r.form) for r in fake.requests] == [(CALL, {"Status": "completed"})]
    assert CALL in fake.ended


async def test_transfer_sends_dial_twiml(fake: FakeTwilioRest) -> None:
    async with calls_for(fake) as calls:
        await calls.transfer(CALL, AGENT, caller_id="+15550001000")
    [request] = fake.requests
    assert set(request.form) == {"Twiml"}
    root = ET.fromstring(request.form["Twiml"])
    assert root.tag == "Response"
    [dial] = list(root)
    assert dial.tag == "Dial"
    assert dial.text == AGENT
    assert dial.get("callerId") == "+15550001000"
    assert CALL not in fake.ended  # a transfer keeps the call alive


@pytest.mark.parametrize("number", ["5551234567", "+1555<Hangup/>", "+0123", ""])
async def test_transfer_refuses_non_e164_before_sending(fake: FakeTwilioRest, number: str) -> None:
    with pytest.raises(TwilioCallsError, match=r"E\.164"):
        async with calls_for(fake) as calls:
            await calls.transfer(CALL, number)
    assert fake.requests == []


async def test_oversized_twiml_refused_before_sending(fake: FakeTwilioRest) -> None:
    twiml = "<Response><Say>" + "a" * MAX_TWIML_CHARS + "</Say></Response>"
    with pytest.raises(TwilioCallsError, match="32018") as info:
        async with calls_for(fake) as calls:
            await calls.update_twiml(CALL, twiml)
    assert info.value.code == 32018
    assert fake.requests == []


async def test_twiml_at_the_limit_is_sent(fake: FakeTwilioRest) -> None:
    filler = MAX_TWIML_CHARS - len("<Response><Say></Say></Response>")
    twiml = "<Response><Say>" + "a" * filler + "</Say></Response>"
    assert len(twiml) == MAX_TWIML_CHARS
    async with calls_for(fake) as calls:
        await calls.update_twiml(CALL, twiml)
    assert fake.requests[0].form["Twiml"] == twiml


async def test_hang_up_of_ended_call_is_success(
    fake: FakeTwilioRest, caplog: pytest.LogCaptureFixture
) -> None:
    fake.ended.add(CALL)
    with caplog.at_level(logging.INFO, logger="telephony.twilio.calls"):
        async with calls_for(fake) as calls:
            await calls.hang_up(CALL)
    assert len(fake.requests) == 1  # 404 is final, not retried
    assert any("already ended" in r.getMessage() for r in caplog.records)


async def test_transfer_of_ended_call_fails(fake: FakeTwilioRest) -> None:
    fake.ended.add(CALL)
    with pytest.raises(TwilioCallsError) as info:
        async with calls_for(fake) as calls:
            await calls.transfer(CALL, AGENT)
    assert (info.value.status, info.value.code) == (404, 20404)


async def test_wrong_token_raises_without_leaking_it(fake: FakeTwilioRest) -> None:
    wrong = "wrong-secret-token-value"
    with pytest.raises(TwilioCallsError) as info:
        async with calls_for(fake, token=wrong) as calls:
            await calls.hang_up(CALL)
    assert (info.value.status, info.value.code) == (401, 20003)
    assert "401" in str(info.value) and "20003" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert fake.requests == []  # the fake refused it before recording


async def test_token_echoed_by_server_is_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"code": 20001, "message": f"bad token {TOKEN}"})

    with pytest.raises(TwilioCallsError) as info:
        await mock_calls(httpx.MockTransport(handler)).hang_up(CALL)
    assert TOKEN not in str(info.value)
    assert "[redacted]" in str(info.value)


async def test_hang_up_retries_500s(fake: FakeTwilioRest) -> None:
    # Hanging up twice is harmless (the repeat answers 20404), so any 5xx is worth a repeat.
    fake.fail_next = 2
    started = time.monotonic()
    async with calls_for(fake) as calls:
        await calls.hang_up(CALL)
    assert len(fake.requests) == 3
    gaps = [b.time - a.time for a, b in zip(fake.requests, fake.requests[1:], strict=False)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3  # exponential backoff: 0.2 s, 0.4 s, ±20 %
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("status", [500, 502])
async def test_transfer_not_repeated_after_server_error(fake: FakeTwilioRest, status: int) -> None:
    # A 500/502 may follow an update Twilio applied: a repeat would dial the person twice.
    fake.fail_next, fake.fail_status = 1, status
    with pytest.raises(TwilioCallsError) as info:
        async with calls_for(fake) as calls:
            await calls.transfer(CALL, AGENT)
    assert info.value.status == status
    assert len(fake.requests) == 1


async def test_transfer_repeated_after_503(fake: FakeTwilioRest) -> None:
    fake.fail_next, fake.fail_status = 1, 503
    async with calls_for(fake) as calls:
        await calls.transfer(CALL, AGENT)
    assert len(fake.requests) == 2
    assert fake.requests[0].form == fake.requests[1].form


async def test_transfer_429_waits_as_retry_after_asks(fake: FakeTwilioRest) -> None:
    fake.fail_next, fake.fail_status, fake.fail_retry_after = 1, 429, "0.5"
    async with calls_for(fake) as calls:
        await calls.transfer(CALL, AGENT)
    first, second = fake.requests
    assert second.time - first.time >= 0.48  # not our 0.2 s backoff


async def test_retry_after_longer_than_we_wait_fails_at_once(fake: FakeTwilioRest) -> None:
    fake.fail_next, fake.fail_status, fake.fail_retry_after = 1, 429, "30"
    started = time.monotonic()
    with pytest.raises(TwilioCallsError) as info:
        async with calls_for(fake) as calls:
            await calls.transfer(CALL, AGENT)
    assert (info.value.status, info.value.code) == (429, 20429)
    assert len(fake.requests) == 1
    assert time.monotonic() - started < 1.0  # bounded: a live caller is waiting


async def test_retries_are_bounded(fake: FakeTwilioRest) -> None:
    fake.fail_next = 10
    with pytest.raises(TwilioCallsError) as info:
        async with calls_for(fake, retries=1) as calls:
            await calls.hang_up(CALL)
    assert info.value.status == 500
    assert len(fake.requests) == 2


async def test_400_is_not_retried(fake: FakeTwilioRest) -> None:
    fake.fail_next, fake.fail_status = 3, 400
    with pytest.raises(TwilioCallsError) as info:
        async with calls_for(fake) as calls:
            await calls.hang_up(CALL)
    assert info.value.status == 400
    assert len(fake.requests) == 1


async def test_network_errors_retried_only_when_safe() -> None:
    attempts: list[type[Exception]] = []

    def flaky(error: type[httpx.TransportError]) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            attempts.append(error)
            if len(attempts) < 3:
                raise error("boom", request=request)
            return httpx.Response(200, json={"sid": CALL})

        return httpx.MockTransport(handler)

    # A read timeout may hide a hang-up Twilio did apply; repeating it is harmless.
    http = httpx.AsyncClient(transport=flaky(httpx.ReadTimeout))
    policy = RetryPolicy(attempts=3, backoff=Backoff(base_s=0.01))
    response = await send_with_retries(lambda: http.post("https://api.test/x"), policy)
    assert response.status_code == 200 and len(attempts) == 3
    # A transfer only repeats when the request surely never left (would re-dial otherwise).
    attempts.clear()
    with pytest.raises(TwilioCallsError, match="ReadTimeout"):
        await mock_calls(flaky(httpx.ReadTimeout)).transfer(CALL, AGENT)
    assert len(attempts) == 1
    attempts.clear()
    await mock_calls(flaky(httpx.ConnectError)).transfer(CALL, AGENT)
    assert len(attempts) == 3


async def test_on_request_callback_sees_hang_up(fake: FakeTwilioRest) -> None:
    seen: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue()

    async def on_request(call_sid: str, form: dict[str, str]) -> None:
        await seen.put((call_sid, form))

    fake.on_request = on_request
    async with calls_for(fake) as calls:
        await calls.hang_up(CALL)
    assert await asyncio.wait_for(seen.get(), 1) == (CALL, {"Status": "completed"})


async def test_fake_refuses_other_account_in_path(fake: FakeTwilioRest) -> None:
    other = "AC" + "9" * 32
    async with httpx.AsyncClient() as http:
        reply = await http.post(
            f"{fake.url}/2010-04-01/Accounts/{other}/Calls/{CALL}.json",
            data={"Status": "completed"},
            auth=(DEFAULT_ACCOUNT_SID, TOKEN),
        )
    assert reply.status_code == 401
    assert reply.json()["code"] == 20003
    assert fake.requests == []


async def test_bad_call_sid_never_reaches_the_wire(fake: FakeTwilioRest) -> None:
    with pytest.raises(TwilioCallsError, match="bad call SID"):
        async with calls_for(fake) as calls:
            await calls.hang_up("../../Messages")
    assert fake.requests == []
