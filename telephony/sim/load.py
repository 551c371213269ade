"""The load generator of `telephony bench`: hundreds of fake Twilio callers, the fake Deepgram
and the fake LLM in one asyncio process, with the probes the benchmark reports.

This module is the conversation every call has and the probes (`Probes`); the lean callers and
their dialling are in sim/lean_call.py, fake Deepgram with the probes in sim/load_deepgram.py,
and the fake LLM is `FakeLLM`. Cost model (it must drive hundreds of calls from one core, so
the figures are the service's, not the generator's): see sim/lean_call.py.

Probes (all times on `time.monotonic()`'s clock: CLOCK_MONOTONIC is system-wide on Linux, so
times taken here compare with nothing but times taken here — every probe starts and ends in this
process):

- **Inbound** (caller frame sent -> its bytes at fake Deepgram): every caller frame carries its
  call index and frame number in its first 4 payload bytes (the fakes do not listen to the
  audio). The caller notes the send time per frame; Flux (or the agent) reads the tags of
  every 160-byte frame of each binary message it receives. The bridge sends 80 ms chunks (4
  frames), so a frame waits 0-60 ms for its chunk to complete: `inbound` is measured on the
  frame that completes a chunk (no chunking wait: two loopback hops plus the bridge's work),
  `inbound_all` on every frame (chunking wait included).
- **Outbound** (Aura's first audio of a reply sent -> its first Twilio frame at the caller): the
  first chunk a fake Aura (or agent) sends after being idle starts with a 4-byte magic and a
  4-byte id; the caller recognises it in a media payload. Only those first chunks are measured:
  later audio is held back on purpose by the bridge's pacing.
- **Pacing jitter** (at the caller): bot audio comes in bursts (the playout sends every frame
  due within its lead each time it wakes). The first frame of each burst should arrive exactly
  n × 20 ms after the run's first frame plus a constant (the lead); its lateness against the
  run's least-late burst is the jitter. The first burst of a run (the lead itself) is left out.
- **EndOfTurn -> first audio**: Flux's EndOfTurn (the agent: its user ConversationText) is
  timed per call; the next media frame the caller receives closes the interval. A turn with no
  bot audio within `NO_REPLY_S` counts as an error.
- **Where that interval goes** (Flux): the fakes time their own holds — the fake LLM from
  being handed a request to its first token written (`llm_hold`) and on to the reply's end
  (`llm_stream`: the rest of the sentence at its token rate, which the service waits for
  before it flushes the sentence to Aura), fake Aura from the Flush's
  arrival (kernel receive time) to its first audio of the reply sent (`aura_hold`); the first
  audio's tag carries its Flush time to the caller, so each interval that the tagged frame
  closes splits into EndOfTurn -> Flush at Aura (`eot_to_flush`: the service before and after
  the LLM, and the LLM's hold), Aura's hold, and Aura -> the caller (`aura_to_caller`).
  **Per reply** (`replies`, so the split holds at p99, where percentiles do not add): fake
  Flux ends each EndOfTurn's transcript with the reply's tag (`reply_tag`: the call's index
  and its count of EndOfTurns), which the service passes on as the LLM request's last user
  message; the fake LLM's hold and stream are kept under that tag, and the interval the
  reply's first audio closes takes them, with the Aura hold its tagged first frame carries
  (the Flush after that EndOfTurn on the call's Aura socket). An interval without all three
  is counted in `unjoined`, by reason, never paired by guess.
- **Send lag**: how late each caller frame left against its 20 ms grid (the generator's own
  health: if this grows, the generator is the bottleneck).
- **Read lag**: how long after the kernel received a caller's bytes this loop read them (the
  generator's own lateness, which kernel receive times keep out of the probes above).

Receive times: the callers and fake Deepgram read their sockets through
`telephony.sim.stamped.StampedTransport`, and every probe that ends on a receive ("at the
caller", "at fake Deepgram") uses the time the bytes reached the socket (where Linux stamps
received packets; elsewhere, the time they were read).
Fake Deepgram times a binary frame as websockets parses it (`_StampedConnection`), not when
the session's task gets to it.
"""

from __future__ import annotations

import itertools
import re
import struct
import time
from array import array
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

from telephony.sim.deepgram.script import AgentStep, Script, ScriptedTurn

if TYPE_CHECKING:
    from telephony.sim.lean_call import LeanCall

