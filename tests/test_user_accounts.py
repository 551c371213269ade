"""`telephony users remove|role|password`: audited, and each ends the account's sessions (as
does removing an account and adding one of the same name again)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import httpx
import pytest
from sqlalchemy import select

from routes.auth import SessionKeys
from telephony import cli
from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.schema import audit_log
from telephony.store.users import (
    UserError,
    add_user,
    authenticate,
    remove_user,
    set_password,
    set_role,
)
from tests.conftest import RunningApp
from tests.staff_helpers import ADMIN, STAFF, add_accounts, login

OLD_PW, NEW_PW = "the first passphrase", "the second passphrase"


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


async def users_cli(tmp_path: Path, *args: str, stdin: str = "") -> CliRun:
    """`telephony users ...` as a shell runs it with stdin not a terminal (its exit status,
    argparse's included, and what it printed), in a thread of this process: `cli.main` runs an
    event loop of its own, and an interpreter's start-up per command cost ~1 s."""

    def run() -> CliRun:
        out, err = io.StringIO(), io.StringIO()
        env = {"TELEPHONY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/u.db"}
        with (
            mock.patch.dict(os.environ, env),
            mock.patch.object(sys, "stdin", io.StringIO(stdin)),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = cli.main(["users", *args])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
        return CliRun(code, out.getvalue(), err.getvalue())

    return await asyncio.to_thread(run)


async def audit_of(database: str) -> list[tuple[str, str, str, object]]:
    engine = make_engine(database)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(audit_log).order_by(audit_log.c.id))
            return [(r.user_name, r.action, r.target, r.detail) for r in rows]
    finally:
        await engine.dispose()


async def test_users_commands_change_accounts_and_audit_each_change(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/u.db"
    added = await users_cli(tmp_path, "add", "bob", "--role", "admin", stdin=OLD_PW + "\n")
    assert added.returncode == 0, added.stderr

    out = await users_cli(tmp_path, "role", "bob", "staff")
    assert out.returncode == 0 and "now staff" in out.stdout, out.stderr
    out = await users_cli(tmp_path, "role", "bob", "staff")
    assert out.returncode == 0 and "already staff" in out.stdout  # no change, no audit row
    out = await users_cli(tmp_path, "password", "bob", stdin=NEW_PW + "\n")
    assert out.returncode == 0, out.stderr
    assert NEW_PW not in out.stdout + out.stderr
    engine = make_engine(db)
    try:
        assert await authenticate(engine, "bob", NEW_PW) == "staff"
        assert await authenticate(engine, "bob", OLD_PW) is None
    finally:
        await engine.dispose()
    out = await users_cli(tmp_path, "disable", "bob")
    assert out.returncode == 0 and "disabled; their sessions have ended" in out.stdout, out.stderr
    engine = make_engine(db)
    try:
        assert await authenticate(engine, "bob", NEW_PW) is None  # disabled: no login
    finally:
        await engine.dispose()
    out = await users_cli(tmp_path, "enable", "bob")
    assert out.returncode == 0 and "bob enabled" in out.stdout, out.stderr
    out = await users_cli(tmp_path, "remove", "bob")
    assert out.returncode == 0 and "removed" in out.stdout, out.stderr

    rows = await audit_of(db)
    actor = rows[0][0]
    assert actor.startswith("cli")
    assert rows == [
        (actor, "user.add", "bob", {"role": "admin"}),
        (actor, "user.role", "bob", {"from": "admin", "to": "staff"}),
        (actor, "user.password", "bob", None),
        (actor, "user.disable", "bob", None),
        (actor, "user.enable", "bob", None),
        (actor, "user.remove", "bob", {"role": "staff"}),
    ]
    assert not any(OLD_PW in str(r) or NEW_PW in str(r) for r in rows)


@pytest.mark.parametrize(
    ("args", "stdin", "code", "why"),
    [
        (("remove", "nobody"), "", 1, "no user 'nobody'"),
        (("role", "nobody", "admin"), "", 1, "no user 'nobody'"),
        (("password", "nobody"), NEW_PW + "\n", 1, "no user 'nobody'"),
        (("password", "carol"), "short\n", 1, "at least 10"),
        (("role", "carol", "root"), "", 2, "invalid choice"),
    ],
)
async def test_users_commands_refuse_unknown_users_and_bad_values(
    tmp_path: Path, args: tuple[str, ...], stdin: str, code: int, why: str
) -> None:
    # carol is added through the store (`users add` itself is the test above): the command
    # under test is the only CLI run per case.
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/u.db")
    try:
        await upgrade(engine)
        await add_user(engine, "carol", "staff", OLD_PW)
    finally:
        await engine.dispose()
    out = await users_cli(tmp_path, *args, stdin=stdin)
    assert (out.returncode, why in out.stderr) == (code, True), out.stderr


# --- sessions end ----------------------------------------------------------------------------


@pytest.fixture
async def accounts(running_app: RunningApp, database: str) -> AsyncIterator[RunningApp]:
    await add_accounts(database)
    yield running_app


@contextlib.asynccontextmanager
async def logged_in(app: RunningApp, name: str, password: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app.http() as client:
        resp = await login(client, name, password)
        assert resp.status_code == 303, resp.text
        assert (await client.get("/calls")).status_code == 200
        yield client


async def test_demoting_ends_the_sessions_and_a_new_login_works(
    accounts: RunningApp, database: str
) -> None:
    engine = make_engine(database)
    try:
        async with logged_in(accounts, ADMIN[0], ADMIN[2]) as before:
            assert await set_role(engine, ADMIN[0], "staff", actor="cli:test")
            assert (await before.get("/calls")).status_code == 401  # ended, not just demoted
        async with logged_in(accounts, ADMIN[0], ADMIN[2]) as after:
            assert (await after.get("/admin")).status_code == 403  # staff now
    finally:
        await engine.dispose()


async def test_a_new_password_ends_the_sessions(accounts: RunningApp, database: str) -> None:
    engine = make_engine(database)
    try:
        async with logged_in(accounts, STAFF[0], STAFF[2]) as before:
            await set_password(engine, STAFF[0], NEW_PW, actor="cli:test")
            assert (await before.get("/calls")).status_code == 401
        async with logged_in(accounts, STAFF[0], NEW_PW) as after:
            assert (await after.get("/calls")).status_code == 200
    finally:
        await engine.dispose()


async def test_a_removed_then_re_added_account_does_not_revive_old_cookies(
    accounts: RunningApp, database: str
) -> None:
    engine = make_engine(database)
    try:
        async with logged_in(accounts, STAFF[0], STAFF[2]) as before:
            await remove_user(engine, STAFF[0], actor="cli:test")
            assert (await before.get("/calls")).status_code == 401
            await add_user(engine, STAFF[0], "admin", NEW_PW)
            assert (await before.get("/calls")).status_code == 401
            assert (await before.get("/admin")).status_code == 401
    finally:
        await engine.dispose()


async def test_store_functions_refuse_unknown_users_and_roles(database: str) -> None:
    engine = make_engine(database)
    try:
        await upgrade(engine)
        with pytest.raises(UserError, match="no user"):
            await remove_user(engine, "ghost", actor="t")
        with pytest.raises(UserError, match="role must be"):
            await set_role(engine, "ghost", "root", actor="t")
    finally:
        await engine.dispose()


def test_a_session_is_dated_by_its_nonce_or_else_its_expiry() -> None:
    keys = SessionKeys(b"secret", ttl_s=100.0)
    cookie, nonce = keys.issue("alice", now=1000.25)
    assert keys.verify(cookie, now=1001) == ("alice", nonce, 1100)
    assert keys.issued_at(nonce, 1100) == 1000.25
    assert keys.issued_at("pre-upgrade-nonce", 1100) == 1000.0  # a cookie from before
