"""Staff and admin accounts for the review UI: scrypt password hashes, never plain text."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Literal

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.schema import dialect_insert, revoked_sessions, users

Role = Literal["staff", "admin"]
ROLES: tuple[Role, ...] = ("staff", "admin")
MIN_PASSWORD_CHARS = 10
# scrypt is memory-hard: 2**14 x 8 x 128 B = 16 MiB per hash, ~50 ms here.
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES = 2**14, 8, 1, 32


class UserError(ValueError):
    """A user that cannot be created (bad name, weak password, taken name)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$key`, so parameters can be raised later without breaking logins."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


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
        "password_hash": hash_password(password),
        "created_at": time.time(),
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(users).values(**row))
    except IntegrityError:
        raise UserError(f"user {name!r} already exists") from None


async def authenticate(engine: AsyncEngine, name: str, password: str) -> Role | None:
    """The user's role if the password is right, else None (same cost either way)."""
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                select(users.c.role, users.c.password_hash).where(users.c.name == name)
            )
        ).first()
    if found is None:
        verify_password(password, hash_password("timing-equaliser"))
        return None
    return found.role if verify_password(password, found.password_hash) else None


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
