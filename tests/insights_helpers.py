"""Shared by the insights tests: a YAML with insights on and off, stored calls to analyse."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.config import load_config
from telephony.config.schema import Profile
from telephony.store.insights import mark_pending
from telephony.store.schema import calls, turns

NUMBERS = """\
numbers:
  "+15550001000": support
  "+15550002000": quiet
  "+15550003000": open
profiles:
  support:
    mode: flux
    responder: {type: scripted, rules: [], fallback: "Hi."}
    insights: {summary: true, sentiment: true, topics: true, intents: true}
  quiet:
    mode: flux
    responder: {type: scripted, rules: [], fallback: "Hi."}
  open:
    mode: flux
    redaction: false
    responder: {type: scripted, rules: [], fallback: "Hi."}
    insights: {summary: true}
"""

CARD = "4111 1111 1111 1111"
SAID = [
    ("bot", "Thanks for calling, how can I help?"),
    (
        "caller",
        f"Where is my order? It is late and I am upset, this is terrible. My card is {CARD}.",
    ),
    ("bot", "Great, thank you for waiting. I will book that for you, thanks."),
]


def write_numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


def profiles(tmp_path: Path) -> dict[str, Profile]:
    return load_config(write_numbers(tmp_path)).profiles


async def add_call(
    engine: AsyncEngine,
    sid: str,
    profile: str = "support",
    *,
    said: Sequence[tuple[str, str]] = SAID,
    started_at: float = 1_790_000_000.0,
    pending: bool = True,
) -> None:
    """An ended call with its turns as stored (not redacted: as a profile without redaction
    would store them, so the analysis must redact on its own)."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(calls).values(
                sid=sid,
                profile=profile,
                from_number="+15551230000",
                to_number="+15550001000",
                mode="flux",
                started_at=started_at,
                ended_at=started_at + 30,
                end_reason="caller-hangup",
                duration_ms=30_000,
            )
        )
        rows = [
            {
                "call_sid": sid,
                "idx": i,
                "role": role,
                "text": text,
                "start_ms": i * 1000,
                "end_ms": i * 1000 + 900,
            }
            for i, (role, text) in enumerate(said)
        ]
        if rows:
            await conn.execute(insert(turns), rows)
        if pending:
            await mark_pending(conn, engine.dialect.name, [sid])
