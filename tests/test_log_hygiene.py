"""Secrets and what callers say stay out of the logs.

Full calls run through the real app under uvicorn (Flux with an LLM responder, and the Voice
Agent), both hung up through the REST API, then a staff login reads a transcript. Every secret
is a distinctive fake value; every log record from every logger (the app, uvicorn, websockets,
httpx, httpcore, asyncio, aiosqlite) is captured at DEBUG through `setup_logging`'s own
formatters, text and JSON.

- No secret appears anywhere in the logs at any level: not verbatim, not URL-encoded, not
  base64-encoded at any alignment (HTTP basic auth, `Authorization: Token ...` headers).
- With redaction on (the default), no transcript text — the caller's card number, spoken or as
  digits, and distinctive phrases from both sides of the conversation — appears at INFO or
  above. DEBUG may carry it: third-party frame traces (websockets logs the first bytes of each
  frame, aiosqlite its statements) are developer tools, and SECURITY.md promises INFO and up.

Logs of the in-process fakes (fake Deepgram, fake LLM, fake Twilio REST) are the fakes', not the
service's: a real Deepgram also sees the key. They are told apart by the socket they log for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from routes.app import create_app
from telephony.demo import settings_for_fakes
from telephony.inprocess import bind_loopback, serve_app
from telephony.logs import setup_logging
from telephony.sim.deepgram.server import FakeConnection as FakeDeepgramConnection
from telephony.sim.deepgram_server import (
    AgentStep,
    FakeDeepgram,
    Script,
    ScriptedFunctionCall,
    ScriptedTurn,
)
from telephony.sim.fake_llm import FakeLLM
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller
from telephony.sim.twilio_caller import silence as silence_ms
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.engine import make_engine
from telephony.store.users import add_user

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

ROOT = Path(__file__).resolve().parent.parent
LLM_KEY_ENV = "TELEPHONY_HYGIENE_LLM_KEY"
SECRETS = {
    "DEEPGRAM_API_KEY": "dgkey0SECRET0a7f3c9e1b5d",
    "TWILIO_AUTH_TOKEN": "twtok0SECRET0c9e8d7b6a5f",
    LLM_KEY_ENV: "llmkey0SECRET01a2b3c4d5e",
    "TELEPHONY_STREAM_TOKEN_SECRET": "sts0SECRET09f8e7d6c5b4a",
    "TELEPHONY_SESSION_SECRET": "sess0SECRET05e4d3c2b1a0f",
    "staff password": "staffpw0SECRET0d1e2f3a4b",
}
ACCOUNT_SID = "AC" + "5" * 32

CARD_SPOKEN = "four one one one one one one one one one one one one one one one"
PHRASES = {
    "caller (flux)": "my favourite colour is periwinkle marmalade",
    "caller (agent)": "please ship it to the zanzibar lighthouse",
    "agent reply": "Certainly, the quokka department will call you back.",
    "card, spoken": CARD_SPOKEN,
    "card, digits": "4111111111111111",
    "card, grouped": "4111 1111",
    "card, words": "four one one one",
}
NUMBERS = f"""\
numbers:
  "+15550001000": assistant
  "+15550002000": concierge
profiles:
  assistant:
    mode: flux
    greeting: "Hello."
    redaction: true
    responder:
      type: llm
      base_url: "LLM_URL"
      model: test-model
      api_key_env: {LLM_KEY_ENV}
      system_prompt: "Be brief."
  concierge:
    mode: agent
    redaction: true
    agent:
      think_prompt: "Help the caller."
      listen_model: flux-general-en
