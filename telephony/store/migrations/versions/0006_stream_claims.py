"""stream_claims: one webhook answer and one carrying instance per call stream

Revision ID: 0006_stream_claims
Revises: 0005_user_sessions
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_stream_claims"
down_revision = "0005_user_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_claims",
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("part", sa.String(128), nullable=False, server_default=""),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("carried_by", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("call_sid", "part"),
    )
    op.create_index("ix_stream_claims_created_at", "stream_claims", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_stream_claims_created_at", table_name="stream_claims")
    op.drop_table("stream_claims")
