"""`/live/listen/{sid}` (WebSocket): a supervisor listens in on a live call.

Supervisors and admins only, signed in (the session cookie, SameSite=Strict, comes with the
upgrade) and from this site's own pages (the `Origin` must be ours: a WebSocket is not held to
the same-origin rule). Each listen is audited (`call.listen`). The frames are the call's as they
pass (telephony/session/listen_in.py): served by the instance carrying the call. A call carried
by another instance is reached through it (routes/listen_relay.py); a call that is not live
anywhere closes the socket with 4404.

Close codes: 4401 not signed in, 4403 not allowed (role or origin), 4404 not live, 4429 the call
has its most listeners already; 1000 when the call ends.
"""

from __future__ import annotations

import contextlib
import logging
from urllib.parse import urlsplit

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from routes.auth import current_user
from routes.listen_relay import RELAY_HEADER, relay, relay_token, relay_user
from routes.state import services_of, web_of
from telephony.session.listen_in import Listener
from telephony.store import audit
from telephony.store.instances import carrier_of
from telephony.store.users import at_least

log = logging.getLogger(__name__)

LISTEN_PATH = "/live/listen/{sid}"


def _same_origin(ws: WebSocket) -> bool:
    origin = ws.headers.get("origin")
    if origin is None:
        return False
    public = urlsplit(services_of(ws.app).settings.public_url)
    host = ws.headers.get("host", "")
    got = urlsplit(origin)
    return got.netloc in (public.netloc, host) and got.scheme in ("http", "https")


async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
    """Accepted, then closed with `code`: a refused handshake would reach the page as a bare
    failure, with no code to say why."""
    await ws.accept()
    await ws.close(code=code, reason=reason)


async def listen_socket(ws: WebSocket) -> None:
    sid = ws.path_params["sid"]
    services = services_of(ws.app)
    secret = web_of(ws.app).session_keys.relay_key
    relayed = ws.headers.get(RELAY_HEADER)
    if relayed is not None:  # another instance relays a listener it checked and audited
        name = relay_user(secret, relayed, sid)
        if name is None:
            await _refuse(ws, 4403, "not allowed")
            return
    else:
        user = await current_user(ws)  # type: ignore[arg-type]  # cookies only: any connection
        if user is None:
            await _refuse(ws, 4401, "sign in first")
            return
        if not at_least(user.role, "supervisor") or not _same_origin(ws):
            await _refuse(ws, 4403, "not allowed")
            return
        name = user.name
    call = services.registry.current(sid)
    if call is None:
        carrier = None if relayed is not None else await carrier_of(services.db, sid)
        me = services.live.instance
        if carrier is None or carrier[0] == me or not carrier[1]:
            await _refuse(ws, 4404, "not live")
            return
        await audit.record(services.db, name, "call.listen", sid)
        log.info("%s listening in on %s through %s", name, sid, carrier[0])
        await relay(ws, carrier[1] + ws.url.path, relay_token(secret, sid, name))
        return
    listener = Listener()
    if not call.listen.attach(listener):
        if call.listen.closed:  # it ended since it was found
            await _refuse(ws, 4404, "not live")
        else:
            await _refuse(ws, 4429, "too many listeners")
        return
    try:
        if relayed is None:  # a relayed listener was audited where they connected
            await audit.record(services.db, name, "call.listen", sid)
        await ws.accept()
        log.info("%s listening in on %s", name, sid)
        async for batch in listener.batches():
            await ws.send_bytes(batch)
        await ws.close(code=1000, reason="call ended")
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the browser left
    finally:
        call.listen.detach(listener)
        with contextlib.suppress(Exception):
            if listener.dropped:
                log.info("listen-in on %s: %d frames dropped (slow browser)", sid, listener.dropped)


routes = [WebSocketRoute(LISTEN_PATH, listen_socket)]
