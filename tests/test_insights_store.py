"""The pending insights row is written with the call's end, in one transaction, and the store
tells the worker only once that is committed; calls not wanting insights get no row."""

from __future__ import annotations

import pytest

from telephony.store.insights import insights_of
from telephony.store.transcripts import TranscriptStore
from tests import test_store
from tests.serve_process import eventually
from tests.test_store import Db, summary

pytestmark = pytest.mark.clock(4)

db = test_store.db


async def test_the_end_of_a_call_wanting_insights_writes_its_pending_row(db: Db) -> None:
    store = TranscriptStore(db.engine, flush_interval=0.05)
    told: list[list[str]] = []

    def listen(sids: list[str]) -> None:
        told.append(list(sids))

    store.on_insights = listen
    await store.start()
    try:
        store.call_ended(summary("CAyes"), mode="flux", insights=True)
        store.call_ended(summary("CAno"), mode="flux")
        store.call_resumed(summary("CAlive"))  # live again: not ended, nothing to analyse

        async def written() -> bool:
            return bool(told)

        await eventually(written, within=5, what="the end committed")
        rows = await insights_of(db.engine, ["CAyes", "CAno", "CAlive"])
        assert {sid: r["status"] for sid, r in rows.items()} == {"CAyes": "pending"}
        assert told == [["CAyes"]]
        # The second end row (its recording linked) leaves the row as it is.
        before = rows["CAyes"]["updated_at"]
        store.call_ended(summary("CAyes"), mode="flux", recording_path="/r.wav", insights=True)
        await eventually(lambda: _told_twice(told), within=5, what="the second end")
        again = (await insights_of(db.engine, ["CAyes"]))["CAyes"]
        assert (again["status"], again["updated_at"]) == ("pending", before)
    finally:
        await store.stop()


async def _told_twice(told: list[list[str]]) -> bool:
    return len(told) == 2