"""
CALLER_SAYS = f"{PHRASES['caller (flux)']} and my card number is {CARD_SPOKEN}"


def secret_forms(secret: str) -> dict[str, str]:
    """Every way the secret could leak that a substring search can find."""
    forms = {"verbatim": secret, "url": quote(secret, safe=""), "form": quote_plus(secret)}
    forms["middle"] = secret[4:-4]  # a truncated or partly masked copy
    for k in range(3):  # base64 at each alignment: the stable inner part of the encoding
        enc = base64.b64encode(b"\0" * k + secret.encode()).decode().rstrip("=")
        forms[f"base64+{k}"] = enc[(4 * k + 2) // 3 + 1 : -3]
        urlsafe = base64.urlsafe_b64encode(b"\0" * k + secret.encode()).decode().rstrip("=")
        forms[f"base64url+{k}"] = urlsafe[(4 * k + 2) // 3 + 1 : -3]
    forms["basic auth"] = base64.b64encode(f"{ACCOUNT_SID}:{secret}".encode()).decode()
    return forms


def test_secret_forms_find_what_they_should() -> None:
    """The search itself: an Authorization header in any of these shapes is found."""
    secret = SECRETS["TWILIO_AUTH_TOKEN"]
    leaks = [
        "Authorization: Basic " + base64.b64encode(f"{ACCOUNT_SID}:{secret}".encode()).decode(),
        "Basic " + base64.b64encode(f"user:{secret}".encode()).decode(),
        "Basic " + base64.b64encode(f"a-longer-user-name:{secret}".encode()).decode(),
        f"Authorization: Token {secret}",
        f"https://x.example/?key={quote(secret)}",
        f"key={secret[:12]}...{secret[12:]}",
    ]
    for leak in leaks[:5]:
        assert any(form in leak for form in secret_forms(secret).values()), leak
    assert secret_forms(secret)["middle"] not in leaks[5]  # split copies are not caught


# --- log capture ---------------------------------------------------------------------------

THIRD_PARTY = [
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "websockets",
    "websockets.client",
    "websockets.server",
    "httpx",
    "httpcore",
    "asyncio",
    "aiosqlite",
    "telephony",
    "routes",
]


class FromTheFakes(logging.Filter):
    """Drops what the fakes log about their own side: the fake Deepgram is a websockets server
    whose records carry its connection (a FakeDeepgram connection class); the fake REST API
    and fake caller log under telephony.sim."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(getattr(record, "websocket", None), FakeDeepgramConnection):
            return False
        return not record.name.startswith("telephony.sim")


@dataclass
class Captured:
    text_all: io.StringIO
    json_all: io.StringIO
    text_info: io.StringIO
    json_info: io.StringIO

    def everything(self) -> str:
        return self.text_all.getvalue() + self.json_all.getvalue()

    def info_and_up(self) -> str:
        return self.text_info.getvalue() + self.json_info.getvalue()


