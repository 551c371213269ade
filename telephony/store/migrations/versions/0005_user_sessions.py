"""users.sessions_since: logins before it are ended (role change, password reset, re-added)

A session cookie stays signed and unexpired after its account is demoted, given a new
password, or removed and added again under the same name; the role alone, re-read on every
request, does not end it. Rows before this revision get 0 (their sessions stay valid).

Revision ID: 0005_user_sessions
Revises: 0004_outcomes
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_user_sessions"
down_revision = "0004_outcomes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("sessions_since", sa.Double, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sessions_since")
