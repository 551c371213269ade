"""Staff accounts: scrypt hashes and `telephony users add`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from telephony.store.engine import make_engine
from telephony.store.users import (
    UserError,
    authenticate,
    check_new_user,
    hash_password,
    verify_password,
)


def test_hash_and_verify() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$16384$8$1$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterx", stored)
    assert hash_password("same password") != hash_password("same password")  # salted
    assert not verify_password("x", "garbage") and not verify_password("x", "md5$a$b$c$d$e")


@pytest.mark.parametrize(
    ("name", "role", "password", "why"),
    [
        ("alice", "staff", "short", "at least 10"),
        ("alice", "root", "long enough pw", "role must be"),
        ("al ice", "staff", "long enough pw", "letters, digits"),
    ],
)
def test_new_user_checks(name: str, role: str, password: str, why: str) -> None:
    with pytest.raises(UserError, match=why):
        check_new_user(name, role, password)


def add(tmp_path: Path, name: str, password: str, role: str = "admin"):
    env = {**os.environ, "TELEPHONY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/u.db"}
    return subprocess.run(
        [sys.executable, "-m", "telephony.cli", "users", "add", name, "--role", role],
        input=password + "\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


async def test_users_add_command_stores_a_hash_that_authenticates(tmp_path: Path) -> None:
    out = add(tmp_path, "alice", "a long passphrase")
    assert out.returncode == 0, out.stderr
    assert "a long passphrase" not in out.stdout + out.stderr
    again = add(tmp_path, "alice", "another passphrase")
    assert again.returncode == 1 and "already exists" in again.stderr
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/u.db")
    try:
        assert await authenticate(engine, "alice", "a long passphrase") == "admin"
        assert await authenticate(engine, "alice", "wrong passphrase") is None
        assert await authenticate(engine, "nobody", "a long passphrase") is None
    finally:
        await engine.dispose()
