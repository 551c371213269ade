"""call_insights: Deepgram Text Intelligence results for an ended call

``call_insights`` holds one row per ended call of a profile with insights on (status
pending | done | failed | off) and ``call_insight_labels`` its topics and intents, one row per
label, for the calls list's filters. ``call_insights.search_text`` (summary, topics, intents)
is indexed for the list's full-text search the way revision 0002 indexes turns:

SQLite: an FTS5 external-content table ``call_insights_fts`` keyed by the implicit rowid of
``call_insights``, kept in step by triggers (the store writes with INSERT ... ON CONFLICT DO
UPDATE, which fires the UPDATE trigger; 0002's caveats on VACUUM and rowids apply here too).
PostgreSQL: a GIN expression index ``ix_call_insights_search``; queries use the same
expression (telephony/store/insights_search.py).

Revision ID: 0009_insights
Revises: 0008_user_disabled
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_insights"
down_revision = "0008_user_disabled"
branch_labels = None
depends_on = None

# Written out here (not imported) so later code edits don't rewrite history.
_SQLITE_UP = (
    """
    CREATE VIRTUAL TABLE call_insights_fts USING fts5(
        search_text,
        content='call_insights', content_rowid='rowid',
        tokenize='porter unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER call_insights_fts_ai AFTER INSERT ON call_insights BEGIN
        INSERT INTO call_insights_fts(rowid, search_text) VALUES (new.rowid, new.search_text);
    END
    """,
    """
    CREATE TRIGGER call_insights_fts_ad AFTER DELETE ON call_insights BEGIN
        INSERT INTO call_insights_fts(call_insights_fts, rowid, search_text)
            VALUES ('delete', old.rowid, old.search_text);
    END
    """,
    """
    CREATE TRIGGER call_insights_fts_au AFTER UPDATE ON call_insights BEGIN
        INSERT INTO call_insights_fts(call_insights_fts, rowid, search_text)
            VALUES ('delete', old.rowid, old.search_text);
        INSERT INTO call_insights_fts(rowid, search_text) VALUES (new.rowid, new.search_text);
    END
    """,
)

_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS call_insights_fts_au",
    "DROP TRIGGER IF EXISTS call_insights_fts_ad",
    "DROP TRIGGER IF EXISTS call_insights_fts_ai",
    "DROP TABLE IF EXISTS call_insights_fts",
)

# The expression must stay identical to insights_search._PG_DOCUMENT.
_PG_UP = (
    "CREATE INDEX ix_call_insights_search ON call_insights USING gin "
    "(to_tsvector('english', coalesce(search_text, '')))",
)

_PG_DOWN = ("DROP INDEX IF EXISTS ix_call_insights_search",)


def _dialect() -> str:
    return op.get_context().dialect.name


def upgrade() -> None:
    op.create_table(
        "call_insights",
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.sid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Double, nullable=False),  # epoch s
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("summary", sa.Text, nullable=False, server_default=""),
        sa.Column("sentiment", sa.String(16), nullable=False, server_default=""),
        sa.Column("sentiment_score", sa.Double, nullable=True),
        sa.Column("topics", sa.JSON, nullable=True),
        sa.Column("intents", sa.JSON, nullable=True),
        sa.Column("turn_sentiments", sa.JSON, nullable=True),
        sa.Column("search_text", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_call_insights_status", "call_insights", ["status"])
    op.create_table(
        "call_insight_labels",
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("folded", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("call_sid", "kind", "folded", name="pk_call_insight_labels"),
    )
    op.create_index("ix_call_insight_labels_kind_folded", "call_insight_labels", ["kind", "folded"])
    statements = {"sqlite": _SQLITE_UP, "postgresql": _PG_UP}.get(_dialect(), ())
    for sql in statements:
        op.execute(sql)


def downgrade() -> None:
    statements = {"sqlite": _SQLITE_DOWN, "postgresql": _PG_DOWN}.get(_dialect(), ())
    for sql in statements:
        op.execute(sql)
    op.drop_index("ix_call_insight_labels_kind_folded", "call_insight_labels")
    op.drop_table("call_insight_labels")
    op.drop_index("ix_call_insights_status", "call_insights")
    op.drop_table("call_insights")
