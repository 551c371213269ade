"""Shared by the staff UI tests: accounts, a stored call, and logging in over HTTP."""

from __future__ import annotations

import re
import time
from unittest import mock

import httpx

from telephony.outcome import Outcome
from telephony.session.summary import CallSummary
from telephony.store import users as users_module
from telephony.store.engine import make_engine
from telephony.store.hashing import hash_password
from telephony.store.transcripts import TranscriptStore
from telephony.store.users import add_user
from telephony.transcript import Event, Turn

STAFF = ("alice", "staff", "alice-password-1")
ADMIN = ("root", "admin", "root-password-12")
SUPERVISOR = ("sam", "supervisor", "sam-password-123")

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "page has no CSRF field"
    return found.group(1)


_HASHES: dict[str, str] = {}


def _hash_once(password: str) -> str:
    """The two fixture accounts' hashes, made once per test process (a scrypt run is ~50 ms,
    and ~80 tests add both accounts): each test's database still gets them through add_user."""
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


async def add_accounts(database_url: str, *, supervisor: bool = False) -> None:
    """STAFF and ADMIN (and SUPERVISOR if asked) in the database at `database_url`."""
    engine = make_engine(database_url)
    try:
        with mock.patch.object(users_module, "hash_password", _hash_once):
            for name, role, password in (STAFF, ADMIN, *([SUPERVISOR] if supervisor else [])):
                await add_user(engine, name, role, password)
    finally:
        await engine.dispose()


async def store_call(
    database_url: str,
    sid: str,
    *,
    turns: list[Turn],
    events: list[Event] = (),  # type: ignore[assignment]
    ended: bool = True,
    profile: str = "support",
    from_number: str = "+15557654321",
    to_number: str = "+15550001000",
    started_at: float | None = None,
    recording_path: str | None = None,
    mode: str = "flux",
    outcome: Outcome = Outcome.CALLER_HANGUP,
    end_detail: str = "stop",
) -> None:
    """Write a call through the real write-behind store (and flush it)."""
    store = TranscriptStore(database_url)
    await store.start()
    started = time.time() - 60 if started_at is None else started_at
    store.call_started(
        sid,
        from_number=from_number,
        to_number=to_number,
        profile=profile,
        mode=mode,
        started_at=started,
        recording_path=recording_path,
    )
    for turn in turns:
        store.turn(sid, turn)
    for event in events:
        store.event(sid, event)
    if ended:
        summary = CallSummary(sid, "MZ" + sid[2:], profile, from_number, to_number, started)
        summary.ended_at = started + 30
        summary.end_reason, summary.end_detail = outcome, end_detail
        store.call_ended(summary, duration_ms=30_000)
    await store.stop()
    assert store.written > 0 and store.dropped == 0


async def login(client: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    page = await client.get("/login")
    return await client.post(
        "/login",
        data={"csrf": csrf_of(page.text), "name": name, "password": password, "next": "/calls"},
    )
