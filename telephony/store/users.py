"""Staff and admin accounts for the review UI: scrypt password hashes (made and checked off the
event loop: telephony/store/hashing.py), never plain text.

Changes to an account (`telephony users add|remove|role|password`) are audited in the same
transaction, and a role change or new password ends the account's sessions (every login
issued before `sessions_since`), as removing it does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.store.hashing import HashPool, hash_password, verify_password
from telephony.store.schema import audit_log, dialect_insert, revoked_sessions, users

__all__ = [
    "ROLES",
    "HashPool",
    "Role",
    "UserError",
    "add_user",
    "at_least",
    "authenticate",
    "check_new_user",
    "end_session",
    "hash_password",
    "remove_user",
    "session_role",
    "set_password",
    "set_role",
    "verify_password",
]

# Each role may do what the ones before it may: staff read everything and write notes;
# supervisors also tag, score and mark calls reviewed; admins also run the configuration.
Role = Literal["staff", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("staff", "supervisor", "admin")
MIN_PASSWORD_CHARS = 10


def at_least(role: str, needed: Role) -> bool:
    """Whether `role` may do what `needed` may (an unknown role may do nothing)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


class UserError(ValueError):
    """A user that cannot be created or changed (bad name, weak password, taken or unknown
    name, unknown role)."""


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"password must be at least {MIN_PASSWORD_CHARS} characters")


def check_new_user(name: str, role: str, password: str) -> None:
    if not name or len(name) > 128 or not name.replace("-", "").replace(".", "").isalnum():
        raise UserError("name: letters, digits, '.' and '-' only, at most 128 characters")
    _check_role(role)
    _check_password(password)


def _to_ms(t: float) -> float:
    """Whole milliseconds, as a login's issue time is known (routes/auth.py SessionKeys)."""
    return int(t * 1000) / 1000


async def _audit(
    conn: AsyncConnection, actor: str, action: str, name: str, detail: dict[str, Any] | None
) -> None:
    # The audit row commits with the change or not at all (telephony/store/audit.py's table).
    row = {"at": time.time(), "user_name": actor, "action": action, "target": name}
    await conn.execute(insert(audit_log).values(**row, detail=detail))


async def add_user(
    engine: AsyncEngine, name: str, role: str, password: str, *, actor: str = ""
) -> None:
    """Create the account; with `actor` (who did it), audited as `user.add`."""
    check_new_user(name, role, password)
    now = time.time()
    row = {
        "name": name,
        "role": role,
        "password_hash": await asyncio.to_thread(hash_password, password),  # not on the loop
        "created_at": now,
        # A cookie of an earlier account of this name (removed since) must not come back.
        "sessions_since": _to_ms(now),
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(users).values(**row))
            if actor:
                await _audit(conn, actor, "user.add", name, {"role": role})
    except IntegrityError:
        raise UserError(f"user {name!r} already exists") from None


async def _role_of(conn: AsyncConnection, name: str) -> str:
    role = (await conn.execute(select(users.c.role).where(users.c.name == name))).scalar()
    if role is None:
        raise UserError(f"no user {name!r}")
    return str(role)


async def remove_user(engine: AsyncEngine, name: str, *, actor: str) -> None:
    """Delete the account (its sessions end with it); audited as `user.remove`."""
    async with engine.begin() as conn:
        role = await _role_of(conn, name)
        await conn.execute(delete(users).where(users.c.name == name))
        await _audit(conn, actor, "user.remove", name, {"role": role})


async def set_role(engine: AsyncEngine, name: str, role: str, *, actor: str) -> bool:
    """Change the role and end the account's sessions; audited as `user.role`. False (and
    nothing changed or audited) if it already has that role."""
    _check_role(role)
    async with engine.begin() as conn:
        old = await _role_of(conn, name)
        if old == role:
            return False
        change = {"role": role, "sessions_since": _to_ms(time.time())}
        await conn.execute(update(users).where(users.c.name == name).values(**change))
        await _audit(conn, actor, "user.role", name, {"from": old, "to": role})
    return True


