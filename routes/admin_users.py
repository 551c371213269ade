"""Admin page for staff accounts: add, change role, reset password, disable and enable.

The same store functions as `telephony users` (telephony/store/users.py), so each change is
audited in the transaction that makes it, a role change, new password or disable ends the
account's sessions, and passwords are hashed off the event loop. An admin cannot demote or
disable their own account from here (nobody could undo it from the UI).
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from routes.auth import posted_form, require
from routes.state import services_of
from routes.templates import render
from telephony.store import audit
from telephony.store.users import (
    MIN_PASSWORD_CHARS,
    ROLES,
    UserError,
    add_user,
    list_users,
    set_disabled,
    set_password,
    set_role,
)


def _back(message: str, *, error: bool = False) -> Response:
    key = "error" if error else "done"
    return RedirectResponse("/admin/users?" + urlencode({key: message}), status_code=303)


@require("admin")
async def users_page(request: Request) -> Response:
    db = services_of(request.app).db
    await audit.record(db, request.state.user.name, "admin.users.view")
    context = {
        "accounts": await list_users(db),
        "roles": ROLES,
        "min_password": MIN_PASSWORD_CHARS,
        "done": request.query_params.get("done", "")[:200],
        "error": request.query_params.get("error", "")[:200],
        "me": request.state.user.name,
    }
    return render(request, "admin_users.html", context)


@require("admin")
async def users_change(request: Request) -> Response:
    """One form per change: `action` is add, role, password, disable or enable."""
    form = await posted_form(request)
    if isinstance(form, Response):
        return form
    db = services_of(request.app).db
    actor = request.state.user.name
    action, name = form.get("action", ""), form.get("name", "").strip()
    try:
        if action == "add":
            await add_user(db, name, form.get("role", ""), form.get("password", ""), actor=actor)
            return _back(f"{name} added")
        if name == actor and action in ("role", "disable"):
            raise UserError("you cannot demote or disable your own account")
        if action == "role":
            changed = await set_role(db, name, form.get("role", ""), actor=actor)
            return _back(f"{name} is now {form['role']}" if changed else f"{name}: no change")
        if action == "password":
            await set_password(db, name, form.get("password", ""), actor=actor)
            return _back(f"{name}: new password set, their sessions ended")
        if action in ("disable", "enable"):
            changed = await set_disabled(db, name, action == "disable", actor=actor)
            return _back(f"{name} {action}d" if changed else f"{name}: no change")
    except UserError as exc:
        return _back(str(exc), error=True)
    return _back(f"unknown action {action[:32]!r}", error=True)


routes = [
    Route("/admin/users", users_page),
    Route("/admin/users", users_change, methods=["POST"]),
]
