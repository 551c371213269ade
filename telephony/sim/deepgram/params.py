"""Query-parameter checks for the fake's endpoints: a bad URL is an HTTP 400 with a reason.

The real service rejects bad configuration at the handshake, so clients must learn it there.
Every parameter Deepgram's SDK offers on an endpoint is accepted, and its value type-checked
(true/false, an integer, a number, one of the documented values). The fake is stricter than
Deepgram in one way: parameters it does not know are rejected too, so a typo fails a test
instead of being silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from telephony.deepgram import messages as dm

FLUX_ENCODINGS = ("linear16", "linear32", "mulaw", "alaw", "opus", "ogg-opus")
FLUX_RATES = (8000, 16000, 24000, 44100, 48000)

SPEAK_RATES = {
    "linear16": (8000, 16000, 24000, 32000, 48000),
    "mulaw": (8000, 16000),
    "alaw": (8000, 16000),
}
SPEAK_DEFAULT_RATE = {"linear16": 24000, "mulaw": 8000, "alaw": 8000}

LISTEN_ENCODINGS = (
    "linear16",
    "linear32",
    "flac",
    "alaw",
    "mulaw",
    "amr-nb",
    "amr-wb",
    "opus",
    "ogg-opus",
    "speex",
    "g729",
)


@dataclass(frozen=True, slots=True)
class Param:
    """What one query parameter takes: "bool" (true/false), "int" (digits), "float", "enum"
    (one of `values`), "ms_or_bool" (an integer or true/false: endpointing) or "str"."""

    kind: str
    values: tuple[str, ...] = ()
    repeatable: bool = False


_BOOL, _INT, _FLOAT, _STR = Param("bool"), Param("int"), Param("float"), Param("str")
_STRS = Param("str", repeatable=True)

# Every parameter Deepgram's SDK (7.17) offers on each endpoint's connect(), typed as its docs
# say (tests/conformance/test_fake_parameters.py derives the list from the SDK and checks each
# one here),
# plus a few the fake accepted before from Deepgram's docs (Flux: none; Speak: container, tag;
# Nova: filler_words). Model names are checked by each endpoint's own rules below.
FLUX_PARAMS: dict[str, Param] = {
    "model": Param("enum", dm.FLUX_MODELS),
    "encoding": Param("enum", FLUX_ENCODINGS),
    "sample_rate": _INT,
    "eot_threshold": _FLOAT,
    "eager_eot_threshold": _FLOAT,
    "eot_timeout_ms": _INT,
    "keyterm": _STRS,
    "tag": _STRS,
    "mip_opt_out": _BOOL,
    "language_hint": _STRS,  # flux-general-multi only
    "numerals": _BOOL,
    "profanity_filter": _BOOL,
    "redact": Param("enum", ("numbers", "aggressive_numbers"), repeatable=True),
}
SPEAK_PARAMS: dict[str, Param] = {
    "model": _STR,
    "encoding": Param("enum", tuple(SPEAK_RATES)),
    "sample_rate": Param("enum", ("8000", "16000", "24000", "32000", "48000")),
    "mip_opt_out": _BOOL,
    "speed": _FLOAT,
    "container": Param("enum", ("none",)),  # the socket sends raw audio only
    "tag": _STRS,
}
LISTEN_PARAMS: dict[str, Param] = {
    "callback": _STR,
    "callback_method": Param("enum", ("POST", "GET", "PUT", "DELETE")),
    "channels": _INT,
    "detect_entities": _BOOL,
    "diarize": _BOOL,
    "diarize_model": Param("enum", ("latest", "v1")),  # enables diarization by itself
    "dictation": _BOOL,
    "encoding": Param("enum", LISTEN_ENCODINGS),
    "endpointing": Param("ms_or_bool"),
    "extra": _STRS,
    "filler_words": _BOOL,
    "interim_results": _BOOL,
    "keyterm": _STRS,
    "keywords": _STRS,
    "language": _STR,
    "language_hint": _STRS,
    "mip_opt_out": _BOOL,
    "model": _STR,
    "multichannel": _BOOL,
    "numerals": _BOOL,
    "profanity_filter": _BOOL,
    "punctuate": _BOOL,
    "redact": Param(
        "enum", ("true", "false", "pci", "numbers", "aggressive_numbers", "ssn"), repeatable=True
    ),
    "replace": _STRS,
    "sample_rate": _INT,
    "search": _STRS,
    "smart_format": _BOOL,
    "tag": _STRS,
    "utterance_end_ms": _INT,
    "vad_events": _BOOL,
    "version": _STR,
}

Query = dict[str, list[str]]


class ParamError(ValueError):
    """A query the real service would refuse with HTTP 400."""


def _one(q: Query, name: str) -> str | None:
    values = q.get(name)
    return values[0] if values else None


# Readers of values `_check` has already type-checked.
def _number(q: Query, name: str) -> float | None:
    raw = _one(q, name)
    return None if raw is None else float(raw)


def _integer(q: Query, name: str) -> int | None:
    raw = _one(q, name)
    return None if raw is None else int(raw)


def _boolean(q: Query, name: str) -> bool | None:
    raw = _one(q, name)
    return None if raw is None else raw.lower() == "true"


def _is_number(raw: str) -> bool:
    try:
        return math.isfinite(float(raw))
    except ValueError:
        return False


def _type_problem(name: str, param: Param, raw: str) -> str | None:
    low = raw.lower()
    if param.kind == "bool" and low not in ("true", "false"):
        return f"{name} must be true or false, got {raw!r}"
    if param.kind == "int" and not raw.isdigit():
        return f"{name} must be a non-negative integer, got {raw!r}"
    if param.kind == "float" and not _is_number(raw):
        return f"{name} must be a number, got {raw!r}"
    if param.kind == "enum" and raw not in param.values:
        return f"{name} must be one of {', '.join(param.values)}, got {raw!r}"
    if param.kind == "ms_or_bool" and not (raw.isdigit() or low in ("true", "false")):
        return f"{name} must be an integer (ms) or false, got {raw!r}"
    return None


def _check(q: Query, params: dict[str, Param], endpoint: str) -> None:
    """Unknown names, repeats of a single-valued parameter and values of the wrong type."""
    if unknown := sorted(set(q) - set(params)):
        raise ParamError(f"unsupported parameter(s) on {endpoint}: {', '.join(unknown)}")
    for name, values in q.items():
        param = params[name]
        if len(values) > 1 and not param.repeatable:
            raise ParamError(f"{name} given {len(values)} times")
        for raw in values:
            if problem := _type_problem(name, param, raw):
                raise ParamError(problem)


def _encoding_and_rate(
    q: Query, rates: tuple[int, ...] | None, *, strict_pair: bool
) -> tuple[str | None, int | None]:
    """strict_pair: both or neither (Flux); else only encoding needs a rate (Nova)."""
    encoding, rate = _one(q, "encoding"), _integer(q, "sample_rate")
    if encoding is not None and rate is None:
        raise ParamError("encoding needs sample_rate (raw audio)")
    if strict_pair and encoding is None and rate is not None:
        raise ParamError("sample_rate needs encoding (omit both for WAV/Ogg)")
    if rate is not None and rates is not None and rate not in rates:
        raise ParamError(f"sample_rate must be one of {rates}, got {rate}")
    return encoding, rate


@dataclass(frozen=True, slots=True)
class FluxParams:
    model: str
    encoding: str | None  # None with sample_rate None: containerized audio (WAV/Ogg)
    sample_rate: int | None
    eot_threshold: float
    eager_eot_threshold: float | None
    eot_timeout_ms: int
    keyterms: tuple[str, ...]
    tag: str | None
    language_hints: tuple[str, ...] = ()


NOVA_ONLY = frozenset(set(LISTEN_PARAMS) - set(FLUX_PARAMS))


def flux_params(q: Query) -> FluxParams:
    if nova := sorted(set(q) & NOVA_ONLY):
        raise ParamError(f"not supported on Flux (Nova /v1/listen only): {', '.join(nova)}")
    model = _one(q, "model")  # before the type check: a missing model is the likelier mistake
    if model not in dm.FLUX_MODELS:
        raise ParamError(f"model must be one of {', '.join(dm.FLUX_MODELS)}, got {model!r}")
    _check(q, FLUX_PARAMS, "/v2/listen")
    if "language_hint" in q and model != "flux-general-multi":
        raise ParamError("language_hint needs model=flux-general-multi")
    if problems := dm.language_hint_problems(q.get("language_hint", [])):
        raise ParamError("; ".join(problems))
    encoding, rate = _encoding_and_rate(q, FLUX_RATES, strict_pair=True)
    eot, eager = _number(q, "eot_threshold"), _number(q, "eager_eot_threshold")
    timeout = _integer(q, "eot_timeout_ms")
    if problems := dm.flux_threshold_problems(eot, eager, timeout):
        raise ParamError("; ".join(problems))
    return FluxParams(
        model=model,
        encoding=encoding,
        sample_rate=rate,
        eot_threshold=0.7 if eot is None else eot,
        eager_eot_threshold=eager,
        eot_timeout_ms=5000 if timeout is None else timeout,
        keyterms=tuple(q.get("keyterm", ())),
        tag=_one(q, "tag"),
        language_hints=tuple(q.get("language_hint", ())),
    )


@dataclass(frozen=True, slots=True)
class SpeakParams:
    model: str
    encoding: str
    sample_rate: int
    tag: str | None


def speak_params(q: Query) -> SpeakParams:
    _check(q, SPEAK_PARAMS, "/v1/speak")
    model = _one(q, "model") or "aura-asteria-en"
    if not model.startswith("aura"):
        raise ParamError(f"model must be an Aura voice (aura-...), got {model!r}")
    encoding = _one(q, "encoding") or "linear16"
    rate = _integer(q, "sample_rate") or SPEAK_DEFAULT_RATE[encoding]
    if rate not in SPEAK_RATES[encoding]:
        raise ParamError(f"sample_rate for {encoding} must be one of {SPEAK_RATES[encoding]}")
    return SpeakParams(model, encoding, rate, _one(q, "tag"))


@dataclass(frozen=True, slots=True)
class ListenParams:
    model: str
    encoding: str | None
    sample_rate: int | None
    interim_results: bool
    endpointing_ms: int | None  # None: endpointing=false (no speech_final)
    utterance_end_ms: int | None
    vad_events: bool
    tag: str | None  # the first tag
    tags: tuple[str, ...] = ()  # every tag (repeatable)
    diarize: bool = False  # diarize=true or any diarize_model
    punctuated: bool = False  # punctuate or smart_format: words get punctuated_word


def _endpointing(q: Query) -> int | None:
    raw = _one(q, "endpointing")
    if raw is None:
        return 10  # Deepgram's default
    if raw.lower() == "false":
        return None
    return 10 if raw.lower() == "true" else int(raw)


def listen_params(q: Query) -> ListenParams:
    _check(q, LISTEN_PARAMS, "/v1/listen")
    model = _one(q, "model") or "base"
    if model.startswith("flux"):
        raise ParamError("Flux models are served on /v2/listen, not /v1/listen")
    if "keyterm" in q and not model.startswith("nova-3"):
        raise ParamError("keyterm needs a nova-3 model")
    if "keywords" in q and model.startswith("nova-3"):  # Deepgram's keywords page: not Nova-3
        raise ParamError("keywords is not supported on nova-3 (use keyterm)")
    encoding, rate = _encoding_and_rate(q, None, strict_pair=False)
    if encoding is None:
        rate = None  # only read with an encoding
    interim = bool(_boolean(q, "interim_results"))
    utterance_end = _integer(q, "utterance_end_ms")
    if utterance_end is not None and not interim:
        raise ParamError("utterance_end_ms requires interim_results=true")
    return ListenParams(
        model=model,
        encoding=encoding,
        sample_rate=rate,
        interim_results=interim,
        endpointing_ms=_endpointing(q),
        utterance_end_ms=utterance_end,
        vad_events=bool(_boolean(q, "vad_events")),
        tag=_one(q, "tag"),
        tags=tuple(q.get("tag", ())),
        diarize=bool(_boolean(q, "diarize")) or "diarize_model" in q,
        punctuated=bool(_boolean(q, "punctuate")) or bool(_boolean(q, "smart_format")),
    )
