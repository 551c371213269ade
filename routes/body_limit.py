"""Request bodies read with a hard cap: nothing past the cap is read, buffered or parsed.

Starlette's `request.body()` buffers whatever the client sends, and a form parse of it runs on
the event loop: one unsigned 9 MB webhook with a million fields froze every call for seconds.
`capped_body` refuses a declared `Content-Length` over the cap before reading a byte, and stops
reading a chunked (or lying) body as soon as it passes the cap; both are HTTP 413, and the
server closes the connection rather than read the rest (the handler returns before it).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request

TOO_LARGE = 413


def _too_large(limit: int) -> HTTPException:
    return HTTPException(TOO_LARGE, f"request body over {limit} bytes")


async def capped_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes; HTTPException(413) past it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():  # RFC 9110: digits only; the server would reject it anyway
            raise HTTPException(400, "bad Content-Length")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def capped_form(request: Request, limit: int) -> dict[str, str]:
    """An urlencoded form (single values) of at most `limit` bytes; parsed only within it."""
    body = await capped_body(request, limit)
    return dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
