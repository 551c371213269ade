"""A bare Twilio <-> Deepgram relay: the baseline `telephony bench` measures the service against.

It does the least any bridge must do with the same traffic, and nothing else:

- Twilio -> Deepgram: accept the media socket, read `start`, open a Flux socket (`tag` = the call
  SID, as the service does); for every frame parse the JSON, base64-decode the payload, gather
  4 frames (80 ms, as the service sends) and send them as one binary message.
- Deepgram -> Twilio: on Flux's `EndOfTurn`, canned reply audio (`--reply-ms` long) goes back as
  20 ms media frames, each base64-encoded when sent (a bridge forwarding TTS audio must encode
  every frame), paced like the service's playout (at most 120 ms ahead, 3 frames per wake-up),
  then a mark; on `StartOfTurn` while it speaks, it stops and sends `clear`.

No signature or token checks, no transcript, store, metrics, reconnects, turn bookkeeping or
logging on the audio path. Plain `websockets` on both sides (uvloop when installed, as uvicorn
uses it for the service).

    python -m telephony.sim.relay --port 8100 --deepgram-url ws://127.0.0.1:8765 --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
from collections.abc import Sequence

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

FRAME_BYTES = 160
FRAME_S = 0.02
CHUNK_BYTES = 640  # 80 ms of μ-law 8 kHz
LEAD_S = 0.12
BATCH_S = 0.04  # wake once per 3 frames
FLUX_QUERY = "model=flux-general-en&encoding=mulaw&sample_rate=8000"


class _Speaker:
    """Canned reply audio to Twilio, paced; one task per reply."""

    def __init__(self, ws: ServerConnection, stream_sid: str, frames: int) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.frames = frames
        self.task: asyncio.Task[None] | None = None
        self.replies = 0
        self._prefix = f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"'

    @property
    def speaking(self) -> bool:
        return self.task is not None and not self.task.done()

    def say(self) -> None:
        self.stop()
        self.replies += 1
        self.task = asyncio.get_running_loop().create_task(self._play(self.replies))

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def clear(self) -> None:
        self.stop()
        await self.ws.send(f'{{"event":"clear","streamSid":"{self.stream_sid}"}}')

    async def _play(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        frame = bytes([0x7F]) * FRAME_BYTES  # canned audio: near-silence in μ-law
        start = loop.time()
        sent = 0
        while sent < self.frames:
            now = loop.time()
            due = start + sent * FRAME_S - LEAD_S
            if due > now:
                await asyncio.sleep(due - now + BATCH_S)
                continue
            payload = base64.b64encode(frame).decode("ascii")
            await self.ws.send(self._prefix + payload + '"}}')
            sent += 1
        name = f"reply{number}"
        await self.ws.send(
            f'{{"event":"mark","streamSid":"{self.stream_sid}","mark":{{"name":"{name}"}}}}'
        )


class Relay:
    def __init__(self, deepgram_url: str, api_key: str, reply_ms: int) -> None:
        self.deepgram_url = deepgram_url.rstrip("/")
        self.api_key = api_key
        self.reply_frames = max(1, reply_ms // 20)
        self.calls = 0

    async def handle(self, ws: ServerConnection) -> None:
        start = None
        async for text in ws:
            msg = orjson.loads(text)
            if msg.get("event") == "start":
                start = msg
                break
        if start is None:
            return
        call_sid = start["start"]["callSid"]
        stream_sid = start["streamSid"]
        dg = await connect(
            f"{self.deepgram_url}/v2/listen?{FLUX_QUERY}&tag={call_sid}",
            additional_headers={"Authorization": f"Token {self.api_key}"},
            compression=None,
            proxy=None,
        )
        self.calls += 1
        speaker = _Speaker(ws, stream_sid, self.reply_frames)
        listener = asyncio.get_running_loop().create_task(self._listen(dg, speaker))
        try:
            await self._forward(ws, dg)
        except ConnectionClosed:
            pass
        finally:
            speaker.stop()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await listener
            await dg.close()

    @staticmethod
    async def _forward(ws: ServerConnection, dg: ClientConnection) -> None:
        chunk = bytearray()
        async for text in ws:
            msg = orjson.loads(text)
            event = msg["event"]
            if event == "media":
                chunk += base64.b64decode(msg["media"]["payload"])
                if len(chunk) >= CHUNK_BYTES:
                    await dg.send(bytes(chunk))
                    chunk.clear()
            elif event == "stop":
                return

    @staticmethod
    async def _listen(dg: ClientConnection, speaker: _Speaker) -> None:
        async for text in dg:
            if isinstance(text, bytes):
                continue
            msg = orjson.loads(text)
            if msg.get("type") != "TurnInfo":
                continue
            if msg["event"] == "EndOfTurn":
                speaker.say()
            elif msg["event"] == "StartOfTurn" and speaker.speaking:
                await speaker.clear()


async def serve_relay(relay: Relay, host: str, port: int) -> None:
    async with serve(relay.handle, host, port, compression=None, max_size=2**16) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"relay listening on ws://{host}:{bound}", flush=True)
        await asyncio.Future()  # until cancelled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bare Twilio <-> Deepgram relay (bench baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--deepgram-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--reply-ms", type=int, default=2580, help="canned reply length")
    args = parser.parse_args(argv)
    relay = Relay(args.deepgram_url, args.api_key, args.reply_ms)
    with contextlib.suppress(KeyboardInterrupt):
        run(serve_relay(relay, args.host, args.port))
    return 0


def run(coro: object) -> None:
    """asyncio.run on uvloop when it is installed (uvicorn runs the service on it)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())