async def set_password(engine: AsyncEngine, name: str, password: str, *, actor: str) -> None:
    """A new password; every session of the account ends. Audited as `user.password` (the
    password itself is never recorded)."""
    _check_password(password)
    # Before the transaction, and off the loop: it takes ~50 ms of CPU.
    hashed = await asyncio.to_thread(hash_password, password)
    async with engine.begin() as conn:
        await _role_of(conn, name)
        change = {"password_hash": hashed, "sessions_since": _to_ms(time.time())}
        await conn.execute(update(users).where(users.c.name == name).values(**change))
        await _audit(conn, actor, "user.password", name, None)


async def authenticate(
    engine: AsyncEngine, name: str, password: str, pool: HashPool | None = None
) -> Role | None:
    """The user's role if the password is right, else None. The same cost either way: one
    scrypt run in `pool`'s workers (HashBusy if they and their queue are full); without a pool,
    in a one-off thread (the CLI, tests)."""
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                select(users.c.role, users.c.password_hash, users.c.disabled).where(
                    users.c.name == name
                )
            )
        ).first()
    stored = None if found is None else str(found.password_hash)
    if pool is None:
        pool = HashPool(workers=1, max_waiting=0)
        try:
            ok = await pool.verify(password, stored)
        finally:
            pool.close()
    else:
        ok = await pool.verify(password, stored)
    if not ok or found is None or found.disabled:
        return None
    return found.role


async def set_disabled(engine: AsyncEngine, name: str, disabled: bool, *, actor: str) -> bool:
    """Disable (every session ends, no login) or enable the account; audited as
    `user.disable` / `user.enable`. False (nothing changed or audited) if already so."""
    async with engine.begin() as conn:
        await _role_of(conn, name)
        now = (await conn.execute(select(users.c.disabled).where(users.c.name == name))).scalar()
        if bool(now) == disabled:
            return False
        change: dict[str, Any] = {"disabled": disabled}
        if disabled:
            change["sessions_since"] = _to_ms(time.time())
        await conn.execute(update(users).where(users.c.name == name).values(**change))
        await _audit(conn, actor, "user.disable" if disabled else "user.enable", name, None)
    return True


async def list_users(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every account (no password hashes), by name."""
    cols = (users.c.name, users.c.role, users.c.created_at, users.c.disabled)
    async with engine.connect() as conn:
        rows = await conn.execute(select(*cols).order_by(users.c.name))
        return [dict(r._mapping) for r in rows]


async def session_role(
    engine: AsyncEngine, name: str, nonce: str, issued_at: float | None = None
) -> Role | None:
    """The user's current role, or None if the account no longer exists, this session
    (`nonce`, one per login) was ended by a logout, or it was issued (`issued_at`, epoch s)
    before the account's sessions were ended (role change, new password, re-created).
    Compared to the millisecond: a login in the same millisecond as the change is kept."""
    ended = select(revoked_sessions.c.nonce).where(revoked_sessions.c.nonce == nonce).exists()
    query = select(users.c.role).where(users.c.name == name, ~ended, ~users.c.disabled)
    if issued_at is not None:
        query = query.where(users.c.sessions_since <= issued_at)
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar()


async def end_session(
    engine: AsyncEngine, nonce: str, expires_at: float, now: float | None = None
) -> None:
    """Logout: the session's cookie stops working on every instance, though still signed and
    unexpired. Rows of cookies that have expired anyway are dropped on the way."""
    now = time.time() if now is None else now
    async with engine.begin() as conn:
        await conn.execute(delete(revoked_sessions).where(revoked_sessions.c.expires_at < now))
        # Two logouts of one session at once: it is ended either way.
        ended = dialect_insert(engine.dialect.name, revoked_sessions)
        await conn.execute(
            ended.values(nonce=nonce, expires_at=expires_at).on_conflict_do_nothing()
        )
