"""Fake Flux for a voiced Script: turns found in the audio content, not on a scripted clock.

The same events as `FluxSession`, but speech is detected per 20 ms (RMS over the script's
threshold), so audio the client replays after a reconnect is heard where its speech is, and
each turn's text comes from a cursor shared by the script's connections. Apart from flux.py
because only this half decodes audio, and it overrides the whole turn timeline.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from telephony.deepgram import messages as dm
from telephony.sim.deepgram.base import ConnectionLog, Options
from telephony.sim.deepgram.flux import (
    OPEN_CONFIDENCE,
    UPDATE_MS,
    FluxSession,
    OpenTurn,
    TurnWords,
    spread_words,
)
from telephony.sim.deepgram.params import FluxParams
from telephony.sim.deepgram.script import Script

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

UNIT_MS = 20  # speech is detected per 20 ms of audio
_BIG_ENDIAN = sys.byteorder == "big"
_NO_WORDS = TurnWords([], [], math.inf)  # a voiced turn's words come from the session instead


@dataclass(slots=True)
class TextCursor:
    """A voiced script's next unused text, shared by its connections (per FakeDeepgram + tag).

    Advanced only by a delivered EndOfTurn, so a turn cut off by a dropped connection is heard
    again, with the same text, when the client replays its audio on the next connection.
    """

    next: int = 0


@dataclass(slots=True)
class VoicedTurn(OpenTurn):
    index: int = 0  # into the script's turns
    speech_start: float = 0.0  # ms of this connection's audio
    speech_ms: float = 0.0  # speech heard so far in this turn
    final_text: bool = False  # the caller paused and went on: spec.final from now on
    resume_at: float | None = None  # speech after EagerEndOfTurn: TurnResumed is due
    shown: int = 0  # words revealed so far (never shrinks)


class VoicedFluxSession(FluxSession):
    """Flux for a voiced Script: speech/silence from each 20 ms of audio's RMS (see Script)."""

    def __init__(
        self,
        opts: Options,
        ws: ServerConnection,
        log: ConnectionLog,
        params: FluxParams,
        script: Script,
        cursor: TextCursor,
    ) -> None:
        super().__init__(opts, ws, log, params, script.turns)
        self.script = script
        self.cursor = cursor
        # Containerized audio is read as linear16 (header included); compressed audio cannot
        # be decoded here, so it is all silence.
        self.encoding = params.encoding or "linear16"
        rate = self.clock.bytes_per_ms
        self.unit_bytes = round(rate * UNIT_MS) if rate else 0
        self.pending = b""  # bytes short of a whole unit
        self.in_speech = False  # the last unit was speech
        self.speech_end = 0.0  # end of the last speech unit, ms
        self.onset: tuple[float, float] | None = None  # (speech start, detected at) of a turn

    async def on_binary(self, data: bytes, now: float) -> None:
        if not data or not self.unit_bytes:
            await super().on_binary(data, now)  # empty frame violation; compressed: silence
            return
        self.last_activity = now
        self.log.audio_bytes += len(data)
        buf, n, pos = self.pending + data if self.pending else data, self.unit_bytes, 0
        while pos + n <= len(buf) and not self.closing:
            start = self.clock.ms
            self.clock.add(n)
            await self._hear(start, self._level(buf[pos : pos + n]) >= self.script.speech_rms)
            pos += n
        self.pending = buf[pos:]
        self.log.audio_ms = self.clock.ms

    def _level(self, unit: bytes) -> int:
        """RMS of a unit on the 16-bit PCM scale."""
        if self.encoding == "mulaw":
            return audioop.rms(audioop.ulaw2lin(unit, 2), 2)
        if self.encoding == "alaw":
            return audioop.rms(audioop.alaw2lin(unit, 2), 2)
        width = 4 if self.encoding == "linear32" else 2
        if _BIG_ENDIAN:
            unit = audioop.byteswap(unit, width)
        return audioop.rms(unit, width) >> (16 if width == 4 else 0)

    async def _hear(self, start: float, speech: bool) -> None:
        """One unit [start, clock.ms) of audio, then emit whatever has become due."""
        end = self.clock.ms
        due = end >= self.next_at
        if speech:
            turn = self.turn
            if isinstance(turn, VoicedTurn):
                if start - self.speech_end >= self.script.eager_silence_ms:
                    turn.final_text = True  # a pause, then more words
                if turn.awaiting and turn.resume_at is None:
                    turn.resume_at, due = end, True
                turn.speech_ms += end - start
            elif not self.in_speech and self.cursor.next < len(self.turns):
                self.onset, due = (start, end), True  # after a forced end: wait for silence
            self.speech_end = end
        self.in_speech = speech
        if due:
            await self._advance()

    # --- the turn timeline -------------------------------------------------------------------

    def _end_time(self, turn: OpenTurn) -> tuple[float, str]:
        """`end_silence_ms` after the speech, or eot_timeout_ms if sooner (or eot_threshold 1)."""
        timeout_at = self.speech_end + self.eot_timeout_ms
        model_at = self.speech_end + self.script.end_silence_ms
        if self.eot_threshold < 1.0 and model_at <= timeout_at:
            return model_at, "model"
        return timeout_at, "timeout"

    def _next_event(self) -> tuple[float, str]:
        turn = self.turn
        if turn is None:
            return (self.onset[1], "StartOfTurn") if self.onset else (math.inf, "")
        assert isinstance(turn, VoicedTurn)
        candidates: list[tuple[float, int, str]] = []
        if turn.resume_at is not None:
            candidates.append((turn.resume_at, 1, "TurnResumed"))
        elif self.eager_eot_threshold is not None and not turn.eager_done:
            eager_at = self.speech_end + self.script.eager_silence_ms
            candidates.append((eager_at, 0, "EagerEndOfTurn"))
        if not turn.stuck:
            candidates.append((self._end_time(turn)[0], 2, "EndOfTurn"))
        if not turn.awaiting:
            candidates.append((turn.last_emit_ms + UPDATE_MS, 3, "Update"))
        at, _, kind = min(candidates)
        return at, kind

    async def _emit(self, kind: str, at: float) -> None:
        if kind == "StartOfTurn":
            assert self.onset is not None
            start, self.onset = self.onset[0], None
            index = self.cursor.next
            if index >= len(self.turns):  # another connection used the last text meanwhile
                return
            self.turn = VoicedTurn(
                self.turns[index],
                _NO_WORDS,
                at,
                stuck=self.stick_next,
                index=index,
                speech_start=start,
                speech_ms=at - start,
            )
            self.stick_next = False
            await self._emit_turn(kind, at, OPEN_CONFIDENCE)
            return
        await super()._emit(kind, at)
        if kind == "TurnResumed" and isinstance(self.turn, VoicedTurn):
            self.turn.resume_at, self.turn.eager_done = None, False  # another pause may follow

    async def _end_turn(
        self, at: float, trigger: str, words: list[dm.Word], confidence: float = OPEN_CONFIDENCE
    ) -> None:
        turn = self.turn
        assert isinstance(turn, VoicedTurn)
        delivered = not (self.silent or self.closing) and self.ws.state is State.OPEN
        await super()._end_turn(at, trigger, words, confidence)
        if delivered:
            self.cursor.next = max(self.cursor.next, turn.index + 1)

    # --- what a TurnInfo says ----------------------------------------------------------------

    def _words(self, turn: VoicedTurn) -> list[str]:
        return (turn.spec.final if turn.final_text else turn.spec.text).split()

    def _spread(self, turn: VoicedTurn, words: list[str]) -> list[dm.Word]:
        return spread_words(words, turn.speech_start, max(self.speech_end, turn.speech_start + 1))

    def _heard(self, at: float) -> list[dm.Word]:
        """One word per 250 ms of speech; all of them once the caller pauses (eager silence)."""
        turn = self.turn
        assert isinstance(turn, VoicedTurn)
        words = self._words(turn)
        paused = at - self.speech_end >= self.script.eager_silence_ms
        by_speech = len(words) if paused else 1 + int(turn.speech_ms // UPDATE_MS)
        turn.shown = max(turn.shown, by_speech)
        return self._spread(turn, words[: turn.shown])

    def _final_words(self, turn: OpenTurn) -> list[dm.Word]:
        assert isinstance(turn, VoicedTurn)
        return self._spread(turn, self._words(turn))

    def _window(self, turn: OpenTurn, event: str, at: float) -> tuple[float, float]:
        """The detected speech; Start/Update/Resumed end at the event's time."""
        assert isinstance(turn, VoicedTurn)
        end = self.speech_end if event in ("EagerEndOfTurn", "EndOfTurn") else at
        return turn.speech_start, end
