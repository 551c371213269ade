"""The app's insights worker: a call that ends through the real app (sockets, uvicorn, the
fakes) gets its insights from the fake /v1/read; a full queue leaves calls pending for the
sweep; stopping keeps unfinished work pending; the staff pages show what was found."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.deepgram.read import ReadClient
from telephony.insights.metrics import InsightsMetrics
from telephony.insights.worker import InsightsWorker
from telephony.sim.deepgram.read import FakeRead
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import FakeTwilioCaller, HangUp
from telephony.sim.twilio_caller import silence as silence_ms
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.engine import make_engine
from telephony.store.insights import insights_of
from telephony.store.migrate import upgrade
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY, RunningApp, finished, served_with_fakes
from tests.insights_helpers import add_call, profiles, write_numbers
from tests.serve_process import eventually
from tests.staff_helpers import STAFF, add_accounts, login

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

KEY = "dg-worker-key"


# --- the worker alone, on a database ---------------------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    await upgrade(eng)
    yield eng
    await eng.dispose()


async def test_a_full_queue_leaves_calls_pending_for_the_sweep(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    yaml = profiles(tmp_path)
    async with FakeRead(KEY) as fake:
        client = ReadClient(fake.url, KEY)
        worker = InsightsWorker(
            engine,
            client,
            lambda: yaml,
            queue_size=1,
            workers=1,
            sweep_s=0.5,
            lease_s=0.5,
            metrics=InsightsMetrics(),
        )
        for sid in ("CA1", "CA2", "CA3"):
            await add_call(engine, sid)
        worker.offer(["CA1", "CA2", "CA3"])  # not started: the queue holds one
        assert (worker.queue_depth, worker.dropped) == (1, 2)
        worker.offer(["CA1"])  # already queued: not offered twice
        assert (worker.queue_depth, worker.dropped) == (1, 2)
        await worker.start()
        try:

            async def all_done() -> bool:
                rows = await insights_of(engine, ["CA1", "CA2", "CA3"])
                return {r["status"] for r in rows.values()} == {"done"}

            # CA2 and CA3 by the sweep, once untouched for 0.5 s
            await eventually(all_done, within=10, what="every call analysed")
        finally:
            await worker.stop()
            await client.aclose()
    assert sorted(r.status for r in fake.requests) == [200, 200, 200]
    metrics = worker.metrics
    assert metrics is not None
    assert (
        metrics.registry.get_sample_value("telephony_insights_requests_total", {"result": "ok"})
        == 3
    )
    assert metrics.registry.get_sample_value("telephony_insights_queue_depth") == 0


async def test_stopping_keeps_unfinished_calls_pending(engine: AsyncEngine, tmp_path: Path) -> None:
    yaml = profiles(tmp_path)
    async with FakeRead(KEY, delay_s=30.0) as fake:  # answers long after the stop
        client = ReadClient(fake.url, KEY, timeout_s=60)
        worker = InsightsWorker(
            engine, client, lambda: yaml, workers=1, sweep_s=60, stop_timeout_s=0.2
        )
        for sid in ("CA1", "CA2"):
            await add_call(engine, sid)
        await worker.start()
        worker.offer(["CA1", "CA2"])

        async def sent() -> bool:
            return len(fake.requests) == 1

        await eventually(sent, within=10, what="the first request")
        await worker.stop()
        await client.aclose()
    rows = await insights_of(engine, ["CA1", "CA2"])
    assert {sid: r["status"] for sid, r in rows.items()} == {"CA1": "pending", "CA2": "pending"}
    assert worker.queue_depth == 0


# --- through the app ------------------------------------------------------------------------------


@pytest.fixture
async def insights_app(
    tmp_path: Path, database: str
) -> AsyncIterator[tuple[RunningApp, FakeDeepgram]]:
    card = " ".join(["four"] + ["one"] * 15)
    said = f"where is my order it is late and I am upset this is terrible my card is {card}"
    script = Script(turns=[ScriptedTurn(300, 2500, said)])
    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=script, serve_read=True) as deepgram,
        FakeTwilioRest(auth_token=AUTH_TOKEN) as rest,
        served_with_fakes(write_numbers(tmp_path), deepgram, rest) as app,
    ):
        await add_accounts(database)
        yield app, deepgram


async def test_a_call_that_ends_gets_insights_shown_to_staff(
    insights_app: tuple[RunningApp, FakeDeepgram],
) -> None:
    app, deepgram = insights_app
    await FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN).dial(
        "+15550001000", call_sid="CAinsight", audio=silence_ms(4000), timeline=[HangUp(4000)]
    )
    await finished(app, "CAinsight")
    db = app.app.state.services.db

    async def done() -> dict[str, Any] | None:
        row = (await insights_of(db, ["CAinsight"])).get("CAinsight")
        return row if row is not None and row["status"] == "done" else None

    row = await eventually(done, within=10, what="the call's insights")
    (sent,) = deepgram.read.requests
    assert "four one one one" not in sent.text and "[REDACTED:card]" in sent.text
    assert sent.auth == "Token ***" and sent.query["summarize"] == "true"
    assert row["summary"].startswith("The caller said: where is my order")
    assert {t["label"] for t in row["topics"]} == {"Order status", "Payment"}
    caller = next(t for t in row["turn_sentiments"] if t["sentiment"] == "negative")

    async with app.http() as client:
        assert (await login(client, STAFF[0], STAFF[2])).status_code == 303
        listing = (await client.get("/calls")).text
        assert "<strong>Summary:</strong> The caller said: where is my order" in listing
        assert '<option value="order status"' in listing
        filtered = (await client.get("/calls/rows", params={"topic": "Order Status"})).text
        assert 'data-sid="CAinsight"' in filtered
        none = (await client.get("/calls/rows", params={"intent": "cancel order"})).text
        assert 'data-sid="CAinsight"' not in none
        found = (await client.get("/calls/rows", params={"q": "track"})).text  # an intent
        assert 'data-sid="CAinsight"' in found
        page = (await client.get("/calls/CAinsight")).text
        assert 'id="insight-summary">The caller said: where is my order' in page
        assert 'id="insight-sentiment"' in page
        assert '<a href="/calls?topic=order%20status">Order status</a>' in page
        # The caller's turn carries its sentiment in words (not only a colour).
        marker = f'title="sentiment score {caller["score"]}">negative</span>'
        assert f'<span class="sentiment negative" {marker}' in page
        csv = (await client.get("/calls.csv")).text
        assert "summary,sentiment,sentiment_score,topics,intents" in csv.splitlines()[0]
        assert "Order status; Payment" in csv or "Payment; Order status" in csv
