"""QA over HTTP: who may note, tag, score and mark reviewed (403s), CSRF, the call page's panel,
the calls list's QA filters and CSV columns, the review queue, a hot reload of the tags and
scorecards, and the supervisor role in `telephony users` and /admin/users."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from routes.auth import User
from telephony import cli
from telephony.cli_users import ROLE_CHOICES
from telephony.demo import run_offline_call
from telephony.outcome import Outcome
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.review_queue import flags_for
from telephony.store.schema import audit_log, call_notes, review_flags
from telephony.store.users import ROLES, add_user, at_least, authenticate
from telephony.transcript import Event, Turn
from tests.conftest import NUMBERS_YAML, RunningApp
from tests.staff_helpers import ADMIN, STAFF, SUPERVISOR, add_accounts, csrf_of, store_call
from tests.test_staff_ui import client_as

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

QA_YAML = """
qa:
  tags: [follow-up, escalate]
  scorecards:
    basic:
      pass_mark: 70
      criteria:
        - {id: greet, label: Greeted the caller, weight: 1}
        - {id: solve, label: Solved the problem, weight: 3}
    sales-only:
      profiles: [sales]
      criteria: [{id: upsell, label: Offered an upgrade}]
"""
SLOW = "CA" + "5" * 32  # flagged: a slow reply
FAILED = "CA" + "6" * 32  # flagged: failover, in profile sales
CLEAN = "CA" + "7" * 32  # not flagged

TURNS = [
    Turn(0, "caller", "I want a refund", 0, 900),
    Turn(1, "bot", "Sure.", 1000, 1500, heard="Sure.", latency_ms=2600),
]


@pytest.fixture
def numbers_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS_YAML + QA_YAML)
    return path


@pytest.fixture
async def qa_app(running_app: RunningApp, database: str) -> RunningApp:
    await add_accounts(database, supervisor=True)
    await store_call(database, SLOW, turns=TURNS, started_at=1_800_000_000.0)
    quick = [TURNS[0], Turn(1, "bot", "Sure.", 1000, 1500, heard="Sure.", latency_ms=400)]
    await store_call(database, FAILED, turns=quick, profile="sales", outcome=Outcome.FAILOVER,
                     events=[Event(1600, "upstream-failed", {"endpoint": "flux"})],
                     started_at=1_800_000_060.0)  # fmt: skip
    await store_call(database, CLEAN, turns=quick, started_at=1_800_000_120.0)
    return running_app


async def post(client: httpx.AsyncClient, path: str, page: str, **form: str) -> httpx.Response:
    """A form post from `page` (its CSRF token)."""
    token = csrf_of((await client.get(page)).text)
    return await client.post(path, data={"csrf": token, **form})


async def qa_audit(database: str) -> list[tuple[str, str, str]]:
    engine = make_engine(database)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(audit_log).order_by(audit_log.c.id))
            return [(r.user_name, r.action, r.target) for r in rows if r.action.startswith("qa.")]
    finally:
        await engine.dispose()


async def test_staff_note_but_may_not_tag_score_review_or_change_others_notes(
    qa_app: RunningApp, database: str
) -> None:
    page = f"/calls/{SLOW}"
    async with client_as(qa_app, SUPERVISOR) as sup:
        added = await post(sup, f"{page}/notes", page, text="supervisor's note")
        assert added.status_code == 303
    async with client_as(qa_app, STAFF) as staff:
        html = (await staff.get(page)).text
        assert "supervisor&#39;s note" in html and "Mark reviewed" not in html
        assert "Save score" not in html and "Add tag" not in html  # read-only for staff
        note = await post(staff, f"{page}/notes", page, text="staff note", turn="1")
        assert note.status_code == 303 and note.headers["location"].endswith("#turn-1")
        for path, form in (
            (f"{page}/tags", {"tag": "follow-up"}),
            (f"{page}/score", {"scorecard": "basic", "c.greet": "on"}),
            (f"{page}/reviewed", {}),
        ):
            refused = await post(staff, path, page, **form)
            assert refused.status_code == 403, path
            assert "Supervisors only." in refused.text
        engine = make_engine(database)
        try:
            async with engine.connect() as conn:
                ids = dict((await conn.execute(select(call_notes.c.author, call_notes.c.id))).all())
        finally:
            await engine.dispose()
        other = await post(staff, f"{page}/notes/{ids['sam']}", page, action="delete")
        assert other.status_code == 403
        own = await post(staff, f"{page}/notes/{ids['alice']}", page, action="edit", text="v2")
        assert own.status_code == 303
    async with client_as(qa_app, SUPERVISOR) as sup:  # a supervisor may change anyone's
        gone = await post(sup, f"{page}/notes/{ids['alice']}", page, action="delete")
        assert gone.status_code == 303
    assert await qa_audit(database) == [
        ("sam", "qa.note.add", SLOW),
        ("alice", "qa.note.add", SLOW),
        ("alice", "qa.note.edit", SLOW),
        ("sam", "qa.note.delete", SLOW),
    ]


async def test_a_post_without_this_sessions_csrf_token_is_refused(
    qa_app: RunningApp, database: str
) -> None:
    async with client_as(qa_app, SUPERVISOR) as sup:
        for path, form in (
            ("notes", {"text": "x"}),
            ("tags", {"tag": "follow-up"}),
            ("score", {"scorecard": "basic"}),
            ("reviewed", {}),
        ):
            bad = await sup.post(f"/calls/{SLOW}/{path}", data={"csrf": "forged", **form})
            assert bad.status_code == 400 and "Form expired." in bad.text
            none = await sup.post(f"/calls/{SLOW}/{path}", data=form)
            assert none.status_code == 400
    assert await qa_audit(database) == []


async def test_a_supervisor_tags_scores_and_reviews_from_the_call_page(
    qa_app: RunningApp, database: str
) -> None:
    page = f"/calls/{SLOW}"
    async with client_as(qa_app, SUPERVISOR) as sup:
        html = (await sup.get(page)).text
        assert "Slow reply</strong>: slowest reply 2600 ms (threshold 1500 ms)" in html
        assert "Scorecard basic (pass mark 70)" in html and "(weight 3)" in html
        assert "sales-only" not in html  # that scorecard is for the sales profile
        tagged = await post(sup, f"{page}/tags", page, tag="follow-up")
        assert "tag+follow-up+added" in tagged.headers["location"]
        made_up = await post(sup, f"{page}/tags", page, tag="made-up")
        assert "qa_error=not+one+of+the+configured+tags" in made_up.headers["location"]
        other = await post(sup, f"{page}/score", page, scorecard="sales-only", **{"c.upsell": "on"})
        assert "not+a+scorecard+for+profile+support" in other.headers["location"]
        scored = await post(sup, f"{page}/score", page, scorecard="basic", **{"c.solve": "on"})
        assert "basic%3A+75+%2F+100%2C+pass" in scored.headers["location"]
        done = await post(sup, f"{page}/reviewed", page)
        assert "Slow+reply+cleared" in done.headers["location"]
        html = (await sup.get(page)).text
    assert re.search(r"<td>basic</td><td>sam</td><td>75 / 100</td><td>PASS</td>", html)
    assert "Reviewed by sam" in html and 'class="chip">follow-up' in html
    assert await qa_audit(database) == [
        ("sam", "qa.tag.add", SLOW),
        ("sam", "qa.score", SLOW),
        ("sam", "qa.review", SLOW),
    ]


async def test_the_review_queue_lists_reasons_and_filters(qa_app: RunningApp) -> None:
    async with client_as(qa_app, STAFF) as staff:
        html = (await staff.get("/review")).text
        assert '<a href="/review">Review queue</a>' in html
        assert re.findall(r'data-sid="(\w+)"', html) == [FAILED, SLOW]  # newest first
        assert "Failed over</strong>: flux" in html and '<span id="total">2</span>' in html
        slow = (await staff.get("/review", params={"rule": "latency"})).text
        assert re.findall(r'data-sid="(\w+)"', slow) == [SLOW]
        sales = (await staff.get("/review", params={"profile": "sales"})).text
        assert re.findall(r'data-sid="(\w+)"', sales) == [FAILED]
    async with client_as(qa_app, SUPERVISOR) as sup:
        await post(sup, f"/calls/{FAILED}/reviewed", f"/calls/{FAILED}")
        left = (await sup.get("/review")).text
    assert re.findall(r'data-sid="(\w+)"', left) == [SLOW]


async def test_the_list_filters_and_the_csv_carry_tags_and_scores(qa_app: RunningApp) -> None:
    async with client_as(qa_app, SUPERVISOR) as sup:
        page = f"/calls/{CLEAN}"
        await post(sup, f"{page}/tags", page, tag="escalate")
        await post(sup, f"{page}/score", page, scorecard="basic", **{"c.greet": "on"})
        await post(sup, f"{page}/reviewed", page)

        async def listed(**params: str) -> list[str]:
            rows = (await sup.get("/calls/rows", params=params)).text
            return re.findall(r'data-sid="(\w+)"', rows)

        assert await listed(tag="escalate") == [CLEAN]
        assert await listed(max_score="30") == [CLEAN] and await listed(min_score="30") == []
        assert await listed(result="fail") == [CLEAN] and await listed(result="pass") == []
        assert await listed(scorer="sam") == [CLEAN] and await listed(scorer="alice") == []
        assert await listed(unreviewed="yes") == [FAILED, SLOW]
        bad = await sup.get("/calls", params={"min_score": "120"})
        assert "minimum score: a score from 0 to 100" in bad.text
        rows = (await sup.get("/calls/rows", params={"tag": "escalate"})).text
        assert 'class="chip">escalate' in rows and "25 <span" in rows and "fail" in rows
        export = await sup.get("/calls.csv", params={"tag": "escalate"})
    (row,) = list(csv.DictReader(io.StringIO(export.text)))
    assert (row["tags"], row["score"], row["passed"], row["scorer"], row["reviewed"]) == (
        "escalate", "25", "no", "sam", "yes"
    )  # fmt: skip


async def test_a_reload_changes_the_tags_and_scorecards_and_old_tags_stay(
    qa_app: RunningApp,
) -> None:
    page = f"/calls/{SLOW}"
    async with client_as(qa_app, SUPERVISOR) as sup:
        await post(sup, f"{page}/tags", page, tag="escalate")
        new = QA_YAML.replace("[follow-up, escalate]", "[follow-up, vip]")
        new = new.replace("id: solve, label: Solved the problem", "id: polite, label: Was polite")
        qa_app.yaml_path.write_text(NUMBERS_YAML + new)
        assert qa_app.app.state.services.config.reload()
        html = (await sup.get(page)).text
        assert "escalate <small>(no longer in the configuration)</small>" in html
        assert '<option value="vip">vip</option>' in html
        assert '<option value="escalate">' not in html  # not addable any more
        assert "Was polite" in html and "Solved the problem" not in html
        again = await post(sup, f"{page}/tags", page, tag="escalate")
        assert "qa_error" in again.headers["location"]
        removed = await post(sup, f"{page}/tags", page, tag="escalate", action="remove")
        assert "escalate+removed" in removed.headers["location"]
        stale = await post(sup, f"{page}/score", page, scorecard="basic", **{"c.solve": "on"})
        assert "qa_error=not+criteria+of+basic" in stale.headers["location"]


def test_roles_rank_admin_over_supervisor_over_staff() -> None:
    assert ROLE_CHOICES == ROLES == ("staff", "supervisor", "admin")
    assert at_least("admin", "supervisor") and at_least("supervisor", "staff")
    assert not at_least("staff", "supervisor") and not at_least("supervisor", "admin")
    assert not at_least("root", "staff")
    assert User("s", "supervisor", "n", 0).is_supervisor
    assert not User("s", "supervisor", "n", 0).is_admin


def test_the_cli_makes_a_supervisor(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def setup() -> None:
        engine = make_engine(database)
        try:
            await upgrade(engine)
            await add_user(engine, "bob", "staff", "bob-password-1")
        finally:
            await engine.dispose()

    async def role() -> str | None:
        engine = make_engine(database)
        try:
            return await authenticate(engine, "bob", "bob-password-1")
        finally:
            await engine.dispose()

    asyncio.run(setup())
    assert cli.main(["users", "role", "bob", "supervisor"]) == 0
    assert asyncio.run(role()) == "supervisor"


async def test_admins_make_supervisors_and_supervisors_are_not_admins(
    qa_app: RunningApp,
) -> None:
    async with client_as(qa_app, ADMIN) as admin:
        changed = await post(admin, "/admin/users", "/admin/users", action="role", name="alice",
                             role="supervisor")  # fmt: skip
        assert "alice+is+now+supervisor" in changed.headers["location"]
    async with client_as(qa_app, SUPERVISOR) as sup:
        assert (await sup.get("/admin/users")).status_code == 403
        assert (await sup.get("/admin")).status_code == 403
        assert (await sup.get("/review")).status_code == 200


async def test_the_writer_flags_with_the_yamls_thresholds_as_it_is_at_the_end(
    qa_app: RunningApp,
) -> None:
    """The app wires its transcript store to the YAML in use: a reload applies to the next end."""
    services = qa_app.app.state.services
    assert services.transcripts.review_for("support") == services.config.current.review_for(
        "support"
    )
    assert services.transcripts.review_for("support").latency_ms == 1500
    strict = NUMBERS_YAML.replace(
        "  support:\n    mode: flux\n",
        "  support:\n    mode: flux\n    review: {latency_ms: 100}\n",
    )
    assert strict != NUMBERS_YAML
    qa_app.yaml_path.write_text(strict + QA_YAML)
    assert services.config.reload()
    assert services.transcripts.review_for("support").latency_ms == 100


def test_the_cli_backfills_flags(
    database: str, numbers_yaml: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("TELEPHONY_CONFIG", str(numbers_yaml))
    asyncio.run(upgrade(database))
    asyncio.run(store_call(database, SLOW, turns=TURNS, started_at=1_800_000_000.0))

    async def wipe() -> None:
        engine = make_engine(database)
        try:
            async with engine.begin() as conn:
                await conn.execute(review_flags.delete())
        finally:
            await engine.dispose()

    asyncio.run(wipe())  # as a call ended before revision 0010
    assert cli.main(["qa", "flag", "--since", "2027-01-01"]) == 0
    assert "1 ended calls looked at; 1 flagged for review" in capsys.readouterr().out
    assert cli.main(["qa", "flag", "--since", "2030-01-01"]) == 0  # after the call: none
    assert "0 ended calls looked at; 0 flagged" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        cli.main(["qa", "flag", "--since", "yesterday"])
    assert usage.value.code == 2 and "YYYY-MM-DD" in capsys.readouterr().err
    assert [a for _, a, _ in asyncio.run(qa_audit(database))] == ["qa.flag", "qa.flag"]


async def test_a_real_call_is_flagged_by_its_profiles_phrases(
    tmp_path: Path, database: str
) -> None:
    """Through the app and the fakes: the writer flags the call with the YAML's `review:`."""
    head = "  support:\n    mode: flux\n"
    yaml = NUMBERS_YAML.replace(head, head + "    review: {human_phrases: [manager]}\n")
    config = tmp_path / "review.yaml"
    config.write_text(yaml + QA_YAML)
    said = ScriptedTurn(start_ms=1500, end_ms=2600, text="I want your manager")
    result = await run_offline_call(
        number="+15550001000", script=Script(turns=[said]), config_path=config,
        max_call_ms=6_000, hang_up_after_reply_s=0.5,
    )  # fmt: skip
    assert result.summary is not None
    engine = make_engine(database)
    try:
        flags = await flags_for(engine, result.summary.call_sid)
    finally:
        await engine.dispose()
    assert [(f["rule"], f["detail"]) for f in flags] == [
        ("human", 'caller turn #1: "I want your manager"')
    ]
