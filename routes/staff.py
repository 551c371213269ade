"""Staff review UI: the call list (filters, search, live calls) and one call's timeline.

Every view of a transcript, export and recording is written to the audit log before it is
returned. Pages poll small HTML fragments (`/calls/rows`, `/calls/{sid}/timeline`) to update
live calls; the fragments reuse the page templates, so there is one rendering of each row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import wave
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from routes import insights_view, transfer_view
from routes.auth import require
from routes.explain import unanswered
from routes.qa import parse_qa_filters, qa_context
from routes.state import services_of
from routes.templates import render
from telephony.outcome import LABELS
from telephony.store import audit, waveform
from telephony.store.calls_csv import csv_lines
from telephony.store.export import as_json, as_text, clock, timeline
from telephony.store.queries import CallFilter, count_calls, get_call, profiles_seen, search_calls
from telephony.store.redact import redact
from telephony.transcript import Role

log = logging.getLogger(__name__)

PAGE_SIZE = 50
WAVEFORM_THREADS = 2


@dataclass
class ListQuery:
    """The list page's query string, parsed: the filter plus the form's echo and problems."""

    filter: CallFilter
    form: dict[str, str]
    errors: list[str] = field(default_factory=list)
    page: int = 1


def _day(
    value: str, tz_minutes: int, errors: list[str], label: str, zone: ZoneInfo | None = None
) -> datetime | None:
    """Midnight of a YYYY-MM-DD day in the viewer's time zone, as a UTC datetime: in `zone`
    (a named zone, right on a daylight-saving day) when given, else at a fixed offset."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        errors.append(f"{label}: not a date (YYYY-MM-DD)")
        return None
    if zone is not None:
        return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
    # JavaScript's getTimezoneOffset(): minutes to add to local time to get UTC.
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=tz_minutes)


def _zone(name: str, errors: list[str]) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(f"time zone: {name!r} is not a known zone")
        return None


def _int(value: str, errors: list[str], label: str, lo: int, hi: int) -> int | None:
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        errors.append(f"{label}: not a whole number")
        return None
    if not lo <= n <= hi:
        errors.append(f"{label}: must be between {lo} and {hi}")
        return None
    return n


def parse_list_query(params: Any) -> ListQuery:
    keys = (
        *("q", "number", "profile", "from", "to", "tz", "tzname"),
        *("interrupted", "min_latency", "status", "outcome"),
        *("topic", "intent"),  # post-call insights
    )
    form = {k: params.get(k, "").strip()[:500] for k in keys}
    errors: list[str] = []
    tz = _int(form["tz"], errors, "time zone", -14 * 60, 14 * 60) or 0
    zone = _zone(form["tzname"], errors)  # the dashboard's links name the zone
    after = _day(form["from"], tz, errors, "from", zone)
    # "to" is inclusive of the whole day: up to the next day's midnight.
    to_day = form["to"]
    if to_day and zone is not None:
        with contextlib.suppress(ValueError):
            to_day = (date.fromisoformat(to_day) + timedelta(days=1)).isoformat()
    before = _day(to_day, tz, errors, "to", zone)
    page = _int(params.get("page", ""), errors, "page", 1, 100_000) or 1
    interrupted = {"yes": True, "no": False}.get(form["interrupted"])
    status = form["status"] if form["status"] in ("live", "ended") else ""
    outcome = form["outcome"] if form["outcome"] in LABELS else ""
    flt = CallFilter(
        q=form["q"],
        number=form["number"],
        profile=form["profile"],
        started_after=after.timestamp() if after else None,
        started_before=(
            (before if zone is not None else before + timedelta(days=1)).timestamp()
            if before
            else None
        ),
        interrupted=interrupted,
        min_latency_ms=_int(form["min_latency"], errors, "minimum latency", 0, 600_000),
        status=status,
        outcome=outcome,
        topic=form["topic"],
        intent=form["intent"],
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    qa_form, qa_fields = parse_qa_filters(params, errors)  # tag, score, scorer, reviewed
    form.update(qa_form)
    return ListQuery(replace(flt, **qa_fields), form, errors, page)


async def _rows(request: Request, query: ListQuery) -> tuple[list[dict[str, Any]], int]:
    db = services_of(request.app).db
    rows = await search_calls(db, query.filter)
    total = await count_calls(db, replace(query.filter, limit=0, offset=0))
    await insights_view.attach(db, rows)
    await transfer_view.attach(db, rows)
    return rows, total


@require("staff")
async def call_list(request: Request) -> Response:
    query = parse_list_query(request.query_params)
    rows, total = await _rows(request, query)
    db = services_of(request.app).db
    if query.form["q"]:
        await audit.record(db, request.state.user.name, "calls.search", query.form["q"])
    context = {
        "rows": rows,
        "total": total,
        "query": query,
        "profiles": await profiles_seen(db),
        "outcomes": LABELS,
        "qa_tags": services_of(request.app).config.current.qa.tags,
        "page_size": PAGE_SIZE,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "insight_choices": await insights_view.filter_choices(db),
    }
    return render(request, "calls.html", context)


@require("staff")
async def call_csv(request: Request) -> Response:
    """Every call the list's filter matches (all pages), as CSV, streamed; audited."""
    query = parse_list_query(request.query_params)
    if query.errors:
        return PlainTextResponse("\n".join(query.errors) + "\n", status_code=400)
    db = services_of(request.app).db
    detail = {k: v for k, v in query.form.items() if v}
    await audit.record(db, request.state.user.name, "calls.export_csv", "", detail)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(
        csv_lines(db, replace(query.filter, limit=0, offset=0)),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="calls-{stamp}.csv"',
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
        },
    )


