"""LLM fallback (telephony/responder/fallback.py) against the fake LLM, its models scripted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from telephony.config import LLMResponderConfig
from telephony.http_pool import make_http_client
from telephony.responder import (
    FallbackResponder,
    LLMResponder,
    Reply,
    ResponderError,
    Switch,
    build_responder,
)
from telephony.sim.fake_llm import FakeLLM, ModelScript

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

KEY = "llm-test-key"
ENV = {"PRIMARY_KEY": KEY, "BACKUP_KEY": KEY}
ANSWER = "You said: hi. How else can I help?"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client() as client:
        yield client


def config(url: str, *fallbacks: dict[str, object], **kw: object) -> LLMResponderConfig:
    return LLMResponderConfig.model_validate(
        {
            "type": "llm",
            "base_url": url,
            "model": "primary",
            "api_key_env": "PRIMARY_KEY",
            "system_prompt": "Be brief.",
            "first_token_timeout_s": 2.0,
            "fallbacks": list(fallbacks) or [{"model": "backup", "api_key_env": "BACKUP_KEY"}],
        }
        | kw
    )


def build(
    cfg: LLMResponderConfig, http: httpx.AsyncClient, env: dict[str, str] = ENV
) -> tuple[FallbackResponder, list[Switch]]:
    switches: list[Switch] = []
    responder = build_responder(cfg, http=http, env=env, on_fallback=switches.append)
    assert isinstance(responder, FallbackResponder)
    return responder, switches


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(200):  # up to ~1 s
        if condition():
            return
        await asyncio.sleep(0.005)
    pytest.fail("condition not met in time")


async def collect(reply: Reply) -> list[str]:
    async with reply:
        return [delta async for delta in reply]


def models(fake: FakeLLM) -> list[tuple[str, int]]:
    return [(r["model"], r["status"]) for r in fake.requests]


async def test_a_500_hands_the_same_turn_to_the_next_backend(http: httpx.AsyncClient) -> None:
    async with FakeLLM(first_token_delay_ms=5, models={"primary": ModelScript(status=500)}) as fake:
        responder, switches = build(config(fake.url), http)
        assert "".join(await collect(responder.respond([], "hi"))) == ANSWER
    # A 500 is retryable, but a backend with a fallback behind it is not retried: the
    # fallback is the retry, at once.
    assert models(fake) == [("primary", 500), ("backup", 200)]
    assert fake.requests[0]["messages"] == fake.requests[1]["messages"]  # the same turn
    [switch] = switches
    assert switch.as_event() == {
        "from": f"primary@{fake.url.split('/')[2]}",
        "to": f"backup@{fake.url.split('/')[2]}",
        "from_backend": 0,
        "to_backend": 1,
        "reason": "server-error",
        "status": 500,
        "after_ms": switch.after_ms,
    }
    assert switch.after_ms < 1000


async def test_the_last_backend_keeps_its_fast_retry(http: httpx.AsyncClient) -> None:
    scripts = {
        "primary": ModelScript(status=503),
        "backup": ModelScript(status=429, headers={"retry-after-ms": "120"}, times=1),
    }
    async with FakeLLM(first_token_delay_ms=5, models=scripts) as fake:
        responder, switches = build(config(fake.url), http)
        assert await responder.respond([], "hi").text() == ANSWER
    assert models(fake) == [("primary", 503), ("backup", 429), ("backup", 200)]
    assert [s.reason for s in switches] == ["server-error"]


async def test_a_silent_backend_is_closed_at_its_first_token_timeout(
    http: httpx.AsyncClient,
) -> None:
    scripts = {"primary": ModelScript(first_token_delay_ms=10_000)}
    async with FakeLLM(first_token_delay_ms=5, tokens_per_s=1000, models=scripts) as fake:
        responder, switches = build(config(fake.url, first_token_timeout_s=0.4), http)
        started = asyncio.get_running_loop().time()
        assert await responder.respond([], "hi").text() == ANSWER
        assert asyncio.get_running_loop().time() - started < 1.5
        # The abandoned stream's connection was closed, not left open.
        await eventually(lambda: (fake.disconnects, fake.active) == (1, 0))
    [switch] = switches
    assert switch.reason == "timeout" and switch.status is None
    assert switch.as_event()["error"] == "LLM gave no first token within 0.4 s"
    assert 400 <= switch.after_ms < 1000


async def test_an_unreachable_backend_is_passed_over(http: httpx.AsyncClient) -> None:
    async with FakeLLM(first_token_delay_ms=5) as fake:
        closed = "http://127.0.0.1:9/v1"  # nothing listens there
        cfg = config(closed, {"base_url": fake.url, "model": "backup"})
        responder, switches = build(cfg, http)
        assert await responder.respond([], "hi").text() == ANSWER
    assert [(s.reason, s.from_name, s.to_name) for s in switches] == [
        ("connection", f"primary@{closed.split('/')[2]}", f"backup@{fake.url.split('/')[2]}")
    ]


async def test_when_every_backend_fails_the_last_error_is_raised(
    http: httpx.AsyncClient,
) -> None:
    scripts = {"primary": ModelScript(status=500), "backup": ModelScript(status=401)}
    async with FakeLLM(first_token_delay_ms=5, models=scripts) as fake:
        responder, switches = build(config(fake.url), http)
        with pytest.raises(ResponderError, match="401") as caught:
            await responder.respond([], "hi").text()
    assert caught.value.status == 401
    assert models(fake) == [("primary", 500), ("backup", 401)]
    assert len(switches) == 1


async def test_an_error_after_the_first_token_does_not_switch(http: httpx.AsyncClient) -> None:
    """Text handed on may already be on its way to Aura: the reply stays the backend's."""
    scripts = {"primary": ModelScript(break_after_words=3)}
    async with FakeLLM(first_token_delay_ms=5, tokens_per_s=1000, models=scripts) as fake:
        responder, switches = build(config(fake.url), http)
        deltas: list[str] = []
        with pytest.raises(ResponderError, match="ended before the reply was finished"):
            async with responder.respond([], "hi") as reply:
                async for delta in reply:
                    deltas.append(delta)
    assert "".join(deltas) == "You said: hi."
    assert models(fake) == [("primary", 200)]
    assert switches == []


