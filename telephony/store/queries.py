"""Read queries for the staff UI: the filtered call list, full-text search, one call.

Search (``CallFilter.q``) uses the index made by migration ``0002_search``: SQLite FTS5
(``turns_fts``) or a PostgreSQL GIN index on ``to_tsvector('english', text || heard)``.
The user's text is never handed to the database's query syntax as is: it is parsed here
into a small grammar and rebuilt, so no input can cause a syntax error.

Query grammar (the same on both backends):

* words are ANDed: ``refund order``; a word is a run of letters/digits (unicode), all other
  characters separate words, so ``e-mail`` / ``don't`` become a phrase of their parts;
* ``"opening hours"`` is a phrase (words adjacent, in order);
* ``-word`` / ``-"a phrase"`` excludes; ``or`` between terms: ``refund or cancel``
  (AND binds tighter: ``a b or c`` is ``(a AND b) OR c``);
* a group made only of exclusions is dropped; input without any searchable word (``"``,
  ``*``, ``AND (``, emoji ...) matches nothing. Input is capped at 1,000 characters and
  16 terms (and words per phrase), each word at 100 characters.

Matching is per turn: every required word must appear in one turn's ``text`` or ``heard``
(a call matches when any of its turns does), or in the call's post-call insights (summary,
topics and intents, taken together). Case-insensitive on both backends.

Backend differences (both stem English words, so ``refunds`` finds ``refund`` everywhere):

* SQLite (FTS5, ``porter unicode61 remove_diacritics 2``): each bare word is also a prefix
  (``refu`` finds ``refund``); quoted words and phrases are not. Accents are ignored
  (``cafe`` finds ``café``). There are no stop words (``the`` matches turns containing it).
* PostgreSQL (``websearch_to_tsquery('english', …)``): whole words only, no prefixes;
  English stop words are ignored, so a query of only stop words (``the``) matches nothing;
  accents matter (``cafe`` does not find ``café``).

Redaction placeholders (``[REDACTED:card]``) are indexed as the words ``redacted`` and
``card``; searching ordinary words is unaffected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    bindparam,
    case,
    column,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.outcome import Outcome
from telephony.store import insights_search
from telephony.store.qa_filters import qa_columns, qa_conditions
from telephony.store.schema import calls, events, turns

__all__ = ["CallFilter", "count_calls", "get_call", "profiles_seen", "search_calls"]

MARK_START, MARK_END = "«", "»"
SNIPPET_CHARS = 160

_MAX_QUERY_CHARS = 1_000
_MAX_TERMS = 16
_MAX_WORD_CHARS = 100

# Must stay identical to the index expression in migration 0002_search.
_PG_DOCUMENT = (
    "to_tsvector('english', coalesce(turns.text, '') || ' ' || coalesce(turns.heard, ''))"
)
_PG_HEADLINE_OPTS = f"HighlightAll=true, StartSel={MARK_START}, StopSel={MARK_END}"


@dataclass(frozen=True, slots=True)
class CallFilter:
    q: str = ""  # full-text search over turn text and heard text
    number: str = ""  # substring of from_number or to_number (digits/+ only matter)
    profile: str = ""  # exact profile name
    started_after: float | None = None  # epoch seconds, inclusive
    started_before: float | None = None  # epoch seconds, exclusive
    interrupted: bool | None = None  # True: calls with >=1 interrupted turn; False: none
    min_latency_ms: int | None = None  # calls having some turn with latency_ms >= this
    status: str = ""  # "" | "live" (ended_at IS NULL) | "ended"
    outcome: str = ""  # "" | an Outcome value: calls that ended so (end_reason)
    # -- post-call insights (telephony/store/insights_search.py) --
    topic: str = ""  # calls with this topic (case-insensitive, whole label)
    intent: str = ""  # calls with this intent
    # QA (telephony/store/qa_filters.py): a tag; one score row's scorer, range and pass/fail
    tag: str = ""
    scorer: str = ""
    min_score: float | None = None
    max_score: float | None = None
    passed: bool | None = None
    unreviewed: bool = False  # never marked reviewed, or flagged again since
    limit: int = 50
    offset: int = 0


# -- the search grammar ------------------------------------------------------------------

_CHUNK_RE = re.compile(r'(?P<neg>-?)(?:"(?P<phrase>[^"]*)"?|(?P<bare>[^\s"]+))')
_WORD_RE = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class _Term:
    words: tuple[str, ...]
    exact: bool  # quoted, or several words: no prefix matching on SQLite
    negated: bool


@dataclass(frozen=True, slots=True)
class _Search:
    fts5: str  # SQLite MATCH expression
    websearch: str  # PostgreSQL websearch_to_tsquery input


def _parse(q: str) -> list[list[_Term]]:
    """OR-groups of ANDed terms; only groups with at least one required term are kept."""
    groups: list[list[_Term]] = [[]]
    count = 0
    for m in _CHUNK_RE.finditer(q[:_MAX_QUERY_CHARS]):
        phrase, bare, neg = m.group("phrase"), m.group("bare"), bool(m.group("neg"))
        if bare is not None and not neg and bare.lower() == "or":
            if groups[-1]:
                groups.append([])
            continue
        found = _WORD_RE.findall(phrase or bare or "")[:_MAX_TERMS]
        words = tuple(w[:_MAX_WORD_CHARS] for w in found)
        if not words:
            continue
        groups[-1].append(_Term(words, phrase is not None or len(words) > 1, neg))
        count += 1
        if count >= _MAX_TERMS:
            break
    return [g for g in groups if any(not t.negated for t in g)]


def _fts5_term(t: _Term) -> str:
    # Words hold only letters and digits, so the double quotes cannot be broken out of.
    return f'"{" ".join(t.words)}"' if t.exact else f'"{t.words[0]}"*'


def _search(q: str) -> _Search | None:
    """The user's query rebuilt for each backend, or None when nothing is searchable."""
    groups = _parse(q)
    if not groups:
        return None
    fts5, web = [], []
    for g in groups:
        pos = " AND ".join(_fts5_term(t) for t in g if not t.negated)
        negs = " OR ".join(_fts5_term(t) for t in g if t.negated)
        fts5.append(f"({pos}) NOT ({negs})" if negs else f"({pos})")
        # Every term quoted: a word such as "or" is then never read as an operator.
        web.append(" ".join(f'{"-" if t.negated else ""}"{" ".join(t.words)}"' for t in g))
    return _Search(" OR ".join(fts5), " or ".join(web))