@require("staff")
async def call_rows(request: Request) -> Response:
    """The list's table body alone, for the page's polling of live calls."""
    query = parse_list_query(request.query_params)
    rows, total = await _rows(request, query)
    response = render(request, "_call_rows.html", {"rows": rows, "query": query})
    response.headers["x-total"] = str(total)
    return response


async def _call_or_404(request: Request) -> dict[str, Any] | Response:
    call = await get_call(services_of(request.app).db, request.path_params["sid"])
    if call is None:
        return render(request, "error.html", {"message": "No such call."}, status_code=404)
    return call


def _has_recording(call: dict[str, Any]) -> bool:
    path = call.get("recording_path")
    if not path:  # none recorded (NULL or empty)
        return False
    return Path(path).is_file()


def _right_channel(call: dict[str, Any]) -> str:
    """Who the recording's right channel is (telephony/store/recording.py): what the caller
    heard, i.e. the bot, or on a forked call the person who took it (transcribe mode, or after
    a bot's handover; the transcript's "Staff")."""
    person = "agent (the person who took the call)"
    if call.get("mode") == "transcribe":
        return person
    handover = next((e for e in call.get("events", ()) if e["kind"] == "handover"), None)
    if handover is None:
        return "bot as the caller heard it"
    return f"bot, then from the handover at {clock(handover['ms'])} the {person}"


def _interim(request: Request, sid: str) -> dict[Role, str]:
    """Live words not yet settled into a turn (transcribe engines, per side), for a call in
    progress on this instance. Never stored; redacted like the turns when the profile says."""
    call = services_of(request.app).registry.current(sid)
    if call is None or call.engine is None:
        return {}
    interim = call.engine.interim
    if not interim:
        return {}
    if call.profile.redaction:
        return {role: redact(text).text for role, text in interim.items()}
    return dict(interim)


def _unanswered(call: dict[str, Any], items: list[Any]) -> set[int]:
    """A live call's last caller turn may still get its answer: only ended calls are judged."""
    return unanswered(items, call.get("mode", "")) if call.get("ended_at") is not None else set()


@require("staff")
async def call_page(request: Request) -> Response:
    call = await _call_or_404(request)
    if isinstance(call, Response):
        return call
    db = services_of(request.app).db
    await audit.record(db, request.state.user.name, "call.view", call["sid"])
    items = timeline(call)
    insights = await insights_view.of_call(db, call["sid"])
    context = {
        "call": call,
        "items": items,
        "unanswered": _unanswered(call, items),
        "has_recording": _has_recording(call),
        "right_channel": _right_channel(call),
        "interim": _interim(request, call["sid"]),
        "transfer": transfer_view.of_call(call),
        "insights": insights,
        "turn_sentiment": insights_view.turn_sentiments(insights),
        "qa": await qa_context(request, call),
    }
    return render(request, "call.html", context)


