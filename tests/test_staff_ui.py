"""The staff UI over HTTP: the role table, pages, exports, the admin page and the audit log.

Logging in and out is in test_staff_login.py; the browser-level behaviour (search, seeking the
player) in test_staff_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from telephony.outcome import Outcome
from telephony.store.engine import make_engine
from telephony.store.export import as_text, heard_split
from telephony.store.schema import audit_log, users
from telephony.transcript import Event, Turn
from tests.conftest import RunningApp
from tests.staff_helpers import ADMIN, STAFF, add_accounts, csrf_of, login, store_call

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

SID = "CA" + "1" * 32

TURNS = [
    Turn(0, "bot", "Thanks for calling.", 0, 1200, heard="Thanks for calling.", latency_ms=None),
    Turn(1, "caller", "I want a refund for my order", 1500, 3200),
    Turn(
        2,
        "bot",
        "Sure, I can help with the refund. First tell me the order number please.",
        3400,
        6000,
        heard="Sure, I can help with the refund.",
        interrupted=True,
        interrupted_at_ms=5100,
        latency_ms=412,
    ),
    Turn(3, "caller", "Card [REDACTED:card]", 5200, 7000, meta={"redacted": [[5, 24, "card"]]}),
    Turn(4, "caller", "5", 7400, 7400, meta={"trigger": "dtmf"}),
]
EVENTS = [
    Event(5100, "barge-in", {"cleared_marks": 2}),
    Event(7400, "dtmf", {"digit": "5"}),
    Event(8000, "flux-connection", {"connection": 2, "reason": "reconnect", "offset_ms": 8000}),
    Event(9000, "transfer", {"to": "+15550009999"}),
]

PROTECTED_GETS = [
    "/calls",
    "/dashboard",
    "/live",
    "/live/board",
    "/calls.csv",
    "/calls/rows",
    f"/calls/{SID}",
    f"/calls/{SID}/timeline",
    f"/calls/{SID}/export.json",
    f"/calls/{SID}/export.txt",
    f"/calls/{SID}/recording.wav",
    f"/calls/{SID}/waveform.json",
    "/admin",
    "/admin/audit",
    "/admin/users",
    "/review",
]
# QA's posts (routes/qa.py): their roles and CSRF are tested in test_qa_pages.py.
QA_POSTS = [f"/calls/{SID}/{p}" for p in ("notes", "notes/1", "tags", "score", "reviewed")]
ADMIN_ONLY = {"/admin", "/admin/audit", "/admin/users"}


@pytest.fixture
async def staff_app(running_app: RunningApp, database: str) -> RunningApp:
    await add_accounts(database)
    await store_call(database, SID, turns=TURNS, events=EVENTS)
    return running_app


async def audit_rows(database: str) -> list[dict]:
    engine = make_engine(database)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(audit_log).order_by(audit_log.c.id))
            return [dict(r._mapping) for r in rows]
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def client_as(app: RunningApp, who: tuple[str, str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with app.http() as client:
        resp = await login(client, who[0], who[2])
        assert resp.status_code == 303, resp.text
        yield client


# --- anonymous and wrong-role access -----------------------------------------------------------


@pytest.mark.parametrize("path", PROTECTED_GETS)
async def test_anonymous_is_refused_everywhere(staff_app: RunningApp, path: str) -> None:
    async with staff_app.http() as client:
        browser = await client.get(path, headers={"accept": "text/html"})
        assert browser.status_code == 303
        assert browser.headers["location"].startswith("/login?next=")
        api = await client.get(path)
        assert api.status_code == 401
        assert "Refund" not in api.text and "refund" not in browser.text


@pytest.mark.parametrize("path", ["/admin/reload", "/logout", *QA_POSTS])
async def test_anonymous_posts_are_refused(staff_app: RunningApp, path: str) -> None:
    async with staff_app.http() as client:
        assert (await client.post(path, data={"csrf": "x"})).status_code == 401


def test_every_staff_route_is_in_the_role_table(staff_app: RunningApp) -> None:
    """A new page must be added to the tables above (and so be tested for refusal)."""
    from starlette.routing import Route

    open_paths = {
        "/login",
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/twilio/voice",
        "/twilio/status",
        "/twilio/whisper",  # Twilio's, signed (tests/test_whisper_route.py)
    }
    tested = {p.replace(SID, "{sid}") for p in PROTECTED_GETS} | {"/admin/reload", "/logout"}
    tested |= {"/calls/{sid}/export.json", "/calls/{sid}/export.txt"}
    tested |= {"/live/events"}  # a stream: its refusals are in tests/test_live_events.py
    tested |= {p.replace(SID, "{sid}").replace("notes/1", "notes/{note:int}") for p in QA_POSTS}
    paths = {r.path for r in staff_app.app.routes if isinstance(r, Route)}
    assert paths - open_paths - tested == set()


async def test_role_table(staff_app: RunningApp) -> None:
    """Staff see calls but not admin pages; admins see everything."""
    for who in (STAFF, ADMIN):
        async with client_as(staff_app, who) as client:
            for path in PROTECTED_GETS:
                resp = await client.get(path)
                if path.endswith(("recording.wav", "waveform.json")):
                    assert resp.status_code == 404  # allowed, but this call has no recording
                elif path in ADMIN_ONLY and who is STAFF:
                    assert resp.status_code == 403, path
                    assert "Admins only" in resp.text
                else:
                    assert resp.status_code == 200, (who[0], path, resp.status_code)
            page = await client.get("/admin" if who is ADMIN else "/calls")
            reload = await client.post("/admin/reload", data={"csrf": csrf_of(page.text)})
            assert reload.status_code == (303 if who is ADMIN else 403)


async def test_tampered_or_orphaned_cookie_is_anonymous(
    staff_app: RunningApp, database: str
) -> None:
    async with client_as(staff_app, STAFF) as client:
        cookie = client.cookies["tel_session"]
        name, expires, nonce, mac = cookie.split("|")
        client.cookies.set("tel_session", f"root|{expires}|{nonce}|{mac}")  # claim admin
        assert (await client.get("/admin")).status_code == 401
        client.cookies.set("tel_session", f"{name}|{int(expires) + 9999}|{nonce}|{mac}")
        assert (await client.get("/calls")).status_code == 401
        client.cookies.set("tel_session", cookie)
        assert (await client.get("/calls")).status_code == 200
        engine = make_engine(database)  # the account is removed: its cookie stops working
        async with engine.begin() as conn:
            await conn.execute(users.delete().where(users.c.name == STAFF[0]))
        await engine.dispose()
        assert (await client.get("/calls")).status_code == 401


# --- the call page and exports ------------------------------------------------------------------


async def test_a_reply_cut_off_by_a_drop_or_the_call_end_says_so(
    staff_app: RunningApp, database: str
) -> None:
    sid = "CA" + "7" * 32
    said = "We are open from nine until five."
    turns = [
        Turn(
            0,
            "bot",
            said,
            0,
            900,
            heard="We are open",
            interrupted=True,
            interrupted_at_ms=900,
            meta={"cut_by": "drop", "heard_estimated": True},
        ),
        Turn(
            1,
            "bot",
            said,
            2000,
            2500,
            heard="We",
            interrupted=True,
            interrupted_at_ms=2500,
            meta={"cut_by": "call-end", "heard_estimated": True},
        ),
    ]
    await store_call(database, sid, turns=turns)
    async with client_as(staff_app, STAFF) as client:
        html = (await client.get(f"/calls/{sid}")).text
    assert "cut off: connection lost at 0:00.9" in html
    assert "cut off: call ended at 0:02.5" in html
    assert "heard text estimated from audio played" in html


async def test_call_page_shows_heard_vs_generated_and_events(
    staff_app: RunningApp, database: str
) -> None:
    async with client_as(staff_app, STAFF) as client:
        resp = await client.get(f"/calls/{SID}")
    html = resp.text
    assert resp.status_code == 200
    assert '<span class="heard">Sure, I can help with the refund.</span>' in html
    assert '<del class="unheard"' in html and "First tell me the order number please." in html
    assert "interrupted at 0:05.1" in html
    assert "412 ms" in html
    for kind in ("barge-in", "dtmf", "flux-connection", "transfer"):
        assert f'<tr class="event {kind}"' in html
    assert 'class="redacted"' in html and "[card]" in html
    assert 'data-ms="3400"' in html  # rows carry their time for the player
    assert resp.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    views = [r for r in await audit_rows(database) if r["action"] == "call.view"]
    assert [(v["user_name"], v["target"]) for v in views] == [("alice", SID)]


@pytest.mark.parametrize(
    ("mode", "events", "right"),
    [
        ("flux", [], "right: bot as the caller heard it."),
        ("agent", [], "right: bot as the caller heard it."),
        ("transcribe", [], "right: agent (the person who took the call)."),
        (
            "flux",
            [Event(15_000, "handover", {"to": "staff"})],
            "right: bot, then from the handover at 0:15.0 the agent (the person who took the "
            "call).",
        ),
    ],
)
async def test_recording_is_audited_when_played_not_when_the_page_opens(
    staff_app: RunningApp, database: str, tmp_path: Path, mode: str, events: list, right: str
) -> None:
    """The player preloads nothing: opening the page is a `call.view`, only fetching the audio
    is a `call.recording` (once, not per byte range). Its hint says who each channel is."""
    sid = "CA" + "4" * 32
    wav = tmp_path / f"{sid}.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(4 * 8000))
    await store_call(database, sid, turns=TURNS, events=events, mode=mode, recording_path=str(wav))

    def played() -> list[str]:
        return [r["target"] for r in rows if r["action"] == "call.recording"]

    async with client_as(staff_app, STAFF) as client:
        page = await client.get(f"/calls/{sid}")
        assert 'preload="none"' in page.text
        assert f"Left: caller · {right}" in page.text
        rows = await audit_rows(database)
        assert played() == []
        assert (await client.get(f"/calls/{sid}/recording.wav")).status_code == 200
        rows = await audit_rows(database)
        assert played() == [sid]
        seek = await client.get(f"/calls/{sid}/recording.wav", headers={"range": "bytes=800-"})
        assert seek.status_code == 206
        rows = await audit_rows(database)
        assert played() == [sid]


async def test_unknown_call_is_404(staff_app: RunningApp) -> None:
    async with client_as(staff_app, STAFF) as client:
        assert (await client.get("/calls/CAnope")).status_code == 404


async def test_exports_are_complete_and_audited(staff_app: RunningApp, database: str) -> None:
    async with client_as(staff_app, STAFF) as client:
        js = await client.get(f"/calls/{SID}/export.json")
        txt = await client.get(f"/calls/{SID}/export.txt")
    assert "attachment" in js.headers["content-disposition"]
    doc = json.loads(js.text)
    assert doc["sid"] == SID and len(doc["turns"]) == len(TURNS) and len(doc["events"]) == 4
    bot = doc["turns"][2]
    assert bot["heard_part"] == "Sure, I can help with the refund."
    assert bot["unheard_part"].strip() == "First tell me the order number please."
    assert bot["interrupted"] is True and bot["latency_ms"] == 412
    text = txt.text
    assert "[0:03.4] Bot (412 ms): Sure, I can help with the refund." in text
    assert "not heard (interrupted): First tell me the order number please." in text
    assert "[0:05.1] -- barge-in: cleared_marks=2" in text
    exports = [r for r in await audit_rows(database) if r["action"] == "call.export"]
    assert sorted(r["detail"]["format"] for r in exports) == ["json", "txt"]


async def test_live_call_rows_and_timeline_fragments(staff_app: RunningApp, database: str) -> None:
    live = "CA" + "2" * 32
    await store_call(database, live, turns=TURNS[:2], ended=False)
    async with client_as(staff_app, STAFF) as client:
        rows = await client.get("/calls/rows?status=live")
        assert rows.headers["x-total"] == "1"
        assert live in rows.text and "in progress" in rows.text and SID not in rows.text
        page = await client.get(f"/calls/{live}")
        assert f'data-poll="/calls/{live}/timeline"' in page.text
        frag = await client.get(f"/calls/{live}/timeline")
        assert frag.headers["x-live"] == "1" and "I want a refund" in frag.text
        await store_call(database, live, turns=TURNS, ended=True)
        frag = await client.get(f"/calls/{live}/timeline")
        assert frag.headers["x-live"] == "0" and "order number" in frag.text
        ended = await client.get(f"/calls/{SID}")
        assert "data-poll" not in ended.text  # nothing to poll for a finished call


async def test_list_filters_and_bad_input(staff_app: RunningApp, database: str) -> None:
    other = "CA" + "3" * 32
    await store_call(
        database,
        other,
        turns=[Turn(0, "caller", "what are your opening hours", 0, 900)],
        profile="sales",
        from_number="+15551112222",
        to_number="+15550002000",
    )
    async with client_as(staff_app, STAFF) as client:

        async def sids(query: str) -> set[str]:
            resp = await client.get(f"/calls?{query}")
            assert resp.status_code == 200, resp.text
            return {s for s in (SID, other) if s in resp.text}

        assert await sids("") == {SID, other}
        assert await sids("q=refund") == {SID}
        assert await sids("q=opening+hours") == {other}
        assert await sids("profile=sales") == {other}
        assert await sids("number=1112222") == {other}
        assert await sids("interrupted=yes") == {SID}
        assert await sids("interrupted=no") == {other}
        assert await sids("min_latency=400") == {SID}
        assert await sids("min_latency=500") == set()
        bad = await client.get("/calls?from=yesterday&min_latency=-3&page=x")
        assert bad.status_code == 200
        assert "from: not a date" in bad.text and "minimum latency: must be between" in bad.text
    searches = [r["target"] for r in await audit_rows(database) if r["action"] == "calls.search"]
    assert searches == ["refund", "opening hours"]


async def test_outcome_is_shown_and_filtered(staff_app: RunningApp, database: str) -> None:
    """Issue 19: how each call ended, readable in the list and on the call page, and a filter
    by it; the free-text detail on the call page and in the exports."""
    failed = "CA" + "4" * 32
    await store_call(
        database,
        failed,
        turns=[Turn(0, "caller", "hello", 0, 900)],
        outcome=Outcome.FAILOVER,
        end_detail="flux failed 6 times in 60 s",
    )
    async with client_as(staff_app, STAFF) as client:
        page = await client.get("/calls")
        assert '<select name="outcome">' in page.text
        assert '<option value="failover" >Failed over</option>' in page.text
        rows = await client.get("/calls/rows")
        cells = {
            sid: rows.text.split(f'data-sid="{sid}"', 1)[1].split("</tr>", 1)[0]
            for sid in (SID, failed)
        }
        assert 'data-outcome="caller-hangup">Caller hung up</span>' in cells[SID]
        assert 'data-outcome="failover">Failed over</span>' in cells[failed]
        only = await client.get("/calls/rows?outcome=failover")
        assert only.headers["x-total"] == "1" and failed in only.text and SID not in only.text
        listed = await client.get("/calls?outcome=failover")
        assert '<option value="failover" selected>Failed over</option>' in listed.text
        assert SID not in listed.text
        ignored = await client.get("/calls/rows?outcome=nonsense")  # an unknown value: no filter
        assert ignored.headers["x-total"] == "2"
        call = await client.get(f"/calls/{failed}")
        assert "Failed over</span> after 0:30.0" in call.text
        assert "(flux failed 6 times in 60 s)" in call.text
        doc = json.loads((await client.get(f"/calls/{failed}/export.json")).text)
        assert (doc["end_reason"], doc["end_detail"]) == ("failover", "flux failed 6 times in 60 s")
        text = (await client.get(f"/calls/{failed}/export.txt")).text
        assert "(Failed over: flux failed 6 times in 60 s)" in text


# --- admin --------------------------------------------------------------------------------------


async def test_admin_page_shows_config_and_validation(staff_app: RunningApp, database: str) -> None:
    async with client_as(staff_app, ADMIN) as client:
        page = await client.get("/admin")
        assert page.status_code == 200
        assert "+15550001000" in page.text and "support" in page.text and "sales" in page.text
        assert '<span class="ok">valid</span>' in page.text
        assert "Thanks for calling." in page.text  # the YAML itself

        staff_app.yaml_path.write_text("numbers: {}\nprofiles:\n  x: {mode: nope}\n")
        page = await client.get("/admin")
        assert '<span class="error">invalid</span>' in page.text
        assert "profiles.x.mode" in page.text  # the line-numbered error, as config check says

        version = staff_app.app.state.services.config.version
        resp = await client.post("/admin/reload", data={"csrf": csrf_of(page.text)})
        assert resp.headers["location"] == "/admin?reloaded=failed"
        assert staff_app.app.state.services.config.version == version  # the old config stays
        assert (await client.post("/admin/reload", data={"csrf": "x"})).status_code == 400

        audit = await client.get("/admin/audit?action=admin.config.reload")
        assert "admin.config.reload" in audit.text and "root" in audit.text
    reloads = [r for r in await audit_rows(database) if r["action"] == "admin.config.reload"]
    assert len(reloads) == 1 and reloads[0]["detail"]["ok"] is False
    assert reloads[0]["user_name"] == "root"
    actions = {r["action"] for r in await audit_rows(database)}
    assert {"admin.config.view", "admin.audit.view"} <= actions


# --- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "heard", "expected"),
    [
        ("Hello there.", None, ("Hello there.", "")),
        ("Hello there.", "Hello there.", ("Hello there.", "")),
        ("One. Two. Three.", "One. Two.", ("One. Two.", " Three.")),
        ("One. Two. Three.", "", ("", "One. Two. Three.")),
        # Heard text rebuilt from segments joined with single spaces.
        ("One.  Two.\nThree.", "One. Two.", ("One.  Two.", "\nThree.")),
        # Estimated heard text that stops mid-sentence.
        ("Your balance is forty dollars.", "your balance", ("Your balance", " is forty dollars.")),
        # Heard text that does not match at all: nothing is claimed as heard.
        ("Completely different.", "Other words", ("", "Completely different.")),
    ],
)
def test_heard_split(text: str, heard: str | None, expected: tuple[str, str]) -> None:
    assert heard_split(text, heard) == expected


def test_text_export_of_live_call() -> None:
    call = {"sid": "CAx", "started_at": 0.0, "ended_at": None, "turns": [], "events": []}
    assert "in progress" in as_text(call)
