"""initial: calls, turns, events, users, audit_log

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

# Written out (not imported from schema.py) so later schema edits don't rewrite history.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column("from_number", sa.String(32), nullable=False, server_default=""),
        sa.Column("to_number", sa.String(32), nullable=False, server_default=""),
        sa.Column("profile", sa.String(64), nullable=False, server_default=""),
        sa.Column("mode", sa.String(16), nullable=False, server_default=""),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("ended_at", sa.Double, nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=False, server_default=""),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.Column("recording_path", sa.Text, nullable=True),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_table(
        "turns",
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
        sa.Column("heard", sa.Text, nullable=True),
        sa.Column("interrupted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("interrupted_at_ms", sa.Integer, nullable=True),
        sa.Column("start_ms", sa.Integer, nullable=False),
        sa.Column("end_ms", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=True),
        sa.Column("meta", sa.JSON, nullable=True),
        sa.PrimaryKeyConstraint("call_sid", "idx", name="pk_turns"),
    )
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("ms", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON, nullable=True),
    )
    op.create_index("ix_events_call_sid", "events", ["call_sid"])
    op.create_table(
        "users",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text, nullable=False, server_default=""),
        sa.Column("detail", sa.JSON, nullable=True),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("users")
    op.drop_table("events")
    op.drop_table("turns")
    op.drop_table("calls")
