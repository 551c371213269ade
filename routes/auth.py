"""Staff UI login: signed session cookies, CSRF tokens, and the role check for every page.

The session cookie holds `name|expiry|nonce` and an HMAC of it; it is HttpOnly and SameSite=Strict.
The role is not trusted from the cookie: it is read from the users table on every request, so
removing or demoting an account takes effect at once, and so does a logout: it records the
session's nonce as revoked in the database, so a copy of the cookie stops working on every
instance. Forms carry a CSRF token that is an HMAC of the session nonce (or, before login, of
a separate pre-login cookie, always minted here: a value the client brings is never adopted).

Logins are limited before any password is checked (routes/login_limiter.py), and the check runs
in a small pool of threads with a short queue (telephony/store/hashing.py): a flood of attempts
is answered 429/503 at once and never takes the event loop, which every call's audio shares.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from routes.body_limit import capped_form
from routes.login_limiter import Refusal
from routes.state import services_of, web_of
from routes.templates import render
from telephony.store import audit
from telephony.store.hashing import HashBusy
from telephony.store.users import Role, at_least, authenticate, end_session, session_role

log = logging.getLogger(__name__)

SESSION_COOKIE = "tel_session"
PRELOGIN_COOKIE = "tel_prelogin"
MAX_FORM_BYTES = 16 * 1024  # staff forms hold a CSRF token, a name, a password
# Retry-After (s) of a login refused by an attempt budget, and by a full hashing queue.
THROTTLED_RETRY_S, BUSY_RETRY_S = 60, 2

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    nonce: str  # per login; the CSRF token is derived from it, a logout revokes it
    expires: int  # epoch s: the session cookie's own expiry

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_supervisor(self) -> bool:
        """A supervisor or an admin: may tag, score and mark calls reviewed."""
        return at_least(self.role, "supervisor")


class SessionKeys:
    """Signs and checks cookies and CSRF tokens with one secret."""

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        self._key = hashlib.sha256(b"staff-session\0" + secret).digest()
        # Instances relaying a listen-in to each other sign with this (routes/listen_relay.py).
        self.relay_key = hashlib.sha256(b"listen-relay\0" + secret).digest()
        self.ttl_s = ttl_s

    def _mac(self, data: str) -> str:
        digest = hmac.new(self._key, data.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, name: str, now: float | None = None) -> tuple[str, str]:
        """(cookie value, nonce) for a fresh login. The nonce ends in the login's time in ms
        (signed with the rest): sessions issued before their account's were ended are told
        from later ones to the millisecond (`issued_at`)."""
        now = now or time.time()
        nonce = f"{secrets.token_urlsafe(12)}.{int(now * 1000)}"
        expires = int(now + self.ttl_s)
        body = f"{name}|{expires}|{nonce}"
        return f"{body}|{self._mac(body)}", nonce

    def verify(self, cookie: str, now: float | None = None) -> tuple[str, str, int] | None:
        """(name, nonce, expiry in epoch s) of a valid, unexpired cookie."""
        try:
            name, expires, nonce, mac = cookie.split("|")
            expiry = int(expires)
        except ValueError:
            return None
        ok = hmac.compare_digest(mac, self._mac(f"{name}|{expires}|{nonce}"))
        return (name, nonce, expiry) if ok and expiry > (now or time.time()) else None

    def issued_at(self, nonce: str, expires: int) -> float:
        """When the session was issued (epoch s), from a verified cookie's nonce; for a cookie
        from before nonces carried it, from its expiry (then up to 1 s early)."""
        _, dot, ms = nonce.rpartition(".")
        if dot and ms.isdigit():
            return int(ms) / 1000
        return expires - self.ttl_s

    def csrf(self, nonce: str) -> str:
        return self._mac("csrf|" + nonce)

    def csrf_ok(self, nonce: str, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token, self.csrf(nonce))


def _keys(request: Request) -> SessionKeys:
    return web_of(request.app).session_keys


def _secure(request: Request) -> bool:
    return services_of(request.app).settings.public_url.startswith("https://")


async def current_user(request: Request) -> User | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    found = _keys(request).verify(cookie) if cookie else None
    if found is None:
        return None
    name, nonce, expires = found
    # A session issued before its account's sessions were ended (telephony/store/users.py)
    # never passes.
    issued_at = _keys(request).issued_at(nonce, expires)
    role = await session_role(services_of(request.app).db, name, nonce, issued_at)
    return User(name, role, nonce, expires) if role else None


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (login, admin buttons); a larger body is refused (413) unread."""
    return await capped_form(request, MAX_FORM_BYTES)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def forbidden(request: Request, user: User, message: str) -> Response:
    log.warning("staff UI: %s (%s) refused %s", user.name, user.role, request.url.path)
    return render(request, "error.html", {"message": message}, status_code=403, user=user)


