"""Replies from an OpenAI-compatible chat-completions endpoint, streamed (SSE).

Nothing is sent until the first delta is awaited; closing the `Reply` (its `async with`)
closes the HTTP stream at once, so a barge-in that cancels the consuming task frees the
connection even when cancelled between two deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import httpx
import orjson

from telephony.actions import stronger
from telephony.config import TokenLimitParam
from telephony.http_pool import make_http_client
from telephony.responder.base import Message, Reply, ResponderError
from telephony.responder.request import RequestSettings
from telephony.responder.sse import body_excerpt, parse_chunk, sse_chunks
from telephony.retry import SERVER_ERRORS, RetryPolicy, retry_after_s

log = logging.getLogger(__name__)

# A retry is worth it only if the repeated request still has this long for its first token
# after the wait; with less, it would only turn a prompt error into a first-token timeout.
RETRY_MARGIN_S = 0.5
# "Incorrect API key provided: sk-ab***...wxyz." (OpenAI's 401 message)
_KEY_ECHO = re.compile(r"(API key provided:)\s*[^\s.,]+")


class LLMResponder:
    """Streaming chat completions (`POST {base_url}/chat/completions`, SSE).

    A 429 or 5xx is retried once, after the server's `retry-after-ms` / `Retry-After` (else
    a short backoff), only when that wait plus `RETRY_MARGIN_S` fits in what is left of the
    first-token budget: the caller is waiting in silence, and the apology beats a long pause.
    Nothing is retried once the reply has started streaming. With `retry=False` (a backend
    with a fallback behind it: telephony/responder/fallback.py) nothing is retried at all:
    the next backend is the retry, and it need not wait for a `Retry-After`.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str,
        system_prompt: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        token_limit_param: TokenLimitParam = "max_completion_tokens",
        first_token_timeout_s: float = 5.0,
        actions: bool = True,
        retry: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        self._model = model
        self._settings = RequestSettings(
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            token_limit_param=token_limit_param,
            actions=actions,
        )
        self._first_token_timeout_s = first_token_timeout_s
        self._attempts = 2 if retry else 1
        self._owns_http = http is None
        self._http = http if http is not None else make_http_client()

    def __repr__(self) -> str:  # never show the key
        return f"LLMResponder(url={self._url!r}, model={self._model!r})"

    def respond(self, history: Sequence[Message], user_text: str) -> Reply:
        body = orjson.dumps(self._settings.body(history, user_text))
        return Reply(lambda reply: self._stream(reply, body))

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _stream(self, reply: Reply, body: bytes) -> AsyncGenerator[str, None]:
        # The first-token deadline covers connect, headers and every chunk until text (or a tool
        # call) arrives. It wraps single awaits only: a timeout scope must never span a yield.
        deadline = asyncio.get_running_loop().time() + self._first_token_timeout_s
        response = await self._send(body, deadline)
        try:
            async with contextlib.aclosing(sse_chunks(response)) as chunks:
                started = False
                while True:
                    chunk = await self._next_chunk(chunks, None if started else deadline)
                    if chunk is None:
                        return
                    text, action = parse_chunk(chunk)
                    if action != "none":
                        reply.action = stronger(reply.action, action)
                        started = True
                    started = started or bool(text)
                    if text:
                        yield text
        finally:
            # After [DONE] the connection goes back to the pool; cut short, it is dropped.
            await response.aclose()
            _unlink(response)

    async def _send(self, body: bytes, deadline: float) -> httpx.Response:
        """The response once its status is a success, retrying once if the budget allows."""
        attempt = 0
        while True:
            response = await self._request(body, deadline)
            status = response.status_code
            if status < 400:
                return response
            try:
                excerpt = self._without_key(await body_excerpt(response))
            finally:
                await response.aclose()
                _unlink(response)
            attempt += 1
            wait = self._retry_wait(status, attempt, retry_after_s(response.headers), deadline)
            if wait is None:
                raise ResponderError(f"LLM HTTP {status}: {excerpt}", status=status)
            log.info("LLM HTTP %d; retrying in %.0f ms: %s", status, wait * 1000, excerpt)
            await asyncio.sleep(wait)

    async def _request(self, body: bytes, deadline: float) -> httpx.Response:
        request = self._http.build_request("POST", self._url, content=body, headers=self._headers)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._http.send(request, stream=True)
        except TimeoutError:
            raise self._timeout_error() from None
        except httpx.HTTPError as exc:
            message = f"LLM request to {self._url} failed: {exc!r}"
            raise ResponderError(message, kind="connection") from exc

    def _without_key(self, excerpt: str) -> str:
        """The error body as logs and transcripts may keep it: OpenAI's 401 quotes the key it
        was given (masked but for its first and last characters), a proxy might quote it all."""
        excerpt = _KEY_ECHO.sub(r"\1 [redacted]", excerpt)
        return excerpt.replace(self._headers["Authorization"].removeprefix("Bearer "), "[key]")

    def _retry_wait(
        self, status: int, attempt: int, retry_after: float | None, deadline: float
    ) -> float | None:
        """Seconds to wait before repeating the request, or None: fail now."""
        left = deadline - asyncio.get_running_loop().time()
        policy = RetryPolicy(
            attempts=self._attempts, statuses=SERVER_ERRORS, max_wait_s=left - RETRY_MARGIN_S
        )
        if not policy.retryable(status):
            return None
        return policy.wait_before(attempt, retry_after)

    async def _next_chunk(
        self, chunks: AsyncIterator[dict[str, Any]], deadline: float | None
    ) -> dict[str, Any] | None:
        try:
            if deadline is None:  # streaming: httpx's read timeout bounds each wait
                return await anext(chunks, None)
            async with asyncio.timeout_at(deadline):
                return await anext(chunks, None)
        except TimeoutError:
            raise self._timeout_error() from None
        except httpx.HTTPError as exc:
            raise ResponderError(f"LLM stream broke: {exc!r}") from exc

    def _timeout_error(self) -> ResponderError:
        timeout = self._first_token_timeout_s
        return ResponderError(f"LLM gave no first token within {timeout:g} s", kind="timeout")


def _unlink(response: httpx.Response) -> None:
    """Cut the reference loop between a closed httpx Response and its body stream.

    With the loop, each request's ~45 objects outlive it until the cyclic garbage collector
    finds them; a few per second per call pile up into full collections that stall every
    call's audio for tens of ms. Without it, reference counting frees them at once.
    """
    response.stream = _CLOSED_BODY


_CLOSED_BODY = httpx.ByteStream(b"")
