"""Query-parameter checks for the fake's endpoints: a bad URL is an HTTP 400 with a reason.

The real service rejects bad configuration at the handshake, so clients must learn it there.
The fake is stricter than Deepgram in one way: parameters it does not know are rejected too,
so a typo fails a test instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from telephony.deepgram import messages as dm

FLUX_ENCODINGS = ("linear16", "linear32", "mulaw", "alaw", "opus", "ogg-opus")
FLUX_RATES = (8000, 16000, 24000, 44100, 48000)
# numerals per pipecat (unverified); language_hint on flux-general-multi only.
FLUX_PARAMS = frozenset(
    {
        "model",
        "encoding",
        "sample_rate",
        "eot_threshold",
        "eager_eot_threshold",
        "eot_timeout_ms",
        "keyterm",
        "tag",
        "mip_opt_out",
        "language_hint",
        "numerals",
    }
)

SPEAK_RATES = {
    "linear16": (8000, 16000, 24000, 32000, 48000),
    "mulaw": (8000, 16000),
    "alaw": (8000, 16000),
}
SPEAK_DEFAULT_RATE = {"linear16": 24000, "mulaw": 8000, "alaw": 8000}
SPEAK_PARAMS = frozenset({"model", "encoding", "sample_rate", "container", "tag", "mip_opt_out"})

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
# From Deepgram's /v1/listen WebSocket reference.
LISTEN_PARAMS = frozenset(
    {
        "callback",
        "callback_method",
        "channels",
        "diarize",
        "dictation",
        "encoding",
        "endpointing",
        "extra",
        "filler_words",
        "interim_results",
        "keyterm",
        "keywords",
        "language",
        "mip_opt_out",
        "model",
        "multichannel",
        "numerals",
        "profanity_filter",
        "punctuate",
        "redact",
        "replace",
        "sample_rate",
        "search",
        "smart_format",
        "tag",
        "utterance_end_ms",
        "vad_events",
        "version",
    }
)
REPEATABLE = frozenset({"keyterm", "keywords", "tag", "redact", "replace", "search", "extra"})

Query = dict[str, list[str]]


class ParamError(ValueError):
    """A query the real service would refuse with HTTP 400."""


def _one(q: Query, name: str) -> str | None:
    values = q.get(name)
    if not values:
        return None
    if len(values) > 1 and name not in REPEATABLE:
        raise ParamError(f"{name} given {len(values)} times")
    return values[0]


def _number(q: Query, name: str) -> float | None:
    raw = _one(q, name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ParamError(f"{name} must be a number, got {raw!r}") from None


def _integer(q: Query, name: str) -> int | None:
    raw = _one(q, name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ParamError(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _boolean(q: Query, name: str) -> bool | None:
    raw = _one(q, name)
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise ParamError(f"{name} must be true or false, got {raw!r}")
    return raw.lower() == "true"


def _unknown(q: Query, allowed: frozenset[str], endpoint: str) -> None:
    if unknown := sorted(set(q) - allowed):
        raise ParamError(f"unsupported parameter(s) on {endpoint}: {', '.join(unknown)}")


def _encoding_and_rate(
    q: Query, encodings: tuple[str, ...], rates: tuple[int, ...] | None, *, strict_pair: bool
) -> tuple[str | None, int | None]:
    """strict_pair: both or neither (Flux); else only encoding needs a rate (Nova)."""
    encoding, rate = _one(q, "encoding"), _integer(q, "sample_rate")
    if encoding is not None and encoding not in encodings:
        raise ParamError(f"encoding must be one of {', '.join(encodings)}, got {encoding!r}")
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


NOVA_ONLY = frozenset(LISTEN_PARAMS - FLUX_PARAMS)


def flux_params(q: Query) -> FluxParams:
    if nova := sorted(set(q) & NOVA_ONLY):
        raise ParamError(f"not supported on Flux (Nova /v1/listen only): {', '.join(nova)}")
    _unknown(q, FLUX_PARAMS, "/v2/listen")
    model = _one(q, "model")
    if model not in dm.FLUX_MODELS:
        raise ParamError(f"model must be one of {', '.join(dm.FLUX_MODELS)}, got {model!r}")
    if "language_hint" in q and model != "flux-general-multi":
        raise ParamError("language_hint needs model=flux-general-multi")
    encoding, rate = _encoding_and_rate(q, FLUX_ENCODINGS, FLUX_RATES, strict_pair=True)
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
    )


@dataclass(frozen=True, slots=True)
class SpeakParams:
    model: str
    encoding: str
    sample_rate: int
    tag: str | None


def speak_params(q: Query) -> SpeakParams:
    _unknown(q, SPEAK_PARAMS, "/v1/speak")
    model = _one(q, "model") or "aura-asteria-en"
    if not model.startswith("aura"):
        raise ParamError(f"model must be an Aura voice (aura-...), got {model!r}")
    encoding = _one(q, "encoding") or "linear16"
    if encoding not in SPEAK_RATES:
        raise ParamError(f"encoding must be one of {', '.join(SPEAK_RATES)} on the socket")
    container = _one(q, "container")
    if container not in (None, "none"):
        raise ParamError(f"container must be 'none' on the socket, got {container!r}")
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
    diarize: bool = False


# Options that take true/false on /v1/listen (anything else is a 400).
LISTEN_BOOLEANS = ("smart_format", "punctuate", "diarize", "numerals", "profanity_filter")


def _endpointing(q: Query) -> int | None:
    raw = _one(q, "endpointing")
    if raw is None:
        return 10  # Deepgram's default
    if raw.lower() == "false":
        return None
    if raw.lower() == "true":
        return 10
    if not raw.isdigit():
        raise ParamError(f"endpointing must be an integer (ms) or false, got {raw!r}")
    return int(raw)


def listen_params(q: Query) -> ListenParams:
    _unknown(q, LISTEN_PARAMS, "/v1/listen")
    model = _one(q, "model") or "base"
    if model.startswith("flux"):
        raise ParamError("Flux models are served on /v2/listen, not /v1/listen")
    if "keyterm" in q and not model.startswith("nova-3"):
        raise ParamError("keyterm needs a nova-3 model")
    if "keywords" in q and model.startswith("nova-3"):  # Deepgram's keywords page: not Nova-3
        raise ParamError("keywords is not supported on nova-3 (use keyterm)")
    for name in LISTEN_BOOLEANS:
        _boolean(q, name)
    encoding, rate = _encoding_and_rate(q, LISTEN_ENCODINGS, None, strict_pair=False)
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
        diarize=bool(_boolean(q, "diarize")),
    )
