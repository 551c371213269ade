"""`telephony serve --workers 2` for real (telephony/workers.py): two worker processes on one
public port, each an instance of its own on the shared PostgreSQL with a private port of its own.

- calls through the one port land on both workers (two instance ids in the store);
- a call on one worker is live on the other: its events in an event stream served by the other,
  and a supervisor signed in on the other listens in (relayed between the workers' private
  ports, under the session secret the parent made up and gave both);
- SIGTERM to the parent drains both workers (calls go on; a second signal ends them with the
  goodbye) and the parent exits 0;
- a killed worker is restarted under its own name, which closes the calls it carried at once;
  the parent killed, the workers drain and exit;
- with SQLite, `--workers 2` is refused.

The workers run on the real clock: they are started by the parent as `python -m telephony.cli`,
which the tests' fast clock (tests/fast_clock.py) does not reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from telephony.settings import ENV_FILE_VAR
from telephony.sim.caller_script import HangUp
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.migrate import upgrade
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY
from tests.pg_server import PgServer, fresh_database
from tests.serve_process import NUMBER, REPO, Server, eventually, scripted_yaml, serve_process
from tests.staff_helpers import SUPERVISOR, add_accounts, login
from tests.test_listen_in import caller_audio, heard
from tests.test_live_events import stream

pytestmark = [pytest.mark.process, pytest.mark.clock(1)]

YAML = scripted_yaml({"hello": "Hi there."})
NAME = "box"  # TELEPHONY_INSTANCE_ID: the workers are box-w0 and box-w1
MULAW_BYTES_PER_MS = 8


@dataclass
class Workers:
    server: Server  # the parent; server.url is the shared public port
    database: str  # asyncpg DSN
    urls: dict[str, str]  # instance name -> internal URL

    async def rows(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database, timeout=5)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def carrier(self, sid: str) -> str:
        """The name of the worker whose store row says it carries `sid`."""
        found = await self.rows(
            "SELECT i.name FROM calls c JOIN instances i ON i.id = c.instance_id WHERE c.sid = $1",
            sid,
        )
        return str(found[0]["name"]) if found else ""

    def pids(self) -> list[int]:
        path = Path(f"/proc/{self.server.proc.pid}/task/{self.server.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(url + "/readyz")).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.asynccontextmanager
async def two_workers(
    tmp_path: Path, url: str, deepgram: FakeDeepgram, rest: FakeTwilioRest, **env: str
) -> AsyncIterator[Workers]:
    """`telephony serve --workers 2` on `url`'s database; yields once both workers are ready.
    Every worker still running at the end is killed (the parent is, by serve_process)."""
    dsn = url.replace("postgresql+asyncpg", "postgresql")
    env = {"TELEPHONY_DATABASE_URL": url, "TELEPHONY_INSTANCE_ID": NAME, **env}
    async with serve_process(
        tmp_path, YAML, deepgram, rest, ("--workers", "2", "--internal-port", "0"), **env
    ) as server:
        workers = Workers(server, dsn, {})
        pids: list[int] = []
        try:
            pids = workers.pids()

            async def both() -> bool:
                rows = await workers.rows("SELECT name, url FROM instances")
                workers.urls = {str(r["name"]): str(r["url"]) for r in rows}
                urls = list(workers.urls.values())
                return len(urls) == 2 and all([await _ready(u) for u in urls])

            await eventually(both, within=20, what="both workers ready", every=0.1)
            assert sorted(workers.urls) == [f"{NAME}-w0", f"{NAME}-w1"], server.output()
            yield workers
        finally:
            for pid in {*pids, *_alive_children(server)}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may take its time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _alive_children(server: Server) -> list[int]:
    try:
        return Workers(server, "", {}).pids()
    except OSError:
        return []


@pytest.fixture
async def database(postgres_server: PgServer) -> AsyncIterator[str]:
    async with fresh_database(postgres_server, "workers") as url:
        await upgrade(url)
        yield url


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeDeepgram, FakeTwilioRest]]:
    script = Script(turns=[ScriptedTurn(start_ms=300, end_ms=700, text="hello")])
    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=script) as deepgram,
        FakeTwilioRest(auth_token=AUTH_TOKEN) as rest,
    ):
        yield deepgram, rest


@dataclass
class LiveCall:
    dial: asyncio.Task[CallResult]
    hangup: asyncio.Event  # set: the caller hangs up


@contextlib.asynccontextmanager
async def call_on(
    workers: Workers, name: str, sid: str, audio: bytes = b""
) -> AsyncIterator[LiveCall]:
    """A call on worker `name`, which the test picks through its private port (Twilio's
    webhook and socket would land on either worker through the public one); it goes on
    (audio, then silence) until the caller hangs up, the block ends or the service ends it.
    Webhook and socket on one worker: one that answered the webhook only would count the call
    until the stream token's TTL (30 s) ran out, and its drain would wait for that."""
    hangup = asyncio.Event()
    url = workers.urls[name]
    caller = FakeTwilioCaller(url, auth_token=AUTH_TOKEN, public_url=workers.server.url)
    dial = asyncio.create_task(
        caller.dial(
            NUMBER,
            call_sid=sid,
            audio=audio,
            tail_ms=None,
            hangup=hangup,
            max_call_ms=20_000,
            connect_url=url.replace("http://", "ws://") + "/twilio/media",
        )
    )
    try:

        async def carried() -> bool:
            assert not dial.done(), f"call ended early: {dial.result()}"
            return await workers.carrier(sid) == name

        await eventually(carried, within=10, what=f"{sid} live on {name}", every=0.05)
        yield LiveCall(dial, hangup)
    finally:
        hangup.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(dial, 10)


