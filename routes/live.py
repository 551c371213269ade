"""The live floor: `GET /live/events`, the live bus as Server-Sent Events for every live view,
and `GET /live`, the wallboard of every call in progress on every instance.

Signed-in staff (any role) only, like the pages. Each event is `id:` (its bus id, so the
browser's `EventSource` sends `Last-Event-ID` when it reconnects, to this instance or another),
`event:` (its kind) and `data:` (JSON: the call SID and the event's fields). A `reset` event
tells the page to refetch its state: it missed events. A comment every `HEARTBEAT_S` keeps
proxies from closing an idle stream; at each one the session is checked again, so a session
ended (sign-out, account disabled) ends its stream. One person may hold `MAX_STREAMS_PER_USER`
streams at once (tabs); one more is refused with 429.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from routes.auth import current_user, require
from routes.state import services_of, web_of
from routes.templates import render
from telephony.live.bus import LiveEvent
from telephony.store.live_board import live_board

HEARTBEAT_S = 15.0
MAX_STREAMS_PER_USER = 6
RETRY_MS = 2000  # how soon a browser reconnects after the stream is cut


def frame(event: LiveEvent) -> bytes:
    data = orjson.dumps({"sid": event.sid, **event.data, "at": event.at})
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.kind.encode(), data)


@require("staff")
async def live_events(request: Request) -> Response:
    user = request.state.user
    streams = web_of(request.app).live_streams
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


def _since(request: Request) -> float:
    """The start of the viewer's day: `tz` is the browser's UTC offset in minutes, as
    `Date.getTimezoneOffset` gives it (minutes behind UTC), 0 when absent or absurd."""
    try:
        offset = int(request.query_params.get("tz", "0"))
    except ValueError:
        offset = 0
    offset = offset if -14 * 60 <= offset <= 14 * 60 else 0
    local = time.time() - offset * 60
    return local - local % 86_400 + offset * 60


async def _board_context(request: Request) -> dict[str, object]:
    board = await live_board(services_of(request.app).db, _since(request))
    outcomes = sorted(board.outcomes.items(), key=lambda kv: -kv[1])
    return {"board": board, "outcomes": outcomes, "now": time.time()}


@require("staff")
async def wallboard(request: Request) -> Response:
    return render(request, "live.html", await _board_context(request))


@require("staff")
async def wallboard_board(request: Request) -> Response:
    """The board alone: the page fetches it on load (with its time zone) and after missing
    events or a call starting or ending; events update it in between."""
    response = render(request, "_board.html", await _board_context(request))
    response.headers["Cache-Control"] = "no-store"
    return response


routes = [
    Route("/live", wallboard),
    Route("/live/board", wallboard_board),
    Route("/live/events", live_events),
]
