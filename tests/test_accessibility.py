"""Every staff page passes axe-core's WCAG 2.1 A and AA rules and fits a 390 px wide phone
without the page scrolling sideways (wide tables scroll inside their own box), in real
headless Chromium.

axe-core is vendored from the npm registry (routes/static/vendor/axe-core, with its licence)
and injected by the test; no page loads it.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, async_playwright, expect

from telephony.outcome import Outcome
from telephony.store.engine import make_engine
from telephony.store.insights import Insights, save_done
from telephony.store.qa_notes import add_note
from telephony.store.qa_tags import add_tag
from telephony.transcript import Event, Turn
from tests.conftest import NUMBERS_YAML, RunningApp
from tests.staff_helpers import ADMIN, STAFF, add_accounts, store_call
from tests.test_qa_pages import QA_YAML
from tests.test_waveform import tone, write_wav

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", REPO / "test-artifacts"))
AXE = (REPO / "routes" / "static" / "vendor" / "axe-core" / "axe.min.js").read_text()
WIDTHS = (1280, 390)
SID = "CA" + "2" * 32

STAFF_PAGES = [
    "/calls",
    "/calls?q=hello",
    "/calls?from=not-a-date",  # the form with its error shown
    f"/calls/{SID}",
    "/dashboard",
    "/live",
    "/calls/CAnothere",  # the error page
]
ADMIN_PAGES = ["/admin", "/admin/audit", "/admin/users", "/review", f"/calls/{SID}"]  # QA forms


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            await browser.close()


async def seed(database: str, tmp_path: Path) -> None:
    """Calls with every kind of row the pages draw: turns heard in part, a barge-in, an
    unanswered question, events, a warm transfer, a recording, several outcomes over two days."""
    await add_accounts(database)
    wav = tmp_path / f"{SID}.wav"
    write_wav(wav, tone(1, 8_000) + [0] * 8_000, [0] * 8_000 + tone(1, 8_000))
    turns = [
        Turn(0, "caller", "hello, what are your opening hours?", 0, 900),
        Turn(
            1,
            "bot",
            "We open at nine. Anything else?",
            1000,
            1900,
            heard="We open at nine.",
            latency_ms=420,
            interrupted=True,
            interrupted_at_ms=1500,
        ),
        Turn(2, "caller", "can I pay with card 4111 1111 1111 1111?", 2000, 2900),
    ]
    events = [
        Event(1200, "reconnect", {"endpoint": "flux", "gap_ms": 22, "replayed_ms": 1000}),
        # A warm transfer: the list's "with a person" mark and the call page's transfer note.
        Event(2900, "transfer", {"to": "+15557770000"}),
        Event(
            2900,
            "whisper",
            {"text": "Transferring a caller about card payments.", "source": "template"},
        ),
    ]
    await store_call(database, SID, turns=turns, events=events, recording_path=str(wav))
    day = calendar.timegm((*time.gmtime(time.time() - 86_400)[:3], 12, 0, 0, 0, 0, 0))
    engine = make_engine(database)
    try:  # the QA panel and the insights with something in them
        found = Insights(
            summary="The caller asked about opening hours and paying by card.",
            sentiment="neutral",
            sentiment_score=0.1,
            topics=[{"label": "Opening hours", "confidence": 0.9}],
            intents=[{"label": "Ask about payment", "confidence": 0.8}],
            turn_sentiments=[{"idx": 0, "sentiment": "positive", "score": 0.4}],
        )
        await save_done(engine, SID, found, attempts=1)
        await add_tag(engine, SID, "follow-up", ADMIN[0], ["follow-up"])
        await add_note(engine, SID, STAFF[0], "Check the card question.", turn_idx=2)
    finally:
        await engine.dispose()
    for i, outcome in enumerate((Outcome.CALLER_HANGUP, Outcome.FAILOVER, Outcome.TRANSFERRED)):
        await store_call(database, f"CA{i:032d}", turns=turns[:2], outcome=outcome,
                         started_at=day + i * 3600)  # fmt: skip
    # A call in progress, for the live wallboard's card.
    await store_call(database, "CA" + "L" * 32, turns=turns[:2], ended=False)


QUIET_S = 0.1
_IN_FLIGHT: weakref.WeakKeyDictionary[Page, set[Request]] = weakref.WeakKeyDictionary()


def track_requests(page: Page) -> None:
    """Follow the page's requests in flight, for `settled`."""
    flying: set[Request] = set()
    _IN_FLIGHT[page] = flying

    def start(request: Request) -> None:
        if request.resource_type != "eventsource" and not request.url.endswith("/favicon.ico"):
            flying.add(request)

    def end(request: Request) -> None:
        flying.discard(request)

    page.on("request", start)
    page.on("requestfinished", end)
    page.on("requestfailed", end)


