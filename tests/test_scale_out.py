"""Scale-out: two `telephony serve` processes behind one public URL, sharing PostgreSQL.

What the deployment (infra/, README "Deployment and scale-out") relies on, run for real:

- both start at once on an empty database (the migrations take turns, nobody crashes);
- the webhook is answered by one instance and the media socket lands on the other: per-call
  data rides in the Stream <Parameter>s (a token signed with the shared secret), so any
  instance can take either hop; the call then lives on the instance holding its socket;
- the transcript is in the shared database, complete, whichever instance wrote it.

Needs PostgreSQL: the session's server (tests/pg_server.py), on which a fresh database is
created and dropped per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller, silence
from telephony.sim.twilio_rest import FakeTwilioRest
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY
from tests.pg_server import PgServer, fresh_database
from tests.serve_process import (
    Server,
    capture_call_results,
    eventually,
    scripted_yaml,
    serve_process,
)

PUBLIC_URL = "https://bridge.example.test"  # the load balancer's address, as Twilio sees it

YAML = scripted_yaml({"one": "Reply one."}, goodbye="bye")
TURNS = [
    ScriptedTurn(start_ms=800, end_ms=1200, text="turn one"),
    ScriptedTurn(start_ms=2400, end_ms=2800, text="okay bye"),
]


@pytest.fixture
async def database(postgres_server: PgServer) -> AsyncIterator[str]:
    """Overrides conftest's SQLite file: a fresh database both instances share."""
    async with fresh_database(postgres_server, "scale") as url:
        yield url


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeDeepgram, FakeTwilioRest]]:
    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=Script(turns=TURNS), speak_ms_per_char=30) as dg,
        FakeTwilioRest(auth_token=AUTH_TOKEN) as rest,
    ):
        yield dg, rest