@pytest.fixture
def captured_logs() -> Iterator[Captured]:
    """Root at DEBUG with setup_logging's text and JSON formatters, twice: all, and INFO+."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in THIRD_PARTY}
    formatters = {}
    for fmt in ("text", "json"):
        with contextlib.redirect_stderr(io.StringIO()):
            setup_logging(fmt, "DEBUG")
        formatters[fmt] = root.handlers[0].formatter
        filters = root.handlers[0].filters  # setup_logging's CallSidFilter
    cap = Captured(io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO())
    handlers = []
    for stream, fmt, level in (
        (cap.text_all, "text", logging.DEBUG),
        (cap.json_all, "json", logging.DEBUG),
        (cap.text_info, "text", logging.INFO),
        (cap.json_info, "json", logging.INFO),
    ):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatters[fmt])
        handler.setLevel(level)
        handler.addFilter(FromTheFakes())
        for f in filters:
            handler.addFilter(f)
        handlers.append(handler)
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG)
    for name in THIRD_PARTY:  # whatever earlier tests set: every record reaches the root
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield cap
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


# --- the calls -----------------------------------------------------------------------------


@dataclass
class Scene:
    url: str
    database_url: str
    deepgram: FakeDeepgram
    llm: FakeLLM
    rest: FakeTwilioRest
    app: object


def script() -> Script:
    return Script(
        turns=[
            ScriptedTurn(start_ms=1500, end_ms=3000, text=CALLER_SAYS),
            ScriptedTurn(start_ms=7000, end_ms=7600, text="thanks, goodbye"),
        ],
        agent=[
            AgentStep(
                at_ms=1500,
                user_text=f"{PHRASES['caller (agent)']}, card {CARD_SPOKEN}",
                reply_text=PHRASES["agent reply"],
            ),
            AgentStep(
                at_ms=5500,
                user_text="that is all, goodbye",
                reply_text="",
                function_call=ScriptedFunctionCall("end_call", '{"reason": "done"}'),
                reply_after_function="Goodbye!",
            ),
        ],
    )


@pytest.fixture
async def scene(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str, captured_logs: Captured
) -> AsyncIterator[Scene]:
    monkeypatch.setenv(LLM_KEY_ENV, SECRETS[LLM_KEY_ENV])
    for name in ("DEEPGRAM_API_KEY", "TWILIO_AUTH_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    deepgram = FakeDeepgram(
        api_key=SECRETS["DEEPGRAM_API_KEY"], script=script(), speak_ms_per_char=20
    )
    llm = FakeLLM(
        api_key=SECRETS[LLM_KEY_ENV],
        first_token_delay_ms=50,
        tokens_per_s=200,
        replies=[("goodbye", "Goodbye then.")],
        tools=[("goodbye", "end_call")],
    )
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=SECRETS["TWILIO_AUTH_TOKEN"])
    await deepgram.start()
    await llm.start()
    await rest.start()
    config = tmp_path / "numbers.yaml"
    config.write_text(NUMBERS.replace("LLM_URL", llm.url))
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = settings_for_fakes(
        config,
        url,
        deepgram,
        rest,
        SECRETS["TWILIO_AUTH_TOKEN"],
        SECRETS["DEEPGRAM_API_KEY"],
        TELEPHONY_STREAM_TOKEN_SECRET=SECRETS["TELEPHONY_STREAM_TOKEN_SECRET"],
        TELEPHONY_SESSION_SECRET=SECRETS["TELEPHONY_SESSION_SECRET"],
    )
    app = create_app(settings)
    try:
        async with serve_app(app, sock):  # start-up runs the migrations
            engine = make_engine(database)
            try:
                await add_user(engine, "auditor", "staff", SECRETS["staff password"])
            finally:
                await engine.dispose()
            yield Scene(url, database, deepgram, llm, rest, app)
    finally:
        await rest.stop()
        await llm.stop()
        await deepgram.stop()


async def run_calls(scene: Scene) -> dict[str, CallResult]:
    hangups = {"CAhygieneflux": asyncio.Event(), "CAhygieneagent": asyncio.Event()}

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        hangups[call_sid].set()

    scene.rest.on_request = on_rest
    caller = FakeTwilioCaller(scene.url, auth_token=SECRETS["TWILIO_AUTH_TOKEN"])
    calls = {
        sid: caller.dial(
            number,
            call_sid=sid,
            audio=silence_ms(1000),
            tail_ms=None,
            hangup=hangups[sid],
            max_call_ms=15_000,
        )
        for sid, number in (("CAhygieneflux", "+15550001000"), ("CAhygieneagent", "+15550002000"))
    }
    results = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
    registry = scene.app.state.services.registry  # type: ignore[attr-defined]
    for sid in calls:
        for _ in range(300):
            if registry.find_finished(sid) is not None:
                break
            await asyncio.sleep(0.01)
    return results


async def read_transcripts_as_staff(scene: Scene) -> str:
    """Log in (session secret, password) and read both calls: the UI's own logging too."""
    store = scene.app.state.services.transcripts  # type: ignore[attr-defined]
    for sid in ("CAhygieneflux", "CAhygieneagent"):
        for _ in range(300):  # write-behind
            stored = await store.get_call(sid)
            if stored and stored.get("ended_at") and len(stored["turns"]) >= 3:
                break
            await asyncio.sleep(0.01)
    pages = []
    async with httpx.AsyncClient(base_url=scene.url) as client:
        login = await client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert csrf, login.text[:500]
        resp = await client.post(
            "/login",
            data={
                "csrf": csrf.group(1),
                "name": "auditor",
                "password": SECRETS["staff password"],
                "next": "/calls",
            },
        )
        assert resp.status_code in (200, 303), resp.status_code
        for sid in ("CAhygieneflux", "CAhygieneagent"):
            page = await client.get(f"/calls/{sid}/export.txt")
            assert page.status_code == 200, (sid, page.status_code)
            pages.append(page.text)
    return "\n".join(pages)


