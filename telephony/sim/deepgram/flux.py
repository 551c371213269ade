"""Fake Flux (/v2/listen): scripted turns on the connection's audio clock.

Per turn: StartOfTurn at start_ms (first word), Update every 250 ms of audio while the turn is
ongoing, EagerEndOfTurn at eager_ms (only if eager_eot_threshold is set), TurnResumed for a
resumed turn, EndOfTurn at end_ms (trigger "model"). If audio stops mid-turn the turn never
ends, exactly as on the real service (the "stuck turn" trap). ForceEndTurn ends the open turn
(trigger "manual"), or with none open gets a Warning FORCE_END_TURN_NO_ACTIVE_TURN. Rules
enforced: JSON KeepAlive (or any unknown message) closes the socket with no status (1005); idle
without audio or WebSocket ping for `flux_idle_timeout_s` closes 1011 NET-0001.

A voiced Script gets `VoicedFluxSession` (flux_voiced.py) instead: the same events, with turns
found in the audio itself.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Any

from websockets.asyncio.server import ServerConnection

from telephony.deepgram import messages as dm
from telephony.sim.deepgram.base import NET_0001, AudioClock, ConnectionLog, Options, Session
from telephony.sim.deepgram.params import FluxParams
from telephony.sim.deepgram.script import ScriptedTurn
from telephony.sim.deepgram.tts import bytes_per_ms

UPDATE_MS = 250
NO_ACTIVE_TURN = "FORCE_END_TURN_NO_ACTIVE_TURN"
WORD_CONFIDENCE = 0.98
OPEN_CONFIDENCE = 0.02  # end_of_turn_confidence while the caller is clearly mid-turn


def spread_words(words: list[str], t0_ms: float, t1_ms: float) -> list[dm.Word]:
    """Words evenly over [t0, t1], times in seconds (Deepgram's unit)."""
    step = (t1_ms - t0_ms) / max(1, len(words))
    return [
        dm.Word(
            w,
            WORD_CONFIDENCE,
            round((t0_ms + i * step) / 1000, 3),
            round((t0_ms + (i + 1) * step) / 1000, 3),
        )
        for i, w in enumerate(words)
    ]


@dataclass(slots=True)
class TurnWords:
    """A scripted turn's words: `first` before TurnResumed, `final` from it on."""

    first: list[dm.Word]
    final: list[dm.Word]
    resume_ms: float

    @classmethod
    def of(cls, spec: ScriptedTurn) -> TurnWords:
        speech_end = spec.eager_ms if spec.eager_ms is not None else spec.end_ms
        first = spread_words(spec.text.split(), spec.start_ms, speech_end)
        if not spec.resumed:
            return cls(first, first, math.inf)
        final_text = spec.final.split()
        k = min(len(first), len(final_text))
        head = [replace(first[i], word=final_text[i]) for i in range(k)]
        tail = spread_words(final_text[k:], spec.resume_at, spec.end_ms) if final_text[k:] else []
        return cls(first, head + tail, spec.resume_at)

    def heard(self, ms: float) -> list[dm.Word]:
        """Words whose start is at or before `ms` of audio."""
        words = self.final if ms >= self.resume_ms else self.first
        return words[: bisect_right([w.start or 0.0 for w in words], ms / 1000 + 1e-9)]

    @property
    def speech_end_ms(self) -> float:
        return (self.final[-1].end or 0.0) * 1000


@dataclass(slots=True)
class OpenTurn:
    spec: ScriptedTurn
    words: TurnWords
    last_emit_ms: float
    awaiting: bool = False  # after EagerEndOfTurn, until TurnResumed / EndOfTurn
    eager_done: bool = False
    resumed_done: bool = False
    stuck: bool = False


class FluxSession(Session):
    endpoint = "flux"
    parse_client = staticmethod(dm.parse_flux_client)

    def __init__(
        self,
        opts: Options,
        ws: ServerConnection,
        log: ConnectionLog,
        params: FluxParams,
        turns: list[ScriptedTurn],
    ) -> None:
        super().__init__(opts, ws, log)
        self.params = params
        # Containerized audio (no encoding): counted as linear16 16 kHz, header included.
        rate = bytes_per_ms(params.encoding or "linear16", params.sample_rate or 16000)
        self.clock = AudioClock(rate)
        self.eot_threshold = params.eot_threshold
        self.eager_eot_threshold = params.eager_eot_threshold
        self.eot_timeout_ms = params.eot_timeout_ms
        self.keyterms = params.keyterms
        self.language_hints = params.language_hints
        self.turns = turns
        self.next_turn = 0  # index into turns
        self.turn: OpenTurn | None = None
        self.turn_index = 0  # the wire turn_index
        self.stick_next = False
        self.seq = 0
        self.next_at = math.inf

    # --- input -------------------------------------------------------------------------------

    async def on_open(self) -> None:
        await self.send(dm.FluxConnected(request_id=self.log.request_id, sequence_id=self._seq()))
        await self._advance()

    async def on_binary(self, data: bytes, now: float) -> None:
        if not data:
            # Harmless on Flux as far as we know, but it is the /v1/listen close trap.
            self.violation("empty binary frame on Flux")
            return
        self.last_activity = now
        self.log.audio_bytes += len(data)
        self.log.audio_ms = self.clock.add(len(data))
        if self.clock.ms >= self.next_at:
            await self._advance()

    def on_ping(self) -> None:
        super().on_ping()
        self.last_activity = self.loop.time()  # pings keep Flux alive

    async def on_message(self, msg: Any, now: float) -> None:
        if isinstance(msg, dm.Configure):
            await self._configure(msg)
        elif isinstance(msg, dm.ForceEndTurn):
            if self.turn is not None:
                await self._end_turn(self.clock.ms, "manual", self._heard(self.clock.ms))
                await self._advance()
            else:  # nothing to end: a Warning (Deepgram's 2026 example code), the socket stays
                text = "ForceEndTurn received with no turn in progress"
                warning = dm.FluxWarning(NO_ACTIVE_TURN, text, self._seq(), self._rid)
                await self.send(warning)
        elif isinstance(msg, dm.CloseStream):
            if self.turn is not None:  # the last Update is the final text; no EndOfTurn
                await self._emit_turn("Update", self.clock.ms, OPEN_CONFIDENCE)
            self.close(None)
        else:
            # JSON KeepAlive closed the real socket with no status (deepgram-python-sdk#649);
            # any other unknown or malformed message is treated the same way.
            what = msg.type if isinstance(msg, dm.Unknown) else f"invalid message ({msg})"
            self.violation(f"{what} is not a Flux message: socket closed with no status")
            self.close(None)

    def tick(self, now: float) -> None:
        if not self.closing and now - self.last_activity > self.opts.flux_idle_timeout_s:
            self.close(1011, NET_0001)

    def error_message(self, code: str, description: str) -> dm._Wire:
        return dm.FluxError(code=code, description=description, sequence_id=self._seq())

    def on_stuck(self) -> None:
        if self.turn is not None:
            self.turn.stuck = True
        else:
            self.stick_next = True

    # --- Configure ---------------------------------------------------------------------------

    async def _configure(self, msg: dm.Configure) -> None:
        problems = dm.flux_threshold_problems(
            msg.eot_threshold, msg.eager_eot_threshold, msg.eot_timeout_ms
        )
        if msg.language_hints is not None:
            if self.params.model != "flux-general-multi":
                problems.append("language_hints need flux-general-multi")
            problems += dm.language_hint_problems(msg.language_hints)
        if problems:
            await self.send(dm.ConfigureFailure("; ".join(problems), self._seq(), self._rid))
            return
        if msg.eot_threshold is not None:
            self.eot_threshold = msg.eot_threshold
        if msg.eager_eot_threshold is not None:
            self.eager_eot_threshold = msg.eager_eot_threshold
        if msg.eot_timeout_ms is not None:
            self.eot_timeout_ms = msg.eot_timeout_ms
        if msg.keyterms is not None:
            self.keyterms = msg.keyterms
        if msg.language_hints is not None:
            self.language_hints = msg.language_hints
        thresholds: dict[str, Any] = {
            "eot_threshold": self.eot_threshold,
            "eot_timeout_ms": self.eot_timeout_ms,
        }
        if self.eager_eot_threshold is not None:
            thresholds["eager_eot_threshold"] = self.eager_eot_threshold
        multi = self.params.model == "flux-general-multi"
        await self.send(
            dm.ConfigureSuccess(
                thresholds,
                self.keyterms,
                self._seq(),
                self._rid,
                language_hints=self.language_hints if multi else None,
            )
        )
        await self._advance()  # e.g. eager just got enabled

    # --- the turn timeline -------------------------------------------------------------------

    def _end_time(self, turn: OpenTurn) -> tuple[float, str]:
        """EndOfTurn: the script's end_ms, or eot_timeout_ms after the last word if sooner.

        eot_threshold 1.0 disables the model's end of turn, leaving the timeout.
        The "timeout" trigger value is unverified.
        """
        timeout_at = turn.words.speech_end_ms + self.eot_timeout_ms
        if self.eot_threshold < 1.0 and turn.spec.end_ms <= timeout_at:
            return turn.spec.end_ms, "model"
        return timeout_at, "timeout"

    def _next_event(self) -> tuple[float, str]:
        turn = self.turn
        if turn is None:
            if self.next_turn < len(self.turns):
                return self.turns[self.next_turn].start_ms, "StartOfTurn"
            return math.inf, ""
        spec = turn.spec
        candidates: list[tuple[float, int, str]] = []
        eager_on = self.eager_eot_threshold is not None
        if eager_on and spec.eager_ms is not None and not turn.eager_done:
            candidates.append((spec.eager_ms, 0, "EagerEndOfTurn"))
        if turn.eager_done and spec.resumed and not turn.resumed_done:
            candidates.append((spec.resume_at, 1, "TurnResumed"))
        if not turn.stuck:
            candidates.append((self._end_time(turn)[0], 2, "EndOfTurn"))
        if not turn.awaiting:
            candidates.append((turn.last_emit_ms + UPDATE_MS, 3, "Update"))
        at, _, kind = min(candidates)
        return at, kind

    async def _emit(self, kind: str, at: float) -> None:
        if kind == "StartOfTurn":
            spec = self.turns[self.next_turn]
            self.turn = OpenTurn(spec, TurnWords.of(spec), at, stuck=self.stick_next)
            self.stick_next = False
            await self._emit_turn(kind, at, OPEN_CONFIDENCE)
            return
        turn = self.turn
        assert turn is not None
        if kind == "EndOfTurn":
            _, trigger = self._end_time(turn)
            confidence = max(self.eot_threshold, 0.9) if trigger == "model" else 0.5
            await self._end_turn(at, trigger, self._final_words(turn), min(1.0, confidence))
            return
        turn.last_emit_ms = at
        confidence = OPEN_CONFIDENCE
        if kind == "EagerEndOfTurn":
            turn.eager_done = turn.awaiting = True
            confidence = min(0.99, (self.eager_eot_threshold or 0.5) + 0.05)
        elif kind == "TurnResumed":
            turn.resumed_done, turn.awaiting = True, False
        await self._emit_turn(kind, at, confidence)

    async def _end_turn(
        self, at: float, trigger: str, words: list[dm.Word], confidence: float = OPEN_CONFIDENCE
    ) -> None:
        await self._emit_turn("EndOfTurn", at, confidence, trigger=trigger, words=words)
        self.turn = None
        self.next_turn += 1
        self.turn_index += 1

    async def _emit_turn(
        self,
        event: str,
        at: float,
        confidence: float,
        *,
        trigger: str | None = None,
        words: list[dm.Word] | None = None,
    ) -> None:
        turn = self.turn
        assert turn is not None
        if words is None:
            words = self._heard(at)
        start, end = self._window(turn, event, at)
        msg = dm.TurnInfo(
            event=event,
            turn_index=self.turn_index,
            audio_window_start=round(start / 1000, 3),
            audio_window_end=round(end / 1000, 3),
            transcript=" ".join(w.word for w in words),
            words=tuple(words),
            end_of_turn_confidence=round(confidence, 3),
            trigger=trigger,
            sequence_id=self._seq(),
            request_id=self._rid,
            **self._languages(turn, bool(words)),
        )
        await self.send(msg)

    def _languages(self, turn: OpenTurn, any_words: bool) -> dict[str, Any]:
        """flux-general-multi reports the languages it detected once it has words (the script
        says which; English by default) and, when hinted, the hints in force."""
        if self.params.model != "flux-general-multi":
            return {}
        out: dict[str, Any] = {}
        if any_words:
            out["languages"] = (turn.spec.language,)
        if self.language_hints:
            out["languages_hinted"] = self.language_hints
        return out

    # --- what a TurnInfo says (overridden by the voiced session) ---------------------------------

    def _heard(self, at: float) -> list[dm.Word]:
        """The open turn's words heard by `at` ms of audio."""
        assert self.turn is not None
        return self.turn.words.heard(at)

    def _final_words(self, turn: OpenTurn) -> list[dm.Word]:
        return turn.words.final

    def _window(self, turn: OpenTurn, event: str, at: float) -> tuple[float, float]:
        """audio_window_start/end in ms."""
        return turn.spec.start_ms, at

    def _seq(self) -> int:
        """sequence_id counts every server message from 0 (Connected)."""
        self.seq += 1
        return self.seq - 1

    @property
    def _rid(self) -> str:
        return self.log.request_id
