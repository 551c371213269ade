"""The Flux and Aura clients against the fake Deepgram (which enforces the real rules)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from telephony.deepgram import messages as dm
from telephony.deepgram.connection import (
    NOVA_KEEPALIVE,
    STALLED_BYTES,
    KeepAlive,
    KeepAliveSpec,
    build_url,
    open_socket,
    send_now,
)
from telephony.deepgram.flux import FluxClient, FluxOptions
from telephony.deepgram.socket import DeepgramClosed
from telephony.deepgram.speak import FlushBudget, SpeakClient
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

KEY = "k"
FRAME = b"\xff" * 160


async def collect(client: FluxClient, kinds: set[type], n: int) -> list:
    out = []
    async with asyncio.timeout(5):
        async for event in client.events():
            if type(event) in kinds:
                out.append(event)
                if len(out) == n:
                    return out
    return out


async def test_flux_chunks_audio_and_reports_turns_on_the_call_clock() -> None:
    script = Script(turns=[ScriptedTurn(start_ms=200, end_ms=600, text="hello there")])
    async with FakeDeepgram(api_key=KEY, script=script) as fake:
        client = FluxClient(fake.url, KEY, FluxOptions(keyterms=("Acme", "Zed")))
        await client.connect()
        for i in range(50):  # 1 s of audio, starting at call time 3000 ms
            client.send_audio(3000 + i * 20, FRAME)
        end = None
        async with asyncio.timeout(5):
            async for event in client.events():
                if isinstance(event, dm.TurnInfo) and event.event == "EndOfTurn":
                    end = event
                    break
        assert end is not None
        assert end.transcript == "hello there"
        assert client.first_audio_ms == 3000  # the anchor of this connection on the call clock
        assert abs(3000 + end.audio_window_start * 1000 - 3200) <= 20
        assert abs(3000 + end.audio_window_end * 1000 - 3600) <= 20
        await client.close()
        log = fake.logs("flux")[0]
        await log.wait_closed()
    assert log.query["keyterm"] == ["Acme", "Zed"]
    assert log.query["encoding"] == ["mulaw"] and log.query["sample_rate"] == ["8000"]
    audio = [d for _, k, d in log.received if k == "audio"]
    assert audio[:12] == [640] * 12  # 80 ms chunks: 4 Twilio frames each
    assert sum(audio) == 50 * 160  # the tail went out at close: no byte lost
    assert "json:CloseStream" in log.received_kinds()
    assert "json:KeepAlive" not in log.received_kinds()
    assert log.close_code == 1005 and not log.violations


async def test_a_socket_waiting_for_its_next_message_keeps_no_earlier_one() -> None:
    """Every garbage collection scans what each idle socket's wait holds: hundreds of calls'
    last TurnInfos (their words, their tuples) if the events generators kept them."""
    script = Script(turns=[ScriptedTurn(start_ms=200, end_ms=600, text="hello there")])
    async with FakeDeepgram(api_key=KEY, script=script) as fake:
        client = FluxClient(fake.url, KEY, FluxOptions())
        await client.connect()
        for i in range(50):
            client.send_audio(i * 20, FRAME)
        events = client.events()
        async with asyncio.timeout(5):  # to the turn's end: then nothing more is coming
            event = await anext(events)
            while not (isinstance(event, dm.TurnInfo) and event.event == "EndOfTurn"):
                event = await anext(events)
        waiting = asyncio.ensure_future(anext(events))  # on to the next message
        await asyncio.sleep(0.05)  # the generators resume and wait
        assert not waiting.done()
        holders = [r for r in gc.get_referrers(event) if inspect.isasyncgen(r)]
        assert holders == [], [h.ag_code.co_name for h in holders]
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await events.aclose()
        await client.close()


async def test_configure_success_failure_and_one_in_flight() -> None:
    async with FakeDeepgram(api_key=KEY) as fake:
        client = FluxClient(fake.url, KEY, FluxOptions())
        await client.connect()
        await client.configure(eot_threshold=0.8)
        await client.configure(eot_timeout_ms=3000)  # waits for the first ack
        await client.configure(language_hints=["fr"])  # replaces the waiting one
        acks = await collect(client, {dm.ConfigureSuccess, dm.ConfigureFailure}, 2)
        assert isinstance(acks[0], dm.ConfigureSuccess)
        assert acks[0].thresholds["eot_threshold"] == 0.8
        assert isinstance(acks[1], dm.ConfigureFailure)  # language hints need the multi model
        received = fake.logs("flux")[0].received_messages(dm.Configure)
        assert [c.eot_timeout_ms for c in received] == [None, None]  # 3000 was superseded
        with pytest.raises(dm.DeepgramMessageError, match=r"between 0\.5 and 1"):
            await client.configure(eot_threshold=0.2)
        await client.close()


async def test_configure_success_with_a_string_keyterm_releases_the_next_configure() -> None:
    # Deepgram may acknowledge with "keyterms": "Acme" (one keyterm, a string). If that ack
    # were refused, the waiting Configure would never be sent: one is in flight at a time.
    received: list[dict] = []

    async def flux(ws: ServerConnection) -> None:
        async for raw in ws:
            if orjson.loads(raw)["type"] != "Configure":
                return  # CloseStream: Flux closes
            received.append(orjson.loads(raw))
            ack = {"type": "ConfigureSuccess", "request_id": "r", "sequence_id": len(received)}
            await ws.send(orjson.dumps({**ack, "thresholds": {}, "keyterms": "Acme"}).decode())

    async with serve(flux, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = FluxClient(f"ws://127.0.0.1:{port}", KEY, FluxOptions())
        await client.connect()
        await client.configure(keyterms=["Acme"])
        await client.configure(eot_threshold=0.8)  # waits for the first ack
        acks = await collect(client, {dm.ConfigureSuccess}, 2)
        await client.close()
    assert [a.keyterms for a in acks] == [("Acme",), ("Acme",)]
    assert [m.get("thresholds") for m in received] == [None, {"eot_threshold": 0.8}]


async def test_flux_error_or_drop_is_fatal() -> None:
    async with FakeDeepgram(api_key=KEY) as fake:
        client = FluxClient(fake.url, KEY, FluxOptions())
        await client.connect()
        await client.ws.send('{"type":"KeepAlive"}')  # what NOT to do: Flux closes the socket
        with pytest.raises(DeepgramClosed, match="closed"):
            await collect(client, {dm.TurnInfo}, 1)
        assert fake.logs("flux")[0].violations


async def test_linear16_transcodes_to_16k() -> None:
    async with FakeDeepgram(api_key=KEY) as fake:
        client = FluxClient(fake.url, KEY, FluxOptions(encoding="linear16"))
        await client.connect()
        for i in range(8):
            client.send_audio(i * 20, FRAME)
        await client.close()
        log = fake.logs("flux")[0]
        await log.wait_closed()
    assert [d for _, k, d in log.received if k == "audio"] == [2560, 2560]
    assert log.query["sample_rate"] == ["16000"]


async def test_speak_audio_flush_and_clear() -> None:
    async with FakeDeepgram(api_key=KEY, speak_ms_per_char=10, speak_first_byte_ms=20) as fake:
        client = SpeakClient(fake.url, KEY, "aura-2-thalia-en")
        await client.connect()
        await client.speak("Hello there.")
        assert await client.flush()
        audio = bytearray()
        async with asyncio.timeout(5):
            async for event in client.events():
                if isinstance(event, bytes):
                    audio += event
                elif isinstance(event, dm.Flushed):
                    break
        assert len(audio) == len("Hello there.") * 10 * 8
        await client.speak("A much longer sentence that will be cut off by a clear.")
        await client.flush()
        await client.clear()
        after_clear = 0
        async with asyncio.timeout(5):
            async for event in client.events():
                if isinstance(event, bytes):
                    after_clear += len(event)
                elif isinstance(event, dm.Cleared):
                    break
        assert after_clear == 0  # audio in flight before Cleared is dropped
        await client.close()
        log = fake.logs("speak")[0]
        await log.wait_closed()
    assert "container" not in log.query and log.query["encoding"] == ["mulaw"]
    assert log.close_code == 1000 and not log.violations


def test_flush_budget_slides_and_keeps_a_slot_for_reply_ends() -> None:
    now = [0.0]
    budget = FlushBudget(limit=3, window_s=60, clock=lambda: now[0])
    assert budget.take() and budget.take() and budget.take()
    assert not budget.take()
    now[0] = 59.9
    assert budget.remaining() == 0
    now[0] = 60.0
    assert budget.remaining() == 3


async def test_speak_never_exceeds_the_flush_limit() -> None:
    async with FakeDeepgram(api_key=KEY, flush_limit=3, speak_ms_per_char=1) as fake:
        client = SpeakClient(fake.url, KEY, "aura-2-thalia-en", budget=FlushBudget(limit=3))
        await client.connect()
        sent = []
        for i in range(6):
            await client.speak(f"Sentence {i}.")
            sent.append(await client.flush())
        assert sent == [True, True, False, False, False, False]  # one slot kept back
        assert await client.flush(force=True)  # the end of a reply may use it
        assert not await client.flush(force=True)
        await client.close()
        log = fake.logs("speak")[0]
        await log.wait_closed()
    assert not log.violations  # Aura never had to refuse a flush


@pytest.mark.clock(1)  # its gaps are bound to 0.2 s: at 4x a 95 ms stall of a full run passed it
async def test_nova_keepalive_rule_keeps_an_idle_listen_socket_open() -> None:
    """Nova /v1/listen: a JSON KeepAlive text frame after 3-5 s without audio (scaled here to
    1.5 s against a fake that closes after 3 s idle); never a binary frame."""
    assert 3.0 <= NOVA_KEEPALIVE.idle_s <= 5.0
    async with FakeDeepgram(api_key=KEY, idle_timeout_s=3.0) as fake:
        url = build_url(
            fake.url, "/v1/listen", {"model": "nova-3", "encoding": "mulaw", "sample_rate": 8000}
        )
        ws = await open_socket(url, KEY)
        keepalive = KeepAlive(ws, KeepAliveSpec(NOVA_KEEPALIVE.rule, idle_s=1.5))
        await ws.send(FRAME)
        keepalive.audio_sent()
        await asyncio.sleep(5)
        log = fake.logs("listen")[0]
        assert not log.closed, "the fake closed the idle socket: KeepAlive did not reach it"
        keepalive.stop()
        await ws.close()
    assert keepalive.sent >= 3
    assert log.received_kinds().count("json:KeepAlive") == keepalive.sent
    assert not log.violations  # e.g. a binary KeepAlive
    # Each is sent the moment audio has been idle long enough (no coarse clock): idle_s after
    # the audio, then idle_s apart.
    [audio_at] = [t for t, kind, _ in log.received if kind == "audio"]
    sent_at = [t for t, kind, _ in log.received if kind == "json:KeepAlive"]
    gaps = [b - a for a, b in itertools.pairwise([audio_at, *sent_at])]
    assert all(1.45 <= gap <= 1.7 for gap in gaps), gaps


async def test_audio_to_a_peer_that_stopped_reading_gives_the_socket_up() -> None:
    """`send_now` never awaits a drain: once the unsent backlog passes STALLED_BYTES the socket
    is aborted (the engine then reconnects and replays), instead of buffering without bound."""

    done = asyncio.Event()

    async def never_reads(ws: object) -> None:
        await done.wait()

    async with serve(never_reads, "127.0.0.1", 0, max_queue=1, close_timeout=0.2) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ws = await open_socket(f"ws://127.0.0.1:{port}/", KEY)
        chunk = b"\x7f" * 65536
        backlog = 0
        for _ in range(2000):  # 128 MiB: far past any kernel buffer
            if not send_now(ws, chunk):
                break
            backlog = max(backlog, ws.transport.get_write_buffer_size())
            await asyncio.sleep(0)  # the transport writes what the kernel takes
        else:
            pytest.fail("the socket was never given up")
        assert STALLED_BYTES < backlog <= STALLED_BYTES + len(chunk)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)  # its events loop sees the close
        assert not send_now(ws, chunk)
        done.set()
