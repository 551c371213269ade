"""Retention: delete calls older than their profile's `retention_days`, with everything kept
for them (turns, events, the recording file), and write the audit log.

A call's age is counted from `calls.started_at`. Its profile is looked up by name in the
current numbers YAML; a call whose profile no longer exists keeps `default_days` (30 unless
told otherwise). Recording files are deleted before the rows that point at them, so a run that
fails half way leaves nothing orphaned: the next run finds the rows again (a recording already
gone is not an error).

Audit: one `audit_log` row per run (user "retention", action "retention.run", target
"dry run" or ""), dry runs included, whose detail has the counts and the first
`AUDIT_SID_LIMIT` SIDs deleted (or that would be). Per-call rows would flood the log on the
first run over an old database; the SIDs in the run's row are enough to answer "what went".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store import audit
from telephony.store.schema import calls, events, stream_claims, turns

if TYPE_CHECKING:
    from telephony.config import Profile

log = logging.getLogger(__name__)

DEFAULT_DAYS = 30
DAY_S = 86_400
AUDIT_USER = "retention"
AUDIT_ACTION = "retention.run"
AUDIT_SID_LIMIT = 1000
BATCH = 500  # SIDs per DELETE ... IN (...): under every backend's bound-parameter limit


@dataclass
class RetentionResult:
    dry_run: bool
    now: float
    kept: int = 0  # calls left in the store (not expired, or their recording is stuck)
    calls: list[str] = field(default_factory=list)  # SIDs deleted (or that would be)
    turns: int = 0
    events: int = 0
    recordings: int = 0  # files deleted (or that would be)
    recordings_missing: int = 0  # linked files already gone
    recording_errors: int = 0  # files that could not be deleted (their calls are kept)
    error: str | None = None

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        text = (
            f"retention{' (dry run)' if self.dry_run else ''}: {verb} {len(self.calls)} calls "
            f"({self.turns} turns, {self.events} events, {self.recordings} recordings"
        )
        if self.recordings_missing:
            text += f"; {self.recordings_missing} recordings already gone"
        if self.recording_errors:
            text += f"; {self.recording_errors} recordings NOT deleted (calls kept)"
        return text + f"), kept {self.kept}"

    def audit_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "dry_run": self.dry_run,
            "now": self.now,
            "calls": len(self.calls),
            "kept": self.kept,
            "turns": self.turns,
            "events": self.events,
            "recordings": self.recordings,
            "recordings_missing": self.recordings_missing,
            "recording_errors": self.recording_errors,
            "sids": self.calls[:AUDIT_SID_LIMIT],
            "sids_truncated": len(self.calls) > AUDIT_SID_LIMIT,
        }
        if self.error is not None:
            detail["error"] = self.error
        return detail


def _days(profile: str, profiles: Mapping[str, Profile], default_days: int) -> int:
    found = profiles.get(profile)
    return found.retention_days if found is not None else default_days


async def run_retention(
    engine: AsyncEngine,
    profiles: Mapping[str, Profile],
    *,
    now: float | None = None,
    default_days: int = DEFAULT_DAYS,
    dry_run: bool = False,
) -> RetentionResult:
    """Delete (or, dry, only count) every expired call; always writes one audit row."""
    result = RetentionResult(dry_run=dry_run, now=time.time() if now is None else now)
    try:
        total, expired = await _expired(engine, profiles, result.now, default_days)
        result.kept = total
        for i in range(0, len(expired), BATCH):
            await _delete_batch(engine, expired[i : i + BATCH], result)
            result.kept = total - len(result.calls)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        target = "dry run" if dry_run else ""
        await audit.record(
            engine, AUDIT_USER, AUDIT_ACTION, target, result.audit_detail(), at=result.now
        )
    return result


async def _expired(
    engine: AsyncEngine, profiles: Mapping[str, Profile], now: float, default_days: int
) -> tuple[int, list[tuple[str, str | None]]]:
    """The number of calls, and (sid, recording_path) of every expired one, oldest first."""
    shortest = min([default_days, *(p.retention_days for p in profiles.values())])
    q = select(calls.c.sid, calls.c.profile, calls.c.started_at, calls.c.recording_path)
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(calls))).scalar_one()
        rows = await conn.execute(
            q.where(calls.c.started_at < now - shortest * DAY_S).order_by(
                calls.c.started_at, calls.c.sid
            )
        )
        expired = [
            (r.sid, r.recording_path)
            for r in rows
            if r.started_at < now - _days(r.profile, profiles, default_days) * DAY_S
        ]
    return total, expired


def _delete_file(path: str, result: RetentionResult) -> bool:
    """False if the file exists and could not be deleted."""
    file = Path(path)
    try:
        if result.dry_run:
            exists = file.is_file()
        else:
            file.unlink()
            exists = True
    except FileNotFoundError:
        exists = False
    except OSError as exc:
        log.error("retention: cannot delete recording %s: %s", path, exc)
        result.recording_errors += 1
        return False
    if exists:
        result.recordings += 1
    else:
        result.recordings_missing += 1
    return True


async def _delete_batch(
    engine: AsyncEngine, batch: list[tuple[str, str | None]], result: RetentionResult
) -> None:
    # Files first: a call whose recording could not be deleted keeps its rows (and is found
    # again next run), so no recording is ever left without the call that explains it.
    sids = [sid for sid, path in batch if not path or _delete_file(path, result)]
    if not sids:
        return
    async with engine.begin() as conn:
        if result.dry_run:
            for table, attr in ((turns, "turns"), (events, "events")):
                q = select(func.count()).select_from(table).where(table.c.call_sid.in_(sids))
                setattr(result, attr, getattr(result, attr) + (await conn.execute(q)).scalar_one())
        else:
            # Explicit child deletes: correct even where ON DELETE CASCADE is not enforced.
            result.turns += (
                await conn.execute(delete(turns).where(turns.c.call_sid.in_(sids)))
            ).rowcount
            result.events += (
                await conn.execute(delete(events).where(events.c.call_sid.in_(sids)))
            ).rowcount
            # The webhook's stored answer names the caller's number: it goes with the call.
            await conn.execute(delete(stream_claims).where(stream_claims.c.call_sid.in_(sids)))
            await conn.execute(delete(calls).where(calls.c.sid.in_(sids)))
    result.calls += sids
