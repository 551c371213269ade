"""Replies from an OpenAI-compatible chat-completions endpoint, streamed (SSE).

Nothing is sent until the first delta is awaited; closing the `Reply` (its `async with`)
closes the HTTP stream at once, so a barge-in that cancels the consuming task frees the
connection even when cancelled between two deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import httpx
import orjson

from telephony.http_pool import make_http_client
from telephony.responder.base import Message, Reply, ResponderError
from telephony.responder.sse import body_excerpt, parse_chunk, sse_chunks

_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "transfer_call",
            "description": "Transfer the caller to a human. Say a short handover line first.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "end_call",
            "description": "Hang up once the conversation is over. Say goodbye first.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


class LLMResponder:
    """Streaming chat completions (`POST {base_url}/chat/completions`, SSE)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str,
        system_prompt: str = "",
        temperature: float = 0.7,
        max_tokens: int | None = None,
        first_token_timeout_s: float = 5.0,
        actions: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        self._model = model
        self._system_prompt = system_prompt
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._first_token_timeout_s = first_token_timeout_s
        self._actions = actions
        self._owns_http = http is None
        self._http = http if http is not None else make_http_client()

    def __repr__(self) -> str:  # never show the key
        return f"LLMResponder(url={self._url!r}, model={self._model!r})"

    def respond(self, history: Sequence[Message], user_text: str) -> Reply:
        body = orjson.dumps(self._body(history, user_text))
        return Reply(lambda reply: self._stream(reply, body))

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _body(self, history: Sequence[Message], user_text: str) -> dict[str, Any]:
        messages = (
            [{"role": "system", "content": self._system_prompt}] if self._system_prompt else []
        )
        messages += [{"role": m.role, "content": m.content} for m in history]
        messages.append({"role": "user", "content": user_text})
        body: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "stream": True,
            "temperature": self._temperature,
        }
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        if self._actions:
            body["tools"] = _TOOLS
        return body

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
                    if action != "none" and reply.action == "none":
                        reply.action = action
                    started = started or bool(text) or action != "none"
                    if text:
                        yield text
        finally:
            # After [DONE] the connection goes back to the pool; cut short, it is dropped.
            await response.aclose()
            _unlink(response)

    async def _send(self, body: bytes, deadline: float) -> httpx.Response:
        request = self._http.build_request("POST", self._url, content=body, headers=self._headers)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._http.send(request, stream=True)
        except TimeoutError:
            raise self._timeout_error() from None
        except httpx.HTTPError as exc:
            raise ResponderError(f"LLM request to {self._url} failed: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                excerpt = await body_excerpt(response)
            finally:
                await response.aclose()
                _unlink(response)
            raise ResponderError(
                f"LLM HTTP {response.status_code}: {excerpt}", status=response.status_code
            )
        return response

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
        return ResponderError(f"LLM gave no first token within {self._first_token_timeout_s:g} s")


def _unlink(response: httpx.Response) -> None:
    """Cut the reference loop between a closed httpx Response and its body stream.

    With the loop, each request's ~45 objects outlive it until the cyclic garbage collector
    finds them; a few per second per call pile up into full collections that stall every
    call's audio for tens of ms. Without it, reference counting frees them at once.
    """
    response.stream = _CLOSED_BODY


_CLOSED_BODY = httpx.ByteStream(b"")
