"""What the fake Deepgram does, and when: scripted turns, agent steps and injected faults.

Times are *audio time* on the connection (ms of audio received, counted from its first audio
byte, as Deepgram's own timestamps are), never wall clock, so a test that feeds audio faster
than real time still sees the same events in the same order. Speak has no inbound audio, so
its faults use ms since the socket opened.

A script can be built from dataclasses or loaded from a dict / YAML document:

    turns:
      - {start_ms: 500, end_ms: 2000, text: "I need to cancel my order", eager_ms: 1700}
    agent:
      - {at_ms: 400, user_text: "hi", reply_text: "Hello!"}
    faults:
      - {endpoint: flux, at_ms: 3000, kind: drop}

Voiced scripts (`voiced: true`, Flux only): turns are found in the audio itself, as on the real
service, so a client's reconnect replay is heard wherever the speech sits in it. Turns then
only supply texts, used in list order across all connections of the script (see `Script`):

    voiced: true
    end_silence_ms: 400
    turns:
      - "I need to cancel my order"
      - {text: "order one two", final_text: "order one two three"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any, Literal, get_args

import orjson
import yaml

Endpoint = Literal["flux", "speak", "agent", "listen"]
FaultKind = Literal["drop", "close", "silent", "stuck", "error"]
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


VOICE_KNOBS = ("end_silence_ms", "eager_silence_ms", "speech_rms")


class ScriptError(ValueError):
    """An inconsistent script (e.g. a turn that ends before it starts)."""


@dataclass(frozen=True, slots=True)
class ScriptedTurn:
    """One caller turn, for Flux (/v2/listen) and Nova (/v1/listen).

    Words of `text` are spread evenly over [start_ms, eager_ms or end_ms]. With `resumed`, the
    caller keeps talking after the eager end: TurnResumed at `resumed_ms` (default eager_ms +
    250) and the extra words of `final_text` spread over [resumed_ms, end_ms].
    """

    start_ms: int
    end_ms: int
    text: str
    eager_ms: int | None = None  # EagerEndOfTurn, if the connection set eager_eot_threshold
    resumed: bool = False
    final_text: str | None = None  # the EndOfTurn text of a resumed turn
    resumed_ms: int | None = None
    language: str = "en"  # what flux-general-multi reports the caller spoke

    def __post_init__(self) -> None:
        if not self.text.split():
            raise ScriptError("ScriptedTurn.text must contain a word")
        if not 0 <= self.start_ms < self.end_ms:
            raise ScriptError(f"ScriptedTurn needs 0 <= start_ms < end_ms: {self}")
        if self.eager_ms is not None and not self.start_ms < self.eager_ms < self.end_ms:
            raise ScriptError(f"ScriptedTurn needs start_ms < eager_ms < end_ms: {self}")
        if self.resumed:
            if self.eager_ms is None or not self.final_text:
                raise ScriptError("a resumed ScriptedTurn needs eager_ms and final_text")
            if not self.eager_ms < self.resume_at < self.end_ms:
                raise ScriptError(f"ScriptedTurn needs eager_ms < resumed_ms < end_ms: {self}")

    @classmethod
    def said(cls, text: str, final_text: str | None = None, language: str = "en") -> ScriptedTurn:
        """A turn for a voiced Script: only the words matter; its times are placeholders.

        `final_text` is the EndOfTurn text if the caller pauses for `eager_silence_ms` or more
        and then goes on talking (TurnResumed, if the connection enabled eager end of turn).
        """
        if final_text is None:
            return cls(0, 1, text, language=language)
        return cls(
            0, 3, text, eager_ms=1, resumed=True, final_text=final_text, resumed_ms=2,
            language=language,
        )  # fmt: skip

    @property
    def resume_at(self) -> int:
        assert self.eager_ms is not None
        return self.resumed_ms if self.resumed_ms is not None else self.eager_ms + 250

    @property
    def final(self) -> str:
        """The text EndOfTurn carries."""
        return self.final_text if self.resumed and self.final_text else self.text


@dataclass(frozen=True, slots=True)
class ScriptedFunctionCall:
    name: str
    arguments: Mapping[str, Any] | str = "{}"

    @property
    def arguments_json(self) -> str:
        """Deepgram sends `arguments` as a JSON *string*."""
        if isinstance(self.arguments, str):
            return self.arguments
        return orjson.dumps(dict(self.arguments)).decode()


@dataclass(frozen=True, slots=True)
class AgentStep:
    """One exchange on the Voice Agent.

    At `at_ms` of caller audio (counted after SettingsApplied) the caller starts talking:
    UserStartedSpeaking; `speech_ms` later the agent has the user text and answers. A step
    with `at_ms=None` is triggered instead by an InjectUserMessage whose content equals
    `user_text` (case-insensitive).

    With `cancel_call_ms` the function call was dispatched speculatively and the caller goes
    on talking: that long (caller audio) after the FunctionCallRequest the agent sends
    FunctionCallCancelled and drops the step's reply, whether or not it was answered.
    """

    at_ms: int | None
    user_text: str
    reply_text: str
    function_call: ScriptedFunctionCall | Mapping[str, Any] | None = None
    reply_after_function: str | None = None  # spoken after the FunctionCallResponse
    speech_ms: int = 600
    cancel_call_ms: int | None = None  # FunctionCallCancelled this long after the request

    def __post_init__(self) -> None:
        if isinstance(self.function_call, Mapping):
            fc = ScriptedFunctionCall(**dict(self.function_call))
            object.__setattr__(self, "function_call", fc)
        if self.at_ms is not None and self.at_ms < 0:
            raise ScriptError("AgentStep.at_ms must be >= 0")
        if self.cancel_call_ms is not None and (
            self.function_call is None or self.cancel_call_ms < 0
        ):
            raise ScriptError("AgentStep.cancel_call_ms needs a function_call and >= 0")

    @property
    def call(self) -> ScriptedFunctionCall | None:
        assert not isinstance(self.function_call, Mapping)
        return self.function_call


@dataclass(frozen=True, slots=True)
class Fault:
    """Break one connection at a moment of its audio time (speak: ms since it opened).

    kinds: "drop" abrupt TCP close, no close frame (client sees 1006); "close" close frame with
    `code`/`reason`; "silent" the server sends nothing more but keeps reading; "stuck" (flux,
    listen) the current or next turn never ends by itself; "error" an Error message, then
    close 1011 (speak: the close alone, its reason `reason` or NET-0000). `connection` picks
    the connection by its 0-based index among connections of that endpoint and tag (None: the
    first only), so a reconnect is healthy by default.
    """

    endpoint: Endpoint
    at_ms: int
    kind: FaultKind
    code: int = 1011
    reason: str = ""
    connection: int | None = None

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ScriptError(f"Fault.endpoint must be one of {ENDPOINTS}")
        if self.kind not in FAULT_KINDS:
            raise ScriptError(f"Fault.kind must be one of {FAULT_KINDS}")
        if self.kind == "stuck" and self.endpoint not in ("flux", "listen"):
            raise ScriptError("a 'stuck' fault applies to flux and listen only")

    def applies_to(self, endpoint: str, index: int) -> bool:
        return self.endpoint == endpoint and (self.connection or 0) == index


@dataclass(slots=True)
class Script:
    """Turns, agent steps and faults; with `voiced`, Flux finds turns in the audio content.

    Voiced (Flux only; Nova connections of a voiced script get no turns): a 20 ms stretch of
    audio is speech when its RMS (decoded to 16-bit PCM) is at least `speech_rms`; μ-law
    silence (0xFF) is 0. StartOfTurn at the first speech after silence, Update every 250 ms
    of audio with the words revealed one per 250 ms of speech, EagerEndOfTurn after
    `eager_silence_ms` of silence (if the connection enabled it), TurnResumed if speech comes
    back before the end, EndOfTurn (trigger "model") after `end_silence_ms` of silence.
    Windows and word times are the detected speech, in the connection's own audio seconds.
    The Nth turn heard gets the Nth text in list order (`start_ms`/`end_ms` are ignored; see
    `ScriptedTurn.said`). The text cursor is shared by every connection given this script
    (per FakeDeepgram and tag) and advances only when an EndOfTurn is delivered, so a turn cut
    off by a dropped connection keeps its text when the client replays it on a new one. Speech
    after the texts run out is ignored. Faults keep their audio-time meaning.
    """

    turns: list[ScriptedTurn] = field(default_factory=list)
    agent: list[AgentStep] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    voiced: bool = False
    end_silence_ms: int = 400  # voiced: silence after speech that ends a turn
    eager_silence_ms: int = 200  # voiced: silence after speech for EagerEndOfTurn
    speech_rms: int = 500  # voiced: 16-bit RMS threshold of speech (about -36 dBFS)

    def __post_init__(self) -> None:
        if not self.voiced:  # voiced texts are used in list order
            self.turns = sorted(self.turns, key=lambda t: t.start_ms)
        if min(self.end_silence_ms, self.eager_silence_ms, self.speech_rms) <= 0:
            raise ScriptError("end_silence_ms, eager_silence_ms and speech_rms must be > 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Script:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ScriptError(f"unknown script keys: {sorted(unknown)}")
        voiced = bool(data.get("voiced", False))
        build_turn = _said if voiced else partial(_build, ScriptedTurn)
        knobs = {k: data[k] for k in VOICE_KNOBS if k in data}
        try:
            return cls(
                turns=[build_turn(d) for d in data.get("turns") or []],
                agent=[_build(AgentStep, d) for d in data.get("agent") or []],
                faults=[_build(Fault, d) for d in data.get("faults") or []],
                voiced=voiced,
                **knobs,
            )
        except TypeError as exc:
            raise ScriptError(str(exc)) from None

    @classmethod
    def from_yaml(cls, source: str | PathLike[str]) -> Script:
        """YAML text, or a path to a YAML file."""
        text = Path(source).read_text() if isinstance(source, PathLike) else source
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ScriptError("a script document must be a mapping")
        return cls.from_dict(data)


def _said(d: Any) -> ScriptedTurn:
    """A voiced script's turn: a text, {text, final_text}, or a full timed turn."""
    if isinstance(d, str):
        return ScriptedTurn.said(d)
    if isinstance(d, Mapping) and "start_ms" not in d and "end_ms" not in d:
        if unknown := set(d) - {"text", "final_text", "language"}:
            raise ScriptError(f"voiced turn: unknown keys {sorted(unknown)}")
        return ScriptedTurn.said(**d)
    return _build(ScriptedTurn, d)


def _build(cls: type, d: Any) -> Any:
    if not isinstance(d, Mapping):
        raise ScriptError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    if unknown := set(d) - names:
        raise ScriptError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**d)
