"""The supervisors' dashboard page (/dashboard): figures from the rollups, tables first, links
to the calls behind each period, the viewer's time zone and bad input answered clearly."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from routes.dashboard import calls_link
from telephony.outcome import Outcome
from telephony.transcript import Turn
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts, store_call
from tests.test_staff_ui import client_as

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

PARIS = ZoneInfo("Europe/Paris")


def at(*args: int) -> float:
    return datetime(*args, tzinfo=PARIS).timestamp()  # type: ignore[misc]


def bot(latency_ms: int, cut: bool = False) -> Turn:
    meta = {"cut_by": "caller"} if cut else {}
    return Turn(1, "bot", "Hello", 500, 1500, heard="Hello", interrupted=cut,
                latency_ms=latency_ms, meta=meta)  # fmt: skip


@pytest.fixture
async def app_with_calls(running_app: RunningApp, database: str) -> RunningApp:
    await add_accounts(database)
    caller = Turn(0, "caller", "hi", 0, 400)
    await store_call(database, "CA" + "1" * 32, turns=[caller, bot(420)],
                     started_at=at(2026, 10, 24, 23, 30))  # fmt: skip
    await store_call(database, "CA" + "2" * 32, turns=[caller, bot(900, cut=True)],
                     started_at=at(2026, 10, 25, 9, 0), outcome=Outcome.TRANSFERRED)  # fmt: skip
    await store_call(database, "CA" + "3" * 32, turns=[caller], profile="sales",
                     started_at=at(2026, 10, 25, 23, 30), outcome=Outcome.FAILOVER)  # fmt: skip
    return running_app


def cells(html: str, table_id: str) -> list[list[str]]:
    body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [
        [
            re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)
        ]
        for r in rows
    ]


async def test_staff_see_each_local_day_with_its_figures_and_links(
    app_with_calls: RunningApp,
) -> None:
    # Paris leaves summer time on 2026-10-25: 23:30 on the 24th is 21:30 UTC, 23:30 on the
    # 25th is 22:30 UTC; each stays on its own local day.
    async with client_as(app_with_calls, STAFF) as client:
        page = await client.get(
            "/dashboard", params={"from": "2026-10-20", "to": "2026-10-26", "tz": "Europe/Paris"}
        )
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    rows = cells(page.text, "periods")
    header, *days = rows
    assert header[:2] == ["Day", "Calls"]
    assert [(d[0], d[1]) for d in days] == [("Sat 24 Oct 2026", "1"), ("Sun 25 Oct 2026", "2")]
    sunday = dict(zip(header, days[1], strict=True))
    assert sunday["Transferred"] == "1" and sunday["Failed over"] == "1"
    assert sunday["Reply p95"] == "950"  # the 900 ms reply, to its bin's upper edge
    assert sunday["Barge-in"] == "50.0 %" and sunday["Transfer"] == "50.0 %"
    assert '<strong id="total-calls">3</strong>' in page.text
    hours = cells(page.text, "hours")[1]
    assert hours[23] == "2" and hours[9] == "1"
    # The Sunday's calls link to the list filtered to that local day, by the zone's name: the
    # day is 25 hours long (UTC+2 until 03:00, UTC+1 after), which no fixed offset covers.
    link = re.search(r'<a href="(/calls\?[^"]+)">2</a>', page.text)
    assert link is not None
    query = parse_qs(urlsplit(link.group(1).replace("&amp;", "&")).query)
    assert query == {"from": ["2026-10-25"], "to": ["2026-10-25"], "tzname": ["Europe/Paris"]}
    async with client_as(app_with_calls, STAFF) as client:
        listed = await client.get(link.group(1).replace("&amp;", "&"))
    assert listed.status_code == 200
    assert "CA" + "2" * 32 in listed.text and "CA" + "3" * 32 in listed.text
    assert "CA" + "1" * 32 not in listed.text


async def test_a_profile_filter_and_bad_input(app_with_calls: RunningApp) -> None:
    async with client_as(app_with_calls, STAFF) as client:
        sales = await client.get(
            "/dashboard",
            params={"from": "2026-10-20", "to": "2026-10-26", "tz": "Europe/Paris",
                    "profile": "sales"},
        )  # fmt: skip
        bad = await client.get("/dashboard", params={"from": "yesterday", "tz": "Mars/Olympus"})
    assert '<strong id="total-calls">1</strong>' in sales.text
    assert "Profiles: sales." in sales.text
    options = re.findall(r'<option value="([^"]+)" ?(selected)?>', sales.text)
    assert options == [("sales", "selected"), ("support", "")]  # the profiles with calls
    assert bad.status_code == 200
    assert "from: not a date (YYYY-MM-DD)" in bad.text
    assert "&#39;Mars/Olympus&#39; is not a known zone" in bad.text
    assert "Times in UTC." in bad.text


def test_a_link_names_its_outcome_and_a_single_profile() -> None:
    from datetime import date

    link = parse_qs(urlsplit(calls_link(date(2026, 7, 1), "Europe/Paris", "failover")).query)
    assert link == {"from": ["2026-07-01"], "to": ["2026-07-01"], "tzname": ["Europe/Paris"],
                    "outcome": ["failover"]}  # fmt: skip
    india = parse_qs(urlsplit(calls_link(date(2026, 7, 1), "Asia/Kolkata", "", ["sales"])).query)
    assert india["tzname"] == ["Asia/Kolkata"] and india["profile"] == ["sales"]
    both = parse_qs(urlsplit(calls_link(date(2026, 7, 1), "UTC", "", ["a", "b"])).query)
    assert "profile" not in both  # the list filters one profile: several mean all
