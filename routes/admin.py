"""Admin pages: the numbers YAML as loaded and as on disk, a reload button, the audit log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from routes.auth import posted_form, require
from routes.state import services_of
from routes.templates import render
from telephony.config import ConfigStore, check
from telephony.store import audit

MAX_YAML_CHARS = 200_000


def _read_file(path: Path) -> tuple[str, bool, str]:
    """(text, valid, check output) of the file as it is on disk now."""
    try:
        text = path.read_text(encoding="utf-8")[:MAX_YAML_CHARS]
    except (OSError, UnicodeDecodeError) as exc:
        return "", False, f"{path}: cannot read: {exc}"
    ok, report = check(path)
    return text, ok, report


def _profiles(store: ConfigStore) -> list[dict[str, Any]]:
    config = store.current
    numbers: dict[str, list[str]] = {}
    for number, name in config.numbers.items():
        numbers.setdefault(name, []).append(number)
    return [
        {
            "name": name,
            "mode": p.mode,
            "numbers": numbers.get(name, []),
            "recording": p.recording,
            "redaction": p.redaction,
            "retention_days": p.retention_days,
            "default": name == config.default_profile,
        }
        for name, p in config.profiles.items()
    ]


@require("admin")
async def config_page(request: Request) -> Response:
    services = services_of(request.app)
    store: ConfigStore = services.config
    text, ok, report = await asyncio.to_thread(_read_file, store.path)
    await audit.record(services.db, request.state.user.name, "admin.config.view")
    context = {
        "store": store,
        "yaml_text": text,
        "disk_ok": ok,
        "disk_report": report,
        "profiles": _profiles(store),
        "numbers": store.current.numbers,
        "flash": request.query_params.get("reloaded", ""),
    }
    return render(request, "admin.html", context)


@require("admin")
async def reload_config(request: Request) -> Response:
    form = await posted_form(request)
    if isinstance(form, Response):
        return form
    services = services_of(request.app)
    store: ConfigStore = services.config
    before = store.version
    ok = await asyncio.to_thread(store.reload)
    detail: dict[str, object] = {"ok": ok, "from_version": before, "to_version": store.version}
    if not ok:
        detail["error"] = store.last_error
    await audit.record(services.db, request.state.user.name, "admin.config.reload", "", detail)
    return RedirectResponse(f"/admin?reloaded={'ok' if ok else 'failed'}", status_code=303)


@require("admin")
async def audit_page(request: Request) -> Response:
    db = services_of(request.app).db
    user_filter = request.query_params.get("user", "")[:128]
    action_filter = request.query_params.get("action", "")[:64]
    rows = await audit.recent(db, limit=500, user=user_filter, action=action_filter)
    await audit.record(db, request.state.user.name, "admin.audit.view")
    context = {"rows": rows, "user_filter": user_filter, "action_filter": action_filter}
    return render(request, "audit.html", context)


routes = [
    Route("/admin", config_page),
    Route("/admin/reload", reload_config, methods=["POST"]),
    Route("/admin/audit", audit_page),
]
