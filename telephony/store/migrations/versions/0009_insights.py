"""call_insights: Deepgram Text Intelligence results for an ended call

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


def upgrade() -> None:
    op.create_table(
        "call_insights",
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.sid", ondelete="CASCADE"),
            primary_key=True,
        ),
        # pending | done | failed | off
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
    )
    op.create_index("ix_call_insights_status", "call_insights", ["status"])


def downgrade() -> None:
    op.drop_index("ix_call_insights_status", "call_insights")
    op.drop_table("call_insights")