async def test_a_broken_stream_before_any_text_switches(http: httpx.AsyncClient) -> None:
    async with FakeLLM(
        first_token_delay_ms=5, models={"primary": ModelScript(break_after_words=0)}
    ) as fake:
        responder, switches = build(config(fake.url), http)
        assert await responder.respond([], "hi").text() == ANSWER
    assert [s.reason for s in switches] == ["stream"]


async def test_the_answering_backend_gives_the_action(http: httpx.AsyncClient) -> None:
    scripts = {"primary": ModelScript(status=502)}
    async with FakeLLM(
        first_token_delay_ms=5,
        models=scripts,
        replies=[("human", "Putting you through.")],
        tools=[("human", "transfer_call")],
    ) as fake:
        responder, _ = build(config(fake.url), http)
        reply = responder.respond([], "a human please")
        assert "".join(await collect(reply)) == "Putting you through."
    assert reply.action == "transfer"


async def test_a_cancelled_turn_closes_the_backend_it_was_waiting_on(
    http: httpx.AsyncClient,
) -> None:
    """A barge-in while the primary thinks: its stream is closed and no fallback is asked."""
    scripts = {"primary": ModelScript(first_token_delay_ms=10_000)}
    async with FakeLLM(first_token_delay_ms=5, models=scripts) as fake:
        responder, switches = build(config(fake.url), http)
        task = asyncio.create_task(responder.respond([], "hi").text())
        await eventually(lambda: fake.active == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: (fake.disconnects, fake.active) == (1, 0))
    assert models(fake) == [("primary", 200)] and switches == []


async def test_the_event_never_carries_a_key_or_an_error_body(http: httpx.AsyncClient) -> None:
    # The primary's key is wrong: OpenAI's 401 body quotes part of it.
    async with FakeLLM(first_token_delay_ms=5) as fake:
        env = {"PRIMARY_KEY": "sk-wrong-secret", "BACKUP_KEY": KEY}
        responder, switches = build(config(fake.url), http, env)
        assert await responder.respond([], "hi").text() == ANSWER
    [switch] = switches
    event = switch.as_event()
    assert (event["reason"], event["status"]) == ("client-error", 401)
    assert "sk-wrong" not in repr(event) and "Incorrect API key" not in repr(event)
    assert "sk-wrong" not in repr(responder)


async def test_an_error_quoting_the_key_keeps_none_of_it(http: httpx.AsyncClient) -> None:
    """OpenAI's 401 quotes the key it was given, masked but for its first and last characters:
    the error (logged, and the apology's transcript event) keeps neither end."""
    async with FakeLLM(first_token_delay_ms=5) as fake:
        env = {"PRIMARY_KEY": "sk-wrong-secret-4711", "BACKUP_KEY": "sk-also-wrong-0815"}
        responder, _ = build(config(fake.url), http, env)
        with pytest.raises(ResponderError) as caught:
            await responder.respond([], "hi").text()
    body = fake.requests[-1]["authorization"]
    assert body == "Bearer sk-also-wrong-0815"
    message = str(caught.value)
    assert "LLM HTTP 401: " in message and "Incorrect API key provided: [redacted]." in message
    assert "sk-" not in message and "0815" not in message


def test_a_backend_without_its_key_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="telephony.responder.build")
    cfg = config("https://llm.example.com/v1")
    # Only the primary's key: the plain client, as without fallbacks.
    single = build_responder(cfg, env={"PRIMARY_KEY": KEY})
    assert isinstance(single, LLMResponder) and "primary" in repr(single)
    assert "backup@llm.example.com left out" in caplog.text
    assert "BACKUP_KEY is not set" in caplog.text
    only_backup = build_responder(cfg, env={"BACKUP_KEY": KEY})
    assert isinstance(only_backup, LLMResponder) and "backup" in repr(only_backup)
    with pytest.raises(ResponderError, match="none of BACKUP_KEY, PRIMARY_KEY is set"):
        build_responder(cfg, env={})
    # Without fallbacks nothing changes: the plain client, and a missing key is an error.
    plain = config("https://llm.example.com/v1", fallbacks=[])
    assert isinstance(build_responder(plain, env={"PRIMARY_KEY": KEY}), LLMResponder)
    with pytest.raises(ResponderError, match="PRIMARY_KEY"):
        build_responder(plain, env={})