async def test_calls_through_one_port_land_on_both_workers(
    tmp_path: Path, database: str, fakes: tuple[FakeDeepgram, FakeTwilioRest]
) -> None:
    async with two_workers(tmp_path, database, *fakes) as workers:
        caller = FakeTwilioCaller(workers.server.url, auth_token=AUTH_TOKEN)
        carriers: set[str] = set()
        for _ in range(4):  # which worker accepts a connection is the kernel's race
            results = await asyncio.gather(
                *(caller.dial(NUMBER, timeline=[HangUp(400)]) for _ in range(4))
            )
            for result in results:
                assert result.error is None, workers.server.output()
                sid = result.call_sid
                carrier = await eventually(
                    lambda sid=sid: workers.carrier(sid), within=5, what=f"{sid} stored"
                )
                carriers.add(carrier)
            if len(carriers) == 2:
                break
        assert carriers == {f"{NAME}-w0", f"{NAME}-w1"}, workers.server.output()


async def test_a_call_on_one_worker_is_live_on_the_other(
    tmp_path: Path, database: str, fakes: tuple[FakeDeepgram, FakeTwilioRest]
) -> None:
    """No TELEPHONY_SESSION_SECRET: the parent gives both workers one, so a login on w0 is good
    on w1, and w1's relay token is good on w0."""
    await add_accounts(database, supervisor=True)
    sid = "CAworkers00000000000000000000000001"
    sent = caller_audio(3000)
    async with (
        two_workers(tmp_path, database, *fakes) as workers,
        httpx.AsyncClient(base_url=workers.urls[f"{NAME}-w0"], timeout=10) as on_w0,
    ):
        assert (await login(on_w0, SUPERVISOR[0], SUPERVISOR[2])).status_code == 303
        cookie = "; ".join(f"{k}={v}" for k, v in on_w0.cookies.items())
        w1 = workers.urls[f"{NAME}-w1"]
        async with (
            httpx.AsyncClient(base_url=w1, timeout=10, headers={"Cookie": cookie}) as on_w1,
            stream(on_w1) as events,
        ):
            async with call_on(workers, f"{NAME}-w0", sid, sent):
                await events.until("call-started", sid, within=10)
                listen = w1.replace("http://", "ws://") + f"/live/listen/{sid}"
                headers = {"Cookie": cookie, "Origin": w1}
                async with connect(listen, additional_headers=headers) as ws:
                    got = await heard(ws, 0, 300 * MULAW_BYTES_PER_MS)
                start = sent.find(got[:160])  # the caller's audio, byte for byte, from w0
                assert start >= 0 and sent[start : start + len(got)] == got[: len(sent) - start]
                await events.until("turn", sid, within=10)
            await events.until("call-ended", sid, within=10)
        assert await workers.rows("SELECT 1 FROM audit_log WHERE action = 'call.listen'")


