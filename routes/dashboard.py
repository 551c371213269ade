"""The supervisors' dashboard: a date range's calls at a glance, in the viewer's time zone.

The figures come from the store's rollups (telephony/store/dashboard.py); the page shows them
as tables (what a screen reader reads) and, drawn by the vendored uPlot from the same numbers,
as charts. Every period's calls link to the calls list filtered to that day (and outcome).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from routes.auth import require
from routes.state import services_of
from routes.templates import render
from telephony.outcome import LABELS
from telephony.store.dashboard import Dashboard, Period, dashboard, dashboard_profiles

DEFAULT_DAYS = 7
MAX_DAYS = 366


@dataclass
class DashboardQuery:
    since: date
    until: date
    tz: str
    profiles: list[str]
    errors: list[str] = field(default_factory=list)


def parse_query(params: Any, today_utc: date) -> DashboardQuery:
    errors: list[str] = []
    tz = (params.get("tz") or "UTC").strip()[:64]
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(f"time zone: {tz!r} is not a known zone (for example Europe/Paris)")
        tz, zone = "UTC", ZoneInfo("UTC")
    today = datetime.now(zone).date() if not errors else today_utc

    def day(name: str, default: date) -> date:
        value = (params.get(name) or "").strip()
        if not value:
            return default
        try:
            return date.fromisoformat(value)
        except ValueError:
            errors.append(f"{name}: not a date (YYYY-MM-DD)")
            return default

    until = day("to", today)
    since = day("from", until - timedelta(days=DEFAULT_DAYS - 1))
    if since > until:
        errors.append("from: after to")
        since = until
    if (until - since).days + 1 > MAX_DAYS:
        errors.append(f"the range is longer than {MAX_DAYS} days: shortened")
        since = until - timedelta(days=MAX_DAYS - 1)
    profiles = [p.strip()[:64] for p in params.getlist("profile") if p.strip()]
    return DashboardQuery(since, until, tz, profiles, errors)


def calls_link(day: date, tz: str, outcome: str = "", profiles: list[str] | None = None) -> str:
    """The calls list filtered to one local day (and outcome, and a single profile). The zone
    goes by name: a fixed offset would cut a daylight-saving day an hour short or long."""
    params = {"from": day.isoformat(), "to": day.isoformat(), "tzname": tz}
    if outcome:
        params["outcome"] = outcome
    if profiles and len(profiles) == 1:
        params["profile"] = profiles[0]
    return "/calls?" + urlencode(params)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _row(p: Period, board: Dashboard, label: str) -> dict[str, Any]:
    calls = p.calls
    return {
        "label": label,
        "calls": calls,
        "link": calls_link(p.start.date(), board.tz, profiles=list(board.profiles)),
        "outcomes": p.outcomes,
        "p50": p.latency_ms(0.5),
        "p95": p.latency_ms(0.95),
        "barge_in": _pct(p.rate("barged_calls")),
        "transfer": _pct(p.rate("transferred")),
        "failover": _pct(p.rate("failover")),
        "reconnects": "–" if not calls else f"{p.sums['reconnects'] / calls:.2f}",
        "duration": "–" if not calls else f"{p.sums['duration_ms'] / calls / 1000:.0f} s",
    }


def chart_data(board: Dashboard, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What dashboard.js draws: x as local period starts (epoch s of local wall time, so the
    axis reads in the viewer's zone), calls per outcome, latency percentiles, links."""
    outcomes = [o for o in LABELS if any(o in p.outcomes for p in board.periods)]
    xs = [int(p.start.replace(tzinfo=None).timestamp() - datetime(1970, 1, 1).timestamp())
          for p in board.periods]  # fmt: skip
    return {
        "granularity": board.granularity,
        "x": xs,
        "outcomes": [
            {
                "key": o,
                "label": LABELS[o],
                "calls": [p.outcomes.get(o, 0) for p in board.periods],
                "links": [
                    calls_link(p.start.date(), board.tz, o, list(board.profiles))
                    for p in board.periods
                ],
            }
            for o in outcomes
        ],
        "p50": [r["p50"] for r in rows],
        "p95": [r["p95"] for r in rows],
        "links": [r["link"] for r in rows],
    }


@require("staff")
async def dashboard_page(request: Request) -> Response:
    query = parse_query(request.query_params, datetime.now(UTC).date())
    db = services_of(request.app).db
    board = await dashboard(db, query.since, query.until, query.tz, query.profiles)
    fmt = "%a %d %b %H:00" if board.granularity == "hour" else "%a %d %b %Y"
    rows = [_row(p, board, p.start.strftime(fmt)) for p in board.periods]
    total = _row(board.total, board, "All")
    context = {
        "query": query,
        "board": board,
        "rows": rows,
        "total": total,
        "outcomes": LABELS,
        "profiles": await dashboard_profiles(db),
        "busiest": sorted(range(24), key=lambda h: -board.busiest_hours[h])[:3],
        "chart": json.dumps(chart_data(board, rows)),
    }
    return render(request, "dashboard.html", context)


routes = [Route("/dashboard", dashboard_page)]
