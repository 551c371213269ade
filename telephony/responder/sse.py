"""Reading a streamed chat completion: SSE lines -> JSON chunks -> (text delta, action).

Lines are split from the raw body here (orjson reads bytes): httpx's aiter_lines adds a text
decoder and two generator layers per token, a measurable cost with hundreds of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import httpx
import orjson

from telephony.actions import FUNCTION_ACTIONS, Action, stronger
from telephony.responder.base import ResponderError

log = logging.getLogger(__name__)

ERROR_EXCERPT_CHARS = 300
_MAX_SSE_LINE = 1 << 20  # one event's line; a stream without line ends must not grow forever
_DRAIN_S = 0.25  # what is left after [DONE] is the body's end; don't wait long for it


async def sse_chunks(response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """JSON payloads of the `data:` lines, until `[DONE]` (or a clean end after finish_reason).

    An uncompressed body skips aiter_bytes' decoder layer too.
    """
    finished = False
    encoding = response.headers.get("content-encoding", "").strip().lower()
    raw = encoding in ("", "identity") and not response.is_stream_consumed  # (content= bodies)
    # httpx annotates both as AsyncIterator, but they are async generators (with aclose).
    stream = cast(
        AsyncGenerator[bytes, None], response.aiter_raw() if raw else response.aiter_bytes()
    )
    async with contextlib.aclosing(stream) as body:
        async for line in _lines(body):
            if not line.startswith(b"data:"):
                continue  # blank separators, `:` comments, event:/id: fields
            data = line[5:].strip()
            if data == b"[DONE]":
                await _drain(body)
                return
            chunk = _decode(data)
            finished = finished or _finish_reason(chunk) is not None
            yield chunk
    if not finished:
        raise ResponderError("LLM stream ended before the reply was finished")


async def _lines(body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Lines of an event stream (ended by CRLF, LF or CR), without their ends."""
    rest = b""
    async for data in body:
        lines = (rest + data).splitlines(keepends=True)
        rest = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        if len(rest) > _MAX_SSE_LINE:
            raise ResponderError(f"LLM sent a line over {_MAX_SSE_LINE} bytes")
        for line in lines:
            yield line.rstrip(b"\r\n")
    if rest:
        yield rest


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read past [DONE] to the end of the body, so the connection goes back to the pool."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(_DRAIN_S):
            async for _ in body:
                pass


def _decode(data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        excerpt = data[:80].decode(errors="replace")
        raise ResponderError(f"LLM sent malformed SSE data: {excerpt!r}") from None
    if not isinstance(chunk, dict):
        excerpt = data[:80].decode(errors="replace")
        raise ResponderError(f"LLM sent unexpected SSE data: {excerpt!r}")
    if chunk.get("error"):  # some servers report failures mid-stream; others send error: null
        raise ResponderError(f"LLM stream error: {str(chunk['error'])[:ERROR_EXCERPT_CHARS]}")
    return chunk


def _finish_reason(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices") or [{}]
    return choices[0].get("finish_reason")


def parse_chunk(chunk: dict[str, Any]) -> tuple[str, Action]:
    """(text delta, action requested by a tool call) of one streamed chunk."""
    choices = chunk.get("choices")
    if not choices:
        return "", "none"  # e.g. a trailing usage-only chunk
    delta = choices[0].get("delta") or {}
    if choices[0].get("finish_reason") == "length":
        log.warning("LLM reply truncated by its token limit")
    action: Action = "none"
    for call in delta.get("tool_calls") or []:
        name = (call.get("function") or {}).get("name")
        if name in FUNCTION_ACTIONS:
            action = stronger(action, FUNCTION_ACTIONS[name])
        elif name:
            log.warning("LLM called unknown tool %r; ignored", name)
    return delta.get("content") or "", action


async def body_excerpt(response: httpx.Response) -> str:
    """The start of an error body, whitespace-collapsed; bounded in size and time."""
    body = b""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(2.0):
            async for part in response.aiter_bytes():
                body += part
                if len(body) >= ERROR_EXCERPT_CHARS:
                    break
    return " ".join(body[:ERROR_EXCERPT_CHARS].decode(errors="replace").split())
