"""Storage faults that could kill the process, against a real `telephony serve` (a crash must
not take pytest down with it).

- A storage side file truncated under the running process (what a clean-up script, a full
  tmpfs or `: > file` does): with WAL, the mapped `-shm` index shrank under the process and
  the next access killed it with SIGBUS, every live call with it. The store keeps no mapped
  file now; the call completes, the process lives on, and the transcript is complete.
- Writes beyond a file-size limit (RLIMIT_FSIZE on the running process, standing in for a full
  disk: every write past the limit fails): the call completes, /readyz answers 503 and
  /metrics counts the failure until the limit is lifted, then the kept rows are written.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller, silence
from telephony.sim.twilio_rest import FakeTwilioRest
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY
from tests.serve_process import Server, eventually, scripted_yaml, serve_process
from tests.test_drain import FULL_CONVERSATION
from tests.test_durability import read_turns, scrape

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

YAML = scripted_yaml({"one": "Reply one.", "two": "Reply two."}, goodbye="bye")
TURNS = [
    ScriptedTurn(start_ms=800, end_ms=1200, text="turn one"),
    ScriptedTurn(start_ms=3000, end_ms=3400, text="turn two"),
    ScriptedTurn(start_ms=5000, end_ms=5400, text="okay bye"),
]
CONVERSATION = FULL_CONVERSATION  # the same scripted exchange, on this test's timing


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Server, asyncio.Event]]:
    """`telephony serve`; the event is set when the bot hangs up (Twilio's REST call)."""
    hangup = asyncio.Event()

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        hangup.set()

    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=Script(turns=TURNS), speak_ms_per_char=30) as dg,
        FakeTwilioRest(auth_token=AUTH_TOKEN) as rest,
    ):
        rest.on_request = on_rest
        async with serve_process(tmp_path, YAML, dg, rest) as running:
            yield running, hangup


async def get(server: Server, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(server.url + path)


def dial(server: Server, hangup: asyncio.Event) -> asyncio.Task[CallResult]:
    caller = FakeTwilioCaller(server.url, auth_token=AUTH_TOKEN)
    return asyncio.create_task(
        caller.dial(
            "+15550001000",
            audio=silence(12_000),
            tail_ms=None,
            hangup=hangup,
            max_call_ms=12_000,
        )
    )


async def first_turns_written(server: Server, dialing: asyncio.Task[CallResult]) -> None:
    async def written() -> bool:
        assert not dialing.done(), f"call ended early:\n{server.output()}"
        rows = await asyncio.to_thread(read_turns, server.db)
        return rows is not None and len(rows) >= 1

    await eventually(written, within=20, what="the greeting in the database")


async def completed(server: Server, dialing: asyncio.Task[CallResult]) -> CallResult:
    """The call ended normally (the bot hung up after its goodbye) and the process lives."""
    try:
        result = await asyncio.wait_for(dialing, 30)
    finally:
        dialing.cancel()
    assert server.proc.returncode is None, f"serve died:\n{server.output()}"
    assert result.error is None and result.closed_by == "caller", server.output()
    return result


async def stored_conversation(server: Server) -> None:
    async def complete() -> bool:
        rows = await asyncio.to_thread(read_turns, server.db)
        return rows is not None and [(role, text) for _, role, text, _ in rows] == CONVERSATION

    await eventually(complete, within=20, what=f"the whole call stored:\n{server.output()}")


async def test_side_files_truncated_mid_call_kill_nothing(
    server: tuple[Server, asyncio.Event],
) -> None:
    running, hangup = server
    dialing = dial(running, hangup)
    await first_turns_written(running, dialing)
    # Whatever sits beside the database is cut to nothing, again and again during the call.
    side = [running.db.with_name(running.db.name + s) for s in ("-shm", "-wal", "-journal")]
    for _ in range(20):
        for path in side:
            if path.exists():
                os.truncate(path, 0)
        await asyncio.sleep(0.1)
        assert running.proc.returncode is None, f"serve died:\n{running.output()}"
    await completed(running, dialing)
    assert not side[0].exists(), "a mapped -shm file: SIGBUS when it shrinks"
    assert (await get(running, "/readyz")).status_code == 200
    await stored_conversation(running)


async def test_writes_failing_for_a_file_size_limit_mid_call(
    server: tuple[Server, asyncio.Event],
) -> None:
    running, hangup = server
    pid = running.proc.pid
    dialing = dial(running, hangup)
    await first_turns_written(running, dialing)
    assert (await get(running, "/readyz")).status_code == 200
    unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    # Every write past the first page fails (EFBIG), as on a full disk.
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (4096, unlimited[1]))
    try:

        async def not_ready() -> bool:
            return (await get(running, "/readyz")).status_code == 503

        await eventually(not_ready, within=20, what=f"/readyz 503:\n{running.output()}")
        scraped = scrape((await get(running, "/metrics")).text)
        assert scraped["telephony_store_failing"] == 1
        assert scraped["telephony_store_errors_total"] >= 1
        await completed(running, dialing)
        scraped = scrape((await get(running, "/metrics")).text)
        assert scraped["telephony_store_queue_depth"] > 0  # the rest of the call, kept
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)

    async def recovered() -> bool:
        scraped = scrape((await get(running, "/metrics")).text)
        ready = (await get(running, "/readyz")).status_code == 200
        return ready and scraped["telephony_store_queue_depth"] == 0

    await eventually(recovered, within=30, what="the store to recover")
    scraped = scrape((await get(running, "/metrics")).text)
    assert scraped["telephony_store_failing"] == 0
    assert scraped["telephony_store_rows_dropped_total"] == 0
    await stored_conversation(running)
    with sqlite3.connect(running.db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
