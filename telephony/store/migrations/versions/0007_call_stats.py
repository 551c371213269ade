"""call_facts and the 15-minute and hourly rollups: the dashboard's numbers, backfilled

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
    for suffix in ("", "_hourly"):
        op.create_table(
            f"call_rollup{suffix}",
            sa.Column("bucket", sa.BigInteger, nullable=False),
            sa.Column("profile", sa.String(64), nullable=False),
            sa.Column("outcome", sa.String(64), nullable=False),
            sa.Column("calls", sa.Integer, nullable=False),
            sa.Column("duration_ms", sa.BigInteger, nullable=False),
            sa.Column("bot_turns", sa.Integer, nullable=False),
            sa.Column("barge_ins", sa.Integer, nullable=False),
            sa.Column("barged_calls", sa.Integer, nullable=False),
            sa.Column("reconnects", sa.Integer, nullable=False),
            sa.PrimaryKeyConstraint("bucket", "profile", "outcome", name=f"pk_call_rollup{suffix}"),
        )
        op.create_table(
            f"latency_rollup{suffix}",
            sa.Column("bucket", sa.BigInteger, nullable=False),
            sa.Column("profile", sa.String(64), nullable=False),
            sa.Column("bin_ms", sa.Integer, nullable=False),
            sa.Column("turns", sa.Integer, nullable=False),
            sa.PrimaryKeyConstraint(
                "bucket", "profile", "bin_ms", name=f"pk_latency_rollup{suffix}"
            ),
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
    for suffix in ("_hourly", ""):
        op.drop_table(f"latency_rollup{suffix}")
        op.drop_table(f"call_rollup{suffix}")
    op.drop_table("call_facts")
