"""Staff UI login and logout over HTTP: cookie flags, CSRF, throttling, no off-site redirects,
and a logout ending the session on the server (split from test_staff_ui.py)."""

from __future__ import annotations

import pytest

from routes.auth import SESSION_COOKIE
from tests import test_staff_ui
from tests.conftest import RunningApp
from tests.staff_helpers import ADMIN, STAFF, csrf_of, login
from tests.test_staff_ui import audit_rows, client_as

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

staff_app = test_staff_ui.staff_app  # the fixture: accounts and a stored call


async def test_login_cookie_flags_and_audit(staff_app: RunningApp, database: str) -> None:
    async with staff_app.http() as client:
        resp = await login(client, *STAFF[::2])
        assert resp.status_code == 303 and resp.headers["location"] == "/calls"
        set_cookie = next(h for h in resp.headers.get_list("set-cookie") if "tel_session=" in h)
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie
        bad = await login(client, STAFF[0], "not-the-password")
        assert bad.status_code == 401 and "Wrong name or password" in bad.text
    actions = [(r["user_name"], r["action"]) for r in await audit_rows(database)]
    assert ("alice", "login") in actions and ("alice", "login.failed") in actions


async def test_login_needs_csrf_token(staff_app: RunningApp) -> None:
    async with staff_app.http() as client:
        await client.get("/login")
        resp = await client.post(
            "/login", data={"csrf": "forged", "name": STAFF[0], "password": STAFF[2]}
        )
        assert resp.status_code == 400
        assert "tel_session" not in client.cookies


async def test_login_is_throttled_after_repeated_failures(staff_app: RunningApp) -> None:
    async with staff_app.http() as client:
        for _ in range(5):
            assert (await login(client, ADMIN[0], "guess-guess-guess")).status_code == 401
        # Even the right password is refused while throttled: guessing cannot be confirmed.
        throttled = await login(client, ADMIN[0], ADMIN[2])
        assert throttled.status_code == 429
        assert (await login(client, STAFF[0], STAFF[2])).status_code == 303  # other account


async def test_login_never_redirects_off_site(staff_app: RunningApp) -> None:
    async with staff_app.http() as client:
        page = await client.get("/login?next=//evil.example/x")
        assert 'value="/calls"' in page.text
        resp = await client.post(
            "/login",
            data={
                "csrf": csrf_of(page.text),
                "name": STAFF[0],
                "password": STAFF[2],
                "next": "https://evil.example/",
            },
        )
        assert resp.headers["location"] == "/calls"


async def test_logout_needs_csrf_and_ends_session(staff_app: RunningApp, database: str) -> None:
    async with client_as(staff_app, STAFF) as client, client_as(staff_app, STAFF) as other:
        assert (await client.post("/logout", data={"csrf": "x"})).status_code == 400
        page = await client.get("/calls")
        kept = client.cookies[SESSION_COOKIE]  # a copy, as a stolen cookie would be
        resp = await client.post("/logout", data={"csrf": csrf_of(page.text)})
        assert resp.status_code == 303
        assert (await client.get("/calls")).status_code == 401
        # The copy is still signed and unexpired, yet the session is over (server-side).
        async with staff_app.http() as thief:
            thief.cookies.set(SESSION_COOKIE, kept)
            assert (await thief.get("/calls")).status_code == 401
        # The same user's other login is another session: it goes on.
        assert (await other.get("/calls")).status_code == 200
    assert ("alice", "logout") in [
        (r["user_name"], r["action"]) for r in await audit_rows(database)
    ]


async def test_cookies_are_secure_outside_development(staff_app: RunningApp) -> None:
    """Behind https (any real deployment) the session cookie is Secure; plain http is dev."""
    staff_app.settings.public_url = "https://calls.example.com"
    async with staff_app.http() as client:
        page = await client.get("/login")
        assert "secure" in page.headers["set-cookie"].lower()  # the pre-login cookie too
        # httpx keeps Secure cookies off plain http: hand the pre-login cookie over by hand.
        client.headers["cookie"] = f"tel_prelogin={page.cookies['tel_prelogin']}"
        resp = await client.post(
            "/login", data={"csrf": csrf_of(page.text), "name": STAFF[0], "password": STAFF[2]}
        )
    session = next(h for h in resp.headers.get_list("set-cookie") if "tel_session=" in h)
    assert "Secure" in session and "HttpOnly" in session
