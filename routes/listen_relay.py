"""Listen-in through another instance: the browser's instance relays the frames of the one
carrying the call.

The call's instance is found in the shared database (`calls.instance_id`, and that instance's
`instances.url`, its TELEPHONY_INTERNAL_URL). The relaying instance connects to the same
WebSocket path there with `X-Telephony-Relay`: an HMAC, under the session secret every
instance shares (staff cookies need it too), of the call, the listener's name and an expiry a
minute away. The carrying instance accepts that instead of a cookie (the person was checked and
audited where they connected) and streams as it would to a browser; the relay passes each
message on unchanged, and the carrier's close code too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

RELAY_HEADER = "x-telephony-relay"
TOKEN_TTL_S = 60


def relay_token(secret: bytes, sid: str, user: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + TOKEN_TTL_S)
    body = f"{sid}|{user}|{expires}"
    mac = hmac.new(secret, f"listen-relay|{body}".encode(), hashlib.sha256).hexdigest()
    return f"{body}|{mac}"


def relay_user(secret: bytes, token: str, sid: str, now: float | None = None) -> str | None:
    """The listener's name if `token` is a live relay token for `sid`, else None."""
    body, _, mac = token.rpartition("|")
    parts = body.split("|")
    if len(parts) != 3 or parts[0] != sid or not parts[2].isdigit():
        return None
    want = hmac.new(secret, f"listen-relay|{body}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, want):
        return None
    if int(parts[2]) < (time.time() if now is None else now):
        return None
    return parts[1]


async def relay(ws: WebSocket, url: str, token: str) -> None:
    """Pass the carrier's frames on to the browser until either side ends."""
    target = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        upstream = await connect(target, additional_headers={RELAY_HEADER: token}, open_timeout=5)
    except (OSError, InvalidHandshake, TimeoutError):
        await ws.accept()
        await ws.close(code=4404, reason="the instance carrying the call is not reachable")
        return
    async with upstream:
        await ws.accept()

        async def browser_gone() -> None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                while True:
                    await ws.receive_bytes()

        watcher = asyncio.create_task(browser_gone())
        code, reason = 1000, "call ended"
        try:
            async for message in upstream:
                if watcher.done():
                    return
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
        except ConnectionClosed:
            pass
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the browser left
        finally:
            watcher.cancel()
        if upstream.close_code is not None:
            code, reason = upstream.close_code, upstream.close_reason or reason
        with contextlib.suppress(RuntimeError, OSError):
            await ws.close(code=code, reason=reason)
