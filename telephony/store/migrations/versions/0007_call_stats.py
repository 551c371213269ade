"""call_facts, call_rollup, latency_rollup: the dashboard's numbers, filled for ended calls

Revision ID: 0007_call_stats
Revises: 0006_stream_claims
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_call_stats"
down_revision = "0006_stream_claims"
branch_labels = None
depends_on = None

BACKFILL_BATCH = 500


def upgrade() -> None:
    op.create_table(
        "call_facts",
        sa.Column(
            "sid",
            sa.String(64),
            sa.ForeignKey("calls.sid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("bucket", sa.BigInteger, nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        sa.Column("bot_turns", sa.Integer, nullable=False),
        sa.Column("barge_ins", sa.Integer, nullable=False),
        sa.Column("reconnects", sa.Integer, nullable=False),
        sa.Column("latency_bins", sa.JSON, nullable=True),
    )
    op.create_table(
        "call_rollup",
        sa.Column("bucket", sa.BigInteger, nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        sa.Column("bot_turns", sa.Integer, nullable=False),
        sa.Column("barge_ins", sa.Integer, nullable=False),
        sa.Column("barged_calls", sa.Integer, nullable=False),
        sa.Column("reconnects", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("bucket", "profile", "outcome", name="pk_call_rollup"),
    )
    op.create_table(
        "latency_rollup",
        sa.Column("bucket", sa.BigInteger, nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("bin_ms", sa.Integer, nullable=False),
        sa.Column("turns", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("bucket", "profile", "bin_ms", name="pk_latency_rollup"),
    )
    _backfill()


def _backfill() -> None:
    """Facts and rollups for the calls already ended, by the same code that keeps them."""
    from telephony.store.call_stats import refresh_facts_sync

    conn = op.get_bind()
    calls = sa.table("calls", sa.column("sid"), sa.column("ended_at"))
    sids = [
        r[0]
        for r in conn.execute(
            sa.select(calls.c.sid).where(calls.c.ended_at.is_not(None)).order_by(calls.c.sid)
        )
    ]
    for i in range(0, len(sids), BACKFILL_BATCH):
        refresh_facts_sync(conn, sids[i : i + BACKFILL_BATCH])


def downgrade() -> None:
    op.drop_table("latency_rollup")
    op.drop_table("call_rollup")
    op.drop_table("call_facts")
