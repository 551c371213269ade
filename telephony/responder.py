"""Reply generation for the Flux engine: an OpenAI-compatible streaming LLM, or scripted rules.

`responder.respond(history, user_text)` returns a `Reply`: an async iterator of text deltas,
consumed as they arrive so TTS can start on the first sentence; its `action` (none / transfer /
hangup) is final once iteration ends. Nothing is sent until the first delta is awaited. Use it as

    async with responder.respond(history, text) as reply:
        async for delta in reply:
            ...

so a barge-in that cancels the consuming task also closes the HTTP stream at once: the exit
closes the generator even when the task was cancelled between two deltas.

`SentenceChunker` turns the deltas into sentence-sized pieces for TTS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

import httpx
import orjson

from telephony.config import (
    Action,
    LLMResponderConfig,
    ResponderConfig,
    ScriptedResponderConfig,
)
from telephony.http_backend import use_asyncio_backend

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]

# The optional action convention: the LLM may call these tools (no arguments needed).
TOOL_ACTIONS: dict[str, Action] = {"transfer_call": "transfer", "end_call": "hangup"}
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
_ERROR_EXCERPT_CHARS = 300
_MAX_SSE_LINE = 1 << 20  # one event's line; a stream without line ends must not grow forever
_DRAIN_S = 0.25  # what is left after [DONE] is the body's end; don't wait long for it


class ResponderError(Exception):
    """The reply could not be produced (HTTP error, timeout, broken stream, missing key)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


class Reply:
    """Text deltas of one reply; `action` is final once iteration has ended."""

    def __init__(self, deltas: Callable[[Reply], AsyncGenerator[str, None]]) -> None:
        self.action: Action = "none"
        self._deltas = deltas(self)  # the generator sets `action` on this object as it streams

    def __aiter__(self) -> Reply:
        return self

    async def __anext__(self) -> str:
        return await self._deltas.__anext__()

    async def aclose(self) -> None:
        await self._deltas.aclose()

    async def __aenter__(self) -> Reply:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def text(self) -> str:
        """The whole reply (for callers that do not stream)."""
        async with self:
            return "".join([delta async for delta in self])


class Responder(Protocol):
    def respond(self, history: Sequence[Message], user_text: str) -> Reply: ...

    async def aclose(self) -> None: ...


# --- scripted -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScriptRule:
    pattern: str
    reply: str
    action: Action = "none"


class ScriptedResponder:
    """First rule whose pattern is found in the caller's words (case-insensitive) wins."""

    def __init__(self, rules: Sequence[ScriptRule], fallback: str) -> None:
        self._rules = [(re.compile(r.pattern, re.IGNORECASE), r) for r in rules]
        self._fallback = fallback

    def match(self, user_text: str) -> tuple[str, Action]:
        for pattern, rule in self._rules:
            if pattern.search(user_text):
                return rule.reply, rule.action
        return self._fallback, "none"

    def respond(self, history: Sequence[Message], user_text: str) -> Reply:
        text, action = self.match(user_text)

        async def deltas(reply: Reply) -> AsyncGenerator[str, None]:
            reply.action = action
            for word in re.findall(r"\s*\S+\s*", text):
                yield word

        return Reply(deltas)

    async def aclose(self) -> None:
        pass


# --- OpenAI-compatible LLM ------------------------------------------------------------------


POOL_SHARDS = 16
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE_CONNECTIONS = 128


