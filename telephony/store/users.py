"""Staff and admin accounts for the review UI: scrypt password hashes (telephony/store/hashing.py),
never plain text."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.hashing import HashPool, hash_password, verify_password
from telephony.store.schema import dialect_insert, revoked_sessions, users

__all__ = [
    "ROLES",
    "HashPool",
    "Role",
    "UserError",
    "add_user",
    "authenticate",
    "check_new_user",
    "end_session",
    "hash_password",
    "session_role",
    "verify_password",
]

Role = Literal["staff", "admin"]
ROLES: tuple[Role, ...] = ("staff", "admin")
MIN_PASSWORD_CHARS = 10


class UserError(ValueError):
    """A user that cannot be created (bad name, weak password, taken name)."""


def check_new_user(name: str, role: str, password: str) -> None:
    if not name or len(name) > 128 or not name.replace("-", "").replace(".", "").isalnum():
        raise UserError("name: letters, digits, '.' and '-' only, at most 128 characters")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"password must be at least {MIN_PASSWORD_CHARS} characters")


async def add_user(engine: AsyncEngine, name: str, role: str, password: str) -> None:
    check_new_user(name, role, password)
    row = {
        "name": name,
        "role": role,
        "password_hash": await asyncio.to_thread(hash_password, password),  # not on the loop
        "created_at": time.time(),
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(users).values(**row))
    except IntegrityError:
        raise UserError(f"user {name!r} already exists") from None


async def authenticate(
    engine: AsyncEngine, name: str, password: str, pool: HashPool | None = None
) -> Role | None:
    """The user's role if the password is right, else None. The same cost either way: one
    scrypt run in `pool`'s workers (HashBusy if they and their queue are full); without a pool,
    in a one-off thread (the CLI, tests)."""
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                select(users.c.role, users.c.password_hash).where(users.c.name == name)
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
    return found.role if ok and found is not None else None


async def session_role(engine: AsyncEngine, name: str, nonce: str) -> Role | None:
    """The user's current role, or None if the account no longer exists or this session
    (`nonce`, one per login) was ended by a logout."""
    ended = select(revoked_sessions.c.nonce).where(revoked_sessions.c.nonce == nonce).exists()
    query = select(users.c.role).where(users.c.name == name, ~ended)
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
