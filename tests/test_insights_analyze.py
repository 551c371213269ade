"""One ended call through the fake /v1/read: results stored, retries, failures, insights off,
redaction, and `telephony insights run` picking up what failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony import cli
from telephony.deepgram.read import ReadClient
from telephony.insights.analyze import POLICY, analyze_call
from telephony.retry import RetryPolicy
from telephony.sim.deepgram.read import FakeRead
from telephony.store.engine import make_engine
from telephony.store.insights import claim, insights_of
from telephony.store.migrate import upgrade
from telephony.store.schema import call_insight_labels
from tests.insights_helpers import CARD, add_call, profiles, write_numbers

KEY = "dg-test-key-1234"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    await upgrade(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeRead]:
    async with FakeRead(KEY) as served:
        yield served


@pytest.fixture
async def client(fake: FakeRead) -> AsyncIterator[ReadClient]:
    c = ReadClient(fake.url, KEY, timeout_s=5)
    yield c
    await c.aclose()


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_an_ended_call_gets_summary_sentiment_topics_and_intents(
    engine: AsyncEngine, fake: FakeRead, client: ReadClient, tmp_path: Path
) -> None:
    await add_call(engine, "CA1")
    status = await analyze_call(engine, client, profiles(tmp_path), "CA1")
    assert status == "done"
    row = (await insights_of(engine, ["CA1"]))["CA1"]
    assert row["status"] == "done" and row["attempts"] == 1 and row["error"] == ""
    assert row["summary"] == "The caller said: Where is my order?"
    assert row["sentiment"] in ("positive", "neutral", "negative")
    assert {t["label"] for t in row["topics"]} == {"Order status", "Payment"}
    assert {t["label"] for t in row["intents"]} == {"Track order", "Book appointment"}
    # Every turn has a sentiment; the caller's complaint reads negative, the thanks positive.
    by_turn = {t["idx"]: t["sentiment"] for t in row["turn_sentiments"]}
    assert by_turn == {0: "positive", 1: "negative", 2: "positive"}
    async with engine.connect() as conn:
        labels = set(
            await conn.execute(select(call_insight_labels.c.kind, call_insight_labels.c.folded))
        )
    assert ("topic", "order status") in labels and ("intent", "track order") in labels
    (sent,) = fake.requests
    assert sent.query == {
        "language": "en",
        "summarize": "true",
        "sentiment": "true",
        "topics": "true",
        "intents": "true",
    }


async def test_a_card_number_said_never_reaches_deepgram(
    engine: AsyncEngine, fake: FakeRead, client: ReadClient, tmp_path: Path
) -> None:
    """Stored unredacted (as by a row written before redaction), sent redacted all the same."""
    await add_call(engine, "CA1")
    assert await analyze_call(engine, client, profiles(tmp_path), "CA1") == "done"
    (sent,) = fake.requests
    digits = "".join(c for c in sent.text if c.isdigit())
    assert CARD not in sent.text and "1111" not in digits
    assert "[REDACTED:card]" in sent.text
    # A profile with redaction off sends its transcript as staff see it.
    await add_call(engine, "CA2", profile="open")
    assert await analyze_call(engine, client, profiles(tmp_path), "CA2") == "done"
    assert CARD in fake.requests[-1].text


async def test_the_worker_analyses_only_pending_calls_once(
    engine: AsyncEngine, fake: FakeRead, client: ReadClient, tmp_path: Path
) -> None:
    """A call offered again (its recording's second end row) is not sent twice, and of two
    takers that read the same pending row (two instances' sweeps) only one claims it; the CLI
    (not only_pending) may run a call again."""
    yaml = profiles(tmp_path)
    await add_call(engine, "CA1")
    assert await analyze_call(engine, client, yaml, "CA1", only_pending=True) == "done"
    assert await analyze_call(engine, client, yaml, "CA1", only_pending=True) == ""
    assert len(fake.requests) == 1
    await add_call(engine, "CA2")
    seen = (await insights_of(engine, ["CA2"]))["CA2"]["updated_at"]
    assert await claim(engine, "CA2", seen)
    assert not await claim(engine, "CA2", seen)  # the other taker, with the same row seen
    assert len(fake.requests) == 1
    assert await analyze_call(engine, client, yaml, "CA1") == "done"
    assert len(fake.requests) == 2


async def test_insights_off_sends_nothing(
    engine: AsyncEngine, fake: FakeRead, client: ReadClient, tmp_path: Path
) -> None:
    await add_call(engine, "CA1", profile="quiet")
    await add_call(engine, "CA2", profile="removed-from-the-yaml")
    for sid in ("CA1", "CA2"):
        assert await analyze_call(engine, client, profiles(tmp_path), sid) == "off"
    assert fake.requests == []
    assert {r["status"] for r in (await insights_of(engine, ["CA1", "CA2"])).values()} == {"off"}


async def test_a_429_is_retried_after_its_retry_after(
    engine: AsyncEngine, fake: FakeRead, client: ReadClient, tmp_path: Path
) -> None:
    await add_call(engine, "CA1")
    fake.fail_next(429, retry_after="7")
    sleeps = Sleeps()
    assert await analyze_call(engine, client, profiles(tmp_path), "CA1", sleep=sleeps) == "done"
    assert [r.status for r in fake.requests] == [429, 200]
    assert sleeps.waits == [7.0]  # the server's wait, not our backoff
    assert (await insights_of(engine, ["CA1"]))["CA1"]["attempts"] == 2


async def test_persistent_5xx_fails_the_call_and_insights_run_fixes_it(
    engine: AsyncEngine,
    fake: FakeRead,
    client: ReadClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await add_call(engine, "CA1")
    await add_call(engine, "CA2", profile="quiet")
    fake.fail_next(503, times=POLICY.attempts)
    sleeps = Sleeps()
    status = await analyze_call(engine, client, profiles(tmp_path), "CA1", sleep=sleeps)
    assert status == "failed"
    assert [r.status for r in fake.requests] == [503] * POLICY.attempts
    assert len(sleeps.waits) == POLICY.attempts - 1
    row = (await insights_of(engine, ["CA1"]))["CA1"]
    assert (row["status"], row["error"], row["attempts"]) == ("failed", "HTTP 503: injected 503", 4)
    assert KEY not in row["error"]

    monkeypatch.setenv("TELEPHONY_ENV_FILE", "")
    monkeypatch.setenv("TELEPHONY_CONFIG", str(write_numbers(tmp_path)))
    monkeypatch.setenv("TELEPHONY_DATABASE_URL", str(engine.url))
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)
    monkeypatch.setenv("DEEPGRAM_REST_URL", fake.url)
    run = ["insights", "run", "--since", "2026-09-01"]
    assert await asyncio.to_thread(cli.main, run) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["CA1 done", "1 calls: 1 done"]  # quiet's call: never sent
    assert (await insights_of(engine, ["CA1"]))["CA1"]["status"] == "done"
    # Done calls are left alone; --force runs them again; a later --since finds nothing.
    assert await asyncio.to_thread(cli.main, run) == 0
    assert capsys.readouterr().out.splitlines() == ["0 calls"]
    assert await asyncio.to_thread(cli.main, [*run, "--force", "--profile", "support"]) == 0
    assert capsys.readouterr().out.splitlines() == ["CA1 done", "1 calls: 1 done"]
    assert (
        await asyncio.to_thread(cli.main, ["insights", "run", "--since", "2026-10-01", "--force"])
        == 0
    )
    assert capsys.readouterr().out.splitlines() == ["0 calls"]
    assert await asyncio.to_thread(cli.main, [*run, "--profile", "quiet"]) == 1
    assert "profile 'quiet' has insights off" in capsys.readouterr().err
    sent = len(fake.requests)
    fake.fail_next(400)  # not retryable: failed at once, and the run says so in its exit code
    assert await asyncio.to_thread(cli.main, [*run, "--force"]) == 1
    assert capsys.readouterr().out.splitlines() == ["CA1 failed", "1 calls: 1 failed"]
    assert len(fake.requests) == sent + 1


async def test_a_timeout_fails_the_call_without_waiting_forever(
    engine: AsyncEngine, fake: FakeRead, tmp_path: Path
) -> None:
    await add_call(engine, "CA1")
    fake.delay_s = 2.0
    slow = ReadClient(fake.url, KEY, timeout_s=0.2)
    once = RetryPolicy(attempts=1)
    try:
        status = await analyze_call(engine, slow, profiles(tmp_path), "CA1", policy=once)
    finally:
        await slow.aclose()
    assert status == "failed"
    assert (await insights_of(engine, ["CA1"]))["CA1"]["error"] == "timed out"
