"""Listen-in (`/live/listen/{sid}`): a supervisor hears a live call's two sides as they pass —
the caller's frames byte for byte as the fake caller sent them, the bot's as the playout sends
them — and only a signed-in supervisor from our own pages may; each listen is audited; in
Chromium the call page's button connects, receives and plays."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from telephony.audio import MULAW_BYTES_PER_MS
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import FakeTwilioCaller
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.engine import make_engine
from telephony.store.queries import get_call
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY, RunningApp, served_with_fakes
from tests.pg_server import PgServer, fresh_database
from tests.staff_helpers import STAFF, SUPERVISOR, add_accounts, login
from tests.test_staff_browser import browser, log_in  # noqa: F401

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

SID = "CAlisten0000000000000000000000001"


def caller_audio(ms: int) -> bytes:
    """Audio nobody could mistake for silence or for another frame: a ramp of μ-law bytes."""
    return bytes((i * 7) % 256 for i in range(ms * MULAW_BYTES_PER_MS))


@pytest.fixture
async def app(
    numbers_yaml: Path, fake_rest: FakeTwilioRest, database: str
) -> AsyncIterator[RunningApp]:
    script = Script(turns=[ScriptedTurn(2500, 3000, "hello")])
    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=script) as deepgram,
        served_with_fakes(numbers_yaml, deepgram, fake_rest) as running,
    ):
        await add_accounts(database, supervisor=True)
        yield running


@contextlib.asynccontextmanager
async def live_call(app: RunningApp, audio: bytes) -> AsyncIterator[asyncio.Task]:
    """A call in progress (the caller sends `audio`, then silence, until the block ends)."""
    hangup = asyncio.Event()
    caller = FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN)
    task = asyncio.create_task(
        caller.dial("+15550001000", call_sid=SID, audio=audio, tail_ms=None, hangup=hangup)
    )
    services = app.app.state.services
    async with asyncio.timeout(10):  # live here, and its row written (the call page reads it)
        while services.registry.current(SID) is None or await get_call(services.db, SID) is None:  # noqa: ASYNC110 - nothing to wait on but the store
            await asyncio.sleep(0.02)
    try:
        yield task
    finally:
        hangup.set()
        await task


async def cookie_of(app: RunningApp, who: tuple[str, str, str]) -> str:
    async with httpx.AsyncClient(base_url=app.url) as client:
        assert (await login(client, who[0], who[2])).status_code == 303
        return "; ".join(f"{k}={v}" for k, v in client.cookies.items())


def ws_url(app: RunningApp, sid: str = SID) -> str:
    return app.url.replace("http://", "ws://") + f"/live/listen/{sid}"


async def refused(app: RunningApp, headers: dict[str, str], sid: str = SID) -> int:
    async with connect(ws_url(app, sid), additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def frames(message: bytes) -> list[tuple[int, bytes]]:
    """A listen-in message: frames as side (1 byte), length (2 bytes), μ-law bytes."""
    out, at = [], 0
    while at < len(message):
        side, n = message[at], int.from_bytes(message[at + 1 : at + 3], "big")
        assert side in (0, 1) and at + 3 + n <= len(message)
        out.append((side, message[at + 3 : at + 3 + n]))
        at += 3 + n
    return out


async def heard(ws: ClientConnection, side: int, want: int, within: float = 10) -> bytes:
    got = bytearray()
    async with asyncio.timeout(within):
        while len(got) < want:
            message = await ws.recv()
            assert isinstance(message, bytes)
            got += b"".join(frame for s, frame in frames(message) if s == side)
    return bytes(got)


async def test_a_supervisor_hears_both_sides_and_the_caller_exactly(app: RunningApp) -> None:
    sent = caller_audio(20_000)  # still playing when the supervisor joins, however late
    origin = {"Origin": app.url}
    cookie = await cookie_of(app, SUPERVISOR)
    async with live_call(app, sent):
        async with connect(ws_url(app), additional_headers={"Cookie": cookie, **origin}) as ws:
            caller = await heard(ws, 0, 400 * MULAW_BYTES_PER_MS)
            bot = await heard(ws, 1, 200 * MULAW_BYTES_PER_MS)  # the greeting, as played
        # The caller's side is the caller's bytes, a run of them from where we joined.
        start = sent.find(caller[:160])
        assert start >= 0 and sent[start : start + len(caller)] == caller[: len(sent) - start]
        assert any(b != 0xFF for b in bot)  # not silence: the bot's speech
    engine = make_engine(app.settings.database_url)
    try:
        from telephony.store import audit

        rows = await audit.recent(engine, limit=10, action="call.listen")
    finally:
        await engine.dispose()
    assert [(r["user_name"], r["target"]) for r in rows] == [(SUPERVISOR[0], SID)]


async def test_only_a_supervisor_from_our_own_pages_may_listen(app: RunningApp) -> None:
    supervisor = await cookie_of(app, SUPERVISOR)
    staff = await cookie_of(app, STAFF)
    origin = {"Origin": app.url}
    async with live_call(app, caller_audio(500)):
        assert await refused(app, origin) == 4401
        assert await refused(app, {"Cookie": staff, **origin}) == 4403
        evil = {"Cookie": supervisor, "Origin": "https://evil.example"}
        assert await refused(app, evil) == 4403
        assert await refused(app, {"Cookie": supervisor}) == 4403  # no Origin at all
        gone = "CA" + "0" * 32
        assert await refused(app, {"Cookie": supervisor, **origin}, sid=gone) == 4404
        headers = {"Cookie": supervisor, **origin}
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(5):
                ws = await stack.enter_async_context(
                    connect(ws_url(app), additional_headers=headers)
                )
                await heard(ws, 0, 160)
            assert await refused(app, headers) == 4429  # a sixth


async def test_the_call_page_plays_the_call_in_chromium(
    app: RunningApp,
    browser: Browser,  # noqa: F811
) -> None:
    async with live_call(app, caller_audio(3000)):
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await log_in(page, app.url, SUPERVISOR, f"/calls/{SID}")
        button = page.locator("#listen")
        await page.get_by_role("button", name="Listen in").click()
        await expect(page.locator("#listen-status")).to_have_text("Listening (both sides).")
        await expect(button).to_have_attribute("aria-pressed", "true")
        # A second of audio arrived and was scheduled to play.
        async with asyncio.timeout(10):
            while int(await button.get_attribute("data-heard") or 0) < 8000:
                await page.wait_for_timeout(100)
        await page.get_by_role("button", name="Stop listening").click()
        await expect(page.locator("#listen-status")).to_have_text("Stopped.")
        assert not errors, errors
        await page.close()


# --- through another instance -----------------------------------------------------------------


async def test_listening_through_another_instance_relays_the_carriers_frames(
    numbers_yaml: Path, fake_rest: FakeTwilioRest, postgres_server: PgServer
) -> None:
    """Instances share PostgreSQL and the session secret (as a deployment does); the call is
    on A, the supervisor's browser on B: B finds A in the database and relays its frames."""
    shared = {"TELEPHONY_SESSION_SECRET": "s" * 40}
    async with (
        fresh_database(postgres_server, "listen") as url,
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=Script(turns=[])) as deepgram,
        served_with_fakes(
            numbers_yaml, deepgram, fake_rest, TELEPHONY_DATABASE_URL=url, **shared
        ) as a,
        served_with_fakes(
            numbers_yaml, deepgram, fake_rest, TELEPHONY_DATABASE_URL=url, **shared
        ) as b,
    ):
        await add_accounts(url, supervisor=True)
        # Long enough to still be playing when B relays it: the caller's audio is paced, and
        # a loaded machine once took the whole of 3 s of it to log in, find A and connect.
        sent = caller_audio(20_000)
        cookie = await cookie_of(b, SUPERVISOR)
        async with live_call(a, sent):
            assert b.app.state.services.registry.current(SID) is None  # not on B
            headers = {"Cookie": cookie, "Origin": b.url}
            async with connect(ws_url(b), additional_headers=headers) as ws:
                caller = await heard(ws, 0, 400 * MULAW_BYTES_PER_MS)
            start = sent.find(caller[:160])
            assert start >= 0 and sent[start : start + len(caller)] == caller[: len(sent) - start]
            # A forged relay token is refused by the carrier.
            forged = {"X-Telephony-Relay": f"{SID}|{SUPERVISOR[0]}|9999999999|00"}
            assert await refused(a, forged) == 4403