FRAME_BYTES = 160
FRAME_S = 0.02
TAG = struct.Struct(">HH")  # inbound frame tag: call index, frame number mod 2**16
NO_CALL = 0xFFFF  # μ-law silence (0xFF 0xFF) reads as this index: gap fill, not ours
FILLER = b"\xff" * (FRAME_BYTES - TAG.size)
RING = 1024  # send times kept per call: 20 s of frames
OUT_MAGIC = b"\x7e\x42\x7e\x42"
OUT_TAG = struct.Struct(">4sI")  # outbound tag: magic, id
BURST_GAP_S = 0.005  # frames further apart than this are separate playout wake-ups
NO_REPLY_S = 5.0  # a caller turn with no bot audio this long after its end is an error
MAX_LATENCY_S = 10.0  # probe matches older than this are stale ring entries, not latencies

# The conversation every call has, repeated: the caller asks, the bot answers; the caller
# asks again while the answer plays (a barge-in), the bot answers that too.
CYCLE_MS = 8000
TURNS = (
    (500, 1500, "I would like to check on my order please"),
    (3000, 4000, "Actually let me ask about something else"),
)
REPLY_TEXT = "Sure, I can help you with that order today."  # one sentence: one Aura flush
SPEECH_MS = 1000  # agent: UserStartedSpeaking -> ConversationText(user)
# A reply's key, at the end of the transcript that asks for it (fake Flux -> service -> LLM).
_REPLY_TAG = re.compile(r"\[reply (\d+)\.(\d+)\]")


def reply_tag(index: int, n: int) -> str:
    """What the transcript of call `index`'s `n`th EndOfTurn ends with."""
    return f"[reply {index}.{n}]"


