"""Hostile clients: what an attacker on the public internet points at the service.

Each attack runs until its stop event and counts what happened to it (answers, closes), so a
benchmark can show both that good calls kept their latency and that the attack was refused.
The attacks (the findings of the hardening review, issue 21):

- `body`: unsigned webhook POSTs of 10 MB with a million form fields, to `/twilio/voice` and
  `/twilio/status` in turn (the form used to be parsed, on the event loop, before the
  signature check);
- `replay`: one correctly signed webhook replayed, and a media stream opened with every answer
  for the same CallSid (each used to mint a fresh token and carry another stream);
- `pump`: a signed call whose audio never advances the clock (constant timestamps), sent as
  fast as the socket takes it; cut off, it dials again (once a second at most, as Twilio
  places an account's calls);
- `bigframes`: a signed call whose frames carry 46 KB each (almost 6 s of audio per 20 ms
  frame; the most a 64 KiB WebSocket message holds);
- `login`: 16 parallel staff logins with random names.

Frames and bodies are built once: the attacker stays cheap so the good calls' generator is
not what slows down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from telephony.audio import FRAME_BYTES
from telephony.http_pool import tls_context
from telephony.sim.webhook import DEFAULT_ACCOUNT_SID, dial_stream, signature_header
from telephony.twilio import messages as tm

ATTACKS = ("body", "replay", "pump", "bigframes", "login")
BODY_BYTES = 10 * 1024 * 1024
BIG_PAYLOAD_BYTES = 46 * 1024  # its base64 and envelope just fit the 64 KiB message cap
PUMP_BATCH = 100  # frames per write
REPLAY_STREAMS = 20  # duplicate streams the replay attack keeps open at most
CLOSE_TIMEOUT_S = 0.5  # an attacker does not wait long to hang up
LOGIN_WORKERS = 16
# A call through Twilio is a new phone call: an account places one per second by default (its
# calls-per-second limit), so a caller who is cut off redials no faster than this.
REDIAL_S = 1.0
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass(frozen=True)
class Target:
    base_url: str  # http://host:port
    auth_token: str  # the attacker holds one signed webhook, so it may as well sign
    number: str
    # The attacker's own address (on loopback, 127.0.0.2): another client than the good
    # callers, as on the internet, so per-client limits see two clients.
    source: str | None = None

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=self.source, verify=tls_context())
        return httpx.AsyncClient(transport=transport, timeout=10, **kwargs)

    @property
    def local_addr(self) -> tuple[str, int] | None:
        return (self.source, 0) if self.source else None


Attack = Callable[[Target, asyncio.Event, Counter[str]], Awaitable[None]]


async def _until(stop: asyncio.Event, step: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        await step()


# --- body ---------------------------------------------------------------------------------


async def _post_raw(target: Target, path: str, body: bytes, tally: Counter[str]) -> None:
    """One POST on a fresh connection; the answer's status, or how the server cut us off."""
    host, port = httpx.URL(target.base_url).host, httpx.URL(target.base_url).port or 80
    reader, writer = await asyncio.open_connection(host, port, local_addr=target.local_addr)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head)
        view = memoryview(body)
        for offset in range(0, len(body), 1 << 20):
            writer.write(view[offset : offset + (1 << 20)])
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        tally[f"{path} {line.split(b' ')[1].decode() if line else 'no answer'}"] += 1
    except (ConnectionError, TimeoutError):
        tally[f"{path} cut off"] += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def body_attack(target: Target, stop: asyncio.Event, tally: Counter[str]) -> None:
    body = b"&".join(b"a%d=1" % i for i in range(1_000_000))
    body = body[:BODY_BYTES]
    paths = ("/twilio/voice", "/twilio/status")
    turn = 0

    async def step() -> None:
        nonlocal turn
        await _post_raw(target, paths[turn % 2], body, tally)
        turn += 1

    await _until(stop, step)


# --- media streams ------------------------------------------------------------------------


