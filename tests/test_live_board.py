"""The live wallboard (/live): every call in progress from the shared database (SQLite and
PostgreSQL), and in Chromium each card kept current by live events — who is speaking and what,
thinking, the last turns and reply latency, transfers, alerts — and calls appearing and going."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from telephony.outcome import Outcome
from telephony.store.engine import make_engine
from telephony.store.live_board import live_board
from telephony.store.migrate import upgrade
from telephony.transcript import Event, Turn
from tests.conftest import RunningApp
from tests.pg_server import PgServer, fresh_database
from tests.staff_helpers import STAFF, add_accounts, store_call
from tests.test_staff_browser import browser, log_in, publish  # noqa: F401

LIVE, OTHER, DONE = "CA" + "a" * 32, "CA" + "b" * 32, "CA" + "c" * 32
TURNS = [
    Turn(0, "bot", "Thanks for calling.", 0, 900, heard="Thanks for calling."),
    Turn(1, "caller", "I want to change my booking", 1000, 2500),
    Turn(2, "bot", "Sure, which day?", 2900, 3800, heard="Sure, which day?", latency_ms=380),
]


async def seed(url: str) -> None:
    await upgrade(url)
    await store_call(url, LIVE, turns=TURNS, ended=False, started_at=time.time() - 95)
    transfer = [Event(4000, "transfer", {"to": "+15557770000"})]
    await store_call(url, OTHER, turns=TURNS[:2], events=transfer, ended=False)
    await store_call(url, DONE, turns=TURNS, outcome=Outcome.TRANSFERRED)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, database: str) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield database
        return
    server: PgServer = request.getfixturevalue("postgres_server")
    async with fresh_database(server, "board") as url:
        yield url


async def test_the_board_lists_calls_in_progress_with_their_last_turns(db_url: str) -> None:
    await seed(db_url)
    engine = make_engine(db_url)
    try:
        board = await live_board(engine, since=time.time() - 3600)
    finally:
        await engine.dispose()
    calls = {c.sid: c for c in board.calls}
    assert set(calls) == {LIVE, OTHER}  # the ended call is not on the board
    live = calls[LIVE]
    assert live.last_turns == [
        ("caller", "I want to change my booking"),
        ("bot", "Sure, which day?"),
    ]
    assert live.last_latency_ms == 380 and not live.transferring
    assert calls[OTHER].transferring and board.with_person == 1
    assert board.outcomes == {"transferred": 1}
    assert [c.sid for c in board.calls] == [LIVE, OTHER]  # the oldest first


# --- in Chromium ------------------------------------------------------------------------------


async def test_the_wallboard_follows_each_call_as_it_happens(
    running_app: RunningApp,
    database: str,
    browser: Browser,  # noqa: F811
) -> None:
    await add_accounts(database)
    await seed(database)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await log_in(page, running_app.url, STAFF, "/live")
    card = page.locator(f'li.live-call[data-sid="{LIVE}"]')
    await expect(card).to_contain_text("Sure, which day?")
    await expect(card.locator(".latency")).to_have_text("Last reply after 380 ms")
    await expect(page.locator("#live-count")).to_have_text("2")
    await expect(page.locator("#with-person")).to_have_text("1")
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # stream open
    await expect(card.locator(".elapsed")).to_have_text(re.compile(r"^1:3\d$"))  # 95 s ago

    # The caller speaks: their words so far; then the bot thinks, speaks, and listens again.
    publish(running_app, "interim", LIVE, role="caller", text="on the fifth")
    await expect(card.locator(".state")).to_have_text("Caller speaking")
    await expect(card.locator(".interim")).to_have_text("“on the fifth…”")
    publish(running_app, "turn", LIVE, idx=3, role="caller", text="on the fifth please")
    await expect(card.locator(".state")).to_have_text("Thinking")
    await expect(card.locator(".last-turns li")).to_have_count(2)
    await expect(card.locator(".last-turns li").last).to_have_text("Caller: on the fifth please")
    publish(running_app, "opened", LIVE, idx=4, role="bot")
    await expect(card.locator(".state")).to_have_text("Bot speaking")
    publish(running_app, "turn", LIVE, idx=4, role="bot", text="Done.", latency_ms=412)
    await expect(card.locator(".state")).to_have_text("Listening")
    await expect(card.locator(".latency")).to_have_text("Last reply after 412 ms")
    # A backchannel over the bot is not something to think about.
    publish(running_app, "turn", LIVE, idx=5, role="caller", text="okay", backchannel=True)
    await expect(card.locator(".last-turns li").last).to_have_text("Caller: okay")
    await expect(card.locator(".state")).to_have_text("Listening")
    publish(running_app, "reconnect", LIVE, ms=6000, link="flux-connection")
    await expect(card.locator(".alerts")).to_contain_text("Deepgram reconnecting")
    publish(running_app, "event", LIVE, kind="transfer", ms=7000)
    await expect(card.locator(".state")).to_have_text("Transferring to a person")
    await expect(page.locator("#with-person")).to_have_text("2")

    # A call starting elsewhere appears; one ending goes.
    new = "CA" + "d" * 32
    await store_call(database, new, turns=TURNS[:1], ended=False)
    publish(running_app, "call-started", new, number="+15550001000", profile="support")
    await expect(page.locator(f'li.live-call[data-sid="{new}"]')).to_be_visible()
    await store_call(database, OTHER, turns=TURNS[:2], outcome=Outcome.CALLER_HANGUP)
    publish(running_app, "call-ended", OTHER, outcome="caller-hangup", duration_ms=5000)
    await expect(page.locator(f'li.live-call[data-sid="{OTHER}"]')).to_have_count(0)
    await expect(page.locator("#live-count")).to_have_text("2")
    # What events told the live card survives the refetch.
    await expect(card.locator(".state")).to_have_text("Transferring to a person")
    assert not errors, errors
    await page.close()
