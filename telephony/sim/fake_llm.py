"""A fake OpenAI-compatible chat-completions server that streams SSE like the real one.

`POST /v1/chat/completions` (or `/chat/completions`) with `"stream": true` answers with
`chat.completion.chunk` events: a role chunk at once, then the reply word by word (first word
after `first_token_delay_ms`, the rest at `tokens_per_s`), optional tool-call chunks, a final
chunk with `finish_reason`, the usage chunk if `stream_options.include_usage` asked for it, and
`data: [DONE]`. Wrong bearer key -> 401, non-stream -> 400.

Requests are checked as the API checks them, each refusal a 400 with an OpenAI-style error
body (`message`, `type`, `param`, `code`): a reasoning model (`o1`, `o3`, `o4-mini`, `gpt-5`,
...) refuses `max_tokens` (deprecated: `max_completion_tokens` is the name) and any
`temperature` but the default 1; `parallel_tool_calls` needs `tools`. With `strict_roles`, a
conversation whose roles do not alternate user/assistant after the system messages is refused
too, as vLLM does with strict chat templates (Mistral's).

Faults: `fail_next` authorised requests answer `fail_status` (429 by default) with
`fail_headers` (e.g. `{"retry-after-ms": "120"}`) instead of a reply, for retry tests.
`models` scripts one model's requests (fallback tests: one backend misbehaves, the next
answers): a `ModelScript` gives an error status (and headers), its own delay before the first
token, or a stream that stops after some words without `finish_reason` or `[DONE]` (a broken
stream), for its next `times` requests (all of them when None).

A bare ASGI app under in-process uvicorn: no framework, one watcher task per stream, so the
benchmark can hold hundreds of streams open. A client that goes away mid-reply is noticed
within one token interval and counted in `disconnects`.

Replies: the first `replies` regex found in the last user message gives the text (default
"You said: <message>. How else can I help?"); the first `tools` regex found names a tool the
reply then calls, if the request offered it (its text is then only a matching `replies` entry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from telephony.inprocess import InProcessServer, StartStop, bind_loopback

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATHS = ("/v1/chat/completions", "/chat/completions")
# Reasoning models: o1, o3-mini, o4-mini, gpt-5, gpt-5-mini, ... (not gpt-4o: no digit after o).
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


@dataclass
class ModelScript:
    """How the fake answers one model's requests (fields left None: as usual)."""

    status: int | None = None  # answer this error status instead of a reply
    headers: dict[str, str] = field(default_factory=dict)  # with the error, e.g. Retry-After
    first_token_delay_ms: float | None = None
    break_after_words: int | None = None  # then end the body: no finish_reason, no [DONE]
    times: int | None = None  # applies to this many more requests; None: to all

    def take(self) -> bool:
        """Whether it applies to this request (counting it)."""
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


