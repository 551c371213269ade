"""`/calls.csv`: every call the list's filter matches, newest first, read page by page by key
(ties on the start time neither repeated nor lost), spreadsheet-safe cells, audited."""

from __future__ import annotations

import csv
import io

import pytest

from telephony.outcome import Outcome
from telephony.transcript import Turn
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts, store_call
from tests.test_staff_ui import audit_rows, client_as

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

T0 = 1_790_000_000.0  # 2026-09-21


def sid(n: int) -> str:
    return f"CA{n:032d}"


@pytest.fixture
async def app_with_calls(running_app: RunningApp, database: str) -> RunningApp:
    await add_accounts(database)
    turns = [
        Turn(0, "caller", "hi", 0, 400),
        Turn(1, "bot", "Hello", 500, 1500, heard="Hello", latency_ms=400),
        Turn(2, "caller", "bye", 2000, 2400),
        Turn(3, "bot", "Bye", 2500, 3000, heard="Bye", latency_ms=600),
    ]
    # Five calls, three of them starting at the same instant: a page boundary falls among them.
    starts = [T0 + 300, T0 + 200, T0 + 200, T0 + 200, T0 + 100]
    for n, started in enumerate(starts):
        outcome = Outcome.TRANSFERRED if n == 4 else Outcome.CALLER_HANGUP
        await store_call(database, sid(n), turns=turns, started_at=started, outcome=outcome,
                         from_number="+15550100" if n else "=HYPERLINK(\"x\")")  # fmt: skip
    return running_app


def parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_every_call_once_newest_first_across_pages(
    app_with_calls: RunningApp, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("telephony.store.calls_csv.PAGE_ROWS", 2)
    async with client_as(app_with_calls, STAFF) as client:
        got = await client.get("/calls.csv")
    assert got.status_code == 200
    assert got.headers["content-type"] == "text/csv; charset=utf-8"
    assert got.headers["content-disposition"].startswith('attachment; filename="calls-')
    assert got.headers["cache-control"] == "no-store"
    rows = parse(got.text)
    # Newest first; the three ties by call SID, as the list orders them.
    assert [r["call_sid"] for r in rows] == [sid(0), sid(1), sid(2), sid(3), sid(4)]
    first = rows[0]
    assert first["from"] == '\'=HYPERLINK("x")'  # never run as a formula
    assert rows[1]["from"] == "'+15550100"
    assert first["outcome"] == "Caller hung up" and rows[4]["outcome"] == "Transferred"
    assert first["started_utc"] == "2026-09-21T14:18:20Z"
    assert first["duration_s"] == "30.0"
    assert (first["turns"], first["bot_turns"], first["barge_ins"]) == ("4", "2", "0")
    assert (first["reply_latency_mean_ms"], first["reply_latency_max_ms"]) == ("500", "600")
    [entry] = [r for r in await audit_rows(database) if r["action"] == "calls.export_csv"]
    assert entry["user_name"] == STAFF[0]


async def test_the_lists_filter_applies_to_every_page(
    app_with_calls: RunningApp, database: str
) -> None:
    async with client_as(app_with_calls, STAFF) as client:
        got = await client.get("/calls.csv", params={"outcome": "transferred", "page": "3"})
        bad = await client.get("/calls.csv", params={"from": "soon"})
    assert [r["call_sid"] for r in parse(got.text)] == [sid(4)]  # all pages, whatever `page`
    [entry] = [r for r in await audit_rows(database) if r["action"] == "calls.export_csv"]
    assert entry["detail"]["outcome"] == "transferred"
    assert bad.status_code == 400 and "from: not a date" in bad.text