async def _signed_call(
    http: httpx.AsyncClient, target: Target, call_sid: str
) -> tuple[str, dict[str, str]]:
    try:
        return await dial_stream(
            http, target.base_url, target.auth_token, call_sid, target.number, "+15550199999"
        )
    except httpx.HTTPStatusError as exc:  # e.g. 409 for a replayed webhook
        raise ConnectionError(f"webhook answered {exc.response.status_code}") from None


async def _open_stream(
    target: Target, url: str, call_sid: str, parameters: dict[str, str]
) -> tuple[ClientConnection, tm.InboundBuilder]:
    headers = signature_header(target.auth_token, url, {})
    ws = await connect(
        url,
        additional_headers=headers,
        max_size=2**20,
        open_timeout=10,
        local_addr=target.local_addr,
    )
    builder = tm.InboundBuilder(
        "MZ" + secrets.token_hex(16), call_sid, DEFAULT_ACCOUNT_SID, custom_parameters=parameters
    )
    await ws.send(builder.connected())
    await ws.send(builder.start())
    return ws, builder


async def _drain(ws: ClientConnection) -> None:
    """Read (and drop) what the service sends, so our socket's buffers never stall it."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def _flood_call(
    target: Target,
    stop: asyncio.Event,
    tally: Counter[str],
    frames: Callable[[tm.InboundBuilder, int], list[str]],
    pause_s: float,
) -> None:
    """Signed calls, one at a time, each sent `frames(builder, n)` batches until it is closed;
    a new call at most once per REDIAL_S, as a caller dialling through Twilio could."""
    loop = asyncio.get_running_loop()
    dialled_at = -REDIAL_S
    async with target.http() as http:
        while not stop.is_set():
            await asyncio.sleep(max(0.0, dialled_at + REDIAL_S - loop.time()))
            dialled_at = loop.time()
            call_sid = "CA" + secrets.token_hex(16)
            try:
                url, parameters = await _signed_call(http, target, call_sid)
                ws, builder = await _open_stream(target, url, call_sid, parameters)
            except (OSError, ConnectionError, InvalidStatus, TimeoutError) as exc:
                tally[f"refused: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            tally["calls"] += 1
            reader = asyncio.create_task(_drain(ws))
            n = 0
            try:
                while not stop.is_set() and not reader.done():
                    for text in frames(builder, n):
                        await ws.send(text)
                    n += 1
                    tally["batches"] += 1
                    await asyncio.sleep(pause_s)
            except ConnectionClosed as exc:
                tally[f"closed {exc.rcvd.code if exc.rcvd else 'abruptly'}"] += 1
            else:
                if reader.done():
                    tally[f"closed {ws.close_code}"] += 1
            finally:
                await ws.close()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


async def pump_attack(target: Target, stop: asyncio.Event, tally: Counter[str]) -> None:
    silence = b"\xff" * FRAME_BYTES

    def frames(builder: tm.InboundBuilder, n: int) -> list[str]:
        return [builder.media(silence, 0) for _ in range(PUMP_BATCH)]  # the clock never moves

    await _flood_call(target, stop, tally, frames, pause_s=0.0)


async def bigframes_attack(target: Target, stop: asyncio.Event, tally: Counter[str]) -> None:
    big = b"\xff" * BIG_PAYLOAD_BYTES

    def frames(builder: tm.InboundBuilder, n: int) -> list[str]:
        return [builder.media(big, n * 20)]  # 20 ms on the clock, 6 s of bytes

    await _flood_call(target, stop, tally, frames, pause_s=0.02)


# --- replay -------------------------------------------------------------------------------


async def replay_attack(target: Target, stop: asyncio.Event, tally: Counter[str]) -> None:
    """The same signed webhook again and again; every answer's stream opened for the one
    CallSid and kept sending real-time audio."""
    call_sid = "CA" + secrets.token_hex(16)
    silence = b"\xff" * FRAME_BYTES
    streams: list[tuple[ClientConnection, tm.InboundBuilder]] = []
    async with target.http() as http:
        ts = 0
        while not stop.is_set():
            if len(streams) < REPLAY_STREAMS:
                try:
                    url, parameters = await _signed_call(http, target, call_sid)
                    streams.append(await _open_stream(target, url, call_sid, parameters))
                    tally["streams opened"] += 1
                except (OSError, ConnectionError, InvalidStatus, TimeoutError) as exc:
                    tally[f"refused: {type(exc).__name__}"] += 1
            ts += 20
            for ws, builder in list(streams):
                try:
                    await ws.send(builder.media(silence, ts))
                except ConnectionClosed:
                    tally["streams closed by the service"] += 1
                    streams.remove((ws, builder))
            await asyncio.sleep(0.02)
        tally["streams alive at the end"] = len(streams)
        # Nothing reads these streams, so the service's close frame may wait behind a full
        # receive queue: a graceful close would take websockets' whole close_timeout (10 s).
        for ws, _ in streams:
            ws.close_timeout = CLOSE_TIMEOUT_S
        await asyncio.gather(*(ws.close() for ws, _ in streams))


# --- login --------------------------------------------------------------------------------


async def login_attack(target: Target, stop: asyncio.Event, tally: Counter[str]) -> None:
    async def worker() -> None:
        async with target.http(base_url=target.base_url) as http:
            while not stop.is_set():
                try:
                    page = await http.get("/login")
                    found = _CSRF.search(page.text)
                    form = {
                        "csrf": found.group(1) if found else "",
                        "name": "u" + secrets.token_hex(6),
                        "password": secrets.token_hex(8),
                        "next": "/calls",
                    }
                    answer = await http.post("/login", data=form)
                    tally[f"login {answer.status_code}"] += 1
                except httpx.HTTPError as exc:
                    tally[f"login {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(worker() for _ in range(LOGIN_WORKERS)))


ATTACK_FUNCTIONS: dict[str, Attack] = {
    "body": body_attack,
    "replay": replay_attack,
    "pump": pump_attack,
    "bigframes": bigframes_attack,
    "login": login_attack,
}


async def run_attack(kind: str, target: Target, stop: asyncio.Event) -> Counter[str]:
    """Run `kind` until `stop`; what happened to it. Its own errors end it, counted."""
    tally: Counter[str] = Counter()
    try:
        await ATTACK_FUNCTIONS[kind](target, stop, tally)
    except Exception as exc:  # an attacker that breaks is reported, never raised
        tally[f"attacker stopped: {type(exc).__name__}: {str(exc)[:80]}"] += 1
    return tally


async def _run_for(kind: str, target: Target, seconds: float) -> Counter[str]:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    async with asyncio.timeout(seconds + 60):  # every attack step is bounded by its timeouts
        return await run_attack(kind, target, stop)


def attack_seconds(seconds: float, until: float | None, now: float) -> float:
    """How long to attack: `seconds`, or until `until` if that is later."""
    return seconds if until is None else max(seconds, until - now)


def main(argv: list[str] | None = None) -> int:
    """`python -m telephony.sim.hostile --attack KIND --url URL --seconds S`: the tally as JSON
    on stdout. A process of its own, as an attacker is: its work never delays the good calls'
    generator (telephony/bench_hostile.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", choices=ATTACKS, required=True)
    parser.add_argument("--url", required=True, help="the service's base URL")
    parser.add_argument("--number", required=True, help="a number the service answers")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument(
        "--until",
        type=float,
        help="attack until this time.monotonic() (system-wide on Linux) if that is later than "
        "--seconds from now: the caller's window ends then, however long this start-up took",
    )
    parser.add_argument("--source", help="local address to connect from (default: any)")
    args = parser.parse_args(argv)
    seconds = attack_seconds(args.seconds, args.until, time.monotonic())
    # The signing key comes from the environment like every secret (never argv: ps shows it).
    target = Target(args.url, os.environ.get("TWILIO_AUTH_TOKEN", ""), args.number, args.source)
    tally = asyncio.run(_run_for(args.attack, target, seconds))
    print(json.dumps(dict(tally)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
