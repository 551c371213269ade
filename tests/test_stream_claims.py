"""The shared claims behind "one answer per call, one carrier per stream" (store/stream_claims.py),
on SQLite and PostgreSQL (the store tests' `db` fixture), and retention taking them away."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from sqlalchemy import select

from telephony.store.retention import run_retention
from telephony.store.schema import stream_claims
from telephony.store.stream_claims import KEEP_S, carry, record_answer
from tests import test_retention, test_store

db = test_store.db


async def test_the_first_answer_is_every_answer(db) -> None:
    assert await record_answer(db.engine, "CA1", "<first/>") == ("<first/>", False)
    assert await record_answer(db.engine, "CA1", "<second/>") == ("<first/>", False)
    assert await record_answer(db.engine, "CA2", "<other/>") == ("<other/>", False)
    # Once its stream has started (on any instance), a repeat is told so.
    assert await carry(db.engine, "CA1", "", "instance-a")
    assert await record_answer(db.engine, "CA1", "<third/>") == ("<first/>", True)


async def test_concurrent_answers_agree(db) -> None:
    got = await asyncio.gather(*(record_answer(db.engine, "CA1", f"<a{i}/>") for i in range(5)))
    assert len(set(got)) == 1


async def test_one_carrier_per_stream(db) -> None:
    await record_answer(db.engine, "CA1", "<answer/>")
    assert await carry(db.engine, "CA1", "", "instance-a")
    assert await carry(db.engine, "CA1", "", "instance-a")  # its own claim again: still ours
    assert not await carry(db.engine, "CA1", "", "instance-b")
    # A continuation is a stream of its own, and needs no webhook row.
    assert await carry(db.engine, "CA1", "continues|5000|4", "instance-b")
    assert not await carry(db.engine, "CA1", "continues|5000|4", "instance-a")


async def test_a_stream_carried_before_its_answer_was_stored_keeps_its_carrier(db) -> None:
    assert await carry(db.engine, "CA1", "", "instance-a")  # the webhook's write was late
    assert await record_answer(db.engine, "CA1", "<late/>") == ("<late/>", True)
    assert not await carry(db.engine, "CA1", "", "instance-b")


async def test_old_claims_are_dropped_by_the_next_answer(db) -> None:
    await record_answer(db.engine, "CAold", "<old/>", now=1_000.0)
    await record_answer(db.engine, "CAnew", "<new/>", now=1_000.0 + KEEP_S + 1)
    async with db.engine.connect() as conn:
        left = set((await conn.execute(select(stream_claims.c.call_sid))).scalars())
    assert left == {"CAnew"}


async def test_retention_takes_a_calls_claims_with_it(db, tmp_path: Path) -> None:
    await test_retention.populate(db.engine, tmp_path / "recordings")
    for sid in test_retention.CALLS:
        await record_answer(db.engine, sid, "<answer/>", now=test_retention.NOW)
    await run_retention(db.engine, test_retention.profiles(tmp_path), now=test_retention.NOW)
    async with db.engine.connect() as conn:
        left = set((await conn.execute(select(stream_claims.c.call_sid))).scalars())
    assert left == set(test_retention.CALLS) - test_retention.EXPIRED


async def test_a_calls_claims_leave_no_cyclic_garbage(db) -> None:
    """They run for every call: statements built per call left objects in reference loops (an
    upsert's `excluded` alias, a literal's bind parameter) for the cyclic garbage collector,
    whose collections stall every live call (tests/test_call_memory.py)."""
    await record_answer(db.engine, "CA0", "<warm/>")  # first use: the dialect's caches
    await carry(db.engine, "CA0", "", "instance-a")
    gc.collect()
    gc.disable()
    try:
        for n in range(1, 6):
            await record_answer(db.engine, f"CA{n}", "<answer/>")
            await carry(db.engine, f"CA{n}", "", "instance-a")
        left = gc.collect()
    finally:
        gc.enable()
    assert left == 0
