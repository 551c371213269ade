"""Fake Nova (/v1/listen): interim and final Results for scripted turns, on audio time.

Per turn: SpeechStarted at start_ms (vad_events), an interim Results every 250 ms of audio
(interim_results), a final Results at end_ms (is_final, speech_final unless
endpointing=false), UtteranceEnd utterance_end_ms after it; with diarize=true every word has
`speaker` 0. As on Nova, `word` is lowercase without punctuation; with punctuate or
smart_format each word also has `punctuated_word` (the script's own spelling) and the
transcript is made of those. Rules enforced: KeepAlive must be
a text frame (binary is a violation); an empty binary frame closes the stream (pending finals,
Metadata, close 1000); no audio or text for `idle_timeout_s` closes 1011 NET-0001.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import orjson
from websockets.asyncio.server import ServerConnection

from telephony.deepgram import messages as dm
from telephony.sim.deepgram.base import NET_0001, AudioClock, ConnectionLog, Options, Session
from telephony.sim.deepgram.flux import UPDATE_MS, spread_words
from telephony.sim.deepgram.params import ListenParams
from telephony.sim.deepgram.script import ScriptedTurn
from telephony.sim.deepgram.tts import bytes_per_ms

# Event order at equal times: SpeechStarted, final, interim, UtteranceEnd.
_PRIORITY = {"speech_started": 0, "final": 1, "interim": 2, "utterance_end": 3}
_PUNCTUATION = '.,;:!?"()[]{}'  # stripped from the ends of `word`; apostrophes stay (i'd)


def nova_words(text: str, start_ms: float, end_ms: float, punctuated: bool) -> list[dm.Word]:
    """A turn's words as Nova sends them: `word` bare and lowercase, `punctuated_word` the
    text's own spelling when punctuate/smart_format is on."""
    words = spread_words(text.split(), start_ms, end_ms)
    return [
        replace(
            w,
            word=w.word.strip(_PUNCTUATION).lower() or w.word,
            punctuated_word=w.word if punctuated else None,
        )
        for w in words
    ]


@dataclass(slots=True)
class NovaTurn:
    spec: ScriptedTurn
    words: list[dm.Word]
    finalized: int = 0  # words already sent in a final (Finalize splits a turn)
    ended: bool = False
    stuck: bool = False

    def heard(self, ms: float) -> int:
        return sum(1 for w in self.words if (w.start or 0.0) * 1000 <= ms + 1e-6)