def reply_of(user_text: str) -> tuple[int, int] | None:
    """The reply an LLM request's last user message asks for: its last tag (the service
    merges caller turns in a row into one message, the newest last)."""
    found = _REPLY_TAG.findall(user_text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def turns_for(total_ms: int) -> list[ScriptedTurn]:
    """The caller's turns (Flux) for a call of `total_ms` of audio."""
    out = []
    for cycle in range(0, total_ms, CYCLE_MS):
        out += [ScriptedTurn(cycle + a, cycle + b, text) for a, b, text in TURNS]
    return out


def agent_steps_for(total_ms: int) -> list[AgentStep]:
    """The same conversation for the Voice Agent (keyed on audio after SettingsApplied)."""
    return [
        AgentStep(at_ms=t.start_ms, user_text=t.text, reply_text=REPLY_TEXT, speech_ms=SPEECH_MS)
        for t in turns_for(total_ms)
    ]


def bench_script(total_ms: int) -> Script:
    """Flux turns and agent steps together: each endpoint reads its own part."""
    return Script(turns=turns_for(total_ms), agent=agent_steps_for(total_ms))


def reply_ms(ms_per_char: int) -> int:
    """How long the fake Aura speaks REPLY_TEXT (the relay's canned reply is this long)."""
    return len(REPLY_TEXT) * ms_per_char


# --- measurements ---------------------------------------------------------------------------


class ReplySplit(NamedTuple):
    """One reply's EndOfTurn -> first audio and the fakes' pieces of it (ms)."""

    eot_to_audio: float
    llm_hold: float  # request handed over -> first token written
    llm_stream: float  # first token -> the reply's end written
    aura_hold: float  # Flush received -> first audio sent
    # The rest, the service's three hops (with the loopback and the fakes' reading); the six
    # pieces add up to `eot_to_audio`.
    eot_to_llm: float  # EndOfTurn sent -> the service's request handed to the fake LLM
    llm_to_flush: float  # the reply's end written -> its Flush at fake Aura
    aura_to_caller: float  # Aura's first audio sent -> at the caller


class Probes:
    """Where every probe writes: one per benchmark phase (server or relay)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sent_at = [array("d", bytes(8 * RING)) for _ in range(capacity)]
        self.calls: list[LeanCall | None] = [None] * capacity
        self.by_sid: dict[str, LeanCall] = {}
        self.recording = False  # only samples within the measurement window count
        self.inbound = array("d")  # ms, chunk-completing frames
        self.inbound_all = array("d")  # ms, every frame (chunking wait included)
        self.outbound = array("d")
        self.jitter = array("d")
        self.eot_to_audio = array("d")
        self.send_lag = array("d")
        self.read_lag = array("d")
        self.llm_hold = array("d")  # ms: fake LLM, request handed over -> first token written
        self.llm_stream = array("d")  # ms: fake LLM, first token -> the reply's end written
        self.aura_hold = array("d")  # ms: fake Aura, Flush received -> first audio sent
        self.eot_to_flush = array("d")  # ms: EndOfTurn sent -> that reply's Flush at Aura
        self.aura_to_caller = array("d")  # ms: Aura's first audio sent -> at the caller
        self.replies: list[ReplySplit] = []  # every interval whose pieces joined (window only)
        self.unjoined: Counter[str] = Counter()  # intervals that did not, by reason (window only)
        # (call index, EndOfTurn count) -> the fake LLM's (hold, stream) ms for that reply;
        # None when more than one stream answered it.
        # A reply's stream: (hold ms, stream ms, request arrived, end written), or None if two
        self.llm_replies: dict[tuple[int, int], tuple[float, float, float, float] | None] = {}
        self.tts_sent: dict[int, float] = {}
        self.tts_flushed: dict[int, float] = {}  # tts id -> its Flush's arrival at Aura
        self._tts_ids = itertools.count(1)
        self.errors: Counter[str] = Counter()
        self.bot_frames = 0  # media frames the callers received (window only)
        self.caller_frames = 0  # media frames the callers sent (window only)
        self.turns = 0  # caller turns ended (window only)

    def register(self, call: LeanCall) -> None:
        self.calls[call.index] = call
        self.by_sid[call.call_sid] = call

    def on_inbound(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """A binary frame reached fake Deepgram at `now`: the latency of each tagged frame."""
        if not self.recording:
            return
        last = len(data) - FRAME_BYTES
        sent_at, capacity = self.sent_at, self.capacity
        for offset in range(0, last + 1, FRAME_BYTES):
            index, number = TAG.unpack_from(data, offset)
            if index >= capacity:
                continue  # silence the bridge filled in, or not a tagged frame
            latency = now - sent_at[index][number % RING]
            if 0 <= latency < MAX_LATENCY_S:
                ms = latency * 1000
                self.inbound_all.append(ms)
                if offset == last:
                    self.inbound.append(ms)

    def call_of(self, data: bytes) -> LeanCall | None:
        """The caller whose audio this is (the agent learns its call from the tags)."""
        if len(data) < TAG.size:
            return None
        index, _ = TAG.unpack_from(data, 0)
        return self.calls[index] if index < self.capacity else None

    def end_of_turn(self, call: LeanCall | None) -> str:
        """An EndOfTurn (the agent: the user's ConversationText) for `call`: the tag its
        transcript ends with ("" without a call)."""
        if call is None:
            return ""
        call.eot_at = time.monotonic()
        call.replies += 1
        if self.recording:
            self.turns += 1
        return reply_tag(call.index, call.replies)

    def tag_outbound(self, data: bytes, flushed_at: float | None = None) -> bytes:
        if len(data) < OUT_TAG.size:
            return data
        tts_id = next(self._tts_ids)
        sent = self.tts_sent[tts_id] = time.monotonic()
        if flushed_at is not None:
            self.tts_flushed[tts_id] = flushed_at
            if self.recording:
                self.aura_hold.append((sent - flushed_at) * 1000)
        return OUT_TAG.pack(OUT_MAGIC, tts_id) + data[OUT_TAG.size :]

    def llm_streamed(self, user_text: str, arrived: float, first: float, last: float) -> None:
        """The fake LLM streamed a whole reply to a request whose last user message is
        `user_text`."""
        hold, stream = (first - arrived) * 1000, (last - first) * 1000
        if self.recording:
            self.llm_hold.append(hold)
            self.llm_stream.append(stream)
        reply = reply_of(user_text)
        if reply is not None:
            streamed = (hold, stream, arrived, last)
            self.llm_replies[reply] = None if reply in self.llm_replies else streamed

    def first_audio(
        self,
        reply: tuple[int, int],
        eot_at: float,
        now: float,
        tagged: tuple[float | None, float] | None,
    ) -> None:
        """Bot audio reached the caller at `now`, closing the interval of its EndOfTurn
        `reply` (at `eot_at`); `tagged`: the frame is Aura's first of a burst, (its Flush's
        arrival at Aura or None, Aura's send)."""
        streamed = reply in self.llm_replies
        llm = self.llm_replies.pop(reply, None)  # taken in or out of the window
        if not self.recording:
            return
        self.eot_to_audio.append((now - eot_at) * 1000)
        if tagged is None:
            self.unjoined["first audio not Aura's first of a burst"] += 1
            return
        flushed, sent = tagged
        if flushed is None or flushed < eot_at:
            self.unjoined["no Flush after the EndOfTurn"] += 1
            return
        self.eot_to_flush.append((flushed - eot_at) * 1000)
        self.aura_to_caller.append((now - sent) * 1000)
        if not streamed:
            self.unjoined["no LLM stream for the reply"] += 1
        elif llm is None:
            self.unjoined["several LLM streams for the reply"] += 1
        else:
            hold, stream, arrived, last = llm
            ms = 1000
            self.replies.append(
                ReplySplit(
                    (now - eot_at) * ms,
                    hold,
                    stream,
                    (sent - flushed) * ms,
                    (arrived - eot_at) * ms,
                    (flushed - last) * ms,
                    (now - sent) * ms,
                )
            )
