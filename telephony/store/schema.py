"""The database schema: SQLAlchemy Core tables (engine set-up is store/engine.py, migrating
store/migrate.py).

Times of call audio (turns, events, duration) are integer milliseconds of call audio time.
Wall-clock instants (calls.started_at, users.created_at, audit_log.at) are epoch seconds.
The tables are created by the Alembic revisions in ``telephony/store/migrations``; keep the
two in step (a schema change is a new revision, never an edit of an old one).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.dialects import postgresql, sqlite

# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("from_number", String(32), nullable=False, server_default=""),
    Column("to_number", String(32), nullable=False, server_default=""),
    Column("profile", String(64), nullable=False, server_default=""),
    Column("mode", String(16), nullable=False, server_default=""),
    Column("started_at", Double, nullable=False, index=True),  # epoch s
    Column("ended_at", Double, nullable=True),  # epoch s
    # An Outcome (telephony/outcome.py) once ended; "" while live. Not a CHECK
    # constraint: on SQLite adding one rebuilds the table, which its foreign keys forbid.
    Column("end_reason", String(64), nullable=False, server_default="", index=True),
    Column("duration_ms", Integer, nullable=True),  # call audio time
    Column("recording_path", Text, nullable=True),
    Column("end_detail", Text, nullable=False, server_default=""),  # the free-text why
    # The process carrying the call (instances.id): whose crash leaves it open. "" for rows
    # written before revision 0004 (or by an older instance during a rolling upgrade).
    Column("instance_id", String(64), nullable=False, server_default=""),
)
# Open calls by instance: what the restart sweep looks for, without reading ended calls.
Index(
    "ix_calls_open",
    calls.c.instance_id,
    sqlite_where=calls.c.ended_at.is_(None),
    postgresql_where=calls.c.ended_at.is_(None),
)

# One row per running (or dead, until swept) process: its heartbeat. See store/instances.py.
instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),  # unique per process
    Column("name", String(64), nullable=False, server_default=""),  # TELEPHONY_INSTANCE_ID
    Column("started_at", Double, nullable=False),  # epoch s
    Column("last_seen", Double, nullable=False, index=True),  # epoch s: the last heartbeat
    # How other instances reach it (TELEPHONY_INTERNAL_URL): listen-in on its calls
    Column("url", String(256), nullable=False, server_default=""),
)

turns = Table(
    "turns",
    metadata,
    Column("call_sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), nullable=False),
    Column("idx", Integer, nullable=False),  # Turn.index: order within the call
    Column("role", String(16), nullable=False),
    Column("text", Text, nullable=False, server_default=""),
    Column("heard", Text, nullable=True),
    Column("interrupted", Boolean, nullable=False, server_default=false()),
    Column("interrupted_at_ms", Integer, nullable=True),
    Column("start_ms", Integer, nullable=False),
    Column("end_ms", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=True),
    Column("meta", JSON, nullable=True),
    PrimaryKeyConstraint("call_sid", "idx", name="pk_turns"),  # unique (call_sid, idx)
)

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "call_sid",
        String(64),
        ForeignKey("calls.sid", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("ms", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("data", JSON, nullable=True),
)

users = Table(
    "users",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(32), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", Double, nullable=False),  # epoch s
    # Logins issued before this (epoch s) are ended: set on creation, role change and password
    # reset (telephony/store/users.py).
    Column("sessions_since", Double, nullable=False, server_default="0"),
    # A disabled account cannot log in and its sessions end; it and its history stay.
    Column("disabled", Boolean, nullable=False, server_default=false()),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Double, nullable=False, index=True),  # epoch s
    Column("user_name", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False, server_default=""),
    Column("detail", JSON, nullable=True),
)

# One row per media stream a call may have: the webhook's (part "") and each continuation's
# (a transfer's transcription). The webhook records its answer here, so a repeat of it, on any
# instance, gets the same answer; the instance carrying the stream records itself, so no other
# can carry it too. See store/stream_claims.py.
stream_claims = Table(
    "stream_claims",
    metadata,
    Column("call_sid", String(64), nullable=False),
    Column("part", String(128), nullable=False, server_default=""),
    Column("answer", Text, nullable=True),  # the webhook's TwiML (part "" only)
    Column("carried_by", String(64), nullable=False, server_default=""),  # instances.id
    Column("created_at", Double, nullable=False, index=True),  # epoch s
    PrimaryKeyConstraint("call_sid", "part"),
)

# Staff sessions ended by logout before their cookie expires: a signed cookie is otherwise
# valid until then, on every instance. Rows past `expires_at` are dropped at the next logout.
revoked_sessions = Table(
    "revoked_sessions",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", Double, nullable=False, index=True),  # epoch s: the cookie's own
)

# The dashboard's numbers (store/call_stats.py): each ended call's facts, kept to move the
# rollups by the difference when its end is written again; and sums per 15-minute bucket
# (epoch s of the calls' starts), profile and outcome, and per reply-latency bin.
call_facts = Table(
    "call_facts",
    metadata,
    Column("sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), primary_key=True),
    Column("bucket", BigInteger, nullable=False),
    Column("profile", String(64), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    Column("bot_turns", Integer, nullable=False),
    Column("barge_ins", Integer, nullable=False),
    Column("reconnects", Integer, nullable=False),
    Column("latency_bins", JSON, nullable=True),  # one bin's lower edge (ms) per bot turn
)


# Deepgram Text Intelligence (/v1/read) results per ended call (telephony/insights): the
# worker's state ("pending", "done", "failed", "off") and what it read from the redacted
# transcript. Lists are JSON: topics and intents as strings, turn_sentiments per bot/caller turn.
# Post-call insights (telephony/insights/): one row per ended call of a profile with insights
# on. status: pending | done | failed | off. search_text (summary, topics, intents) is indexed
# for the list's search like turns (revision 0009: FTS5 / a GIN index).
call_insights = Table(
    "call_insights",
    metadata,
    Column("call_sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("updated_at", Double, nullable=False),  # epoch s
    Column("error", Text, nullable=False, server_default=""),
    Column("summary", Text, nullable=False, server_default=""),
    Column("sentiment", String(16), nullable=False, server_default=""),
    Column("sentiment_score", Double, nullable=True),
    Column("topics", JSON, nullable=True),  # [{"label", "confidence"}], most confident first
    Column("intents", JSON, nullable=True),
    Column("turn_sentiments", JSON, nullable=True),  # [{"idx", "sentiment", "score"}]
    Column("search_text", Text, nullable=False, server_default=""),
)

# The topics and intents of each call, one row per label: what the list's topic= and intent=
# filters look up (a JSON column cannot be indexed the same way on both databases).
call_insight_labels = Table(
    "call_insight_labels",
    metadata,
    Column("call_sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), nullable=False),
    Column("kind", String(8), nullable=False),  # topic | intent
    Column("label", String(200), nullable=False),  # as Deepgram wrote it
    Column("folded", String(200), nullable=False),  # casefolded: what filters compare
    PrimaryKeyConstraint("call_sid", "kind", "folded", name="pk_call_insight_labels"),
    Index("ix_call_insight_labels_kind_folded", "kind", "folded"),
)


def _call_rollup(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("bucket", BigInteger, nullable=False),
        Column("profile", String(64), nullable=False),
        Column("outcome", String(64), nullable=False),
        Column("calls", Integer, nullable=False),
        Column("duration_ms", BigInteger, nullable=False),
        Column("bot_turns", Integer, nullable=False),
        Column("barge_ins", Integer, nullable=False),
        Column("barged_calls", Integer, nullable=False),
        Column("reconnects", Integer, nullable=False),
        PrimaryKeyConstraint("bucket", "profile", "outcome", name=f"pk_{name}"),
    )


def _latency_rollup(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("bucket", BigInteger, nullable=False),
        Column("profile", String(64), nullable=False),
        Column("bin_ms", Integer, nullable=False),
        Column("turns", Integer, nullable=False),
        PrimaryKeyConstraint("bucket", "profile", "bin_ms", name=f"pk_{name}"),
    )


# 15-minute buckets (any time zone's hours and days); hourly ones, a quarter of the rows, for
# long ranges in zones whose offsets are whole hours.
call_rollup = _call_rollup("call_rollup")
latency_rollup = _latency_rollup("latency_rollup")
call_rollup_hourly = _call_rollup("call_rollup_hourly")
latency_rollup_hourly = _latency_rollup("latency_rollup_hourly")


# --- QA (store/qa_notes.py, qa_tags.py, qa_scores.py, review_queue.py; revision 0010) ------
# Every change to these is audited in its own transaction (audit_log), so history outlives a
# deleted note or a replaced score.
call_notes = Table(
    "call_notes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "call_sid",
        String(64),
        ForeignKey("calls.sid", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("turn_idx", Integer, nullable=True),  # None: a note on the whole call
    Column("author", String(128), nullable=False),
    Column("created_at", Double, nullable=False),  # epoch s
    Column("updated_at", Double, nullable=False),  # epoch s
    Column("text", Text, nullable=False),
)
call_tags = Table(
    "call_tags",
    metadata,
    Column("call_sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), nullable=False),
    Column("tag", String(64), nullable=False, index=True),
    Column("added_by", String(128), nullable=False),
    Column("added_at", Double, nullable=False),  # epoch s
    PrimaryKeyConstraint("call_sid", "tag", name="pk_call_tags"),
)
# One current score per call, scorecard and scorer: scoring again replaces it (old in audit).
call_scores = Table(
    "call_scores",
    metadata,
    Column("call_sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), nullable=False),
    Column("scorecard", String(64), nullable=False),
    Column("scorer", String(128), nullable=False, index=True),
    Column("scored_at", Double, nullable=False),  # epoch s
    Column("answers", JSON, nullable=False),  # criterion id -> met (bool)
    Column("score", Double, nullable=False),  # 0-100, weighted
    Column("passed", Boolean, nullable=False),
    PrimaryKeyConstraint("call_sid", "scorecard", "scorer", name="pk_call_scores"),
)
# Why an ended call needs a look (store/review_rules.py): one row per rule that fired; a
# supervisor's "reviewed" stamps the call's flags and writes call_reviews.
review_flags = Table(
    "review_flags",
    metadata,
    Column("call_sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), nullable=False),
    Column("rule", String(32), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("flagged_at", Double, nullable=False),  # epoch s
    Column("reviewed_by", String(128), nullable=True),
    Column("reviewed_at", Double, nullable=True),  # epoch s; None: in the queue
    PrimaryKeyConstraint("call_sid", "rule", name="pk_review_flags"),
)
# The queue: open flags only (a small set however many calls were reviewed), by rule.
Index(
    "ix_review_flags_open",
    review_flags.c.rule,
    review_flags.c.call_sid,
    sqlite_where=review_flags.c.reviewed_at.is_(None),
    postgresql_where=review_flags.c.reviewed_at.is_(None),
)
call_reviews = Table(
    "call_reviews",
    metadata,
    Column("call_sid", String(64), ForeignKey("calls.sid", ondelete="CASCADE"), primary_key=True),
    Column("reviewed_by", String(128), nullable=False),
    Column("reviewed_at", Double, nullable=False),  # epoch s
)


def dialect_insert(dialect_name: str, table: Any) -> Any:
    """INSERT with the dialect's ON CONFLICT clauses (both SQLite and PostgreSQL have them)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table)


@functools.cache
def upsert_statement(
    dialect_name: str, table: Any, keys: tuple[str, ...], cols: tuple[str, ...]
) -> Any:
    """INSERT, or set `cols` of the row with the same `keys`. Built once per shape: each build
    makes an `excluded` alias of the whole table (dozens of objects in reference loops), which
    every write would otherwise leave to the cyclic garbage collector."""
    stmt = dialect_insert(dialect_name, table)
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols}
    )


TABLES = (
    "calls",
    "turns",
    "events",
    "users",
    "audit_log",
    "revoked_sessions",
    "instances",
    "stream_claims",
    "call_facts",
    "call_rollup",
    "latency_rollup",
    "call_rollup_hourly",
    "latency_rollup_hourly",
    "call_insights",
    "call_insight_labels",
    "call_notes",
    "call_tags",
    "call_scores",
    "review_flags",
    "call_reviews",
)