class ListenSession(Session):
    endpoint = "listen"
    parse_client = staticmethod(dm.parse_listen_client)

    def __init__(
        self,
        opts: Options,
        ws: ServerConnection,
        log: ConnectionLog,
        params: ListenParams,
        turns: list[ScriptedTurn],
    ) -> None:
        super().__init__(opts, ws, log)
        self.params = params
        # No encoding: containerized audio, counted as linear16 16 kHz (approximate).
        rate = bytes_per_ms(params.encoding or "linear16", params.sample_rate or 16000)
        self.clock = AudioClock(rate)
        self.sha = hashlib.sha256()
        self.turns = [
            NovaTurn(t, nova_words(t.final, t.start_ms, t.end_ms, params.punctuated)) for t in turns
        ]
        self.metadata = self._metadata()
        self.events = self._schedule()
        self.cursor = 0
        self.next_at = math.inf
        self.stick_next = False

    def _schedule(self) -> list[tuple[float, int, str, int]]:
        p = self.params
        events: list[tuple[float, int, str, int]] = []
        for i, turn in enumerate(self.turns):
            spec = turn.spec
            if p.vad_events:
                events.append((spec.start_ms, _PRIORITY["speech_started"], "speech_started", i))
            if p.interim_results:
                for at in range(spec.start_ms + UPDATE_MS, spec.end_ms, UPDATE_MS):
                    events.append((at, _PRIORITY["interim"], "interim", i))
            events.append((spec.end_ms, _PRIORITY["final"], "final", i))
            if p.utterance_end_ms is not None and p.interim_results:
                at = spec.end_ms + p.utterance_end_ms
                events.append((at, _PRIORITY["utterance_end"], "utterance_end", i))
        return sorted(events)

    # --- input -------------------------------------------------------------------------------

    async def on_open(self) -> None:
        await self._advance()

    async def on_binary(self, data: bytes, now: float) -> None:
        self.last_activity = now
        if not data:  # a zero-length frame means "close the stream"
            await self._close_stream()
            return
        if data[:1] == b"{" and b"KeepAlive" in data:
            self.violation("KeepAlive sent as a binary frame (it must be a text frame)")
            return
        self.sha.update(data)
        self.log.audio_bytes += len(data)
        self.log.audio_ms = self.clock.add(len(data))
        if self.clock.ms >= self.next_at:
            await self._advance()

    async def on_message(self, msg: Any, now: float) -> None:
        self.last_activity = now  # any text message (KeepAlive included) resets NET-0001
        if isinstance(msg, dm.KeepAlive):
            return
        if isinstance(msg, dm.Finalize):
            await self._finalize(from_finalize=True)
        elif isinstance(msg, dm.CloseStream):
            await self._close_stream()
        else:
            what = msg.type if isinstance(msg, dm.Unknown) else f"invalid message ({msg})"
            self.violation(f"{what} is not a /v1/listen message")
            raw = orjson.dumps(msg.raw).decode() if isinstance(msg, dm.Unknown) else str(msg)
            error = dm.ListenError(
                code="UNPARSABLE_CLIENT_MESSAGE",  # legacy field; its value is unverified
                description=f"{what} is not a valid message",
                variant="SchemaError",
                message=raw,
            )
            await self.send(error)

    def tick(self, now: float) -> None:
        if not self.closing and now - self.last_activity > self.opts.idle_timeout_s:
            self.close(1011, NET_0001)

    def error_message(self, code: str, description: str) -> dm._Wire:
        return dm.ListenError(code, description, variant="InternalServerError")  # unverified

    def on_stuck(self) -> None:
        turn = self._open_turn()
        if turn is not None:
            turn.stuck = True
        else:
            self.stick_next = True

    # --- output ------------------------------------------------------------------------------

    def _next_event(self) -> tuple[float, str]:
        if self.cursor >= len(self.events):
            return math.inf, ""
        return self.events[self.cursor][0], self.events[self.cursor][2]

    async def _emit(self, kind: str, at: float) -> None:
        turn = self.turns[self.events[self.cursor][3]]
        self.cursor += 1
        await self._emit_turn_event(kind, at, turn)

    async def _emit_turn_event(self, kind: str, at: float, turn: NovaTurn) -> None:
        if self.stick_next and not turn.ended:  # a "stuck" fault that fired between turns
            turn.stuck, self.stick_next = True, False
        if kind == "speech_started":
            await self.send(dm.SpeechStarted(timestamp=turn.spec.start_ms / 1000, channel=(0,)))
        elif kind == "interim" and not turn.ended:
            await self.send(self._results(turn, turn.heard(at), at, is_final=False))
        elif kind == "final" and not turn.stuck and not turn.ended:
            speech_final = self.params.endpointing_ms is not None
            await self.send(self._results(turn, len(turn.words), at, True, speech_final))
            turn.ended = True
        elif kind == "utterance_end" and not turn.stuck:
            last = turn.words[-1].end or 0.0
            await self.send(dm.UtteranceEnd(last_word_end=last, channel=(0, 1)))

    def _results(
        self,
        turn: NovaTurn,
        upto: int,
        at: float,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dm.Results:
        words = turn.words[turn.finalized : upto]
        if self.params.diarize:  # one voice per side in a script: speaker 0
            words = [replace(w, speaker=0) for w in words]
        start = (words[0].start or 0.0) if words else at / 1000
        if is_final:
            turn.finalized = max(turn.finalized, upto)
        return dm.Results(
            transcript=" ".join(w.punctuated_word or w.word for w in words),
            is_final=is_final,
            speech_final=speech_final,
            from_finalize=from_finalize,
            start=round(start, 3),
            duration=round(max(0.0, at / 1000 - start), 3),
            confidence=0.97 if words else 0.0,
            words=tuple(words),
            channel_index=(0, 1),
            metadata=self.metadata,
        )

    def _metadata(self) -> dict[str, Any]:
        """Results.metadata: the request and the model (and the diarizer, when one ran)."""
        model = self.params.model
        family = "-".join(model.split("-")[:2])  # nova-3-medical -> nova-3
        metadata: dict[str, Any] = {
            "request_id": self.log.request_id,
            # Nova's own look like "2-general-nova", "2024-01-18.26916", "nova-2".
            "model_info": {"name": model, "version": "fake", "arch": family},
            "model_uuid": str(uuid5(NAMESPACE_URL, f"nova/{model}")),
        }
        if self.params.diarize:
            diarizer = str(uuid5(NAMESPACE_URL, "nova/diarizer"))
            metadata["diarize_info"] = {"model_uuid": diarizer, "arch": "v1"}
        return metadata

    def _open_turn(self) -> NovaTurn | None:
        ms = self.clock.ms
        for turn in self.turns:
            if turn.spec.start_ms <= ms and not turn.ended:
                return turn
        return None

    async def _finalize(self, *, from_finalize: bool) -> None:
        """Finals for audio received so far (Finalize, CloseStream, empty frame)."""
        ms, turn = self.clock.ms, self._open_turn()
        if turn is not None:
            await self.send(self._results(turn, turn.heard(ms), ms, True, False, from_finalize))
        elif from_finalize:
            empty = NovaTurn(ScriptedTurn(0, 1, "-"), [])
            await self.send(self._results(empty, 0, ms, True, False, True))

    async def _close_stream(self) -> None:
        await self._finalize(from_finalize=False)
        await self.send(
            dm.ListenMetadata(
                request_id=self.log.request_id,
                sha256=self.sha.hexdigest(),
                created=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                duration=round(self.clock.ms / 1000, 3),
                channels=1,
            )
        )
        self.close(1000)