def make_http_client() -> httpx.AsyncClient:
    """A pooled client sized for many concurrent calls; share one per process."""
    return httpx.AsyncClient(
        # read: the longest stall between two chunks once streaming (first token has its own).
        timeout=httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=10.0),
        transport=ShardedTransport(
            POOL_SHARDS,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS // POOL_SHARDS,
                max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS // POOL_SHARDS,
            ),
        ),
    )


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small connection pools behind one transport; a request goes to the least busy.

    httpcore's pool (1.0.x) does work quadratic in its connections on every request start and
    end (for each idle connection it counts all of them, and it polls every idle socket). With
    a few hundred calls' LLM streams in one pool that was the service's largest CPU cost
    (`telephony bench`); in small pools the term is negligible. Ties go to the lowest shard,
    so requests one after another still reuse one kept-alive connection.
    """

    def __init__(self, shards: int, **transport: Any) -> None:
        self.shards = [
            use_asyncio_backend(httpx.AsyncHTTPTransport(**transport)) for _ in range(shards)
        ]
        self._active = [0] * shards  # requests in flight per shard (until the body is closed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        active = self._active
        shard = active.index(min(active))
        active[shard] += 1
        try:
            response = await self.shards[shard].handle_async_request(request)
        except BaseException:
            active[shard] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, self, shard)
        return response

    def _release(self, shard: int) -> None:
        self._active[shard] -= 1

    async def aclose(self) -> None:
        for transport in self.shards:
            await transport.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, owner: ShardedTransport, shard: int):
        self._stream = stream
        self._owner: ShardedTransport | None = owner
        self._shard = shard

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()  # no generator layer of our own per chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._owner is not None:
                self._owner._release(self._shard)
                self._owner = None


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
            async with contextlib.aclosing(_sse_chunks(response)) as chunks:
                started = False
                while True:
                    chunk = await self._next_chunk(chunks, None if started else deadline)
                    if chunk is None:
                        return
                    text, action = _parse_chunk(chunk)
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
                excerpt = await _body_excerpt(response)
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


async def _sse_chunks(response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """JSON payloads of the `data:` lines, until `[DONE]` (or a clean end after finish_reason).

    Lines are split from the raw body here (orjson reads bytes): httpx's aiter_lines adds a
    text decoder and two generator layers per token, a measurable cost with hundreds of calls.
    An uncompressed body skips aiter_bytes' decoder layer too.
    """
    finished = False
    encoding = response.headers.get("content-encoding", "").strip().lower()
    raw = encoding in ("", "identity") and not response.is_stream_consumed  # (content= bodies)
    async with contextlib.aclosing(response.aiter_raw() if raw else response.aiter_bytes()) as body:
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
    if "error" in chunk:  # some servers report failures mid-stream as a data event
        raise ResponderError(f"LLM stream error: {str(chunk['error'])[:_ERROR_EXCERPT_CHARS]}")
    return chunk


def _finish_reason(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices") or [{}]
    return choices[0].get("finish_reason")


def _parse_chunk(chunk: dict[str, Any]) -> tuple[str, Action]:
    """(text delta, action requested by a tool call) of one streamed chunk."""
    choices = chunk.get("choices")
    if not choices:
        return "", "none"  # e.g. a trailing usage-only chunk
    delta = choices[0].get("delta") or {}
    if choices[0].get("finish_reason") == "length":
        log.warning("LLM reply truncated by max_tokens")
    action: Action = "none"
    for call in delta.get("tool_calls") or []:
        name = (call.get("function") or {}).get("name")
        if name in TOOL_ACTIONS:
            action = TOOL_ACTIONS[name]
        elif name:
            log.warning("LLM called unknown tool %r; ignored", name)
    return delta.get("content") or "", action


async def _body_excerpt(response: httpx.Response) -> str:
    """The start of an error body, whitespace-collapsed; bounded in size and time."""
    body = b""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(2.0):
            async for part in response.aiter_bytes():
                body += part
                if len(body) >= _ERROR_EXCERPT_CHARS:
                    break
    return " ".join(body[:_ERROR_EXCERPT_CHARS].decode(errors="replace").split())


# --- from config ----------------------------------------------------------------------------


def build_responder(
    cfg: ResponderConfig,
    *,
    http: httpx.AsyncClient | None = None,
    env: Mapping[str, str] = os.environ,
) -> Responder:
    """The responder a profile describes. Without `http`, an LLM responder owns its own pool."""
    if isinstance(cfg, ScriptedResponderConfig):
        rules = [ScriptRule(r.pattern, r.reply, r.action) for r in cfg.rules]
        return ScriptedResponder(rules, cfg.fallback)
    if isinstance(cfg, LLMResponderConfig):
        return LLMResponder(
            base_url=cfg.base_url,
            model=cfg.model,
            api_key=_api_key(cfg.api_key_env, env),
            system_prompt=cfg.system_prompt,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            first_token_timeout_s=cfg.first_token_timeout_s,
            http=http,
        )
    raise TypeError(f"unknown responder config: {type(cfg).__name__}")


def _api_key(name: str, env: Mapping[str, str]) -> str:
    key = env.get(name, "")
    if not key:
        raise ResponderError(f"LLM API key: environment variable {name} is not set")
    return key


# --- sentences for TTS ----------------------------------------------------------------------

# Words that end in "." without ending a sentence (compared lower-case, without the final ".").
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "approx", "dept"}
    | {"fig", "inc", "ltd", "co", "corp", "e.g", "i.e"}
)
MAX_CHUNK_CHARS = 200  # an unpunctuated run longer than this is cut at a comma or space
_MIN_COMMA_CUT = 40  # a comma this early would leave a long remainder: cut at a space instead
# Terminators (with closing quotes/brackets) followed by whitespace, or a newline. A terminator
# at the very end of the buffer waits for the next delta: "3." may become "3.5", ".." "...".
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n")
_LAST_WORD = re.compile(r"(\S+)$")
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")  # "J", "U.S", "a.m"


class SentenceChunker:
    """Streamed text deltas in, complete sentences out (stripped, never empty)."""

    def __init__(self, max_chars: int = MAX_CHUNK_CHARS) -> None:
        self._buf = ""
        self._max_chars = max_chars

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        start = 0
        for m in _BOUNDARY.finditer(self._buf):
            if m.group() == "." and self._is_abbreviation(m.start()):
                continue
            _append(out, self._buf[start : m.end()])
            start = m.end()
        self._buf = self._buf[start:]
        while len(self._buf) > self._max_chars:
            cut = self._long_cut()
            _append(out, self._buf[:cut])
            self._buf = self._buf[cut:]
        return out

    def flush(self) -> str | None:
        rest, self._buf = self._buf.strip(), ""
        return rest or None

    def _is_abbreviation(self, dot: int) -> bool:
        word = _LAST_WORD.search(self._buf, 0, dot)
        if word is None:
            return False
        token = word.group(1).lstrip("\"'“‘([")
        return token.lower() in ABBREVIATIONS or _INITIALISM.fullmatch(token) is not None

    def _long_cut(self) -> int:
        window = self._buf[: self._max_chars]
        comma = window.rfind(",")
        if comma >= _MIN_COMMA_CUT:
            return comma + 1
        space = max(window.rfind(" "), window.rfind("\t"))
        return space if space > 0 else self._max_chars


def _append(out: list[str], piece: str) -> None:
    piece = piece.strip()
    if piece:
        out.append(piece)
