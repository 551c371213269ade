"""The staff UI in real headless Chromium (the system's, else Debian's `chromium` package
installed by the tests when they may: conftest's `chromium_path`), driven by Playwright.

A call is made with the `telephony call` command (the offline demo through the real app and
the fakes) into this test's database; the UI is then served on that database and used as
staff would: log in, search, open the call, click a turn and see the player seek. A screenshot
of the call page is kept in test-artifacts/ (or $TEST_ARTIFACTS_DIR).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from telephony.outcome import Outcome
from telephony.transcript import Turn
from tests import fast_clock
from tests.conftest import RunningApp
from tests.staff_helpers import ADMIN, STAFF, add_accounts, store_call
from tests.test_recording import recorded_transfer_call
from tests.test_staff_ui import audit_rows
from tests.test_waveform import tone, write_wav

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", REPO / "test-artifacts"))

DEMO_YAML = (REPO / "infra" / "numbers.example.yaml").read_text()
SETTLED_MS = 1250  # routes/static/staff.js: the later of a live event's two refreshes


def publish(app: RunningApp, kind: str, sid: str, /, **data: object) -> None:
    """What a call on this instance publishes (telephony/session/live_feed.py)."""
    app.app.state.services.live.publish(kind, sid, **data)


def _recording_yaml(tmp_path: Path) -> Path:
    """The demo's numbers file with recording switched on for the scripted front desk."""
    lines = DEMO_YAML.splitlines()
    start = lines.index("  front-desk:")
    at = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("recording:"))
    assert lines[at] == "    recording: false", "front-desk's recording line moved"
    lines[at] = "    recording: true"
    path = tmp_path / "demo-numbers.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def demo_call(tmp_path: Path, database: str) -> dict:
    """`telephony call` (default script: a question, a barge-in, goodbye) into our database."""
    env = {
        **os.environ,
        "TELEPHONY_DATABASE_URL": database,
        "TELEPHONY_RECORDINGS_DIR": str(tmp_path / "recordings"),
    }
    config = str(_recording_yaml(tmp_path))
    cmd = fast_clock.cli_argv(4, "call", "--json", "--config", config)  # on a 4x clock
    out = subprocess.run(
        [*cmd, "--number", "+15550001000"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module", autouse=True)
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


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


async def log_in(page: Page, base: str, who: tuple[str, str, str], target: str) -> None:
    await page.goto(base + target)
    await expect(page).to_have_url(f"{base}/login?next={target}")
    await page.get_by_label("Name").fill(who[0])
    await page.get_by_label("Password").fill(who[2])
    await page.get_by_role("button", name="Log in").click()


async def test_staff_search_open_call_and_seek(
    running_app: RunningApp, database: str, demo_call: dict, browser: Browser
) -> None:
    await add_accounts(database)
    sid = demo_call["call_sid"]
    assert demo_call["end_reason"] == "bot-hangup"  # `telephony call --json`, default script
    base = running_app.url
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await log_in(page, base, STAFF, "/calls")
    await expect(page).to_have_url(f"{base}/calls")
    await expect(page.locator("header .who")).to_contain_text("alice")

    # Full-text search finds the call by what the caller said.
    await page.get_by_label("Search transcripts").fill("opening hours")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#total")).to_have_text("1")
    row = page.locator(f'tr[data-sid="{sid}"]')
    await expect(row).to_contain_text("+15550001000")
    await page.get_by_label("Search transcripts").fill("zebra crossing")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#total")).to_have_text("0")
    await page.go_back()
    # The outcome, readable in the list, and a filter by it.
    await expect(row.locator("td").nth(4)).to_have_text("Bot hung up")
    await page.get_by_label("Search transcripts").fill("")
    await page.get_by_label("Outcome").select_option(label="Caller hung up")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#total")).to_have_text("0")
    await page.get_by_label("Outcome").select_option(label="Bot hung up")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#total")).to_have_text("1")
    await page.locator(f'tr[data-sid="{sid}"] a').click()

    # The call page: timeline with the barge-in and the unheard part struck through.
    await expect(page).to_have_url(f"{base}/calls/{sid}")
    timeline = page.locator("#timeline")
    await expect(timeline.locator("tr.turn.caller").first).to_contain_text("opening hours")
    await expect(timeline.locator("tr.event.barge-in")).to_have_count(1)
    interrupted = timeline.locator("tr.turn.bot.interrupted")
    await expect(interrupted.locator("span.heard")).to_contain_text("We are open")
    await expect(interrupted.locator("del.unheard")).to_contain_text("Friday")
    await expect(page.locator("#call-status")).to_contain_text("Bot hung up")
    # Post-call insights (the example's front desk asks for them; the demo waits for the fake's
    # /v1/read): the summary and a topic that opens the list filtered by it.
    await expect(page.locator("#insight-summary")).to_contain_text("opening hours")
    await expect(page.locator("#insight-sentiment")).to_be_visible()
    topic = page.locator("#insight-topics a").first
    await expect(topic).to_be_visible()
    await topic.click()
    await expect(page).to_have_url(re.compile(r"/calls\?topic="))
    await expect(page.locator("#total")).to_have_text("1")
    # The list shows the call's summary under its row's first cell.
    await expect(page.locator(f'tr[data-sid="{sid}"]')).to_contain_text("The caller said")
    await page.go_back()

    # Clicking a turn loads the recording (nothing is preloaded) and seeks to the turn's start.
    player = page.locator("#player")
    assert await player.evaluate("a => a.readyState") == 0
    goodbye = timeline.locator("tr.turn.caller", has_text="goodbye")
    start_ms = int(await goodbye.get_attribute("data-ms") or 0)
    await goodbye.click()
    await expect(goodbye).to_have_class("turn caller current")
    await page.wait_for_function(  # a function: a bare expression is eval'd, which CSP refuses
        "() => document.getElementById('player').readyState >= 1", timeout=10_000
    )
    duration = await player.evaluate("a => a.duration")
    assert 0 < start_ms / 1000 < duration
    position = await player.evaluate("a => a.currentTime")
    assert abs(position - start_ms / 1000) < 0.25, (position, start_ms)
    first = timeline.locator("tr.turn.bot").first
    await first.click()
    position = await player.evaluate("a => a.currentTime")
    first_ms = int(await first.get_attribute("data-ms") or 0)
    assert abs(position - first_ms / 1000) < 0.25

    await page.screenshot(path=str(ARTIFACTS / "staff-call-page.png"), full_page=True)
    assert not errors, errors

    # The staff user is refused the admin page, in the browser too.
    await page.goto(base + "/admin")
    await expect(page.get_by_role("alert")).to_have_text("Admins only.")
    await page.close()


async def test_anonymous_browser_sees_only_the_login(
    running_app: RunningApp, database: str, browser: Browser
) -> None:
    sid = "CA" + "9" * 32
    await store_call(database, sid, turns=[Turn(0, "caller", "my secret complaint", 0, 900)])
    page = await browser.new_page()
    for target in ("/calls", f"/calls/{sid}", "/admin"):
        response = await page.goto(running_app.url + target)
        assert response is not None
        await expect(page).to_have_url(f"{running_app.url}/login?next={target}")
        await expect(page.get_by_role("button", name="Log in")).to_be_visible()
        assert "secret complaint" not in await page.content()
    # A wrong password keeps the visitor on the login form with an error.
    await page.get_by_label("Name").fill(ADMIN[0])
    await page.get_by_label("Password").fill("wrong-password-here")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    await page.close()


async def test_live_call_updates_without_reload(
    running_app: RunningApp, database: str, browser: Browser
) -> None:
    await add_accounts(database)
    sid = "CA" + "7" * 32
    await store_call(
        database, sid, turns=[Turn(0, "caller", "hello is anyone there", 0, 900)], ended=False
    )
    page = await browser.new_page()
    await log_in(page, running_app.url, ADMIN, "/calls")
    row = page.locator(f'tr[data-sid="{sid}"]')
    await expect(row).to_contain_text("in progress")
    await page.evaluate("window.__marker = 1")  # survives only if the page is not reloaded
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # stream open
    await store_call(
        database,
        sid,
        turns=[
            Turn(0, "caller", "hello is anyone there", 0, 900),
            Turn(1, "bot", "Yes, how can I help?", 1000, 2000, heard="Yes, how can I help?"),
        ],
        ended=True,
    )
    publish(running_app, "call-ended", sid, outcome="caller-hangup", duration_ms=2000)
    await expect(row).to_contain_text("Caller hung up", timeout=10_000)
    await expect(row.locator("td").nth(6)).to_have_text("2")
    assert await page.evaluate("window.__marker") == 1
    await page.close()


async def rows_requests(page: Page) -> list[str]:
    """URLs of the calls list's refreshes, appended as the page makes them."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/calls/rows" in r.url else None)
    return seen


async def test_calls_list_refreshes_on_live_events_only(
    running_app: RunningApp, database: str, browser: Browser
) -> None:
    """Nothing happening: no request at all (no polling). A live call's event: a refresh that
    updates its row but leaves keyboard focus and a text selection where the user put them. A
    call starting: its row appears."""
    await add_accounts(database)
    ended, live, new = "CA" + "5" * 32, "CA" + "6" * 32, "CA" + "8" * 32
    await store_call(database, ended, turns=[Turn(0, "caller", "all done", 0, 900)])
    page = await browser.new_page()
    refreshes = await rows_requests(page)
    await log_in(page, running_app.url, STAFF, "/calls")
    await expect(page.locator(f'tr[data-sid="{ended}"]')).to_be_visible()
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # stream open
    publish(running_app, "turn", "CA" + "0" * 32, idx=3, role="caller")  # a call not listed
    await page.wait_for_timeout(2 * SETTLED_MS)
    assert refreshes == []

    hello = [Turn(0, "caller", "hello is anyone there", 0, 900)]
    # One start time for both writes (store_call's default is "a minute ago", read each time,
    # which would change the focused link's cell when a second ticks over between them).
    live_call = {"ended": False, "from_number": "+15551230000", "started_at": time.time() - 60}
    await store_call(database, live, turns=hello, **live_call)
    await page.reload()
    row = page.locator(f'tr[data-sid="{live}"]')
    await expect(row).to_contain_text("in progress")
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # stream open
    # Keyboard focus on the live call's link; the caller's number selected as if to copy it.
    link = row.locator("a")
    await link.focus()
    select = "td => getSelection().selectAllChildren(td)"
    await row.locator("td").nth(1).evaluate(select)
    assert await link.evaluate("a => document.activeElement === a")
    turns = [*hello, Turn(1, "bot", "Yes, how can I help?", 1000, 2000, heard="Yes")]
    await store_call(database, live, turns=turns, **live_call)
    publish(running_app, "turn", live, idx=1, role="bot", text="Yes")
    await expect(row.locator("td").nth(6)).to_have_text("2", timeout=10_000)  # refreshed
    for n in range(2):  # that refresh, then one that changed nothing: neither moved them
        assert await link.evaluate("a => document.activeElement === a"), "focus moved"
        assert await page.evaluate("getSelection().toString()") == "+15551230000"
        if n == 0:
            seen = len(refreshes)
            publish(running_app, "event", live, kind="barge-in", ms=1500)
            for _ in range(100):
                await page.wait_for_timeout(50)
                if len(refreshes) > seen:
                    break
            await page.wait_for_timeout(SETTLED_MS + 300)  # both refreshes applied
    assert len(refreshes) >= 2

    await store_call(database, new, turns=hello, ended=False)
    publish(running_app, "call-started", new, number="+15550001000", profile="support")
    await expect(page.locator(f'tr[data-sid="{new}"]')).to_be_visible(timeout=10_000)
    await page.close()


@pytest.mark.clock(4)  # the recorded call (the browser's own waits are real time)
async def test_transferred_call_plays_to_its_last_turn_and_audits_only_playing(
    running_app: RunningApp, database: str, browser: Browser, tmp_path: Path
) -> None:
    """A recorded call a bot handed over to a person: opening its page fetches no audio (so
    no `call.recording` audit row); the player's hint names the channels; clicking the last
    turn (the person's, after the handover) seeks inside the audio and plays it."""
    result = await recorded_transfer_call(tmp_path)
    sid = result.caller.call_sid
    await add_accounts(database)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await log_in(page, running_app.url, STAFF, f"/calls/{sid}")
    await expect(page.locator("tr.event.handover")).to_have_count(1)
    hint = page.locator("#channels")
    await expect(hint).to_contain_text("Left: caller")
    await expect(hint).to_contain_text("right: bot, then from the handover at")
    await expect(hint).to_contain_text("the agent (the person who took the call)")

    await page.wait_for_timeout(1_000)  # time enough for any preload
    recordings = [r for r in await audit_rows(database) if r["action"] == "call.recording"]
    assert recordings == []

    last = page.locator("#timeline tr.turn").last
    await expect(last).to_have_class("turn staff")
    start_s = int(await last.get_attribute("data-ms") or 0) / 1000
    await last.click()
    player = page.locator("#player")
    await page.wait_for_function(
        "(t) => { const a = document.getElementById('player');"
        " return a.readyState >= 1 && !a.paused && a.currentTime > t + 0.2; }",
        arg=start_s,
        timeout=10_000,
    )
    duration, position = await player.evaluate("a => [a.duration, a.currentTime]")
    assert start_s < position < duration, (start_s, position, duration)
    assert not await player.evaluate("a => a.ended")
    recordings = [r for r in await audit_rows(database) if r["action"] == "call.recording"]
    assert [(r["user_name"], r["target"]) for r in recordings] == [(STAFF[0], sid)]
    assert not errors, errors
    await page.close()


async def test_live_call_page_timeline_follows_the_call(
    running_app: RunningApp, database: str, browser: Browser
) -> None:
    """The call page of a live call: new turns appear in place (only changed rows are touched,
    so a focused row keeps focus), and the page reloads once the call has ended."""
    await add_accounts(database)
    sid = "CA" + "3" * 32
    first = [Turn(0, "caller", "hello is anyone there", 0, 900)]
    await store_call(database, sid, turns=first, ended=False)
    page = await browser.new_page()
    await log_in(page, running_app.url, STAFF, f"/calls/{sid}")
    timeline = page.locator("#timeline")
    await expect(timeline.locator("tr.turn")).to_have_count(1)
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # stream open
    row = timeline.locator("tr.turn").first
    await row.focus()
    await page.evaluate("window.__marker = 1")
    turns = [*first, Turn(1, "bot", "Yes, how can I help?", 1000, 2000, heard="Yes")]
    await store_call(database, sid, turns=turns, ended=False)
    publish(running_app, "turn", "CA" + "4" * 32, idx=1, role="bot")  # another call's: ignored
    publish(running_app, "turn", sid, idx=1, role="bot", text="Yes")
    await expect(timeline.locator("tr.turn.bot")).to_contain_text("how can I help", timeout=10_000)
    assert await row.evaluate("r => document.activeElement === r"), "focus moved"
    assert await page.evaluate("window.__marker") == 1  # updated in place, not reloaded
    await store_call(database, sid, turns=turns, ended=True)
    publish(running_app, "call-ended", sid, outcome="caller-hangup", duration_ms=2000)
    await expect(page.locator("#call-status")).to_contain_text("Caller hung up", timeout=10_000)
    await page.close()


async def test_the_calls_list_downloads_its_filter_as_csv(
    running_app: RunningApp, database: str, browser: Browser, tmp_path: Path
) -> None:
    await add_accounts(database)
    turns = [Turn(0, "caller", "hello", 0, 400)]
    await store_call(database, "CA" + "8" * 32, turns=turns, outcome=Outcome.FAILOVER)
    await store_call(database, "CA" + "9" * 32, turns=turns)
    page = await browser.new_page()
    await log_in(page, running_app.url, STAFF, "/calls")
    await page.goto(f"{running_app.url}/calls?outcome=failover")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download all as CSV").click()
    download = await info.value
    assert download.suggested_filename.startswith("calls-")
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    lines = saved.read_text().splitlines()
    assert lines[0].startswith("call_sid,started_utc,")
    assert [line.split(",")[0] for line in lines[1:]] == ["CA" + "8" * 32]
    await page.close()


@pytest.mark.clock(4)  # the recorded call (the browser's own waits are real time)
async def test_the_playing_turn_follows_the_recording_and_the_player_stays_in_view(
    running_app: RunningApp, database: str, browser: Browser, tmp_path: Path
) -> None:
    result = await recorded_transfer_call(tmp_path)
    sid = result.caller.call_sid
    await add_accounts(database)
    page = await browser.new_page(viewport={"width": 1000, "height": 420})  # the page scrolls
    await log_in(page, running_app.url, STAFF, f"/calls/{sid}")
    turns = page.locator("#timeline tr.turn")
    assert await turns.count() >= 3
    second = turns.nth(1)
    second_ms = int(await second.get_attribute("data-ms") or 0)
    await turns.nth(0).click()  # plays from the first turn: that one is current
    await expect(page.locator("#timeline tr.current")).to_have_count(1)
    # From just before the second turn, playback carries the mark onto it by itself.
    await page.evaluate(
        "(t) => { const a = document.getElementById('player'); a.currentTime = t; a.play(); }",
        max(0.0, second_ms / 1000 - 0.3),
    )
    await expect(second).to_have_attribute("aria-current", "true", timeout=5_000)
    await expect(page.locator("#timeline tr.current")).to_have_count(1)
    await page.mouse.wheel(0, 3000)
    await page.wait_for_timeout(200)
    box = await page.locator("#player").bounding_box()
    assert box is not None and 0 <= box["y"] < 60, box  # still at the top of the view
    await page.close()


async def test_the_waveform_draws_both_channels_marks_turns_and_seeks(
    running_app: RunningApp, database: str, browser: Browser, tmp_path: Path
) -> None:
    """A 4 s recording: the caller speaks in its first half, the bot in its second. The
    canvas shows the caller above the line on the left, the bot below it on the right, a tick
    at each turn's start; a click three quarters along plays from 3 s."""
    await add_accounts(database)
    sid = "CA" + "4" * 32
    wav = tmp_path / f"{sid}.wav"
    write_wav(wav, tone(2, 20_000) + [0] * 16_000, [0] * 16_000 + tone(2, 20_000))
    turns = [Turn(0, "caller", "hello", 0, 1900), Turn(1, "bot", "Hi", 2000, 3900, heard="Hi")]
    await store_call(database, sid, turns=turns, recording_path=str(wav))
    page = await browser.new_page(viewport={"width": 1000, "height": 700})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await log_in(page, running_app.url, STAFF, f"/calls/{sid}")
    canvas = page.locator("#waveform")
    await expect(canvas).to_be_visible()
    # Which colour is drawn where: [caller above the line, heard below] per quarter.
    drawn = await canvas.evaluate(
        """c => {
          const g = c.getContext("2d"), w = c.width, h = c.height;
          const ink = (x0, x1, y0, y1) => {
            const d = g.getImageData(x0, y0, x1 - x0, y1 - y0).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
          };
          const q = Math.floor(w / 4), mid = Math.floor(h / 2);
          const sides = (x0, x1) => [ink(x0, x1, h * 0.1, mid - 2), ink(x0, x1, mid + 2, h * 0.9)];
          return {
            first: sides(q / 2, q * 1.5),
            last: sides(q * 2.5, q * 3.5),
            tickCaller: ink(0, 3, 0, 3),
            tickBot: ink(Math.floor(w / 2), Math.floor(w / 2) + 3, h - 3, h),
          };
        }"""
    )
    assert drawn["first"][0] > 0 and drawn["first"][1] == 0, drawn
    assert drawn["last"][0] == 0 and drawn["last"][1] > 0, drawn
    assert drawn["tickCaller"] > 0 and drawn["tickBot"] > 0, drawn
    box = await canvas.bounding_box()
    assert box is not None
    await page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    await page.wait_for_function(
        "() => { const a = document.getElementById('player'); return a.currentTime >= 2.9; }",
        timeout=10_000,
    )
    # Playing the second half marks the bot's turn as the current one.
    await expect(page.locator("#timeline tr.turn.bot")).to_have_attribute("aria-current", "true")
    await page.screenshot(path=str(ARTIFACTS / "call-page-waveform.png"))
    assert not problems, problems
    await page.close()
