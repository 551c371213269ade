"""QA in the store, on SQLite and PostgreSQL: notes, tags, scores (each change audited in its
transaction, old and new on a re-score), the review rules flagging the right calls as their end
is written (the writer, the restart sweep, the backfill), the queue and the list's filters."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, delete, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.config.qa import Criterion, ReviewConfig, Scorecard
from telephony.store.instances import Instance, sweep
from telephony.store.migrate import alembic_config
from telephony.store.qa_errors import NotAllowed, QAError
from telephony.store.qa_notes import add_note, delete_note, edit_note, notes_of
from telephony.store.qa_scores import save_score, scores_of
from telephony.store.qa_tags import add_tag, remove_tag, tags_of
from telephony.store.queries import CallFilter, count_calls, search_calls
from telephony.store.review_queue import backfill, flags_for, mark_reviewed, queue
from telephony.store.review_rules import flags_of
from telephony.store.schema import audit_log, calls, review_flags, turns
from telephony.store.transcripts import TranscriptStore
from telephony.transcript import Event, Turn
from tests import test_store
from tests.test_store import Db

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

db = test_store.db  # the fixture: each test on SQLite and PostgreSQL, a fresh migrated db

CARD = Scorecard(
    criteria=[
        Criterion(id="greet", label="Greeted the caller", weight=1),
        Criterion(id="solve", label="Solved the problem", weight=3),
    ],
    pass_mark=75,
)


def hello(idx: int = 0, start: int = 0) -> Turn:
    return Turn(idx, "caller", "hello there", start, start + 400)


def bot(idx: int, start: int, latency_ms: int | None = 300, cut: bool = False) -> Turn:
    meta = {"cut_by": "caller"} if cut else {}
    return Turn(idx, "bot", "how can I help", start, start + 500, heard="how can I help",
                interrupted=cut, latency_ms=latency_ms, meta=meta)  # fmt: skip


def summary(sid: str, started_at: float, outcome: str, profile: str) -> Any:
    return SimpleNamespace(
        call_sid=sid, from_number="+15550100", to_number="+15550001000", profile=profile,
        started_at=started_at, ended_at=started_at + 30, end_reason=outcome, end_detail="",
        stats=None,
    )  # fmt: skip


CALLS: dict[str, tuple[str, list[Turn], list[Event]]] = {
    # sid: (outcome, turns, events); every call starts with a caller turn answered by the bot
    "CAclean": ("caller-hangup", [hello(), bot(1, 500)], []),
    "CAfailover": (
        "failover",
        [hello(), bot(1, 500)],
        [Event(900, "upstream-failed", {"endpoint": "flux", "reason": "gave up"})],
    ),
    "CAunanswered": ("caller-hangup", [hello(), bot(1, 500), hello(2, 1500)], []),
    "CAslow": ("caller-hangup", [hello(), bot(1, 500, latency_ms=2400)], []),
    "CAbarged": (
        "caller-hangup",
        [
            hello(),
            bot(1, 500, cut=True),
            hello(2, 900),
            bot(3, 1500, cut=True),
            hello(4, 1900),
            bot(5, 2500),
        ],
        [],
    ),
    "CAonebarge": (
        "caller-hangup",
        [hello(), bot(1, 500, cut=True), hello(2, 900), bot(3, 1500)],
        [],
    ),
    "CAhuman": (
        "caller-hangup",
        [Turn(0, "caller", "Can I talk to a Real  Person please", 0, 900), bot(1, 1000)],
        [],
    ),
    "CAhandedover": (  # said to the person who took the call, not to the bot
        "transferred",
        [
            hello(),
            bot(1, 500),
            Turn(2, "caller", "thanks, you are a real person", 3000, 3900),
            Turn(3, "staff", "I am", 4000, 4500),
        ],
        [Event(2500, "handover", {"to": "+15550009999"})],
    ),
    "CAmanagement": (  # "agents" and "humanity" are not the whole words
        "caller-hangup",
        [Turn(0, "caller", "your agents show humanity", 0, 900), bot(1, 1000)],
        [],
    ),
}
EXPECTED = {
    "CAfailover": {"failover"},
    "CAunanswered": {"unanswered"},
    "CAslow": {"latency"},
    "CAbarged": {"barge-ins"},
    "CAhuman": {"human"},
}


async def write_calls(engine: AsyncEngine, wanted: dict[str, tuple] = CALLS, **kw: Any) -> None:
    store = TranscriptStore(engine)
    for name, value in kw.items():
        setattr(store, name, value)
    await store.start()
    try:
        for n, (sid, (outcome, call_turns, call_events)) in enumerate(wanted.items()):
            started = 1_800_000_000.0 + n * 60
            store.call_started(sid, profile="support", mode="flux", started_at=started)
            for t in call_turns:
                store.turn(sid, t)
            for e in call_events:
                store.event(sid, e)
            store.call_ended(summary(sid, started, outcome, "support"), duration_ms=30_000)
    finally:
        await store.stop()


async def audit_of(engine: AsyncEngine, prefix: str = "qa.") -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(audit_log).order_by(audit_log.c.id))
        return [dict(r._mapping) for r in rows if r.action.startswith(prefix)]


async def flagged(engine: AsyncEngine) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    async with engine.connect() as conn:
        for sid, rule in await conn.execute(select(review_flags.c.call_sid, review_flags.c.rule)):
            out.setdefault(sid, set()).add(rule)
    return out


async def test_the_rules_flag_exactly_the_calls_that_trip_them(db: Db) -> None:
    await write_calls(db.engine)
    assert await flagged(db.engine) == EXPECTED
    failover = await flags_for(db.engine, "CAfailover")
    assert failover[0]["detail"] == "flux gave up" and failover[0]["reviewed_at"] is None
    (human,) = await flags_for(db.engine, "CAhuman")
    assert human["detail"] == 'caller turn #0: "Can I talk to a Real Person please"'
    (slow,) = await flags_for(db.engine, "CAslow")
    assert slow["detail"] == "slowest reply 2400 ms (threshold 1500 ms)"


async def test_a_profiles_thresholds_decide(db: Db) -> None:
    strict = ReviewConfig(latency_ms=200, barge_ins=1, human_phrases=["hello"])
    await write_calls(db.engine, review_for=lambda profile: strict)
    found = await flagged(db.engine)
    assert found["CAclean"] == {"latency", "human"}  # 300 ms > 200 ms; "hello there"
    assert "barge-ins" in found["CAonebarge"]
    off = ReviewConfig(latency_ms=None, barge_ins=None, human_phrases=[])
    async with db.engine.begin() as conn:
        await conn.execute(delete(review_flags))
    await write_calls(db.engine, review_for=lambda profile: off)
    assert await flagged(db.engine) == {"CAfailover": {"failover"}, "CAunanswered": {"unanswered"}}


async def test_writing_an_end_again_keeps_flags_and_reviews(db: Db) -> None:
    await write_calls(db.engine)
    before = await flags_for(db.engine, "CAslow")
    assert await mark_reviewed(db.engine, "CAslow", "sup") == ["latency"]
    await write_calls(db.engine)  # every end written again: nothing moves
    after = await flags_for(db.engine, "CAslow")
    assert [f["flagged_at"] for f in after] == [before[0]["flagged_at"]]
    assert after[0]["reviewed_by"] == "sup"
    assert await flagged(db.engine) == EXPECTED
    # A late turn changes what trips: the new rule is open again, the reviewed one stays.
    again = {"CAslow": ("caller-hangup", [*CALLS["CAslow"][1], hello(2, 5000)], [])}
    await write_calls(db.engine, again)
    rules = {f["rule"]: f["reviewed_at"] for f in await flags_for(db.engine, "CAslow")}
    assert set(rules) == {"latency", "unanswered"}
    assert rules["latency"] is not None and rules["unanswered"] is None
    rows, total = await queue(db.engine)
    assert "CAslow" in [r["sid"] for r in rows] and total == 5


async def test_the_restart_sweep_and_the_backfill_flag_calls(db: Db) -> None:
    now = 1_800_000_000.0
    async with db.engine.begin() as conn:
        await conn.execute(insert(calls), [{"sid": "CAleft", "started_at": now - 600,
                                            "mode": "flux", "instance_id": "dead"}])  # fmt: skip
        await conn.execute(insert(turns), [{"call_sid": "CAleft", "idx": 0, "role": "caller",
                                            "text": "an operator please", "start_ms": 0,
                                            "end_ms": 900}])  # fmt: skip
    assert await sweep(db.engine, Instance(id="me", started_at=now), now) == ["CAleft"]
    assert (await flagged(db.engine))["CAleft"] == {"human", "unanswered"}
    # Calls ended before revision 0010 have no flags; the backfill gives them theirs, once.
    await write_calls(db.engine)
    async with db.engine.begin() as conn:
        await conn.execute(delete(review_flags))
    seen, count = await backfill(db.engine, 0, lambda p: ReviewConfig(), actor="cli:ops")
    assert (seen, count) == (len(CALLS) + 1, len(EXPECTED) + 1)
    assert await backfill(db.engine, 0, lambda p: ReviewConfig(), actor="cli:ops") == (seen, count)
    assert {k: v for k, v in (await flagged(db.engine)).items() if k != "CAleft"} == EXPECTED
    late = await backfill(db.engine, now + 3600, lambda p: ReviewConfig(), actor="cli:ops")
    assert late == (0, 0)
    runs = await audit_of(db.engine, "qa.flag")
    assert [r["user_name"] for r in runs] == ["cli:ops"] * 3


async def test_notes_are_audited_and_only_their_author_or_a_supervisor_changes_them(
    db: Db,
) -> None:
    await write_calls(db.engine, {"CAclean": CALLS["CAclean"]})
    call_note = await add_note(db.engine, "CAclean", "alice", "  good call  ")
    turn_note = await add_note(db.engine, "CAclean", "alice", "nice reply", turn_idx=1)
    with pytest.raises(QAError, match="no such turn"):
        await add_note(db.engine, "CAclean", "alice", "x", turn_idx=9)
    with pytest.raises(QAError, match="no such call"):
        await add_note(db.engine, "CAnope", "alice", "x")
    with pytest.raises(QAError, match="some text"):
        await add_note(db.engine, "CAclean", "alice", "   ")
    with pytest.raises(NotAllowed):
        await edit_note(db.engine, call_note, "bob", "mine now", may_change_others=False)
    with pytest.raises(NotAllowed):
        await delete_note(db.engine, call_note, "bob", may_change_others=False)
    await edit_note(db.engine, call_note, "alice", "great call", may_change_others=False)
    await delete_note(db.engine, turn_note, "sup", may_change_others=True)
    notes = await notes_of(db.engine, "CAclean")
    assert [(n["text"], n["turn_idx"], n["author"]) for n in notes] == [
        ("great call", None, "alice")
    ]
    rows = await audit_of(db.engine)
    assert [(r["action"], r["user_name"], r["target"]) for r in rows] == [
        ("qa.note.add", "alice", "CAclean"),
        ("qa.note.add", "alice", "CAclean"),
        ("qa.note.edit", "alice", "CAclean"),
        ("qa.note.delete", "sup", "CAclean"),
    ]
    assert rows[2]["detail"]["old"] == "good call" and rows[2]["detail"]["new"] == "great call"
    assert rows[3]["detail"] == {"note": turn_note, "author": "alice", "turn": 1,
                                 "text": "nice reply"}  # fmt: skip


async def test_tags_come_from_the_set_and_each_change_is_audited(db: Db) -> None:
    await write_calls(db.engine, {"CAclean": CALLS["CAclean"]})
    allowed = ["follow-up", "escalate"]
    assert await add_tag(db.engine, "CAclean", "follow-up", "sup", allowed)
    assert not await add_tag(db.engine, "CAclean", "follow-up", "sup", allowed)  # no change
    with pytest.raises(QAError, match="configured"):
        await add_tag(db.engine, "CAclean", "made-up", "sup", allowed)
    assert await add_tag(db.engine, "CAclean", "escalate", "sup", allowed)
    assert await remove_tag(db.engine, "CAclean", "escalate", "sup")
    assert not await remove_tag(db.engine, "CAclean", "escalate", "sup")
    assert [t["tag"] for t in await tags_of(db.engine, "CAclean")] == ["follow-up"]
    rows = await audit_of(db.engine)
    assert [(r["action"], r["detail"]) for r in rows] == [
        ("qa.tag.add", {"tag": "follow-up"}),
        ("qa.tag.add", {"tag": "escalate"}),
        ("qa.tag.remove", {"tag": "escalate"}),
    ]


async def test_a_score_is_weighted_and_rescoring_replaces_it_with_old_and_new_audited(
    db: Db,
) -> None:
    await write_calls(db.engine, {"CAclean": CALLS["CAclean"]})
    first = await save_score(db.engine, "CAclean", "basic", CARD, {"greet": True}, "sup")
    assert (first["score"], first["passed"]) == (25.0, False)
    second = await save_score(db.engine, "CAclean", "basic", CARD, {"solve": True}, "sup")
    assert (second["score"], second["passed"]) == (75.0, True)  # at the pass mark: a pass
    await save_score(db.engine, "CAclean", "basic", CARD, {"greet": True, "solve": True}, "boss")
    with pytest.raises(QAError, match="not criteria"):
        await save_score(db.engine, "CAclean", "basic", CARD, {"made_up": True}, "sup")
    sales_only = Scorecard(criteria=CARD.criteria, profiles=["sales"])
    with pytest.raises(QAError, match="not a scorecard for profile support"):
        await save_score(db.engine, "CAclean", "pitch", sales_only, {"greet": True}, "sup")
    scores = await scores_of(db.engine, "CAclean")
    assert sorted((s["scorer"], s["score"]) for s in scores) == [("boss", 100.0), ("sup", 75.0)]
    rows = await audit_of(db.engine)
    assert [r["action"] for r in rows] == ["qa.score"] * 3
    assert rows[0]["detail"]["old"] is None
    assert rows[1]["detail"]["old"] == {"score": 25.0, "passed": False,
                                        "answers": {"greet": True, "solve": False}}  # fmt: skip
    assert rows[1]["detail"]["new"]["score"] == 75.0


async def test_the_list_filters_by_tag_score_scorer_and_review(db: Db) -> None:
    await write_calls(db.engine)
    await add_tag(db.engine, "CAslow", "follow-up", "sup", ["follow-up"])
    await save_score(db.engine, "CAslow", "basic", CARD, {"greet": True}, "sup")
    await save_score(db.engine, "CAhuman", "basic", CARD, {"solve": True}, "boss")
    await mark_reviewed(db.engine, "CAhuman", "boss")
    await mark_reviewed(db.engine, "CAclean", "boss")

    async def sids(**kw: Any) -> list[str]:
        f = CallFilter(**kw)
        rows = await search_calls(db.engine, f)
        assert await count_calls(db.engine, f) == len(rows)
        return sorted(r["sid"] for r in rows)

    assert await sids(tag="follow-up") == ["CAslow"]
    assert await sids(min_score=50) == ["CAhuman"]
    assert await sids(max_score=50) == ["CAslow"]
    assert await sids(passed=True) == ["CAhuman"] and await sids(passed=False) == ["CAslow"]
    assert await sids(scorer="sup") == ["CAslow"]
    assert await sids(scorer="sup", min_score=50) == []  # one score row meets both, or none
    unreviewed = await sids(unreviewed=True)
    assert "CAhuman" not in unreviewed and "CAclean" not in unreviewed and "CAslow" in unreviewed
    (row,) = await search_calls(db.engine, CallFilter(tag="follow-up"))
    assert row["qa"]["tags"] == ["follow-up"] and row["qa"]["flags"] == ["latency"]
    assert row["qa"]["score"]["score"] == 25.0 and not row["qa"]["reviewed"]


async def test_the_queue_lists_open_flags_newest_first_by_rule_and_profile(db: Db) -> None:
    await write_calls(db.engine)
    rows, total = await queue(db.engine)
    assert [r["sid"] for r in rows] == ["CAhuman", "CAbarged", "CAslow", "CAunanswered",
                                        "CAfailover"]  # fmt: skip
    assert total == 5 and [f["rule"] for f in rows[0]["flags"]] == ["human"]
    assert [r["sid"] for r in (await queue(db.engine, rule="latency"))[0]] == ["CAslow"]
    assert (await queue(db.engine, profile="sales"))[1] == 0
    assert await mark_reviewed(db.engine, "CAhuman", "sup") == ["human"]
    rows, total = await queue(db.engine)
    assert total == 4 and "CAhuman" not in [r["sid"] for r in rows]
    (review,) = await audit_of(db.engine, "qa.review")
    assert review["target"] == "CAhuman" and review["detail"] == {"flags": ["human"]}
    with pytest.raises(QAError):
        await mark_reviewed(db.engine, "CAnope", "sup")


QA_TABLES = {"call_notes", "call_tags", "call_scores", "review_flags", "call_reviews"}


async def test_revision_0010_goes_down_and_up_again(db: Db) -> None:
    def tables(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names()) & QA_TABLES

    def down_and_up(conn: Connection) -> tuple[set[str], set[str]]:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009_insights")
        down = tables(conn)
        command.upgrade(cfg, "head")
        return down, tables(conn)

    async with db.engine.begin() as conn:
        assert await conn.run_sync(tables) == QA_TABLES
        assert await conn.run_sync(down_and_up) == (set(), QA_TABLES)


def test_a_person_is_asked_for_only_while_the_bot_has_the_call() -> None:
    said = [{"idx": 0, "role": "caller", "text": "put me through to an operator", "start_ms": 0,
             "interrupted": False, "latency_ms": None, "meta": None}]  # fmt: skip
    call = {"end_reason": "caller-hangup", "end_detail": "", "mode": "flux"}
    assert "human" in flags_of(call, said, [], ReviewConfig())
    transcribed = {**call, "mode": "transcribe"}  # the caller talks to a person throughout
    assert flags_of(transcribed, said, [], ReviewConfig()) == {}
    handed_over = [("handover", {}, 0)]  # from the start of the turn on: a person's call
    assert "human" not in flags_of(call, said, handed_over, ReviewConfig())


def test_a_bot_call_that_ended_before_anyone_spoke_trips_no_rule() -> None:
    """A caller who hangs up before a word (found by `telephony bench --churn`): no turns, no
    flag, and no error (the rules once raised on it and the call got no flags at all)."""
    for mode in ("flux", "agent", "transcribe"):
        call = {"end_reason": "caller-hangup", "end_detail": "", "mode": mode}
        assert flags_of(call, [], [], ReviewConfig()) == {}
