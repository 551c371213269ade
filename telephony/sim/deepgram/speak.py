"""Fake Aura TTS (/v1/speak): Speak accumulates text, Flush turns it into audio.

Audio is the deterministic tone-per-character speech of `tts.py`, `speak_ms_per_char` ms per
character, sent in 200 ms chunks faster than real time after `speak_first_byte_ms`, then
`Flushed`. Rules enforced: more than `flush_limit` flushes within `flush_window_s` -> Warning
and the flush is refused; empty Speak text -> violation and close 1008 (the real service
answers 400; how it reports that on an open socket is unverified). Errors (an "error" fault)
are a close frame with code and reason, never a JSON message, as on Aura. One task per burst
of flushes sends the audio; Clear cancels it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from websockets.asyncio.server import ServerConnection

from telephony.deepgram import messages as dm
from telephony.sim.deepgram.base import ConnectionLog, Options, Session
from telephony.sim.deepgram.params import SpeakParams
from telephony.sim.deepgram.tts import bytes_per_ms, tts_audio

FLUSH_LIMIT_CODE = "FLUSH_LIMIT_EXCEEDED"  # the real code string is unverified


class SpeakSession(Session):
    endpoint = "speak"
    parse_client = staticmethod(dm.parse_speak_client)

    def __init__(
        self, opts: Options, ws: ServerConnection, log: ConnectionLog, params: SpeakParams
    ) -> None:
        super().__init__(opts, ws, log)
        self.params = params
        self.bytes_per_ms = bytes_per_ms(params.encoding, params.sample_rate) or 8.0
        self.pending: list[str] = []  # Speak text since the last Flush
        self.jobs: deque[str] = deque()  # flushed text not yet fully sent
        self.speaker: asyncio.Task[None] | None = None
        self.flush_times: deque[float] = deque()
        self.control_seq = 0  # sequence_id of Flushed/Cleared (semantics unverified)

    async def on_open(self) -> None:
        await self.send(
            dm.Metadata(
                request_id=self.log.request_id,
                model_name=self.params.model,
                model_version="fake",
                model_uuid=str(uuid5(NAMESPACE_URL, self.params.model)),
            )
        )
        await self._fire_wall_clock_faults(self.opened)

    async def on_binary(self, data: bytes, now: float) -> None:
        self.violation("binary frame sent to /v1/speak")

    async def on_message(self, msg: Any, now: float) -> None:
        if isinstance(msg, dm.Speak):
            if not msg.text.strip():
                self.violation("Speak with empty text")
                self.close(1008, "empty text")  # unverified: the REST API answers 400
                return
            self.pending.append(msg.text)
        elif isinstance(msg, dm.Flush):
            await self._flush(now)
        elif isinstance(msg, dm.Clear):
            await self._clear()
        elif isinstance(msg, dm.Close):
            self.close(1000)
        else:
            what = msg.type if isinstance(msg, dm.Unknown) else f"invalid message ({msg})"
            self.violation(f"{what} is not a /v1/speak message")
            await self.send(dm.SpeakWarning(f"unknown message {what}", "UNKNOWN_MESSAGE_TYPE"))

    def tick(self, now: float) -> None:
        if self.faults and not self.closing and (now - self.opened) * 1000 >= self.next_fault_ms:
            self.spawn(self._fire_wall_clock_faults(now))

    async def _fire_wall_clock_faults(self, now: float) -> None:
        await self.fire_due_faults((now - self.opened) * 1000)

    def error_message(self, code: str, description: str) -> None:
        # Aura has no JSON Error message (Deepgram's SDK defines none): errors arrive as the
        # close frame's code and reason only.
        return None

    # --- Flush / Clear -----------------------------------------------------------------------

    async def _flush(self, now: float) -> None:
        window = self.opts.flush_window_s
        while self.flush_times and now - self.flush_times[0] >= window:
            self.flush_times.popleft()
        if len(self.flush_times) >= self.opts.flush_limit:
            self.violation(f"more than {self.opts.flush_limit} flushes in {window:g} s")
            text = f"Flush limit of {self.opts.flush_limit} per {window:g} s exceeded"
            await self.send(dm.SpeakWarning(description=text, code=FLUSH_LIMIT_CODE))
            return  # refused: the text stays pending
        self.flush_times.append(now)
        self.jobs.append("".join(self.pending))
        self.pending.clear()
        if self.speaker is None:
            self.speaker = self.spawn(self._speak_jobs())

    async def _speak_jobs(self) -> None:
        try:
            while self.jobs and not self.closing:
                text = self.jobs[0]
                if text:
                    await self.first_byte_delay()
                    audio = tts_audio(
                        text,
                        self.opts.speak_ms_per_char,
                        self.params.encoding,
                        self.params.sample_rate,
                    )
                    await self.stream(audio, self.bytes_per_ms)
                self.jobs.popleft()
                await self.send(dm.Flushed(sequence_id=self._control_seq()))
        finally:
            if self.speaker is asyncio.current_task():
                self.speaker = None

    async def _clear(self) -> None:
        if self.speaker is not None:
            self.speaker.cancel()
            self.speaker = None
        self.jobs.clear()
        self.pending.clear()
        await self.send(dm.Cleared(sequence_id=self._control_seq()))

    def _control_seq(self) -> int:
        self.control_seq += 1
        return self.control_seq - 1
