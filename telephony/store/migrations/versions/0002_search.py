"""search: full-text index over turns.text and turns.heard

SQLite: an FTS5 external-content table ``turns_fts`` over ``turns`` (keyed by the implicit
rowid of ``turns``), kept in step by AFTER INSERT / UPDATE / DELETE triggers, and backfilled
with the FTS5 ``rebuild`` command. The store upserts turns with INSERT ... ON CONFLICT DO
UPDATE, which fires the UPDATE trigger (old text out of the index, new text in).
Caveats of keying on the implicit rowid: ``VACUUM`` may renumber it, and a batch-mode
(copy-and-rename) migration of ``turns`` renumbers it and drops the triggers; after either,
recreate the triggers if needed and run ``INSERT INTO turns_fts(turns_fts) VALUES('rebuild')``.
``INSERT OR REPLACE`` into turns would bypass the DELETE trigger (unless recursive_triggers
is on); the store never does that.

PostgreSQL: a GIN expression index ``ix_turns_search``; queries must use the same expression
(see telephony/store/queries.py) for the planner to use it.

Revision ID: 0002_search
Revises: 0001_initial
Create Date: 2025-01-02
"""

from __future__ import annotations

from alembic import op

revision = "0002_search"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

# Written out here (not imported) so later code edits don't rewrite history.
_SQLITE_UP = (
    """
    CREATE VIRTUAL TABLE turns_fts USING fts5(
        text, heard,
        content='turns', content_rowid='rowid',
        tokenize='porter unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER turns_fts_ai AFTER INSERT ON turns BEGIN
        INSERT INTO turns_fts(rowid, text, heard) VALUES (new.rowid, new.text, new.heard);
    END
    """,
    """
    CREATE TRIGGER turns_fts_ad AFTER DELETE ON turns BEGIN
        INSERT INTO turns_fts(turns_fts, rowid, text, heard)
            VALUES ('delete', old.rowid, old.text, old.heard);
    END
    """,
    """
    CREATE TRIGGER turns_fts_au AFTER UPDATE ON turns BEGIN
        INSERT INTO turns_fts(turns_fts, rowid, text, heard)
            VALUES ('delete', old.rowid, old.text, old.heard);
        INSERT INTO turns_fts(rowid, text, heard) VALUES (new.rowid, new.text, new.heard);
    END
    """,
    # Backfill: index every existing turn.
    "INSERT INTO turns_fts(turns_fts) VALUES ('rebuild')",
)

_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS turns_fts_au",
    "DROP TRIGGER IF EXISTS turns_fts_ad",
    "DROP TRIGGER IF EXISTS turns_fts_ai",
    "DROP TABLE IF EXISTS turns_fts",
)

# The expression must stay identical to queries._PG_DOCUMENT.
_PG_UP = (
    "CREATE INDEX ix_turns_search ON turns USING gin "
    "(to_tsvector('english', coalesce(text, '') || ' ' || coalesce(heard, '')))",
)

_PG_DOWN = ("DROP INDEX IF EXISTS ix_turns_search",)


def _dialect() -> str:
    # get_context() (not get_bind()) so that offline `--sql` mode works too.
    return op.get_context().dialect.name


def upgrade() -> None:
    statements = {"sqlite": _SQLITE_UP, "postgresql": _PG_UP}.get(_dialect(), ())
    for sql in statements:
        op.execute(sql)


def downgrade() -> None:
    statements = {"sqlite": _SQLITE_DOWN, "postgresql": _PG_DOWN}.get(_dialect(), ())
    for sql in statements:
        op.execute(sql)
