"""Transfers in the staff UI: the calls list marks a transferred call and keeps one just handed
to a person in its live view; the call page says to whom and what they heard, above the bot's
conversation so far. The last test makes a real warm transfer and reads it back."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from telephony.demo import run_offline_call
from telephony.outcome import Outcome
from telephony.sim.deepgram_server import Script
from telephony.transcript import Event, Turn
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts, login, store_call
from tests.test_warm_transfer import MS_PER_CHAR, NUMBERS, REFUND_THEN_HUMAN

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

JUST = "CA" + "1" * 32  # transferred half a minute ago, with a whisper
OLD = "CA" + "2" * 32  # transferred three days ago, no whisper
PLAIN = "CA" + "3" * 32  # never transferred
KEPT = "CA" + "4" * 32  # transferred, its transcription still going (live)
WHISPER = "Transferring a caller. They said: I want a refund. They asked for a person."
TURNS = [
    Turn(0, "bot", "Hi.", 0, 500, heard="Hi."),
    Turn(1, "caller", "I want a refund", 800, 1600),
    Turn(2, "bot", "Refunds take five days.", 1800, 3000, heard="Refunds take five days."),
    Turn(3, "caller", "a human please", 3600, 4200),
    Turn(4, "bot", "Transferring you now.", 4400, 5400, heard="Transferring you now."),
]
TRANSFERRED = [
    Event(5400, "transfer", {"to": "+15557770000"}),
    Event(5400, "whisper", {"text": WHISPER, "source": "template"}),
]


def row_of(html: str, sid: str) -> str:
    match = re.search(rf'<tr class="([^"]*)" data-sid="{sid}">(.*?)</tr>', html, re.S)
    assert match is not None, f"no row for {sid}"
    return match.group(1) + "|" + match.group(2)


@pytest.fixture
async def calls(running_app: RunningApp, database: str) -> RunningApp:
    await add_accounts(database)
    now = time.time()
    transferred = {"outcome": Outcome.TRANSFERRED, "end_detail": "transferred"}
    await store_call(
        database, JUST, turns=TURNS, events=TRANSFERRED, started_at=now - 60, **transferred
    )
    await store_call(
        database,
        OLD,
        turns=TURNS,
        events=TRANSFERRED[:1],
        started_at=now - 3 * 86400,
        **transferred,
    )
    await store_call(database, PLAIN, turns=TURNS[:2], started_at=now - 120)
    handover = Event(5400, "handover", {"to": "staff", "dial": "+15557770000"})
    await store_call(
        database,
        KEPT,
        turns=TURNS,
        events=[*TRANSFERRED, handover],
        ended=False,
        started_at=now - 90,
    )
    return running_app


async def test_calls_list_marks_transfers_and_keeps_fresh_ones_live(calls: RunningApp) -> None:
    async with calls.http() as client:
        assert (await login(client, STAFF[0], STAFF[2])).status_code == 303
        page = (await client.get("/calls")).text
        rows = (await client.get("/calls/rows")).text
    just, old, plain, kept = (row_of(rows, s) for s in (JUST, OLD, PLAIN, KEPT))
    assert "handed" in just.split("|")[0] and "transferred" in just.split("|")[0]
    assert (
        'with a person<span class="to">: +15557770000</span>' in just
        and f"they heard: “{WHISPER}”" in just
    )
    assert (
        "handed" not in old.split("|")[0]
        and 'transferred<span class="to">: +15557770000</span>' in old
    )
    assert "they heard" not in old
    assert "transfer" not in plain
    assert (
        "live" in kept.split("|")[0]
        and 'with a person<span class="to">: +15557770000</span>' in kept
    )
    # The list polls while it shows a call just handed over (not only while one is live).
    assert 'data-poll-while="tr.live, tr.handed"' in page


async def test_call_page_puts_the_transfer_and_whisper_above_the_conversation(
    calls: RunningApp,
) -> None:
    async with calls.http() as client:
        assert (await login(client, STAFF[0], STAFF[2])).status_code == 303
        page = (await client.get(f"/calls/{JUST}")).text
        old = (await client.get(f"/calls/{OLD}")).text
        plain = (await client.get(f"/calls/{PLAIN}")).text
    note = page.index("Transferred to +15557770000")
    assert page.index(f'<q class="whisper">{WHISPER}</q>') > note
    assert page.index("I want a refund") > note  # the conversation follows
    assert "Before being connected, the person who answered heard" in page  # the timeline row
    assert "No whisper: they were connected straight away." in old
    assert "Transferred to" not in plain


async def test_a_real_warm_transfer_shows_in_the_staff_ui(
    running_app: RunningApp, database: str, tmp_path: Path
) -> None:
    await add_accounts(database)
    numbers = tmp_path / "warm.yaml"
    numbers.write_text(NUMBERS)
    result = await run_offline_call(  # writes to the same database the staff app reads
        number="+15550001000",
        script=Script(turns=list(REFUND_THEN_HUMAN)),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        max_call_ms=12_000,
    )
    sid = result.caller.call_sid
    said = result.caller.forks[0].whispers[0].said[0]
    async with running_app.http() as client:
        assert (await login(client, STAFF[0], STAFF[2])).status_code == 303
        rows = (await client.get("/calls/rows")).text
        page = (await client.get(f"/calls/{sid}")).text
    row = row_of(rows, sid)
    assert "handed" in row and f"they heard: “{said}”" in row
    assert f'<q class="whisper">{said}</q>' in page
    assert page.index("Transferred to +15557770000") < page.index("I want a refund for my order")
