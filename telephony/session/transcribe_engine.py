"""Transcribe mode: people talk, Nova (`/v1/listen`) transcribes both sides live; no bot.

Twilio forks the call's audio to us (`<Start><Stream track="both_tracks">`): `inbound` frames
are the caller, `outbound` frames what the caller hears (the person who took the call, the
"staff" role). Each side has its own Nova socket (see telephony/deepgram/listen.py for why not
`multichannel`), its own turns and its own reconnects.

Turns (per side): interim `Results` only update `interim` (the staff UI's live view; never
stored). Final `Results` (`is_final`) are settled text and are collected; `speech_final`
(endpointing saw a pause) or `UtteranceEnd` closes the turn, which is then written through the
same transcript, store and redaction path as every other mode. At the end of the call the
`Finalize` finals close the last turn. Times are on the call clock through each connection's
`AudioMap`.

Failures: a socket that drops is replaced (backoff, `FailureBudget`) and the audio since the
last final is replayed, so no settled word is repeated and no unsettled one lost. A side that
cannot be transcribed any more is recorded (`transcription-failed`) and dropped; the call itself
is never touched — people are talking, there is nothing to apologise for.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony.deepgram import messages as dm
from telephony.deepgram.listen import ListenClient
from telephony.retry import Backoff
from telephony.session.engine import CallContext
from telephony.session.link import Link
from telephony.session.tasks import run_together
from telephony.session.upstream import Upstream
from telephony.transcript import EventKind, Role

TRACKS: dict[Role, str] = {"caller": "inbound", "staff": "outbound"}  # role -> Twilio track


@dataclass(slots=True)
class _Final:
    """A settled piece of a turn (one final Results), on the call clock."""

    text: str
    start_ms: int
    end_ms: int
    confidence: float
    speakers: set[int] = field(default_factory=set)


class TrackTranscriber:
    """One side of the call: its Nova socket, reconnects, and turns."""

    def __init__(
        self,
        ctx: CallContext,
        role: Role,
        new_client: Callable[[], ListenClient],
        *,
        reconnect: Backoff | None = None,
    ) -> None:
        self.ctx = ctx
        self.role = role
        self.upstream = Upstream()  # this track's audio to Nova: sent, held, replayed
        self.link = Link(
            ctx,
            "listen",
            new_client,
            give_up=self._give_up,
            upstream=self.upstream,
            replay=self._replay,
            on_lost=self._lost,
            on_live=self._on_live,
            backoff=reconnect,
            tags={"track": role},
        )
        self._finals: list[_Final] = []  # the open turn
        self._interim = ""
        self._settled_ms: int | None = None  # call time up to which Nova's finals are in

    @property
    def client(self) -> ListenClient | None:
        return self.link.client if self.link.connected else None

    @property
    def failed(self) -> str | None:
        return self.link.failed

    @property
    def interim(self) -> str:
        """What this side is saying right now (the open turn): for the live view only."""
        return " ".join([*(f.text for f in self._finals), self._interim]).strip()

    # --- audio in (the audio path: nothing here awaits) ------------------------------------

    def on_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.upstream.push(timestamp_ms, payload)

    # --- the socket's life --------------------------------------------------------------------

    async def run(self) -> None:
        if await self.link.start():
            await self.link.run(self._on_event)

    def _replay(self) -> list[tuple[int, bytes]]:
        """What Nova had not settled yet is heard again on the new socket."""
        return self.upstream.sent_since(self._settled_ms)

    def _lost(self, reason: str) -> None:
        self._interim = ""

    def _on_live(self, client: ListenClient, reason: str) -> dict[str, int | None]:
        return {"offset_ms": client.first_audio_ms}  # None: this side has sent no audio yet

    async def _give_up(self, endpoint: str, reason: str) -> None:
        """This side is not transcribed any more; the call goes on untouched."""
        self._close_turn("failed")
        self.ctx.transcript.event(
            self.ctx.now_ms(), EventKind.TRANSCRIPTION_FAILED, track=self.role, reason=reason
        )

    async def close(self) -> None:
        """The call is over: Finalize so the last words are kept, then close."""
        self.link.release()
        self.upstream.accepting = False
        client = self.client
        if client is not None:
            if self.upstream.live:
                await client.finish()  # the events loop closes the turn from the finals
            else:
                await client.abort()
        self.upstream.live = False
        self._close_turn("hangup")  # whatever settled but was not closed

    # --- events -> turns ----------------------------------------------------------------------

    def _on_event(self, event: dm.Results | dm.UtteranceEnd | object) -> None:
        if isinstance(event, dm.Results):
            self._on_results(event)
        elif isinstance(event, dm.UtteranceEnd):
            self._close_turn("utterance_end")

    def _on_results(self, r: dm.Results) -> None:
        if not r.is_final:
            self._interim = r.transcript.strip()
            if self._interim:  # live views: this side is speaking, and says this
                self.ctx.transcript.signal("interim", role=self.role, text=self.interim)
            return
        client = self.client
        assert client is not None
        self._interim = ""
        if client.first_audio_ms is None:  # e.g. Finalize's empty answer on a silent side
            return
        self._settled_ms = client.to_call_ms(r.start + r.duration)
        self.upstream.forget_before(self._settled_ms)  # final: never replayed
        words = r.words
        # The words as the transcript spells them: with punctuate/smart_format Nova's `word`
        # is bare and lowercase, `punctuated_word` is the formatted one.
        text = " ".join(w.punctuated_word or w.word for w in words) or r.transcript.strip()
        if text:
            first = words[0].start if words and words[0].start is not None else r.start
            last = words[-1].end if words and words[-1].end is not None else r.start + r.duration
            speakers = {w.speaker for w in words if w.speaker is not None}
            self._finals.append(
                _Final(text, client.to_call_ms(first), client.to_call_ms(last), r.confidence)
            )
            self._finals[-1].speakers.update(speakers)
        if r.speech_final:
            self._close_turn("speech_final")
        elif r.from_finalize:
            self._close_turn("finalize")

    def _close_turn(self, trigger: str) -> None:
        finals, self._finals = self._finals, []
        if not finals:
            return
        text = " ".join(f.text for f in finals)
        meta: dict[str, object] = {
            "trigger": trigger,
            "confidence": round(sum(f.confidence for f in finals) / len(finals), 3),
        }
        speakers = sorted(set().union(*(f.speakers for f in finals)))
        if speakers:
            meta["speakers"] = speakers
        start, end = finals[0].start_ms, max(f.end_ms for f in finals)
        self.ctx.transcript.add_turn(self.role, text, start, max(start, end), meta=meta)


class TranscribeEngine:
    """Both sides of a call transcribed; the Engine a transcribe stream's Call drives."""

    def __init__(
        self,
        ctx: CallContext,
        new_client: Callable[[Role], ListenClient],
        *,
        reconnect: Backoff | None = None,
    ) -> None:
        self.ctx = ctx
        self.tracks: dict[Role, TrackTranscriber] = {
            role: TrackTranscriber(
                ctx, role, functools.partial(new_client, role), reconnect=reconnect
            )
            for role in TRACKS
        }

    @property
    def interim(self) -> dict[Role, str]:
        """Per side, the words of the turn in progress (the staff UI's live view)."""
        return {role: text for role, track in self.tracks.items() if (text := track.interim)}

    async def run(self) -> None:
        await run_together({f"listen-{role}": track.run() for role, track in self.tracks.items()})
        if all(track.failed for track in self.tracks.values()):
            raise RuntimeError("transcription failed on both sides")

    @property
    def keepalives_sent(self) -> int:
        """JSON KeepAlives sent on both sides' Nova sockets so far (for the metrics)."""
        return sum(track.link.keepalives_sent for track in self.tracks.values())

    def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.tracks["caller"].on_audio(timestamp_ms, payload)

    def on_outbound_audio(self, timestamp_ms: int, payload: bytes) -> None:
        """Twilio's `outbound` track: what the caller hears, i.e. the person who answered."""
        self.tracks["staff"].on_audio(timestamp_ms, payload)

    def on_dtmf(self, ms: int, digit: str) -> None:
        """A forked stream carries no DTMF; nothing to do if one arrives anyway."""

    async def close(self) -> None:
        await asyncio.gather(*(track.close() for track in self.tracks.values()))