async def two_instances(
    stack: contextlib.AsyncExitStack,
    tmp_path: Path,
    yaml: str,
    fakes: tuple[FakeDeepgram, FakeTwilioRest],
    database: str,
) -> tuple[Server, Server]:
    """Instances A and B of `telephony serve`, started at the same moment on one database,
    with the secrets a deployment's instances share."""
    env = {
        "TELEPHONY_DATABASE_URL": database,
        "TELEPHONY_PUBLIC_URL": PUBLIC_URL,
        "TELEPHONY_STREAM_TOKEN_SECRET": "shared-stream-token-secret",
        "TELEPHONY_SESSION_SECRET": "shared-session-secret",
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    started = await asyncio.gather(
        *(
            stack.enter_async_context(serve_process(tmp_path / name, yaml, *fakes, **env))
            for name in ("a", "b")
        ),
        return_exceptions=True,  # both settle (and get cleaned up) before any error
    )
    for outcome in started:
        if isinstance(outcome, BaseException):
            raise outcome
    a, b = started
    return a, b  # type: ignore[return-value]


async def live_calls(server: Server) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return int((await http.get(server.url + "/healthz")).json()["live_calls"])


async def expected_calls(server: Server) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return int((await http.get(server.url + "/healthz")).json()["expected_calls"])


@pytest.mark.clock(4)  # both servers on the test's 4x clock (tests/serve_process.py)
async def test_webhook_on_one_instance_media_on_the_other(
    tmp_path: Path,
    database: str,
    fakes: tuple[FakeDeepgram, FakeTwilioRest],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deepgram, rest = fakes
    results: list[CallResult] = capture_call_results(monkeypatch)
    hangup = asyncio.Event()

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        if form.get("Status") == "completed":
            hangup.set()

    rest.on_request = on_rest
    async with contextlib.AsyncExitStack() as stack:
        # Both start at the same moment on the empty database.
        # The token's TTL as deployed (30 s): A must release its reservation when the call
        # goes live on B, not hold it (capacity, and its drain below) until the TTL lapses.
        a, b = await two_instances(stack, tmp_path, YAML, (deepgram, rest), database)
        # Twilio POSTs the webhook to the balancer, which picks A; the media socket to the
        # balancer, which picks B.
        caller = FakeTwilioCaller(a.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
        media_on_b = b.url.replace("http://", "ws://") + "/twilio/media"
        dial = asyncio.create_task(
            caller.dial(
                "+15550001000",
                audio=silence(10_000),
                tail_ms=None,
                hangup=hangup,
                max_call_ms=10_000,
                connect_url=media_on_b,
            )
        )
        try:

            async def on_b() -> bool:
                assert not dial.done(), f"call ended early:\n{a.output()}\n{b.output()}"
                return await live_calls(b) == 1

            await eventually(on_b, within=10, what="the call to go live on B")
            assert await live_calls(a) == 0  # A only answered the webhook

            async def released_on_a() -> bool:  # B's call-started, heard through PostgreSQL
                return await expected_calls(a) == 0

            await eventually(released_on_a, within=3, what="A to release its reservation")
            result = await asyncio.wait_for(dial, 15)
        finally:
            if not dial.done():
                dial.cancel()
        for server in (a, b):
            server.proc.terminate()  # SIGTERM: a drain with nothing left to wait for
        codes = await asyncio.gather(*(asyncio.wait_for(s.proc.wait(), 10) for s in (a, b)))
        assert codes == [0, 0], f"{a.output()}\n{b.output()}"

    assert results and result.error is None and result.closed_by == "caller", result
    assert result.parameters["profile"] == "support"
    conn = await asyncpg.connect(database.replace("postgresql+asyncpg", "postgresql"), timeout=5)
    try:
        call = await conn.fetchrow(
            "SELECT ended_at, end_reason FROM calls WHERE sid = $1", result.call_sid
        )
        turns = await conn.fetch(
            "SELECT role, text FROM turns WHERE call_sid = $1 ORDER BY idx", result.call_sid
        )
    finally:
        await conn.close()
    assert call is not None and call["ended_at"] is not None and call["end_reason"] == "bot-hangup"
    assert [(t["role"], t["text"]) for t in turns] == [
        ("bot", "Hi."),
        ("caller", "turn one"),
        ("bot", "Reply one."),
        ("caller", "okay bye"),
        ("bot", "Goodbye."),
    ]


WARM_YAML = YAML.replace(
    '        - {pattern: "bye", reply: "Goodbye.", action: hangup}',
    '        - {pattern: "bye", reply: "Putting you through.", action: transfer}',
).replace(
    "    mode: flux\n", '    mode: flux\n    transfer: {number: "+15557770000", whisper: true}\n'
)


async def test_whisper_asked_of_the_instance_that_did_not_carry_the_call(
    tmp_path: Path,
    database: str,
    fakes: tuple[FakeDeepgram, FakeTwilioRest],
) -> None:
    """The call lives on B and transfers there; Twilio's whisper request reaches A, which has
    only the shared database to go by."""
    assert "action: transfer" in WARM_YAML and "whisper: true" in WARM_YAML
    deepgram, rest = fakes
    updates: asyncio.Queue[str] = asyncio.Queue()

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        if "Twiml" in form:
            updates.put_nowait(form["Twiml"])

    rest.on_request = on_rest
    async with contextlib.AsyncExitStack() as stack:
        a, b = await two_instances(stack, tmp_path, WARM_YAML, (deepgram, rest), database)
        # The balancer sends the webhook and the whisper request (both to the public URL, so
        # to a.url here) to A, the media socket to B: the call lives, and transfers, on B.
        caller = FakeTwilioCaller(a.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
        result = await caller.dial(
            "+15550001000",
            audio=silence(10_000),
            tail_ms=None,
            max_call_ms=10_000,
            connect_url=b.url.replace("http://", "ws://") + "/twilio/media",
            twiml_updates=updates,
        )
        assert result.error is None, f"{a.output()}\n{b.output()}"
        [fork] = result.forks
        [heard] = fork.whispers
        assert heard.url.startswith(PUBLIC_URL + "/twilio/whisper?")
        assert heard.http_status == 200, f"{a.output()}"
        assert heard.said == [
            "Transferring a caller. They said: okay bye. The assistant is handing them over."
        ], f"{a.output()}"
