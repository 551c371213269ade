"""The calls list's insights conditions: `topic=` / `intent=` filters, and the full-text
search reaching summaries, topics and intents as well as turns.

Filters compare casefolded labels (`call_insight_labels.folded`, indexed with `kind`).
Search uses the index of revision 0009 over `call_insights.search_text`, with the query the
list's grammar already built for turns (telephony/store/queries.py): the same words match the
same way here as in the transcript (FTS5 prefixes on SQLite, English stems on both).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, column, exists, literal_column, select, text

from telephony.store.insights import fold
from telephony.store.schema import call_insight_labels, call_insights, calls

# Must stay identical to the index expression in migration 0009_insights.
_PG_DOCUMENT = "to_tsvector('english', coalesce(call_insights.search_text, ''))"


def label_condition(kind: str, value: str) -> ColumnElement[bool]:
    """Calls with this topic or intent (case-insensitive, whole label)."""
    return exists().where(
        call_insight_labels.c.call_sid == calls.c.sid,
        call_insight_labels.c.kind == kind,
        call_insight_labels.c.folded == fold(value),
    )


def matching_sids(fts5: str, websearch: str, dialect: str) -> Any:
    """SELECT call_sid FROM call_insights WHERE <its search text matches>."""
    if dialect == "sqlite":
        fts = (
            text("SELECT rowid FROM call_insights_fts WHERE call_insights_fts MATCH :ifts")
            .bindparams(ifts=fts5)
            .columns(column("rowid"))
        )
        return select(call_insights.c.call_sid).where(
            literal_column("call_insights.rowid").in_(fts)
        )
    if dialect == "postgresql":
        cond = text(f"{_PG_DOCUMENT} @@ websearch_to_tsquery('english', :ifts)").bindparams(
            ifts=websearch
        )
        return select(call_insights.c.call_sid).where(cond)
    raise NotImplementedError(f"full-text search is not available on {dialect}")