async def test_sigterm_drains_every_worker_and_the_parent_exits_0(
    tmp_path: Path, database: str, fakes: tuple[FakeDeepgram, FakeTwilioRest]
) -> None:
    """The first SIGTERM: both drain, each exits once its call is over; the second ends the
    call still going (with the goodbye); the parent exits 0 once both have."""
    sids = ["CAdrain0000000000000000000000000000", "CAdrain0000000000000000000000000001"]
    async with (
        two_workers(tmp_path, database, *fakes) as workers,
        call_on(workers, f"{NAME}-w0", sids[0]) as first,
        call_on(workers, f"{NAME}-w1", sids[1]) as second,
    ):
        [w0_id] = [
            r["id"]
            for r in await workers.rows("SELECT id FROM instances WHERE name = $1", f"{NAME}-w0")
        ]
        w0_pid = int(w0_id.split("-")[-2])  # host-pid-random (telephony/store/instances.py)
        parent = workers.server.proc
        parent.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            return not any([await _ready(url) for url in workers.urls.values()])

        await eventually(draining, within=5, what="both workers draining (/readyz 503)")
        await asyncio.sleep(0.5)
        assert not first.dial.done() and not second.dial.done()  # the calls go on
        first.hangup.set()  # its caller hangs up: w0 has nothing left and exits
        assert (await asyncio.wait_for(first.dial, 10)).error is None

        async def w0_gone() -> bool:
            return not _running(w0_pid)

        await eventually(w0_gone, within=10, what="w0 to exit once its call was over")
        assert parent.returncode is None and not second.dial.done()  # w1 still drains
        parent.send_signal(signal.SIGTERM)  # the second: w1 ends its call now
        assert (await asyncio.wait_for(second.dial, 20)).error is None
        code = await asyncio.wait_for(parent.wait(), 20)
        assert code == 0, workers.server.output()
        rows = await workers.rows("SELECT sid, end_reason FROM calls ORDER BY sid")
        assert [(r["sid"], r["end_reason"]) for r in rows] == [
            (sids[0], "caller-hangup"),
            (sids[1], "drained"),
        ], rows
        assert not await workers.rows("SELECT id FROM instances")  # both left cleanly


async def test_a_killed_worker_is_restarted_and_its_calls_closed(
    tmp_path: Path, database: str, fakes: tuple[FakeDeepgram, FakeTwilioRest]
) -> None:
    sid = "CAkilled000000000000000000000000000"
    async with two_workers(tmp_path, database, *fakes) as workers:
        w0 = f"{NAME}-w0"
        [(before,)] = await workers.rows("SELECT id FROM instances WHERE name = $1", w0)
        async with call_on(workers, w0, sid):
            pid = int(before.split("-")[-2])  # host-pid-random (telephony/store/instances.py)
            assert pid in workers.pids()
            os.kill(pid, signal.SIGKILL)

            async def restarted() -> bool:
                rows = await workers.rows("SELECT id FROM instances WHERE name = $1", w0)
                return bool(rows) and rows[0]["id"] != before and await _ready(workers.urls[w0])

            await eventually(restarted, within=15, what="w0 restarted", every=0.1)
        # Its successor closed the call it carried at start, without waiting for staleness.
        [row] = await workers.rows("SELECT end_reason, ended_at FROM calls WHERE sid = $1", sid)
        assert row["end_reason"] == "restart" and row["ended_at"] is not None
        assert "restarting it" in workers.server.output()
        survivors = workers.pids()
        assert len(survivors) == 2

        # The parent killed: each worker is sent SIGTERM and, with no call left, exits.
        workers.server.proc.kill()

        async def gone() -> bool:
            return not any(_running(pid) for pid in survivors)

        await eventually(gone, within=10, what="the workers to exit after their parent")


def test_sqlite_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPHONY_", "TWILIO_"))}
    env |= {
        ENV_FILE_VAR: "",
        "PYTHONPATH": str(REPO),
        "TELEPHONY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'one.db'}",
        "TELEPHONY_ALLOW_INSECURE_DEV": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "telephony.cli", "serve", "--port", "0", "--workers", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "error: --workers needs PostgreSQL:" in done.stderr
    assert not (tmp_path / "one.db").exists()  # refused before anything was opened
