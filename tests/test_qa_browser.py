"""QA in real headless Chromium (as tests/test_staff_browser.py): a supervisor tags a flagged
call, writes a note on one of its turns, scores it and marks it reviewed, all with the page's
plain forms; the calls list's QA filters then find it and the review queue no longer lists it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from telephony.store.engine import make_engine
from telephony.store.users import add_user
from telephony.transcript import Turn
from tests.conftest import NUMBERS_YAML, RunningApp
from tests.staff_helpers import store_call
from tests.test_qa_pages import QA_YAML, SUPERVISOR
from tests.test_staff_browser import ARTIFACTS, browser, log_in  # noqa: F401  (the fixture)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

SID = "CA" + "8" * 32
OTHER = "CA" + "9" * 32


@pytest.fixture
def numbers_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS_YAML + QA_YAML)
    return path


async def test_a_supervisor_reviews_a_call_and_the_list_finds_it(
    running_app: RunningApp,
    database: str,
    browser: Browser,  # noqa: F811
) -> None:
    engine = make_engine(database)
    try:
        await add_user(engine, *SUPERVISOR)
    finally:
        await engine.dispose()
    turns = [
        Turn(0, "caller", "Can I talk to a real person", 0, 900),
        Turn(1, "bot", "Let me see what I can do.", 1000, 2500, heard="Let me see what I can do.",
             latency_ms=420),
        Turn(2, "caller", "Please, an operator", 3000, 4000),
    ]  # fmt: skip
    await store_call(database, SID, turns=turns, started_at=1_800_000_000.0)
    await store_call(database, OTHER, turns=turns, started_at=1_800_000_060.0)
    base = running_app.url
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # The queue shows both calls and why; open the older one.
    await log_in(page, base, SUPERVISOR, "/review")
    queue = page.locator("#queue")
    await expect(page.locator("#total")).to_have_text("2")
    await expect(queue.locator(f'tr[data-sid="{SID}"]')).to_contain_text("Asked for a person")
    await expect(queue.locator(f'tr[data-sid="{SID}"]')).to_contain_text("Unanswered question")
    await queue.locator(f'tr[data-sid="{SID}"] a').click()
    await expect(page).to_have_url(f"{base}/calls/{SID}#qa")
    panel = page.locator("#qa")
    await expect(page.locator("#qa-flags")).to_contain_text("real person")

    # A tag from the configured set.
    await panel.get_by_label("Tag", exact=True).select_option("follow-up")
    await panel.get_by_role("button", name="Add tag").click()
    await expect(panel.locator("[role=status]")).to_have_text("tag follow-up added.")
    await expect(page.locator("#qa-tags")).to_contain_text("follow-up")

    # A note on the bot's turn, from the small control under it.
    turn = page.locator("#turn-1")
    await turn.get_by_text("note", exact=True).click()
    await turn.get_by_label("Note on turn 1").fill("Should have offered a transfer here.")
    await turn.get_by_role("button", name="Add note").click()
    await expect(page).to_have_url(f"{base}/calls/{SID}?qa_done=note+added#turn-1")
    await expect(page.locator("#turn-1 .qa-note")).to_contain_text("offered a transfer")
    await expect(page.locator("#turn-1 .qa-note")).to_contain_text("sam")

    # The scorecard: weights shown, the score and the verdict computed on saving.
    card = page.get_by_role("group", name="Scorecard basic (pass mark 70)")
    await expect(card).to_contain_text("(weight 3)")
    await card.get_by_label("Greeted the caller").check()
    await card.get_by_role("button", name="Save score").click()
    await expect(page.locator("#qa-scores")).to_contain_text("25 / 100")
    await expect(page.locator("#qa-scores")).to_contain_text("FAIL")
    await card.get_by_label("Greeted the caller").uncheck()  # the form keeps the answers
    await card.get_by_label("Solved the problem").check()
    await card.get_by_role("button", name="Save score").click()
    await expect(page.locator("#qa-scores tbody tr")).to_have_count(1)  # replaced, not added
    await expect(page.locator("#qa-scores")).to_contain_text("75 / 100")
    await expect(page.locator("#qa-scores")).to_contain_text("PASS")

    await panel.get_by_role("button", name="Mark reviewed").click()
    await expect(page.locator("#qa-reviewed")).to_contain_text("Reviewed by sam")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "qa-call-page.png"), full_page=True)

    # The list: tag, result, scorer and "not yet reviewed" filters.
    await page.goto(base + "/calls")
    await page.get_by_label("Tag", exact=True).select_option("follow-up")
    await page.get_by_label("Result").select_option("pass")
    await page.get_by_label("Scorer").fill("sam")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#total")).to_have_text("1")
    row = page.locator(f'tr[data-sid="{SID}"]')
    await expect(row.locator(".qa-tags")).to_contain_text("follow-up")
    await expect(row.locator(".qa-score")).to_contain_text("75 pass")
    await page.goto(base + "/calls")
    await page.get_by_label("Not yet reviewed").check()
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#total")).to_have_text("1")
    await expect(page.locator(f'tr[data-sid="{OTHER}"]')).to_have_count(1)

    await page.goto(base + "/review")
    await expect(page.locator("#total")).to_have_text("1")
    await expect(page.locator(f'#queue tr[data-sid="{SID}"]')).to_have_count(0)
    assert errors == []


async def test_a_note_on_a_live_calls_turn_survives_the_timelines_refresh(
    running_app: RunningApp,
    database: str,
    browser: Browser,  # noqa: F811
) -> None:
    engine = make_engine(database)
    try:
        await add_user(engine, *SUPERVISOR)
    finally:
        await engine.dispose()
    live = [Turn(0, "caller", "hello?", 0, 900)]
    await store_call(database, SID, turns=live, ended=False)
    base = running_app.url
    page = await browser.new_page()
    await log_in(page, base, SUPERVISOR, f"/calls/{SID}")
    await expect(page.locator("#timeline")).to_have_attribute("data-poll", f"/calls/{SID}/timeline")
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # stream open
    turn = page.locator("#turn-0")
    await turn.get_by_text("note", exact=True).click()
    await turn.get_by_label("Note on turn 0").fill("Caller sounds confused.")
    async with page.expect_response(f"{base}/calls/{SID}/timeline"):  # one refresh
        # What the call publishes as its next turn closes (telephony/session/live_feed.py)
        running_app.app.state.services.live.publish("turn", SID, idx=1, role="bot")
    await page.wait_for_timeout(200)  # the refresh applied
    await expect(turn.get_by_label("Note on turn 0")).to_have_value("Caller sounds confused.")
    await turn.get_by_role("button", name="Add note").click()
    await expect(page.locator("#turn-0 .qa-note")).to_contain_text("Caller sounds confused.")
