"""Responders: scripted, and the LLM against the fake SSE server or canned streams."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.config import LLMResponderConfig, ScriptedResponderConfig
from telephony.http_pool import make_http_client
from telephony.responder import (
    LLMResponder,
    Message,
    Reply,
    ResponderError,
    ScriptedResponder,
    ScriptRule,
    build_responder,
)
from telephony.responder.request import chat_messages
from telephony.sim.fake_llm import FakeLLM

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

KEY = "llm-test-key"


async def collect(reply: Reply) -> list[str]:
    async with reply:
        return [delta async for delta in reply]


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(200):  # up to ~1 s
        if condition():
            return
        await asyncio.sleep(0.005)
    pytest.fail("condition not met in time")


# --- scripted -------------------------------------------------------------------------------


def scripted() -> ScriptedResponder:
    return ScriptedResponder(
        [
            ScriptRule(r"\bagent\b|\bhuman\b", "Transferring you now.", "transfer"),
            ScriptRule(r"bye", "Goodbye!", "hangup"),
            ScriptRule(r"agent", "never reached: the first rule wins", "none"),
        ],
        fallback="Sorry, could you say that again?",
    )


@pytest.mark.parametrize(
    ("said", "text", "action"),
    [
        ("I want an AGENT please", "Transferring you now.", "transfer"),  # order + case
        ("Human, bye", "Transferring you now.", "transfer"),  # first matching rule wins
        ("okay BYE then", "Goodbye!", "hangup"),
        ("what's the weather", "Sorry, could you say that again?", "none"),  # fallback
    ],
)
async def test_scripted_rules(said: str, text: str, action: str) -> None:
    reply = scripted().respond([], said)
    deltas = await collect(reply)
    assert "".join(deltas) == text
    assert reply.action == action


async def test_scripted_streams_word_deltas() -> None:
    deltas = await collect(scripted().respond([], "nothing matches"))
    assert deltas == ["Sorry, ", "could ", "you ", "say ", "that ", "again?"]


def test_build_scripted_from_config() -> None:
    cfg = ScriptedResponderConfig.model_validate(
        {
            "type": "scripted",
            "rules": [{"pattern": "bye", "reply": "Goodbye!", "action": "hangup"}],
            "fallback": "Pardon?",
        }
    )
    responder = build_responder(cfg)
    assert isinstance(responder, ScriptedResponder)
    assert responder.match("BYE now") == ("Goodbye!", "hangup")
    assert responder.match("hello") == ("Pardon?", "none")


# --- LLM against the fake server ------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(
        first_token_delay_ms=20,
        tokens_per_s=1000,
        replies=[(r"human", "Let me transfer you.")],
        tools=[(r"human", "transfer_call"), (r"goodbye", "end_call")],
    ) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client() as client:
        yield client


def llm(fake: FakeLLM, http: httpx.AsyncClient, **kw: object) -> LLMResponder:
    args: dict[str, object] = {"base_url": fake.url, "model": "m", "api_key": KEY, "http": http}
    return LLMResponder(**(args | kw))  # type: ignore[arg-type]


def llm_config(url: str, **kw: object) -> LLMResponderConfig:
    base = {"type": "llm", "base_url": url, "model": "fake-1", "api_key_env": "MY_LLM_KEY"}
    return LLMResponderConfig.model_validate(base | {"system_prompt": "Be brief."} | kw)


def active_connections(http: httpx.AsyncClient) -> int:
    # httpx exposes no public pool view; connections still serving a response count.
    shards = http._transport.shards  # type: ignore[attr-defined]  # see ShardedTransport
    return sum(1 for t in shards for c in t._pool.connections if not c.is_idle())


async def test_llm_streams_the_reply(fake: FakeLLM, http: httpx.AsyncClient) -> None:
    reply = llm(fake, http).respond([], "hello there")
    deltas = await collect(reply)
    assert len(deltas) > 3  # streamed, not one blob
    assert "".join(deltas) == "You said: hello there. How else can I help?"
    assert reply.action == "none"
    assert fake.completed == 1
    assert active_connections(http) == 0  # returned to the pool, not left half-read
    await llm(fake, http).respond([], "again").text()
    assert fake.requests[0]["client"] == fake.requests[1]["client"]  # kept alive and reused


async def test_llm_sends_system_history_and_settings(
    fake: FakeLLM, http: httpx.AsyncClient
) -> None:
    env = {"MY_LLM_KEY": KEY}
    responder = build_responder(
        llm_config(fake.url, temperature=0.2, max_tokens=50), http=http, env=env
    )
    history = [Message("user", "hi"), Message("assistant", "Hello! How can I help?")]
    await responder.respond(history, "what time is it").text()
    request = fake.requests[-1]
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "what time is it"},
    ]
    assert (request["model"], request["temperature"]) == ("fake-1", 0.2)
    assert request["max_completion_tokens"] == 50 and "max_tokens" not in request
    assert request["stream"] is True
    assert sorted(t["function"]["name"] for t in request["tools"]) == ["end_call", "transfer_call"]
    assert request["parallel_tool_calls"] is False


async def test_temperature_is_only_sent_when_configured(
    fake: FakeLLM, http: httpx.AsyncClient
) -> None:
    responder = build_responder(llm_config(fake.url), http=http, env={"MY_LLM_KEY": KEY})
    await responder.respond([], "hi").text()
    assert "temperature" not in fake.requests[-1]
    assert "max_completion_tokens" not in fake.requests[-1]  # no limit configured: none sent


async def test_token_limit_param_max_tokens_is_for_older_servers(
    fake: FakeLLM, http: httpx.AsyncClient
) -> None:
    cfg = llm_config(fake.url, max_tokens=60, token_limit_param="max_tokens")
    await build_responder(cfg, http=http, env={"MY_LLM_KEY": KEY}).respond([], "hi").text()
    assert fake.requests[-1]["max_tokens"] == 60
    assert "max_completion_tokens" not in fake.requests[-1]  # never both


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini"])
async def test_a_reasoning_model_accepts_the_request(
    fake: FakeLLM, http: httpx.AsyncClient, model: str
) -> None:
    cfg = llm_config(fake.url, model=model, max_tokens=80)
    reply = await build_responder(cfg, http=http, env={"MY_LLM_KEY": KEY}).respond([], "hi").text()
    assert reply == "You said: hi. How else can I help?"
    assert fake.requests[-1]["status"] == 200


async def test_roles_alternate_for_strict_chat_templates(http: httpx.AsyncClient) -> None:
    # The greeting comes first; a reply cut before it was heard leaves two caller turns.
    history = [
        Message("assistant", "Thanks for calling Acme."),
        Message("user", "hi"),
        Message("assistant", "Hello!"),
        Message("user", "are you there"),
    ]
    async with FakeLLM(first_token_delay_ms=1, tokens_per_s=0, strict_roles=True) as fake:
        text = await llm(fake, http, system_prompt="Be brief.").respond(history, "hello?").text()
        assert text == "You said: are you there\nhello?. How else can I help?"
        assert fake.requests[-1]["messages"] == [
            {
                "role": "system",
                "content": 'Be brief.\n\nYou opened the call by saying: "Thanks for calling Acme."',
            },
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "are you there\nhello?"},
        ]


OPENED = "You opened the call by saying:"


@pytest.mark.parametrize(
    ("system_prompt", "history", "expected"),
    [
        (  # no system prompt: the greeting alone makes one
            "",
            [Message("assistant", "Hi."), Message("assistant", "How can I help?")],
            [
                {"role": "system", "content": f'{OPENED} "Hi.\nHow can I help?"'},
                {"role": "user", "content": "x"},
            ],
        ),
        (  # a system message in the history joins the system prompt, never a second one
            "Be brief.",
            [Message("user", "a"), Message("system", "Caller is a VIP.")],
            [
                {"role": "system", "content": "Be brief.\n\nCaller is a VIP."},
                {"role": "user", "content": "a\nx"},
            ],
        ),
        ("", [], [{"role": "user", "content": "x"}]),
    ],
)
def test_chat_messages_alternate(
    system_prompt: str, history: list[Message], expected: list[dict[str, str]]
) -> None:
    assert chat_messages(system_prompt, history, "x") == expected


async def test_llm_key_comes_from_the_named_env_var(http: httpx.AsyncClient) -> None:
    async with FakeLLM(api_key="sk-from-env", first_token_delay_ms=1, tokens_per_s=0) as fake:
        env = {"MY_LLM_KEY": "sk-from-env", "OPENAI_API_KEY": "not-this-one"}
        responder = build_responder(llm_config(fake.url), http=http, env=env)
        assert "sk-from-env" not in repr(responder)
        assert await responder.respond([], "hi").text() == "You said: hi. How else can I help?"
        assert fake.requests[-1]["authorization"] == "Bearer sk-from-env"


def test_missing_key_env_var_fails_at_construction() -> None:
    with pytest.raises(ResponderError, match="MY_LLM_KEY"):
        build_responder(llm_config("http://127.0.0.1:9/v1"), env={})


async def test_wrong_key_is_a_401_error(fake: FakeLLM, http: httpx.AsyncClient) -> None:
    reply = llm(fake, http, api_key="wrong").respond([], "hi")
    with pytest.raises(ResponderError, match="401") as err:
        await collect(reply)
    assert err.value.status == 401
    assert "Incorrect API key" in str(err.value)  # a short excerpt of the body
    assert "wrong" not in str(err.value)


async def test_first_token_timeout(http: httpx.AsyncClient) -> None:
    async with FakeLLM(first_token_delay_ms=2000) as slow:
        reply = llm(slow, http, first_token_timeout_s=0.15).respond([], "hi")
        started = asyncio.get_running_loop().time()
        with pytest.raises(ResponderError, match="first token"):
            await collect(reply)
        assert asyncio.get_running_loop().time() - started < 0.5
        await eventually(lambda: slow.disconnects == 1)  # and the stream was abandoned


async def test_first_token_deadline_does_not_cut_a_slow_reply(http: httpx.AsyncClient) -> None:
    async with FakeLLM(first_token_delay_ms=5, tokens_per_s=50) as fake:
        # ~10 words at 50/s take well over the 0.08 s first-token budget: only the first counts.
        text = await llm(fake, http, first_token_timeout_s=0.08).respond([], "one two").text()
        assert text == "You said: one two. How else can I help?"


@pytest.mark.parametrize("where", ["awaiting a delta", "between deltas"])
async def test_cancel_mid_stream_closes_the_connection(http: httpx.AsyncClient, where: str) -> None:
    async with FakeLLM(first_token_delay_ms=1, tokens_per_s=20) as fake:
        got_one = asyncio.Event()

        async def speak() -> None:
            async with llm(fake, http).respond([], "a long answer please") as reply:
                async for _ in reply:
                    got_one.set()
                    if where == "between deltas":
                        await asyncio.sleep(10)  # e.g. waiting on TTS when barge-in comes

        task = asyncio.create_task(speak())
        await got_one.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert active_connections(http) == 0
        await eventually(lambda: fake.disconnects == 1 and fake.active == 0)
        assert fake.completed == 0


async def test_tool_call_sets_the_action(fake: FakeLLM, http: httpx.AsyncClient) -> None:
    reply = llm(fake, http).respond([], "Get me a human")
    assert "".join(await collect(reply)) == "Let me transfer you."
    assert reply.action == "transfer"

    reply = llm(fake, http).respond([], "ok goodbye")
    assert await collect(reply) == []  # a bare tool call: no text
    assert reply.action == "hangup"


async def test_no_tools_offered_when_actions_are_off(
    fake: FakeLLM, http: httpx.AsyncClient
) -> None:
    reply = llm(fake, http, actions=False).respond([], "Get me a human")
    assert "".join(await collect(reply)) == "Let me transfer you."
    assert reply.action == "none"
    assert "tools" not in fake.requests[-1]
    assert "parallel_tool_calls" not in fake.requests[-1]  # the API refuses it without tools


# --- stream parsing edge cases (canned bodies) ----------------------------------------------


def canned(body: bytes, status: int = 200) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def sse(*events: str) -> bytes:
    return "".join(f"{e}\n\n" for e in events).encode()


CONTENT = 'data: {"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
STOP = 'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'


async def test_parser_skips_comments_and_usage_chunks() -> None:
    body = sse(": keep-alive", CONTENT % "Hi", "event: x", CONTENT % " you", STOP,
               'data: {"choices":[],"usage":{"total_tokens":3}}', "data: [DONE]")  # fmt: skip
    async with canned(body) as client:
        responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
        assert await responder.respond([], "hi").text() == "Hi you"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (sse(CONTENT % "Hi"), "ended before"),  # connection dropped mid-reply
        (sse(CONTENT % "Hi", "data: {nope"), "malformed"),
        (sse('data: {"error":{"message":"overloaded"}}'), "overloaded"),
    ],
)
async def test_parser_reports_broken_streams(body: bytes, message: str) -> None:
    async with canned(body) as client:
        responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
        with pytest.raises(ResponderError, match=message):
            await responder.respond([], "hi").text()


async def test_a_chunk_with_a_null_error_is_not_an_error() -> None:
    # Some servers put `"error": null` in every chunk: only a truthy error is a failure.
    chunk = 'data: {"error":null,"choices":[{"index":0,"delta":{"content":"Fine"}}]}'
    async with canned(sse(chunk, STOP, "data: [DONE]")) as client:
        responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
        assert await responder.respond([], "hi").text() == "Fine"


TOOL = '{"index":%d,"id":"c%d","type":"function","function":{"name":"%s","arguments":"{}"}}'


def tool_chunk(*names: str) -> str:
    calls = ",".join(TOOL % (i, i, name) for i, name in enumerate(names))
    return 'data: {"choices":[{"index":0,"delta":{"tool_calls":[' + calls + "]}}]}"


@pytest.mark.parametrize(
    "events",
    [
        [tool_chunk("end_call"), tool_chunk("transfer_call")],
        [tool_chunk("transfer_call"), tool_chunk("end_call")],
        [tool_chunk("end_call", "transfer_call")],  # both in one chunk
    ],
)
async def test_a_transfer_wins_over_a_hangup_in_one_reply(events: list[str]) -> None:
    async with canned(sse(CONTENT % "One moment.", *events, STOP, "data: [DONE]")) as client:
        responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
        reply = responder.respond([], "hi")
        assert await reply.text() == "One moment."
        assert reply.action == "transfer"


def chunked(body: bytes, cuts: list[int]) -> httpx.AsyncClient:
    """Serve `body` cut at the given offsets, as a network would deliver it."""
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    parts = [body[a:b] for a, b in itertools.pairwise(bounds)]

    class Parts(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for part in parts:
                yield part

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Parts(), headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_events_split_anywhere_with_any_line_end_give_the_same_reply(
    cuts: list[int], newline: str
) -> None:
    events = [": keep-alive", CONTENT % "Héllo", CONTENT % ", wörld", STOP, "data: [DONE]"]
    body = "".join(e + newline * 2 for e in events).encode()

    async def run() -> str:
        async with chunked(body, cuts) as client:
            responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
            return await responder.respond([], "hi").text()

    assert asyncio.run(run()) == "Héllo, wörld"


async def test_a_stream_without_line_ends_is_refused_not_buffered_forever() -> None:
    async with chunked(b"data: " + b"x" * (2 << 20), list(range(0, 2 << 20, 65536))) as client:
        responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
        with pytest.raises(ResponderError, match="line over"):
            await responder.respond([], "hi").text()


async def test_http_error_carries_status_and_excerpt() -> None:
    async with canned(b"upstream   exploded\n" + b"x" * 5000, status=502) as client:
        responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
        with pytest.raises(ResponderError, match="502: upstream exploded") as err:
            await responder.respond([], "hi").text()
        assert err.value.status == 502
        assert len(str(err.value)) < 400


async def test_a_compressed_stream_is_decoded() -> None:
    """Uncompressed bodies are read raw; a server that gzips its event stream anyway is
    decoded (through httpx's decoder), cut wherever the network cuts it."""
    body = gzip.compress(sse(CONTENT % "Zipped", STOP, "data: [DONE]"))
    parts = [body[:7], body[7:30], body[30:]]

    class Parts(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for part in parts:
                yield part

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(200, stream=Parts(), headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        responder = LLMResponder(base_url="http://llm/v1", model="m", api_key="k", http=client)
        assert await responder.respond([], "hi").text() == "Zipped"


# --- retry: one fast repeat of a 429/5xx within the first-token budget ----------------------


async def test_a_429_with_retry_after_ms_is_retried_once(
    fake: FakeLLM, http: httpx.AsyncClient
) -> None:
    fake.fail_next, fake.fail_status, fake.fail_headers = 1, 429, {"retry-after-ms": "120"}
    started = asyncio.get_running_loop().time()
    text = await llm(fake, http, first_token_timeout_s=2.0).respond([], "hi").text()
    assert text == "You said: hi. How else can I help?"
    assert [r["status"] for r in fake.requests] == [429, 200]
    assert asyncio.get_running_loop().time() - started >= 0.12  # the server's wait was honoured
    assert active_connections(http) == 0


async def test_a_retry_after_beyond_the_budget_fails_at_once(
    fake: FakeLLM, http: httpx.AsyncClient
) -> None:
    fake.fail_next, fake.fail_status, fake.fail_headers = 1, 429, {"Retry-After": "3"}
    started = asyncio.get_running_loop().time()
    with pytest.raises(ResponderError, match="429") as err:
        await llm(fake, http, first_token_timeout_s=1.0).respond([], "hi").text()
    assert err.value.status == 429
    assert asyncio.get_running_loop().time() - started < 0.5
    assert len(fake.requests) == 1


async def test_a_wait_that_leaves_no_margin_is_not_retried(
    fake: FakeLLM, http: httpx.AsyncClient
) -> None:
    # 0.6 s fits in the 1 s budget, but would leave less than RETRY_MARGIN_S for the answer.
    fake.fail_next, fake.fail_status, fake.fail_headers = 1, 503, {"retry-after-ms": "600"}
    with pytest.raises(ResponderError, match="503"):
        await llm(fake, http, first_token_timeout_s=1.0).respond([], "hi").text()
    assert len(fake.requests) == 1


async def test_a_400_is_not_retried(fake: FakeLLM, http: httpx.AsyncClient) -> None:
    fake.fail_next, fake.fail_status = 1, 400
    with pytest.raises(ResponderError, match="400") as err:
        await llm(fake, http).respond([], "hi").text()
    assert err.value.status == 400
    assert len(fake.requests) == 1


async def test_a_5xx_is_retried_at_most_once(fake: FakeLLM, http: httpx.AsyncClient) -> None:
    fake.fail_next, fake.fail_status = 3, 500  # no Retry-After: the policy's short backoff
    started = asyncio.get_running_loop().time()
    with pytest.raises(ResponderError, match="500") as err:
        await llm(fake, http, first_token_timeout_s=2.0).respond([], "hi").text()
    assert err.value.status == 500
    assert [r["status"] for r in fake.requests] == [500, 500]
    assert asyncio.get_running_loop().time() - started < 1.0


# --- the fake checks requests as the API does -----------------------------------------------


async def post(fake: FakeLLM, **body: object) -> httpx.Response:
    request = {"model": "gpt-4o-mini", "stream": True, "messages": [user("hi")]}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as client:
        return await client.post(f"{fake.url}/chat/completions", json=request | body)


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


SYSTEM = {"role": "system", "content": "s"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "o1", "max_tokens": 50}, "max_tokens"),
        ({"model": "gpt-5-mini", "temperature": 0.7}, "temperature"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),  # without tools
        ({"messages": [SYSTEM, {"role": "assistant", "content": "a"}, user("u")]}, "messages"),
        ({"messages": [user("a"), user("b")]}, "messages"),
    ],
)
async def test_fake_refuses_what_the_api_refuses(body: dict[str, object], param: str) -> None:
    async with FakeLLM(strict_roles=True) as fake:
        response = await post(fake, **body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
        assert set(error) == {"message", "type", "param", "code"}


async def test_fake_accepts_what_the_api_accepts() -> None:
    async with FakeLLM(first_token_delay_ms=1, tokens_per_s=0) as fake:
        for body in [
            {"model": "gpt-4o", "max_tokens": 50, "temperature": 0.2},  # not a reasoning model
            {"model": "o3", "max_completion_tokens": 50, "temperature": 1},  # the default
            {"messages": [user("a"), user("b")]},  # strict_roles is off
        ]:
            assert (await post(fake, **body)).status_code == 200, body


async def test_fake_sends_usage_when_asked() -> None:
    async with FakeLLM(first_token_delay_ms=1, tokens_per_s=0) as fake:
        events = (await post(fake, stream_options={"include_usage": True})).text.split("\n\n")
        chunks = [orjson.loads(e[6:]) for e in events if e.startswith("data: {")]
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        usage = {"prompt_tokens": 1, "completion_tokens": 8, "total_tokens": 9}  # words
        assert chunks[-1]["usage"] == usage
        assert events[-2] == "data: [DONE]"

        events = (await post(fake)).text.split("\n\n")
        assert not any("usage" in orjson.loads(e[6:]) for e in events if e.startswith("data: {"))
