"""The dashboard in real headless Chromium: the vendored charts draw under the page's CSP and a
bar opens its calls, and every figure the page shows for a seeded random set of calls equals
what is computed here straight from those calls."""

from __future__ import annotations

import calendar
import math
import random
import re
import time
from collections import Counter
from datetime import datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from playwright.async_api import Browser, expect

from telephony.outcome import LABELS, Outcome
from telephony.store.call_stats import bin_upper_ms, latency_bin
from telephony.transcript import Event, Turn
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts, store_call
from tests.test_staff_browser import browser, log_in  # noqa: F401  (the fixture)

NY = ZoneInfo("America/New_York")


async def test_dashboard_draws_its_charts_and_a_bar_opens_its_calls(
    running_app: RunningApp,
    database: str,
    browser: Browser,  # noqa: F811
) -> None:
    """The vendored uPlot draws both charts under the page's CSP (no error, no refused
    resource); the tables carry the same figures; a click low on the day's bar opens the
    calls list filtered to that day and the outcome at the bottom of the stack."""
    await add_accounts(database)
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
    noon = calendar.timegm(time.strptime(day + " 12:00", "%Y-%m-%d %H:%M"))
    caller = Turn(0, "caller", "hello", 0, 400)
    reply = Turn(1, "bot", "Hi there", 500, 1500, heard="Hi there", latency_ms=450)
    for i, outcome in enumerate((Outcome.CALLER_HANGUP, Outcome.CALLER_HANGUP, Outcome.FAILOVER)):
        await store_call(database, f"CA{i:032d}", turns=[caller, reply],
                         started_at=noon + i * 60, outcome=outcome)  # fmt: skip
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    await log_in(page, running_app.url, STAFF, "/dashboard")
    await page.goto(f"{running_app.url}/dashboard?from={day}&to={day}&tz=UTC")
    await expect(page.locator("#total-calls")).to_have_text("3")
    await expect(page.locator("#calls-chart canvas")).to_have_count(1)
    await expect(page.locator("#latency-chart canvas")).to_have_count(1)
    await expect(page.locator("#calls-chart .u-legend")).to_contain_text("Failed over")
    over = await page.locator("#calls-chart .u-over").bounding_box()
    assert over is not None
    # One day in the range: its bar stands in the middle of the plot.
    await page.mouse.move(over["x"] + over["width"] / 2, over["y"] + over["height"] - 3)
    await page.mouse.click(over["x"] + over["width"] / 2, over["y"] + over["height"] - 3)
    await expect(page).to_have_url(re.compile(r"/calls\?"))
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"from": [day], "to": [day], "tzname": ["UTC"], "outcome": ["caller-hangup"]}
    await expect(page.locator("tr[data-sid]")).to_have_count(2)
    assert not problems, problems
    await page.close()


async def test_every_figure_on_the_page_is_the_seeded_calls_own(
    running_app: RunningApp,
    database: str,
    browser: Browser,  # noqa: F811
) -> None:
    """30 seeded random calls over four New York days: per day and in total, the page's calls,
    outcomes, reply p50/p95 (the bin's upper edge), barge-in, transfer and failover rates,
    reconnects per call and mean duration are those of the calls themselves."""
    await add_accounts(database)
    rng = random.Random(2026_12_07)
    first = datetime(2026, 11, 2, tzinfo=NY).timestamp()
    outcomes = [Outcome.CALLER_HANGUP, Outcome.BOT_HANGUP, Outcome.TRANSFERRED, Outcome.FAILOVER]
    made = []
    for i in range(30):
        started = first + rng.uniform(0, 4 * 86_400)
        turns = [Turn(0, "caller", "hello", 0, 400)]
        latencies, cut = [], False
        for j in range(rng.randint(0, 3)):
            latency = rng.randint(150, 3500)
            cut_now = rng.random() < 0.3
            cut |= cut_now
            latencies.append(latency)
            turns.append(Turn(j + 1, "bot", "reply", 1000 * (j + 1), 1000 * (j + 1) + 500,
                              heard="reply", latency_ms=latency, interrupted=cut_now,
                              meta={"cut_by": "caller"} if cut_now else {}))  # fmt: skip
        reconnects = rng.randint(0, 2)
        events = [Event(0, "flux-connection", {"connection": 0, "reason": "start"})]
        events += [Event(900, "flux-connection", {"reason": "Flux closed: 1006"})] * reconnects
        outcome = rng.choice(outcomes)
        await store_call(database, f"CA{i:032d}", turns=turns, events=events,
                         started_at=started, outcome=outcome)  # fmt: skip
        made.append((started, outcome, latencies, cut, reconnects))

    def expected(group: list[tuple]) -> dict[str, object]:
        lat = sorted(ms for c in group for ms in c[2])

        def pct(q: float) -> str:
            if not lat:
                return "–"
            return str(bin_upper_ms(latency_bin(lat[max(1, math.ceil(q * len(lat))) - 1])))

        n = len(group)
        counts = Counter(c[1] for c in group)
        return {
            "calls": str(n),
            "outcomes": {LABELS[o]: str(counts.get(o, 0)) for o in outcomes if o in seen},
            "p50": pct(0.5),
            "p95": pct(0.95),
            "barge_in": f"{sum(1 for c in group if c[3]) / n * 100:.1f} %",
            "transfer": f"{counts[Outcome.TRANSFERRED] / n * 100:.1f} %",
            "failover": f"{counts[Outcome.FAILOVER] / n * 100:.1f} %",
            "reconnects": f"{sum(c[4] for c in group) / n:.2f}",
            "duration": "30 s",  # store_call ends every call after 30 s
        }

    seen = {c[1] for c in made}
    days: dict[str, list[tuple]] = {}
    for c in made:
        days.setdefault(datetime.fromtimestamp(c[0], NY).strftime("%a %d %b %Y"), []).append(c)

    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    await log_in(page, running_app.url, STAFF, "/dashboard")
    await page.goto(
        f"{running_app.url}/dashboard?from=2026-11-02&to=2026-11-05&tz=America/New_York"
    )
    await expect(page.locator("#total-calls")).to_have_text("30")
    head = [t.strip() for t in await page.locator("#periods thead th").all_inner_texts()]
    shown: dict[str, dict[str, object]] = {}
    for row in await page.locator("#periods tbody tr").all():
        values = [t.strip() for t in await row.locator("th, td").all_inner_texts()]
        cell = dict(zip(head, values, strict=True))
        label = values[0]
        shown[label] = {
            "calls": cell["Calls"],
            "outcomes": {LABELS[o]: cell[LABELS[o]] for o in outcomes if o in seen},
            "p50": cell["Reply p50"],
            "p95": cell["Reply p95"],
            "barge_in": cell["Barge-in"],
            "transfer": cell["Transfer"],
            "failover": cell["Failover"],
            "reconnects": cell["Reconnects / call"],
            "duration": cell["Mean duration"],
        }
    assert shown == {day: expected(group) for day, group in days.items()}
    assert sum(int(d["calls"]) for d in shown.values()) == 30
    # The hour-of-day table counts the same calls by their local hour.
    hours = [int(t) for t in await page.locator("#hours tbody td").all_inner_texts()]
    assert hours == [
        sum(1 for c in made if datetime.fromtimestamp(c[0], NY).hour == h) for h in range(24)
    ]
    await page.close()