def _number_digits(number: str) -> str:
    return "".join(c for c in number if c in "0123456789+")


# -- conditions --------------------------------------------------------------------------


def _dialect(engine: AsyncEngine | AsyncConnection) -> str:
    return engine.dialect.name


def _matching_sids(search: _Search, dialect: str) -> Any:
    """SELECT call_sid FROM turns WHERE <the turn matches>."""
    if dialect == "sqlite":
        fts = (
            text("SELECT rowid FROM turns_fts WHERE turns_fts MATCH :fts")
            .bindparams(fts=search.fts5)
            .columns(column("rowid"))
        )
        return select(turns.c.call_sid).where(literal_column("turns.rowid").in_(fts))
    if dialect == "postgresql":
        cond = text(f"{_PG_DOCUMENT} @@ websearch_to_tsquery('english', :fts)").bindparams(
            fts=search.websearch
        )
        return select(turns.c.call_sid).where(cond)
    raise NotImplementedError(f"full-text search is not available on {dialect}")


def conditions(f: CallFilter, dialect: str) -> list[ColumnElement[bool]]:
    """The WHERE clauses of `f` over `calls` (the list, its count and its CSV export)."""
    if f.status not in ("", "live", "ended"):
        raise ValueError(f"status must be '', 'live' or 'ended', not {f.status!r}")
    if f.outcome and f.outcome not in tuple(Outcome):
        raise ValueError(f"outcome must be '' or one of {[str(o) for o in Outcome]}")
    conds: list[ColumnElement[bool]] = []
    if f.q.strip():
        search = _search(f.q)
        conds.append(false() if search is None else _matches(search, dialect))
    if digits := _number_digits(f.number):
        conds.append(or_(calls.c.from_number.contains(digits), calls.c.to_number.contains(digits)))
    if f.profile:
        conds.append(calls.c.profile == f.profile)
    if f.started_after is not None:
        conds.append(calls.c.started_at >= f.started_after)
    if f.started_before is not None:
        conds.append(calls.c.started_at < f.started_before)
    if f.interrupted is not None:
        any_interrupted = exists().where(
            turns.c.call_sid == calls.c.sid, turns.c.interrupted == true()
        )
        conds.append(any_interrupted if f.interrupted else not_(any_interrupted))
    if f.min_latency_ms is not None:
        conds.append(
            exists().where(turns.c.call_sid == calls.c.sid, turns.c.latency_ms >= f.min_latency_ms)
        )
    if f.status == "live":
        conds.append(calls.c.ended_at.is_(None))
    elif f.status == "ended":
        conds.append(calls.c.ended_at.is_not(None))
    if f.outcome:
        conds.append(calls.c.end_reason == f.outcome)
    # -- post-call insights --
    if f.topic.strip():
        conds.append(insights_search.label_condition("topic", f.topic))
    if f.intent.strip():
        conds.append(insights_search.label_condition("intent", f.intent))
    return conds + qa_conditions(f)