async def test_no_secret_and_no_transcript_text_in_the_logs(
    scene: Scene, captured_logs: Captured
) -> None:
    t0 = time.monotonic()
    results = await run_calls(scene)
    exported = await read_transcripts_as_staff(scene)

    # The calls really happened: the secrets were used, the phrases were said and stored.
    for sid, result in results.items():
        assert result.close_code == 1000, (sid, result.close_code, result.close_reason)
    assert {r.call_sid for r in scene.rest.requests} == set(results)
    assert scene.llm.completed >= 2
    assert PHRASES["caller (flux)"] in exported and PHRASES["caller (agent)"] in exported
    assert PHRASES["agent reply"] in exported
    assert "[REDACTED:card]" in exported and CARD_SPOKEN not in exported
    assert "4111" not in exported

    everything, info = captured_logs.everything(), captured_logs.info_and_up()
    assert "CAhygieneflux" in info and "CAhygieneagent" in info, "the calls were not logged"
    # The DEBUG header trace of the Deepgram sockets is there, without the key.
    assert "> Authorization: [redacted]" in everything, "no DEBUG handshake trace captured"
    assert "Speak" in everything and "TurnInfo" in everything, "no DEBUG frame trace captured"

    leaks = [
        f"{name} ({form})"
        for name, secret in SECRETS.items()
        for form, needle in secret_forms(secret).items()
        if needle in everything
    ]
    assert not leaks, f"secrets in the logs: {leaks}\n" + _context(everything, SECRETS)
    said = [name for name, phrase in PHRASES.items() if phrase.lower() in info.lower()]
    assert not said, f"transcript text at INFO+: {said}\n" + _context(info, PHRASES)
    assert time.monotonic() - t0 < 30

    # Lines the Deepgram clients log during a call carry its SID too (bind_call_sid).
    client_lines = [
        entry
        for entry in map(json.loads, captured_logs.json_all.getvalue().splitlines())
        if entry["logger"].startswith(("telephony.deepgram", "telephony.responder"))
    ]
    assert client_lines, "no Deepgram client line captured"
    without = [e["msg"][:80] for e in client_lines if e.get("call_sid") not in results]
    assert not without, f"Deepgram client lines without the call SID: {without[:5]}"


def _context(logs: str, needles: dict[str, str]) -> str:
    lines = [
        line[:300]
        for line in logs.splitlines()
        if any(n.lower() in line.lower() for n in needles.values())
    ]
    return "\n".join(lines[:20])


# --- .env.example --------------------------------------------------------------------------

SECRET_VARIABLE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)$")


def test_env_example_holds_no_real_looking_secrets() -> None:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    secret_names = [n for n in values if SECRET_VARIABLE.search(n)]
    assert {"TWILIO_AUTH_TOKEN", "DEEPGRAM_API_KEY", "OPENAI_API_KEY"} <= set(secret_names)
    assert {"TELEPHONY_STREAM_TOKEN_SECRET", "TELEPHONY_SESSION_SECRET"} <= set(secret_names)
    for name in secret_names:
        assert values[name] == "", f"{name} must be empty in .env.example, not {values[name]!r}"
    # Identifiers are empty or placeholders, never a real-looking value.
    assert re.fullmatch(r"(AC(x{32}|0{32}))?", values["TWILIO_ACCOUNT_SID"])
    # No password in any URL.
    for name, value in values.items():
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{name} carries credentials"
