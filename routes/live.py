"""`GET /live/events`: the live bus as Server-Sent Events, for the staff UI's live views.

Signed-in staff (any role) only, like the pages. Each event is `id:` (its bus id, so the
browser's `EventSource` sends `Last-Event-ID` when it reconnects, to this instance or another),
`event:` (its kind) and `data:` (JSON: the call SID and the event's fields). A `reset` event
tells the page to refetch its state: it missed events. A comment every `HEARTBEAT_S` keeps
proxies from closing an idle stream; at each one the session is checked again, so a session
ended (sign-out, account disabled) ends its stream. One person may hold `MAX_STREAMS_PER_USER`
streams at once (tabs); one more is refused with 429.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from routes.auth import current_user, require
from routes.state import services_of
from telephony.live.bus import LiveEvent

HEARTBEAT_S = 15.0
MAX_STREAMS_PER_USER = 6
RETRY_MS = 2000  # how soon a browser reconnects after the stream is cut


def _open_streams(request: Request) -> Counter[str]:
    app = request.app
    if not hasattr(app.state, "live_streams"):
        app.state.live_streams = Counter()
    streams: Counter[str] = app.state.live_streams
    return streams


def frame(event: LiveEvent) -> bytes:
    data = orjson.dumps({"sid": event.sid, **event.data, "at": event.at})
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.kind.encode(), data)


@require("staff")
async def live_events(request: Request) -> Response:
    user = request.state.user
    streams = _open_streams(request)
    if streams[user.name] >= MAX_STREAMS_PER_USER:
        return Response(f"at most {MAX_STREAMS_PER_USER} live streams per person", status_code=429)
    bus = services_of(request.app).live
    last_id = request.headers.get("last-event-id") or request.query_params.get("last")
    sub = bus.subscribe(last_id=last_id or None)
    streams[user.name] += 1

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"retry: %d\n\n" % RETRY_MS
            while not sub.closed:
                event = await sub.next(HEARTBEAT_S)
                if event is not None:
                    yield frame(event)
                    continue
                if await current_user(request) is None:
                    return  # signed out or disabled meanwhile
                yield b": keep-alive\n\n"
        finally:
            sub.close()
            streams[user.name] -= 1
            if streams[user.name] <= 0:
                del streams[user.name]

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # nginx: do not buffer
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


routes = [Route("/live/events", live_events)]