@require("staff")
async def call_timeline(request: Request) -> Response:
    """The timeline fragment alone, polled while the call is live (the view was audited)."""
    call = await _call_or_404(request)
    if isinstance(call, Response):
        return call
    items = timeline(call)
    insights = await insights_view.of_call(services_of(request.app).db, call["sid"])
    context = {
        "call": call,
        "items": items,
        "unanswered": _unanswered(call, items),
        "interim": _interim(request, call["sid"]),
        "turn_sentiment": insights_view.turn_sentiments(insights),
        "qa": await qa_context(request, call),
    }
    response = render(request, "_timeline.html", context)
    response.headers["x-live"] = "1" if call.get("ended_at") is None else "0"
    return response


@require("staff")
async def call_export(request: Request) -> Response:
    call = await _call_or_404(request)
    if isinstance(call, Response):
        return call
    fmt = request.url.path.rsplit(".", 1)[-1]  # json | txt
    user, db = request.state.user.name, services_of(request.app).db
    await audit.record(db, user, "call.export", call["sid"], {"format": fmt})
    filename = f"call-{call['sid']}.{fmt}"
    headers = {
        "content-disposition": f'attachment; filename="{filename}"',
        "cache-control": "no-store",
    }
    if fmt == "json":
        body = json.dumps(as_json(call), indent=2, default=str)
        return Response(body, media_type="application/json", headers=headers)
    return PlainTextResponse(as_text(call), headers=headers)


@require("staff")
async def call_recording(request: Request) -> Response:
    call = await _call_or_404(request)
    if isinstance(call, Response):
        return call
    if not _has_recording(call):
        return PlainTextResponse("no recording", status_code=404)
    # The only place a recording is audited: the page's player preloads nothing, so this runs
    # when someone plays it. It asks for byte ranges as it seeks: audit the first request only.
    first = request.headers.get("range", "bytes=0-").startswith("bytes=0-")
    if first:
        user = request.state.user.name
        await audit.record(services_of(request.app).db, user, "call.recording", call["sid"])
    response = FileResponse(call["recording_path"], media_type="audio/wav")
    response.headers["cache-control"] = "no-store"
    return response


@require("staff")
async def call_waveform(request: Request) -> Response:
    """The recording's levels per channel (telephony/store/waveform.py) for the page to draw.
    Not audited: levels say when someone spoke, not what (the page view is audited)."""
    call = await _call_or_404(request)
    if isinstance(call, Response):
        return call
    if not _has_recording(call):
        return PlainTextResponse("no recording", status_code=404)
    # A few at a time in worker threads: an hour's WAV is ~115 MB to read.
    limiter = getattr(request.app.state, "waveform_limiter", None)
    if limiter is None:
        limiter = request.app.state.waveform_limiter = anyio.CapacityLimiter(WAVEFORM_THREADS)
    path = Path(call["recording_path"])
    try:
        levels = await anyio.to_thread.run_sync(waveform.cached, path, limiter=limiter)
    except (OSError, EOFError, ValueError, wave.Error) as exc:
        log.warning("waveform of %s: %s", call["sid"], exc)
        return PlainTextResponse("recording unreadable", status_code=404)
    response = Response(orjson.dumps(levels.as_json()), media_type="application/json")
    response.headers["cache-control"] = "private, no-cache"
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/calls", status_code=303)


routes = [
    Route("/", home),
    Route("/calls", call_list),
    Route("/calls/rows", call_rows),
    Route("/calls.csv", call_csv),
    Route("/calls/{sid}", call_page),
    Route("/calls/{sid}/timeline", call_timeline),
    Route("/calls/{sid}/export.json", call_export),
    Route("/calls/{sid}/export.txt", call_export),
    Route("/calls/{sid}/recording.wav", call_recording),
    Route("/calls/{sid}/waveform.json", call_waveform),
]