async def settled(page: Page) -> None:
    """Loaded, and no request in flight for QUIET_S: what Playwright's "networkidle" waits
    for (an event stream or the favicon aside, as there), with 100 ms of quiet instead of
    500. The pages fetch while loading (the call page's waveform) and later only on a poll or
    a live event, neither of which "networkidle" would wait for either; nothing is drawn on
    a timer."""
    await page.wait_for_load_state("load")
    flying = _IN_FLIGHT[page]
    quiet_since = deadline = time.monotonic()
    deadline += 30
    while time.monotonic() - quiet_since < QUIET_S:
        await asyncio.sleep(0.02)
        if flying:
            quiet_since = time.monotonic()
            assert quiet_since < deadline, f"requests never finished: {[r.url for r in flying]}"


async def log_in(page: Page, base: str, who: tuple[str, str, str]) -> None:
    track_requests(page)
    await page.goto(base + "/login")
    await check(page, "/login")
    await page.get_by_label("Name").fill(who[0])
    await page.get_by_label("Password").fill(who[2])
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(base + "/calls")


async def check(page: Page, path: str) -> list[str]:
    """axe's WCAG A/AA violations and any sideways overflow of the page, as readable lines."""
    await settled(page)
    await page.evaluate(AXE)  # through the DevTools protocol: the page's CSP does not apply
    result: dict[str, Any] = await page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}, resultTypes: ['violations']})"
    )
    problems = [
        f"{path}: {v['id']} ({v['impact']}): {v['help']} — "
        + "; ".join(n["target"][0] if n["target"] else "?" for n in v["nodes"][:3])
        for v in result["violations"]
    ]
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    if overflow > 0:
        wide = await page.evaluate(
            """() => Array.from(document.querySelectorAll('body *'))
                .filter(e => e.getBoundingClientRect().right > innerWidth + 1)
                .slice(0, 3).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                  + (e.className && typeof e.className === 'string' ? '.' + e.className : ''))"""
        )
        problems.append(f"{path}: the page scrolls sideways by {overflow} px ({wide})")
    return problems


@pytest.fixture
def numbers_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS_YAML + QA_YAML)
    return path


@pytest.fixture(scope="module", autouse=True)
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.mark.parametrize("width", WIDTHS)
async def test_every_page_passes_axe_and_fits_the_width(
    running_app: RunningApp, database: str, browser: Browser, tmp_path: Path, width: int
) -> None:
    await seed(database, tmp_path)

    async def visit(who: tuple[str, str, str], pages: list[str]) -> list[str]:
        problems: list[str] = []
        context = await browser.new_context(viewport={"width": width, "height": 800})
        page = await context.new_page()
        await log_in(page, running_app.url, who)
        for path in pages:
            await page.goto(running_app.url + path)
            problems += await check(page, path)
            if width < 600 and path in ("/calls", f"/calls/{SID}", "/dashboard"):
                name = "phone-" + (path.strip("/").split("/")[0] + ("-call" if SID in path else ""))
                await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        await context.close()
        return problems

    # Two sessions side by side, each in its own context (axe runs in each page's renderer).
    found = await asyncio.gather(visit(STAFF, STAFF_PAGES), visit(ADMIN, ADMIN_PAGES))
    problems = [line for lines in found for line in lines]
    assert not problems, "\n".join(problems)


async def test_a_phone_sees_the_key_columns_and_folded_filters_and_a_skip_link(
    running_app: RunningApp, database: str, browser: Browser, tmp_path: Path
) -> None:
    await seed(database, tmp_path)
    context = await browser.new_context(viewport={"width": 390, "height": 800})
    page = await context.new_page()
    await log_in(page, running_app.url, STAFF)
    # Started, From, Status, Duration: on screen without scrolling anything sideways.
    headers = page.locator("table.call-list thead th")
    visible = [await h.inner_text() for h in await headers.all() if await h.is_visible()]
    assert visible == ["Started", "From", "Status", "Duration"], visible
    for cell in await headers.all():
        box = await cell.bounding_box()
        assert box is None or box["x"] + box["width"] <= 390, (await cell.inner_text(), box)
    # The filters are folded until opened; the search box stays out.
    filters = page.locator("#more-filters")
    assert not await filters.evaluate("d => d.open")
    await expect(page.get_by_label("Search transcripts")).to_be_visible()
    await expect(page.get_by_label("Outcome")).to_be_hidden()
    await page.get_by_text("Filters", exact=True).click()
    await expect(page.get_by_label("Outcome")).to_be_visible()
    # A filter in use keeps them open.
    await page.goto(running_app.url + "/calls?outcome=failover")
    assert await filters.evaluate("d => d.open")
    # The first Tab reaches the skip link; it takes the keyboard past the header.
    await page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    await expect(skip).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()
    await context.close()

    wide = await browser.new_page(viewport={"width": 1280, "height": 800})
    await log_in(wide, running_app.url, STAFF)
    assert await wide.locator("#more-filters").evaluate("d => d.open")
    await expect(wide.locator("table.call-list thead th").nth(2)).to_be_visible()  # To
    await wide.close()