class FakeLLM(StartStop):
    def __init__(
        self,
        *,
        api_key: str = "llm-test-key",
        first_token_delay_ms: float = 300,
        tokens_per_s: float = 50.0,
        replies: list[tuple[str, str]] | None = None,
        tools: list[tuple[str, str]] | None = None,
        strict_roles: bool = False,
        models: Mapping[str, ModelScript] | None = None,
    ) -> None:
        self.api_key = api_key
        self.first_token_delay_ms = first_token_delay_ms
        self.tokens_per_s = tokens_per_s
        self.replies = [(re.compile(p, re.IGNORECASE), r) for p, r in replies or []]
        self.tools = [(re.compile(p, re.IGNORECASE), t) for p, t in tools or []]
        self.strict_roles = strict_roles
        self.fail_next = 0  # this many next authorised requests answer `fail_status`
        self.fail_status = 429
        self.fail_headers: dict[str, str] = {}
        self.models = dict(models or {})  # model name -> its script
        self.requests: list[dict[str, Any]] = []  # every request, authorised or not
        self.active = 0  # streams in progress
        self.completed = 0  # streams that reached [DONE]
        self.disconnects = 0  # streams the client abandoned
        # Called once a reply has streamed whole, with (the request's last user message,
        # request handed over, first token written, last event written; times on
        # time.monotonic()): the benchmark times the fake's own part of each reply against
        # the delay it was asked for (the message names the reply: telephony/sim/load.py).
        self.on_streamed: Callable[[str, float, float, float], None] | None = None
        self._ids = itertools.count(1)
        self._watchers: set[asyncio.Task[None]] = set()
        self._server: InProcessServer | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """The base URL a client appends `/chat/completions` to."""
        return f"http://127.0.0.1:{self._port}/v1"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        sock = bind_loopback(port, host)
        self._port = sock.getsockname()[1]
        self._server = InProcessServer(self, sock, lifespan="off", access_log=False, backlog=2048)
        await self._server.start()

    async def stop(self) -> None:
        if self._server is None:
            return
        for watcher in self._watchers:
            watcher.cancel()  # open streams end now instead of holding up shutdown
        await self._server.stop()
        self._server = None

    # --- replies --------------------------------------------------------------------------

    def reply_for(
        self, messages: list[dict[str, Any]], offered: set[str]
    ) -> tuple[str, str | None]:
        """(reply text, tool to call or None) for a conversation."""
        user = last_user(messages)
        text = next((r for p, r in self.replies if p.search(user)), None)
        tool = next((t for p, t in self.tools if p.search(user) and t in offered), None)
        if text is None:
            text = "" if tool else f"You said: {user}. How else can I help?"
        return text, tool

    # --- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrived = time.monotonic()
        if scope["method"] != "POST" or scope["path"] not in PATHS:
            await _json(send, 404, _error("not found", "not_found"))
            return
        body = await _read_body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        request = _parse(body)
        client = scope.get("client") or ("", 0)
        record = {**(request or {}), "path": scope["path"], "authorization": auth, "client": client}
        self.requests.append(record)
        script = self.models.get(str((request or {}).get("model")))
        if script is not None and (auth != f"Bearer {self.api_key}" or not script.take()):
            script = None
        if auth != f"Bearer {self.api_key}":
            record["status"] = 401
            # As OpenAI does: the key given, masked but for its first and last characters.
            given = _masked(auth.removeprefix("Bearer "))
            message = (
                f"Incorrect API key provided: {given}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            await _json(send, 401, _error(message, "invalid_api_key"))
        elif self.fail_next > 0:
            self.fail_next -= 1
            record["status"] = self.fail_status
            error = _error("Injected failure", "injected_failure", kind="server_error")
            await _json(send, self.fail_status, error, self.fail_headers)
        elif script is not None and script.status is not None:
            record["status"] = script.status
            error = _error("Scripted failure", "scripted_failure", kind="server_error")
            await _json(send, script.status, error, script.headers)
        elif request is None or not request.get("stream"):
            record["status"] = 400
            await _json(send, 400, _error("expected a JSON body with stream=true", "bad_request"))
        elif (refusal := self._refusal(request)) is not None:
            record["status"] = 400
            await _json(send, 400, refusal)
        else:
            record["status"] = 200
            await self._stream(request, receive, send, script, arrived)

    def _refusal(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The API's 400 error body for a request it would refuse, else None."""
        model = str(request.get("model", ""))
        if REASONING_MODEL.match(model):
            if "max_tokens" in request:
                message = (
                    "Unsupported parameter: 'max_tokens' is not supported with this model."
                    " Use 'max_completion_tokens' instead."
                )
                return _error(message, "unsupported_parameter", param="max_tokens")
            if request.get("temperature", 1) != 1:
                message = (
                    f"Unsupported value: 'temperature' does not support"
                    f" {request['temperature']} with this model. Only the default (1) value"
                    " is supported."
                )
                return _error(message, "unsupported_value", param="temperature")
        if "parallel_tool_calls" in request and not request.get("tools"):
            message = "'parallel_tool_calls' is only allowed when 'tools' are specified."
            return _error(message, "invalid_value", param="parallel_tool_calls")
        if self.strict_roles and not _alternating(request.get("messages") or []):
            message = "Conversation roles must alternate user/assistant/user/assistant/..."
            return _error(message, "bad_request", param="messages")
        return None

    async def _stream(
        self,
        request: dict[str, Any],
        receive: Receive,
        send: Send,
        script: ModelScript | None,
        arrived: float,
    ) -> None:
        offered = {t.get("function", {}).get("name") for t in request.get("tools") or []}
        messages = request.get("messages") or []
        text, tool = self.reply_for(messages, offered)
        usage = (request.get("stream_options") or {}).get("include_usage") is True
        chunk = _Chunks(f"chatcmpl-fake-{next(self._ids)}", request.get("model", "fake"), usage)
        events = _events(chunk, text, tool, _words(messages))
        first_delay_ms = self.first_token_delay_ms
        if script is not None:
            if script.first_token_delay_ms is not None:
                first_delay_ms = script.first_token_delay_ms
            if script.break_after_words is not None:
                events = events[: script.break_after_words]
        watcher = asyncio.create_task(_until_disconnect(receive))
        self._watchers.add(watcher)
        self.active += 1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await _body(send, chunk.delta({"role": "assistant", "content": ""}))
            first_at = arrived
            for i, piece in enumerate(events):
                delay = first_delay_ms / 1000 if i == 0 else self._token_interval()
                if await _gone_within(watcher, delay):
                    break
                await _body(send, piece)
                if i == 0:
                    first_at = time.monotonic()
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                if self.on_streamed is not None:
                    self.on_streamed(last_user(messages), arrived, first_at, time.monotonic())
                self.completed += script is None or script.break_after_words is None
                return
            if not watcher.cancelled():  # cancelled means the fake is stopping
                self.disconnects += 1
        except OSError:  # uvicorn's ClientDisconnected on send
            self.disconnects += 1
        finally:
            self.active -= 1
            watcher.cancel()
            self._watchers.discard(watcher)

    def _token_interval(self) -> float:
        return 1 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0


class _Chunks:
    """Serialises one completion's `chat.completion.chunk` events."""

    def __init__(self, completion_id: str, model: str, usage: bool = False) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.usage = usage
        if usage:  # asked for: every chunk carries `usage`, null until the last one
            self._base["usage"] = None

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return b"data: " + orjson.dumps({**self._base, "choices": [choice]}) + b"\n\n"

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        payload = {**self._base, "choices": [], "usage": usage}
        return b"data: " + orjson.dumps(payload) + b"\n\n"


def _events(chunk: _Chunks, text: str, tool: str | None, prompt_tokens: int) -> list[bytes]:
    """Everything after the role chunk, one entry per paced send (a word is a token here)."""
    events = [chunk.delta({"content": word}) for word in re.findall(r"\s*\S+", text)]
    completion_tokens = len(events)
    if tool is not None:
        call = {"index": 0, "id": "call_fake_1", "type": "function"}
        events.append(
            chunk.delta({"tool_calls": [{**call, "function": {"name": tool, "arguments": ""}}]})
        )
        events.append(chunk.delta({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    finish = "tool_calls" if tool is not None else "stop"
    last = chunk.delta({}, finish)
    if chunk.usage:
        last += chunk.usage_chunk(prompt_tokens, completion_tokens + (tool is not None))
    events.append(last + b"data: [DONE]\n\n")
    return events


def last_user(messages: list[dict[str, Any]]) -> str:
    """The last user message's text ("" without one)."""
    return next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")


def _masked(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in messages)


def _alternating(messages: list[dict[str, Any]]) -> bool:
    """System messages first, then user, assistant, user, ... (what strict templates accept)."""
    roles = [m.get("role") for m in messages]
    while roles and roles[0] == "system":
        roles.pop(0)
    expected = itertools.cycle(["user", "assistant"])
    return bool(roles) and all(role == next(expected) for role in roles)


async def _gone_within(watcher: asyncio.Task[None], delay: float) -> bool:
    """Sleep `delay`, but return True as soon as the client is gone (or the fake stops)."""
    if delay <= 0:
        return watcher.done()
    done, _ = await asyncio.wait({watcher}, timeout=delay)
    return bool(done)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return request if isinstance(request, dict) else None


def _error(
    message: str, code: str, *, param: str | None = None, kind: str = "invalid_request_error"
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _json(
    send: Send, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
) -> None:
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


# --- offline demo: python -m telephony.sim.fake_llm --port 8089 ------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible streaming LLM")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", default="llm-test-key")
    parser.add_argument("--first-token-delay-ms", type=float, default=300)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument(
        "--strict-roles", action="store_true", help="refuse roles that do not alternate (vLLM)"
    )
    args = parser.parse_args()

    async def run() -> None:
        fake = FakeLLM(
            api_key=args.api_key,
            first_token_delay_ms=args.first_token_delay_ms,
            tokens_per_s=args.tokens_per_s,
            strict_roles=args.strict_roles,
        )
        await fake.start(port=args.port)
        print(f"fake LLM at {fake.url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