def require(role: Role = "staff") -> Callable[[Handler], Handler]:
    """Page decorator: anonymous -> login (401 for non-HTML clients); a role below `role`
    (admin ⊇ supervisor ⊇ staff) -> 403."""

    def decorate(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            user = await current_user(request)
            if user is None:
                if _wants_html(request):
                    target = quote(
                        request.url.path + ("?" + request.url.query if request.url.query else "")
                    )
                    return RedirectResponse(f"/login?next={target}", status_code=303)
                return Response("login required", status_code=401)
            if not at_least(user.role, role):
                return forbidden(request, user, f"{role.capitalize()}s only.")
            request.state.user = user
            return await handler(request)

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return decorate


async def check_csrf(request: Request, form: dict[str, str]) -> bool:
    user: User = request.state.user
    return _keys(request).csrf_ok(user.nonce, form.get("csrf", ""))


async def posted_form(request: Request) -> dict[str, str] | Response:
    """A staff page's POST: its form, or the 400 page when the CSRF token is not this
    session's (an old page, or a forged post)."""
    form = await read_form(request)
    if not await check_csrf(request, form):
        return render(request, "error.html", {"message": "Form expired."}, status_code=400)
    return form


def _safe_next(target: str) -> str:
    """Only local paths: never an open redirect to another site."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/calls"


# --- login / logout ---------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    return _login_form(request, error="", status_code=200)


def _login_form(
    request: Request, *, error: str, status_code: int, retry_after: int = 0
) -> Response:
    """The login page with a fresh pre-login nonce: its cookie and the form's CSRF token."""
    nonce = secrets.token_urlsafe(12)
    response = render(
        request,
        "login.html",
        {
            "csrf": _keys(request).csrf(nonce),
            "next": _safe_next(request.query_params.get("next", "/calls")),
            "error": error,
        },
        status_code=status_code,
    )
    response.set_cookie(
        PRELOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=_secure(request)
    )
    if retry_after:
        response.headers["retry-after"] = str(retry_after)
    return response


async def login_submit(request: Request) -> Response:
    form = await read_form(request)
    nonce = request.cookies.get(PRELOGIN_COOKIE, "")
    if not nonce or not _keys(request).csrf_ok(nonce, form.get("csrf", "")):
        return _login_form(request, error="Form expired, please try again.", status_code=400)
    services, web = services_of(request.app), web_of(request.app)
    db, metrics = services.db, services.metrics
    name = form.get("name", "").strip()[:128]
    # The peer, or the forwarded address when the peer is a trusted proxy (http_server.py).
    client = request.client.host if request.client else "?"
    refusal = web.login_limiter.attempt(client, name)
    if refusal is not None:
        metrics.logins_refused.labels(refusal).inc()
        if web.refusals_audited.add(time.monotonic()) <= web.refusals_audited.limit:
            await _audit(request, name or "?", "login.throttled", client, {"reason": refusal.value})
        wait = "a minute" if refusal is Refusal.GLOBAL else "a few minutes"
        return _login_form(
            request,
            error=f"Too many attempts; wait {wait}.",
            status_code=429,
            retry_after=THROTTLED_RETRY_S,
        )
    try:
        role = await authenticate(db, name, form.get("password", ""), web.hash_pool)
    except HashBusy:
        metrics.logins_refused.labels("busy").inc()
        return _login_form(
            request,
            error="Busy, please try again in a moment.",
            status_code=503,
            retry_after=BUSY_RETRY_S,
        )
    if role is None:
        await _audit(request, name or "?", "login.failed", client)
        return _login_form(request, error="Wrong name or password.", status_code=401)
    web.login_limiter.succeeded(client, name)
    cookie, _ = _keys(request).issue(name)
    await _audit(request, name, "login", client, {"role": role})
    response = RedirectResponse(_safe_next(form.get("next", "/calls")), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(_keys(request).ttl_s),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(PRELOGIN_COOKIE)
    return response


async def _audit(
    request: Request, user: str, action: str, target: str = "", detail: dict[str, str] | None = None
) -> None:
    """A login or logout row: never fails the request (audit.record_or_log); counted if lost."""
    services = services_of(request.app)
    if not await audit.record_or_log(services.db, user, action, target, detail):
        services.metrics.audit_rows_lost.inc()


@require("staff")
async def logout(request: Request) -> Response:
    form = await read_form(request)
    if not await check_csrf(request, form):
        return Response("bad CSRF token", status_code=400)
    user: User = request.state.user
    db = services_of(request.app).db
    await end_session(db, user.nonce, user.expires)
    await _audit(request, user.name, "logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login_submit, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