def _matches(search: _Search, dialect: str) -> ColumnElement[bool]:
    """A turn of the call matches, or its insights' summary, topics or intents do."""
    in_insights = insights_search.matching_sids(search.fts5, search.websearch, dialect)
    return or_(calls.c.sid.in_(_matching_sids(search, dialect)), calls.c.sid.in_(in_insights))


# -- snippets ----------------------------------------------------------------------------


def _clip(marked: str, width: int = SNIPPET_CHARS) -> str:
    """At most ``width`` characters of ``marked`` around its first mark, cut at spaces,
    with "…" where text was left out and no mark left open."""
    marked = " ".join(marked.split())
    if len(marked) <= width:
        return marked
    room = width - 2  # for the ellipses
    first = max(marked.find(MARK_START), 0)
    start = max(0, first - room // 3)
    if start > 0:
        space = marked.find(" ", start, first)
        start = space + 1 if space != -1 else start
    end = min(len(marked), start + room)
    if end < len(marked):
        space = marked.rfind(" ", start + room // 2, end)
        end = space if space != -1 else end
    out = marked[start:end].strip()
    if out.endswith(MARK_START):
        out = out[: -len(MARK_START)].rstrip()
    if out.count(MARK_START) > out.count(MARK_END):
        out += MARK_END
    return ("…" if start > 0 else "") + out + ("…" if end < len(marked) else "")


def _pick(text_hl: str | None, heard_hl: str | None) -> str:
    for candidate in (text_hl, heard_hl):
        if candidate and MARK_START in candidate:
            return candidate
    return text_hl or heard_hl or ""


async def _snippets(
    conn: AsyncConnection, search: _Search, dialect: str, sids: list[str]
) -> dict[str, str]:
    """For each call: its best-ranked matching turn (ties: the earliest), highlighted."""
    sids_param: BindParameter[str] = bindparam("sids", sids, expanding=True)  # one per call_sid
    found: dict[str, tuple[str | None, str | None]] = {}
    if dialect == "sqlite":
        ranked = text(
            "SELECT turns.call_sid, turns.idx, turns.rowid, bm25(turns_fts) "
            "FROM turns_fts JOIN turns ON turns.rowid = turns_fts.rowid "
            "WHERE turns_fts MATCH :fts AND turns.call_sid IN :sids"
        ).bindparams(sids_param, fts=search.fts5)
        best: dict[str, tuple[float, int, int]] = {}
        for sid, idx, rowid, score in await conn.execute(ranked):
            if sid not in best or (score, idx) < best[sid][:2]:
                best[sid] = (score, idx, rowid)
        if not best:
            return {}
        by_rowid = {rowid: sid for sid, (_, _, rowid) in best.items()}
        highlighted = text(
            f"SELECT rowid, highlight(turns_fts, 0, '{MARK_START}', '{MARK_END}'), "
            f"highlight(turns_fts, 1, '{MARK_START}', '{MARK_END}') "
            "FROM turns_fts WHERE turns_fts MATCH :fts AND rowid IN :rowids"
        ).bindparams(bindparam("rowids", list(by_rowid), expanding=True), fts=search.fts5)
        for rowid, text_hl, heard_hl in await conn.execute(highlighted):
            found[by_rowid[rowid]] = (text_hl, heard_hl)
    else:
        stmt = text(
            f"SELECT call_sid, "
            f"ts_headline('english', coalesce(text, ''), query, '{_PG_HEADLINE_OPTS}'), "
            f"ts_headline('english', coalesce(heard, ''), query, '{_PG_HEADLINE_OPTS}') "
            "FROM ("
            "  SELECT turns.call_sid, turns.text, turns.heard, query, row_number() OVER ("
            f"   PARTITION BY turns.call_sid ORDER BY ts_rank({_PG_DOCUMENT}, query) DESC,"
            "    turns.idx) AS n"
            "  FROM turns, websearch_to_tsquery('english', :fts) AS query"
            f"  WHERE turns.call_sid IN :sids AND {_PG_DOCUMENT} @@ query"
            ") AS best WHERE n = 1"
        ).bindparams(sids_param, fts=search.websearch)
        for sid, text_hl, heard_hl in await conn.execute(stmt):
            found[sid] = (text_hl, heard_hl)
    return {sid: _clip(_pick(*hl)) for sid, hl in found.items()}


# -- the API -----------------------------------------------------------------------------


async def search_calls(engine: AsyncEngine, f: CallFilter) -> list[dict[str, Any]]:
    """One page of calls matching ``f``, newest first (``started_at`` desc, then ``sid``).

    Each dict has every ``calls`` column plus ``turn_count``, ``interrupted_count``,
    ``max_latency_ms`` (None without latencies), ``live`` (``ended_at`` is None), ``qa`` (its
    tags, latest score, reviewed and open flags: ``qa_filters.qa_columns``) and ``snippet``:
    None without ``q``; with ``q``, plain unescaped text of at most ~160 characters from the
    call's best-ranked matching turn (ties: the earliest turn), taken from its ``text``, or
    from ``heard`` when only that matched (None when only the call's insights matched).
    Matched words are wrapped in « and » (``MARK_START``/``MARK_END``), e.g.
    ``"…I'd like a «refund» for my order"``; "…" marks text left out. Matches follow each
    backend's stemming (``refunds`` query:
    ``«refund»`` marked). A « or » already in the transcript is passed through as is.

    See the module docstring for the search grammar and backend differences. Raises
    ValueError for an unknown ``status`` or ``outcome``; never for anything in ``q`` or
    ``number``.
    """
    limit, offset = max(0, f.limit), max(0, f.offset)
    if limit == 0:
        return []
    dialect = _dialect(engine)
    page = (
        select(calls)
        .where(*conditions(f, dialect))
        .order_by(calls.c.started_at.desc(), calls.c.sid)
        .limit(limit)
        .offset(offset)
    )
    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(page)]
        if not rows:
            return []
        sids = [r["sid"] for r in rows]
        interrupted = func.sum(case((turns.c.interrupted == true(), 1), else_=0))
        agg = (
            select(turns.c.call_sid, func.count(), interrupted, func.max(turns.c.latency_ms))
            .where(turns.c.call_sid.in_(sids))
            .group_by(turns.c.call_sid)
        )
        stats = {sid: (n, i, lat) for sid, n, i, lat in await conn.execute(agg)}
        search = _search(f.q) if f.q.strip() else None
        snippets = await _snippets(conn, search, dialect, sids) if search else {}
        qa = await qa_columns(conn, sids)
    for row in rows:
        n, i, lat = stats.get(row["sid"], (0, 0, None))
        row.update(
            turn_count=int(n),
            interrupted_count=int(i or 0),
            max_latency_ms=None if lat is None else int(lat),
            live=row["ended_at"] is None,
            snippet=snippets.get(row["sid"]) if search else None,
            qa=qa[row["sid"]],
        )
    return rows


async def count_calls(engine: AsyncEngine, f: CallFilter) -> int:
    """How many calls match ``f`` in all (``limit`` and ``offset`` are ignored)."""
    stmt = select(func.count()).select_from(calls).where(*conditions(f, _dialect(engine)))
    async with engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def profiles_seen(engine: AsyncEngine) -> list[str]:
    """Distinct non-empty profile names of stored calls, sorted."""
    stmt = select(calls.c.profile).distinct().where(calls.c.profile != "").order_by(calls.c.profile)
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).scalars())


async def get_call(engine: AsyncEngine, sid: str) -> dict[str, Any] | None:
    """The call row with ``turns`` (by idx) and ``events`` (by ms, then arrival), or None.

    The same shape as ``TranscriptStore.get_call``, for readers holding only an engine.
    """
    async with engine.connect() as conn:
        row = (await conn.execute(select(calls).where(calls.c.sid == sid))).first()
        if row is None:
            return None
        call = dict(row._mapping)
        t = await conn.execute(select(turns).where(turns.c.call_sid == sid).order_by(turns.c.idx))
        call["turns"] = [dict(r._mapping) for r in t]
        e = await conn.execute(
            select(events).where(events.c.call_sid == sid).order_by(events.c.ms, events.c.id)
        )
        call["events"] = [dict(r._mapping) for r in e]
    return call
