"""Request bodies are capped before they are read or parsed (routes/body_limit.py).

Twilio's webhook and status-callback bodies are a few KB, staff forms smaller still. A body
declared over the cap is refused (413) before a byte of it is read; a chunked one is refused as
soon as it passes the cap: the answer comes while the client is still sending, which is what
keeps the event loop free (the rest is never read, so never buffered or parsed).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode, urlsplit

import pytest

from telephony.twilio.security import sign
from tests.conftest import AUTH_TOKEN, RunningApp
from tests.test_routes_twilio import call_params

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

CAP = 64 * 1024  # TELEPHONY_MAX_WEBHOOK_BYTES' default
TWILIO_PATHS = ["/twilio/voice", "/twilio/status"]


async def raw_request(
    app: RunningApp, path: str, headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP/1.1 POST's head on a raw socket; the body is the test's to send (or not)."""
    port = urlsplit(app.url).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/x-www-form-urlencoded"}
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in {**head, **headers}.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def status_line(reader: asyncio.StreamReader) -> str:
    """The response's status line; the server must send it without the rest of the body."""
    line = await asyncio.wait_for(reader.readline(), 5)
    return line.decode().strip()


@pytest.mark.parametrize("path", TWILIO_PATHS)
async def test_declared_length_over_the_cap_is_refused_unread(
    running_app: RunningApp, path: str
) -> None:
    # 10 MB announced, 1 KB sent: the answer comes without waiting for the rest.
    reader, writer = await raw_request(running_app, path, {"Content-Length": str(10 << 20)})
    try:
        writer.write(b"CallSid=CA1&" + b"x" * 1024)
        await writer.drain()
        assert await status_line(reader) == "HTTP/1.1 413 Request Entity Too Large"
    finally:
        writer.close()


@pytest.mark.parametrize("path", TWILIO_PATHS)
async def test_chunked_body_is_cut_off_at_the_cap(running_app: RunningApp, path: str) -> None:
    # No Content-Length: 72 KB of chunks and no last chunk. The server answers 413 once past
    # the cap, while the client has not finished its body (so it never read all of it).
    reader, writer = await raw_request(running_app, path, {"Transfer-Encoding": "chunked"})
    try:
        chunk = b"a=" + b"x" * (8 * 1024 - 2)
        for _ in range(9):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        assert await status_line(reader) == "HTTP/1.1 413 Request Entity Too Large"
    finally:
        writer.close()


def padded_to(params: dict[str, str], size: int) -> dict[str, str]:
    """The params plus a Pad field making the urlencoded body exactly `size` bytes."""
    base = len(urlencode({**params, "Pad": ""}))
    return {**params, "Pad": "p" * (size - base)}


async def test_a_webhook_at_the_cap_is_answered(running_app: RunningApp) -> None:
    params = padded_to(call_params("CAcap"), CAP)
    body = urlencode(params).encode()
    assert len(body) == CAP
    signature = sign(AUTH_TOKEN, running_app.url + "/twilio/voice", params)
    async with running_app.http() as client:
        resp = await client.post(
            "/twilio/voice",
            content=body,
            headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert resp.status_code == 200
        assert "<Stream" in resp.text
        over = urlencode(padded_to(call_params("CAcap2"), CAP + 1)).encode()
        resp = await client.post("/twilio/voice", content=over)
        assert resp.status_code == 413


async def test_a_chunked_webhook_under_the_cap_is_answered(running_app: RunningApp) -> None:
    params = call_params("CAchunked")
    signature = sign(AUTH_TOKEN, running_app.url + "/twilio/voice", params)
    body = urlencode(params).encode()

    async def chunks():  # httpx sends a generator body chunked, without Content-Length
        yield body[:10]
        yield body[10:]

    async with running_app.http() as client:
        resp = await client.post(
            "/twilio/voice",
            content=chunks(),
            headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
    assert resp.status_code == 200
    assert "<Stream" in resp.text


async def test_staff_forms_have_their_own_smaller_cap(running_app: RunningApp) -> None:
    reader, writer = await raw_request(running_app, "/login", {"Content-Length": str(1 << 20)})
    try:
        assert await status_line(reader) == "HTTP/1.1 413 Request Entity Too Large"
    finally:
        writer.close()
    async with running_app.http() as client:
        resp = await client.post("/login", content=b"name=x&password=" + b"y" * (17 * 1024))
        assert resp.status_code == 413
