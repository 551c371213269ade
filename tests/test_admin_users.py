"""Accounts in the UI (/admin/users): add, role, password, disable and enable, each audited
and ending the account's sessions where it should; an admin cannot lock themself out."""

from __future__ import annotations

import httpx
import pytest

from telephony.store.engine import make_engine
from telephony.store.users import list_users
from tests.conftest import RunningApp
from tests.staff_helpers import ADMIN, STAFF, add_accounts, csrf_of, login
from tests.test_staff_ui import audit_rows, client_as

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

CAROL = ("carol", "staff", "carol-password-1")


@pytest.fixture
async def admin_app(running_app: RunningApp, database: str) -> RunningApp:
    await add_accounts(database)
    return running_app


async def change(client: httpx.AsyncClient, **form: str) -> httpx.Response:
    page = await client.get("/admin/users")
    assert page.status_code == 200, page.text
    response = await client.post("/admin/users", data={"csrf": csrf_of(page.text), **form})
    assert response.status_code == 303, response.text
    return await client.get(response.headers["location"])


async def logged_in(app: RunningApp, who: tuple[str, str, str]) -> httpx.AsyncClient | None:
    client = app.http()
    if (await login(client, who[0], who[2])).status_code != 303:
        await client.aclose()
        return None
    return client


async def accounts(database: str) -> list[dict]:
    engine = make_engine(database)
    try:
        return await list_users(engine)
    finally:
        await engine.dispose()


async def still_in(client: httpx.AsyncClient) -> bool:
    return (await client.get("/calls")).status_code == 200


async def test_add_role_password_disable_enable_round_trip(
    admin_app: RunningApp, database: str
) -> None:
    async with client_as(admin_app, ADMIN) as admin:
        page = await change(admin, action="add", name="carol", role="staff", password=CAROL[2])
        assert "carol added." in page.text
        carol = await logged_in(admin_app, CAROL)
        assert carol is not None and await still_in(carol)

        page = await change(admin, action="role", name="carol", role="admin")
        assert "carol is now admin." in page.text
        assert not await still_in(carol)  # the old session ended with the role change
        await carol.aclose()

        page = await change(admin, action="password", name="carol", password="a-new-one-12345")
        assert "new password set" in page.text
        assert await logged_in(admin_app, CAROL) is None
        carol = await logged_in(admin_app, ("carol", "admin", "a-new-one-12345"))
        assert carol is not None and await still_in(carol)

        page = await change(admin, action="disable", name="carol")
        assert "carol disabled." in page.text and "disabled</span>" in page.text
        assert not await still_in(carol)  # ended at once
        await carol.aclose()
        assert await logged_in(admin_app, ("carol", "admin", "a-new-one-12345")) is None

        page = await change(admin, action="enable", name="carol")
        assert "carol enabled." in page.text
        carol = await logged_in(admin_app, ("carol", "admin", "a-new-one-12345"))
        assert carol is not None and await still_in(carol)
        await carol.aclose()
    actions = [(r["action"], r["target"]) for r in await audit_rows(database)]
    changes = [a for a in actions if a[0].startswith("user.")]
    assert changes == [
        ("user.add", "carol"),
        ("user.role", "carol"),
        ("user.password", "carol"),
        ("user.disable", "carol"),
        ("user.enable", "carol"),
    ]
    password_row = next(r for r in await audit_rows(database) if r["action"] == "user.password")
    assert "a-new-one" not in str(password_row)  # the password is never recorded
    assert all(r["user_name"] == ADMIN[0] for r in await audit_rows(database)
               if r["action"].startswith("user."))  # fmt: skip


async def test_mistakes_are_refused_with_a_reason_and_change_nothing(
    admin_app: RunningApp, database: str
) -> None:
    before = await accounts(database)
    async with client_as(admin_app, ADMIN) as admin:
        page = await change(admin, action="disable", name=ADMIN[0])
        assert "you cannot demote or disable your own account" in page.text
        page = await change(admin, action="role", name=ADMIN[0], role="staff")
        assert "you cannot demote or disable your own account" in page.text
        page = await change(admin, action="add", name="dave", role="staff", password="short")
        assert "password must be at least 10 characters" in page.text
        page = await change(admin, action="add", name=STAFF[0], role="staff", password="x" * 12)
        assert "already exists" in page.text
        page = await change(admin, action="role", name="nobody", role="staff")
        assert "no user &#39;nobody&#39;" in page.text
        forged = await admin.post("/admin/users", data={"action": "disable", "name": "alice"})
        assert forged.status_code == 400  # no CSRF token
    async with client_as(admin_app, STAFF) as staff:
        assert (await staff.get("/admin/users")).status_code == 403
    assert await accounts(database) == before
