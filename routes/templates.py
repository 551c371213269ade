"""Jinja2 rendering for the staff UI: autoescaped templates, the user and CSRF token in scope."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from routes.explain import event_sentence, latency_steps
from routes.state import web_of
from telephony.outcome import label as outcome_label
from telephony.session.language import NAMES as LANGUAGE_NAMES
from telephony.store.export import clock, heard_split

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def utc(epoch: float | None) -> str:
    """Shown until the page's script rewrites it in the viewer's time zone."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_REDACTED = re.compile(r"\[REDACTED:(\w+)\]")


def marked(text: str | None) -> Markup:
    """Escaped text with redaction placeholders shown as marked spans."""
    escaped = str(escape(text or ""))
    return Markup(_REDACTED.sub(r'<span class="redacted" title="redacted \1">[\1]</span>', escaped))


_HIT = re.compile("\u00ab([^\u00ab\u00bb]*)\u00bb")


def snippet(text: str | None) -> Markup:
    """A search snippet: «matched» words (from the store's queries) highlighted."""
    html = str(marked(text))
    return Markup(_HIT.sub(r"<mark>\1</mark>", html))


_env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    clock=clock,
    iso=iso,
    utc=utc,
    marked=marked,
    snippet=snippet,
    outcome=outcome_label,
    language=lambda code: LANGUAGE_NAMES.get(str(code), str(code)),
)
_env.globals["heard_split"] = heard_split
_env.globals["latency_steps"] = latency_steps
_env.globals["event_sentence"] = event_sentence
_env.globals["now"] = time.time


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    user: Any = None,
) -> HTMLResponse:
    user = user or getattr(request.state, "user", None)
    keys = web_of(request.app).session_keys
    scope = {
        "request": request,
        "user": user,
        "csrf": keys.csrf(user.nonce) if user else "",
        **context,
    }
    html = _env.get_template(name).render(scope)
    response = HTMLResponse(html, status_code=status_code)
    # The UI shows personal data: never cache it, never frame it, no inline script injection.
    response.headers["cache-control"] = "no-store"
    response.headers["x-frame-options"] = "DENY"
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "same-origin"
    response.headers["content-security-policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; frame-ancestors 'none'; form-action 'self'"
    )
    return response
