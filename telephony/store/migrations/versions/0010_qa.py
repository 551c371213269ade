"""QA: call notes, tags, scores, review flags and reviews

Calls ended before this revision have no flags: `telephony qa flag --since YYYY-MM-DD` computes
them with the current YAML's thresholds (the migration cannot read the YAML).

Revision ID: 0010_qa
Revises: 0009_insights
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_qa"
down_revision = "0009_insights"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _call_sid(*, primary_key: bool = False) -> sa.Column:
    fk = sa.ForeignKey("calls.sid", ondelete="CASCADE")
    return sa.Column("call_sid", sa.String(64), fk, nullable=False, primary_key=primary_key)


def upgrade() -> None:
    op.create_table(
        "call_notes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        _call_sid(),
        sa.Column("turn_idx", sa.Integer, nullable=True),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_index("ix_call_notes_call_sid", "call_notes", ["call_sid"])
    op.create_table(
        "call_tags",
        _call_sid(),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.Column("added_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("call_sid", "tag", name="pk_call_tags"),
    )
    op.create_index("ix_call_tags_tag", "call_tags", ["tag"])
    op.create_table(
        "call_scores",
        _call_sid(),
        sa.Column("scorecard", sa.String(64), nullable=False),
        sa.Column("scorer", sa.String(128), nullable=False),
        sa.Column("scored_at", sa.Double, nullable=False),
        sa.Column("answers", sa.JSON, nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("call_sid", "scorecard", "scorer", name="pk_call_scores"),
    )
    op.create_index("ix_call_scores_scorer", "call_scores", ["scorer"])
    op.create_table(
        "review_flags",
        _call_sid(),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("flagged_at", sa.Double, nullable=False),
        sa.Column("reviewed_by", sa.String(128), nullable=True),
        sa.Column("reviewed_at", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("call_sid", "rule", name="pk_review_flags"),
    )
    open_only = sa.text("reviewed_at IS NULL")
    op.create_index(
        "ix_review_flags_open",
        "review_flags",
        ["rule", "call_sid"],
        sqlite_where=open_only,
        postgresql_where=open_only,
    )
    op.create_table(
        "call_reviews",
        _call_sid(primary_key=True),
        sa.Column("reviewed_by", sa.String(128), nullable=False),
        sa.Column("reviewed_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("call_reviews")
    op.drop_index("ix_review_flags_open", "review_flags")
    op.drop_table("review_flags")
    op.drop_index("ix_call_scores_scorer", "call_scores")
    op.drop_table("call_scores")
    op.drop_index("ix_call_tags_tag", "call_tags")
    op.drop_table("call_tags")
    op.drop_index("ix_call_notes_call_sid", "call_notes")
    op.drop_table("call_notes")
