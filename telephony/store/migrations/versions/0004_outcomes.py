"""outcomes: calls.end_reason from a fixed set, calls.end_detail, calls.instance_id, instances

``end_reason`` becomes one of the outcomes in telephony/outcome.py; the free text it
held moves to the new ``end_detail``, so nothing is lost. Existing rows are mapped:

* ``stop`` (Twilio's stop, whoever had ended the call) by the call's events, the only record
  old code kept of what it did: ``upstream-failed`` -> failover, ``transfer`` or
  ``handover`` -> transferred, ``hangup`` -> bot-hangup, none of them -> caller-hangup;
* ``server draining`` -> drained; ``max call duration`` -> max-duration;
* any other text ("twilio closed the socket", "engine failed: …", "internal error", "too many
  malformed frames", …) -> error; an ended row with no reason at all -> error too;
* values already in the set are kept; live rows (ended_at NULL, reason "") are untouched.

``instance_id`` names the process carrying a call and ``instances`` holds each process's
heartbeat, for closing calls a crashed instance left open (telephony/store/instances.py).
Rows from before this revision have ``instance_id`` "".

No CHECK constraint on end_reason: on SQLite it would mean rebuilding ``calls``, whose
foreign keys (ON DELETE CASCADE) would empty turns and events. The code writes only outcomes.

Downgrade puts the free text back into end_reason (where there is any) and drops the rest.

Revision ID: 0004_outcomes
Revises: 0003_revoked_sessions
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_outcomes"
down_revision = "0003_revoked_sessions"
branch_labels = None
depends_on = None

# Written out (not imported from telephony.outcome) so later code edits don't
# rewrite history.
OUTCOMES = (
    "caller-hangup",
    "bot-hangup",
    "transferred",
    "failover",
    "max-duration",
    "drained",
    "refused",
    "error",
    "restart",
)
# Old "stop" rows: the first matching event kind decides.
STOP_BY_EVENT = (
    ("failover", ("upstream-failed",)),
    ("transferred", ("transfer", "handover")),
    ("bot-hangup", ("hangup",)),
)
TEXT_TO_OUTCOME = {"server draining": "drained", "max call duration": "max-duration"}


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # constants above, never user text


def upgrade() -> None:
    op.add_column("calls", sa.Column("end_detail", sa.Text, nullable=False, server_default=""))
    op.add_column(
        "calls", sa.Column("instance_id", sa.String(64), nullable=False, server_default="")
    )
    known = _quoted(OUTCOMES)
    op.execute(
        f"UPDATE calls SET end_detail = end_reason "
        f"WHERE end_reason <> '' AND end_reason NOT IN ({known})"
    )
    for outcome, kinds in STOP_BY_EVENT:
        op.execute(
            f"UPDATE calls SET end_reason = '{outcome}' WHERE end_reason = 'stop' AND EXISTS "
            f"(SELECT 1 FROM events WHERE events.call_sid = calls.sid "
            f"AND events.kind IN ({_quoted(kinds)}))"
        )
    op.execute("UPDATE calls SET end_reason = 'caller-hangup' WHERE end_reason = 'stop'")
    for old, outcome in TEXT_TO_OUTCOME.items():
        op.execute(f"UPDATE calls SET end_reason = '{outcome}' WHERE end_reason = '{old}'")
    op.execute(
        f"UPDATE calls SET end_reason = 'error' WHERE end_reason NOT IN ({known}) "
        f"AND (end_reason <> '' OR ended_at IS NOT NULL)"
    )
    op.create_index("ix_calls_end_reason", "calls", ["end_reason"])
    op.create_index(
        "ix_calls_open",
        "calls",
        ["instance_id"],
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, server_default=""),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("last_seen", sa.Double, nullable=False),
    )
    op.create_index("ix_instances_last_seen", "instances", ["last_seen"])


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_index("ix_calls_open", "calls")
    op.drop_index("ix_calls_end_reason", "calls")
    op.execute("UPDATE calls SET end_reason = substr(end_detail, 1, 64) WHERE end_detail <> ''")
    # Plain ALTER TABLE … DROP COLUMN (SQLite >= 3.35): a batch copy of calls would cascade.
    op.execute("ALTER TABLE calls DROP COLUMN instance_id")
    op.execute("ALTER TABLE calls DROP COLUMN end_detail")
