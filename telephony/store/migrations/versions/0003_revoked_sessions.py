"""revoked_sessions: staff sessions ended by logout before their cookie expires

Revision ID: 0003_revoked_sessions
Revises: 0002_search
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_revoked_sessions"
down_revision = "0002_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revoked_sessions",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("ix_revoked_sessions_expires_at", "revoked_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("revoked_sessions")
