"""Fuzzing: the Twilio parser, every Deepgram parser and the admin YAML loader, then one bad
caller among twenty good ones through the real app.

The contract each parser is held to: it returns a typed message or raises its documented error
(`MessageError`, `DeepgramMessageError`, `ConfigError`) — never anything else (no KeyError,
TypeError, ValueError, OverflowError, RecursionError, ...), and never hangs (each input gets
`HANG_S` on a SIGALRM timer). Inputs reach deep: valid messages with fields deleted, retyped,
added, made huge, NaN or infinite, nested garbage, surrogates; random JSON and bytes; truncated
and spliced frames. For the YAML: the example configs mutated, random documents, YAML syntax
soup, alias bombs, recursive aliases, deep nesting, tabs and duplicate keys.

Examples per property come from TELEPHONY_FUZZ_EXAMPLES (default 200, for CI). The dedicated
run, at least 10 000 inputs per parser:

    TELEPHONY_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_fuzz.py -q \\
        --hypothesis-show-statistics
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import json
import math
import os
import re
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from routes.app import create_app
from telephony.config import Config, ConfigError, parse_config_text
from telephony.deepgram import messages as dm
from telephony.demo import settings_for_fakes
from telephony.inprocess import bind_loopback, serve_app
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import FakeTwilioCaller, SendDtmf, SendRaw
from telephony.sim.twilio_caller import silence as silence_ms
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.twilio import messages as tm
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY, NUMBERS_YAML, RunningApp, finished

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

EXAMPLES = int(os.environ.get("TELEPHONY_FUZZ_EXAMPLES", "200"))
HANG_S = 5.0  # one parse taking this long is a hang (real ones take micro- to milliseconds)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # wall-clock deadlines flake on loaded CI machines; HANG_S catches hangs
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No explain phase: it traces every line (sys.settrace), which makes the deep-nesting
    # inputs ten times slower and trips HANG_S on a replay that passes untraced (flaky).
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
ROOT = Path(__file__).resolve().parent.parent


class Hung(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = HANG_S) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the body runs longer than `seconds`."""

    def alarm(_sig: int, _frame: object) -> None:
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- generic strategies: garbage values, mutations, encodings ----------------------------------

WEIRD_STRINGS = [
    "",
    " ",
    "0",
    "-1",
    "+1",
    " 1",
    "1 ",
    "0x10",
    "1e999",
    "NaN",
    "nan",
    "inf",
    "-Infinity",
    "null",
    "true",
    "{}",
    "[]",
    "\x00",
    "\n",
    "\u202e",
    "🙂",
    "１２",  # fullwidth digits: str.isdigit() is True
    "١٢٣",  # Arabic-Indic digits: int() accepts them
    "²",  # isdigit() True, int() refuses
    "1" * 5000,  # past int()'s 4300-digit limit
    "9" * 30,
    "é" * 200,
    "x" * 100_000,
    "////",
    "====",
    "AAAA" * 54,
    "\ud800",
    "a\udfffb",
]
WEIRD_NUMBERS = [
    0,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**30,
    10**400,
    1e308,
    -1e308,
    5e-324,
    0.1,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
]
DEEP = "__deep__"  # replaced, after serialising, by deeply nested arrays/objects

surrogate_text = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    surrogate_text,
    st.sampled_from(WEIRD_STRINGS),
    st.sampled_from(WEIRD_NUMBERS),
    st.just(DEEP),
)


def garbage(keys: list[str]) -> st.SearchStrategy[Any]:
    """Nested JSON-ish values whose object keys are often the ones the parser looks for."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=8))
    return st.recursive(
        json_scalar,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=4)
        ),
        max_leaves=12,
    )


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _keys(obj: Any) -> list[str]:
    out: set[str] = set()
    for path in _paths(obj):
        out.update(p for p in path if isinstance(p, str))
    return sorted(out) or ["type"]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any], max_ops: int = 3) -> Any:
    """A valid value with up to `max_ops` of: a node replaced, retyped, deleted or duplicated
    with an extra key; a string made huge; an object replaced by a list of itself."""
    obj = copy.deepcopy(draw(base))
    junk = garbage(_keys(obj))
    for _ in range(draw(st.integers(0, max_ops))):
        path = draw(st.sampled_from(list(_paths(obj))))
        op = draw(
            st.sampled_from(["replace", "delete", "extra", "huge", "wrap", "scalar", "weird"])
        )
        if not path:
            if op in ("replace", "scalar"):
                obj = draw(junk)
            elif op == "wrap":
                obj = [obj]
            continue
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if op == "replace":
            parent[last] = draw(junk)
        elif op == "scalar":
            parent[last] = draw(json_scalar)
        elif op == "weird":
            parent[last] = draw(st.sampled_from(WEIRD_STRINGS + WEIRD_NUMBERS))
        elif op == "delete":
            del parent[last]
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(junk)
        elif op == "huge":
            value = parent[last]
            parent[last] = str(value)[:50] * draw(st.sampled_from([100, 5000]))
        elif op == "wrap":
            parent[last] = [parent[last]]
    return obj


def _deep(n: int, kind: str) -> str:
    return ("[" * n + "]" * n) if kind == "list" else ('{"a":' * n + "1" + "}" * n)


@st.composite
def wire_text(draw: st.DrawFn, value: Any) -> str | bytes:
    """Serialise `value` the way a sloppy or hostile peer might, then maybe damage the text."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if DEEP in text:
        text = text.replace(
            json.dumps(DEEP),
            _deep(
                draw(st.sampled_from([2, 100, 600, 1100, 20_000])),
                draw(st.sampled_from(["list", "dict"])),
            ),
        )
    op = draw(
        st.sampled_from(
            ["none", "none", "none", "truncate", "insert", "splice", "bom", "trail", "bytes", "raw"]
        )
    )
    if op == "truncate" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif op == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=3) | surrogate_text) + text[at:]
    elif op == "splice" and text:
        a = draw(st.integers(0, len(text) - 1))
        b = draw(st.integers(a, len(text)))
        text = text[:a] + text[b:] + text[a:b]
    elif op == "bom":
        text = "\ufeff" + text
    elif op == "trail":
        text = text + draw(st.sampled_from([" ", "\n", "x", "}", ",", "\x00", " {}"]))
    if op == "bytes" or (op == "raw" and draw(st.booleans())):
        data = text.encode("utf-8", "surrogatepass")
        if op == "raw" and data:  # flip a byte: invalid UTF-8 in the middle of a frame
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(128, 255))]) + data[at + 1 :]
        return data
    return text


def random_frames() -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        garbage(["type", "event"]).flatmap(wire_text),
    )


def frames(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[str | bytes]:
    """Mostly mutated valid messages; some random ones."""
    return st.one_of(
        mutated(valid).flatmap(wire_text),
        mutated(valid).flatmap(wire_text),
        mutated(valid).flatmap(wire_text),
        random_frames(),
    )


# --- Twilio Media Streams ------------------------------------------------------------------

sid_text = st.text("ABCDEFabcdef0123456789", min_size=2, max_size=34)
num_str = st.integers(0, 10**12).map(str)


@st.composite
def twilio_inbound(draw: st.DrawFn) -> dict[str, Any]:
    stream_sid = "MZ" + draw(sid_text)
    head = {"sequenceNumber": draw(num_str), "streamSid": stream_sid}
    kinds = ["connected", "start", "media", "media", "media", "dtmf", "mark", "stop"]
    kind = draw(st.sampled_from(kinds))  # media: the hot path, most of a real stream
    if kind == "connected":
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    if kind == "start":
        params = draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4))
        return {
            "event": "start",
            **head,
            "start": {
                "accountSid": "AC" + draw(sid_text),
                "streamSid": stream_sid,
                "callSid": "CA" + draw(sid_text),
                "tracks": draw(st.lists(st.sampled_from(["inbound", "outbound"]), max_size=2)),
                "customParameters": params,
                "mediaFormat": {
                    "encoding": tm.MULAW_ENCODING,
                    "sampleRate": draw(st.sampled_from([8000, 16000])),
                    "channels": 1,
                },
            },
        }
    if kind == "media":
        payload = draw(st.binary(max_size=400))
        return {
            "event": "media",
            **head,
            "media": {
                "track": "inbound",
                "chunk": draw(num_str),
                "timestamp": draw(num_str),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    if kind == "dtmf":
        digit = draw(st.sampled_from("0123456789*#ABCD"))
        return {"event": "dtmf", **head, "dtmf": {"track": "inbound_track", "digit": digit}}
    if kind == "mark":
        return {"event": "mark", **head, "mark": {"name": draw(st.text(max_size=30))}}
    return {"event": "stop", **head, "stop": {"accountSid": "AC1", "callSid": "CA1"}}


INBOUND_TYPES = (tm.Connected, tm.Start, tm.Media, tm.Dtmf, tm.Mark, tm.Stop)


def check_inbound(frame: str | bytes) -> None:
    try:
        with no_hang():
            msg = tm.parse_inbound(frame)
    except tm.MessageError:
        return
    assert isinstance(msg, INBOUND_TYPES)
    if isinstance(msg, tm.Media):
        assert isinstance(msg.payload, bytes)
        assert msg.timestamp >= 0 and msg.sequence >= 0 and msg.chunk >= 0
    if isinstance(msg, tm.Dtmf):
        assert msg.digit in "0123456789*#ABCD" and len(msg.digit) == 1


@FUZZ
@given(frames(twilio_inbound()))
def test_fuzz_twilio_inbound(frame: str | bytes) -> None:
    check_inbound(frame)


@FUZZ
@given(twilio_inbound())
def test_valid_twilio_messages_parse(value: dict[str, Any]) -> None:
    msg = tm.parse_inbound(json.dumps(value))
    assert type(msg).__name__.lower() == value["event"]


@st.composite
def twilio_outbound(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["media", "mark", "clear"]))
    if kind == "media":
        b64 = base64.b64encode(draw(st.binary(max_size=320))).decode()
        return {"event": "media", "streamSid": "MZ1", "media": {"payload": b64}}
    if kind == "mark":
        return {"event": "mark", "streamSid": "MZ1", "mark": {"name": draw(st.text())}}
    return {"event": "clear", "streamSid": "MZ1"}


@FUZZ
@given(frames(twilio_outbound()))
def test_fuzz_twilio_outbound(frame: str | bytes) -> None:
    """What the fake caller parses (the service's frames), as strictly as Twilio does."""
    try:
        with no_hang():
            msg = tm.parse_outbound(frame, "MZ1")
    except tm.MessageError:
        return
    assert isinstance(msg, tm.OutboundMedia | tm.OutboundMark | tm.OutboundClear)


# --- Deepgram ------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(-(2**63), 2**63 - 1)
small_json = st.recursive(
    st.none() | st.booleans() | int64 | finite | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _field_strategy(annotation: str) -> st.SearchStrategy[Any]:
    if annotation.endswith(" | None"):
        return st.none() | _field_strategy(annotation.removesuffix(" | None"))
    simple: dict[str, st.SearchStrategy[Any]] = {
        "str": st.text(max_size=30),
        "int": int64,
        "float": finite,
        "bool": st.booleans(),
        "dict[str, Any]": st.dictionaries(st.text(max_size=8), small_json, max_size=4),
    }
    if annotation in simple:
        return simple[annotation]
    m = re.fullmatch(r"tuple\[(\w+), \.\.\.\]", annotation)
    assert m, f"no strategy for {annotation!r}: extend _field_strategy"
    name = m.group(1)
    item = simple[name] if name in simple else message_of(getattr(dm, name))
    return st.lists(item, max_size=4).map(tuple)


def message_of(cls: type) -> st.SearchStrategy[Any]:
    """Any valid instance of a registered message class (every field, optional ones maybe)."""
    if cls is dm.Configure:
        th = st.none() | st.floats(0, 1)
        return st.builds(
            dm.Configure,
            eot_threshold=th,
            eager_eot_threshold=th,
            eot_timeout_ms=st.none() | st.integers(0, 2**53),
            keyterms=st.none() | st.lists(st.text(max_size=10), max_size=3).map(tuple),
            language_hints=st.none() | st.lists(st.text(max_size=5), max_size=2).map(tuple),
        )
    if cls is dm.Settings:
        return st.builds(
            lambda prompt, greeting, tags: dm.Settings(
                dm.agent_settings(prompt=prompt, greeting=greeting, tags=tags)
            ),
            st.text(max_size=40),
            st.none() | st.text(max_size=20),
            st.none() | st.lists(st.text(max_size=5), max_size=2),
        )
    if cls is dm.History:  # a message, or function calls: never neither
        text = st.text(max_size=20)
        calls = st.lists(message_of(dm.HistoryFunctionCall), max_size=3).map(tuple)
        return st.builds(dm.History, role=text, content=text) | st.builds(
            dm.History, function_calls=calls
        )
    fields = {f.name: _field_strategy(str(f.type)) for f in dataclasses.fields(cls)}
    if cls is dm.TurnInfo:
        fields["event"] = st.sampled_from(dm.FLUX_EVENTS)
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


PARSERS: dict[str, tuple[Callable[[str | bytes], Any], tuple[type, ...]]] = {
    "flux_server": (
        dm.parse_flux_server,
        (
            dm.FluxConnected,
            dm.TurnInfo,
            dm.ConfigureSuccess,
            dm.ConfigureFailure,
            dm.FluxWarning,
            dm.FluxError,
        ),
    ),
    "flux_client": (dm.parse_flux_client, (dm.Configure, dm.ForceEndTurn, dm.CloseStream)),
    "speak_server": (
        dm.parse_speak_server,
        (dm.Metadata, dm.Flushed, dm.Cleared, dm.SpeakWarning, dm.SpeakError),
    ),
    "speak_client": (dm.parse_speak_client, (dm.Speak, dm.Flush, dm.Clear, dm.Close)),
    "agent_server": (
        dm.parse_agent_server,
        (
            dm.Welcome,
            dm.SettingsApplied,
            dm.ConversationText,
            dm.UserStartedSpeaking,
            dm.AgentThinking,
            dm.AgentStartedSpeaking,
            dm.AgentAudioDone,
            dm.FunctionCallRequest,
            dm.FunctionCallResponse,
            dm.FunctionCallCancelled,
            dm.History,
            dm.LatencyReport,
            dm.PromptUpdated,
            dm.SpeakUpdated,
            dm.ThinkUpdated,
            dm.ListenUpdated,
            dm.InjectionRefused,
            dm.AgentWarning,
            dm.AgentError,
        ),
    ),
    "agent_client": (
        dm.parse_agent_client,
        (
            dm.Settings,
            dm.KeepAlive,
            dm.UpdatePrompt,
            dm.UpdateSpeak,
            dm.UpdateThink,
            dm.UpdateListen,
            dm.InjectAgentMessage,
            dm.InjectUserMessage,
            dm.FunctionCallResponse,
            dm.ForceEndTurn,
        ),
    ),
    "listen_server": (
        dm.parse_listen_server,
        (dm.Results, dm.UtteranceEnd, dm.SpeechStarted, dm.ListenMetadata, dm.ListenError),
    ),
    "listen_client": (dm.parse_listen_client, (dm.KeepAlive, dm.Finalize, dm.CloseStream)),
}


def valid_dicts(name: str) -> st.SearchStrategy[dict[str, Any]]:
    classes = PARSERS[name][1]
    return st.one_of(*(message_of(c) for c in classes)).map(lambda m: m.to_dict())


DEEPGRAM_FRAMES = {name: frames(valid_dicts(name)) for name in PARSERS}
DEEPGRAM_MESSAGES = {
    name: st.one_of(*(message_of(c) for c in classes)) for name, (_, classes) in PARSERS.items()
}


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.data())
def test_fuzz_deepgram(name: str, data: st.DataObject) -> None:
    parse, classes = PARSERS[name]
    frame = data.draw(DEEPGRAM_FRAMES[name], label="frame")
    try:
        with no_hang():
            msg = parse(frame)
    except dm.DeepgramMessageError:
        return
    assert isinstance(msg, (*classes, dm.Unknown)), msg
    if isinstance(msg, dm.Unknown):
        assert msg.type not in {c.TYPE for c in classes}


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=max(50, EXAMPLES // 4), deadline=None)
@given(data=st.data())
def test_deepgram_messages_round_trip(name: str, data: st.DataObject) -> None:
    """Every message a parser knows survives encode -> parse unchanged."""
    parse, _ = PARSERS[name]
    msg = data.draw(DEEPGRAM_MESSAGES[name], label="message")
    assert parse(dm.encode(msg)) == msg


# --- the admin YAML ------------------------------------------------------------------------


def _example_configs() -> list[dict[str, Any]]:
    from tests.test_config import VALID

    texts = [(ROOT / "infra" / "numbers.example.yaml").read_text(), NUMBERS_YAML, VALID]
    out = []
    for text in texts:
        parse_config_text(text)  # each base is valid as it stands
        out.append(yaml.safe_load(text))
    return out


EXAMPLE_CONFIGS = _example_configs()
CONFIG_KEYS = sorted(
    {k for c in EXAMPLE_CONFIGS for k in _keys(c)}
    | {"api_key", "token", "password", "client_secret", "<<", "profiles", "numbers"}
)
YAML_TOKENS = [
    "\n",
    "\n  ",
    "\t",
    ": ",
    "- ",
    "? ",
    "&a ",
    "*a",
    "&b [*a, *a]",
    "<<: *a",
    "!!binary ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!timestamp ",
    "!!str ",
    "!!null ",
    "!!python/object:os.system ",
    "!!set ",
    "{",
    "}",
    "[",
    "]",
    ",",
    '"',
    "'",
    "|",
    ">",
    "#",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "~",
    "null",
    "yes",
    "0x1F",
    "0o17",
    "1_000",
    "1:30:00",
    ".nan",
    "-.inf",
    "2001-13-45",
    "2001-02-30 25:61:00",
    "1" * 5000,
    "+15550001000",
    "profiles",
    "numbers",
    "mode",
    "flux",
    "\\u0000",
    "\x00",
    "\x85",
    "\ufeff",
    "\ud800",
]

yaml_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=10),
    st.sampled_from([s for s in WEIRD_STRINGS if "\ud800" not in s and "\udfff" not in s]),
    st.sampled_from([n for n in WEIRD_NUMBERS if not isinstance(n, int) or abs(n) < 10**300]),
)
yaml_garbage = st.recursive(
    yaml_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def mutated_config(draw: st.DrawFn) -> Any:
    obj = copy.deepcopy(draw(st.sampled_from(EXAMPLE_CONFIGS)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(obj))))
        if not path:
            continue
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = draw(st.sampled_from(["replace", "delete", "rename", "extra", "scalar"]))
        if op == "replace":
            parent[last] = draw(yaml_garbage)
        elif op == "scalar":
            parent[last] = draw(yaml_scalar)
        elif op == "delete":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(CONFIG_KEYS) | st.text(max_size=8))] = parent.pop(last)
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.sampled_from(CONFIG_KEYS))] = draw(yaml_garbage)
    return obj


def dump(value: Any, flow: bool, unicode: bool) -> str:
    return yaml.safe_dump(value, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)


@st.composite
def damaged_yaml(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    op = draw(st.sampled_from(["none", "none", "dup", "delete", "tab", "truncate", "insert"]))
    if op == "dup" and lines:  # duplicate keys
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
    elif op == "delete" and lines:
        del lines[draw(st.integers(0, len(lines) - 1))]
    elif op == "tab" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = "\t" + lines[i].lstrip(" ")
    elif op == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    elif op == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(YAML_TOKENS)) + text[at:]
    return "\n".join(lines)


def billion_laughs(width: int, depth: int, use: str) -> str:
    """`depth` levels of `width` aliases each: width**depth leaves if expanded."""
    out = ['a0: &a0 ["lol"]']
    for i in range(1, depth + 1):
        out.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(out) + "\n" + use.replace("BOMB", f"*a{depth}") + "\n"


BOMB_USES = [
    "profiles: BOMB",
    "numbers: BOMB",
    'profiles:\n  p:\n    mode: BOMB\n    responder: {type: scripted, fallback: "x"}',
    "profiles:\n  p:\n    mode: agent\n    agent:\n      think_prompt: hi\n      functions:\n"
    "        - {name: f, description: d, url: 'https://x.example', parameters: {x: BOMB}}",
    "profiles:\n  p:\n    mode: flux\n    responder: {type: scripted, fallback: x}\n"
    "    flux: {keyterms: BOMB}",
]


@st.composite
def bombs(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["laughs", "recursive", "deep", "merge"]))
    use = draw(st.sampled_from(BOMB_USES))
    if kind == "laughs":
        return billion_laughs(draw(st.integers(2, 12)), draw(st.integers(1, 12)), use)
    if kind == "recursive":
        width = draw(st.integers(1, 4))
        return "r: &r [" + ", ".join(["*r"] * width) + "]\n" + use.replace("BOMB", "*r") + "\n"
    if kind == "deep":
        n = draw(st.sampled_from([10, 60, 300, 1000, 5000]))
        nested = "[" * n + "]" * n if draw(st.booleans()) else "{a: " * n + "1" + "}" * n
        return use.replace("BOMB", nested) + "\n"
    n = draw(st.integers(1, 10))
    merges = "\n".join(
        f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}" for i in range(1, n)
    )
    return f"m0: &m0 {{k0: 0}}\n{merges}\n" + use.replace("BOMB", f"*m{n - 1}") + "\n"


def config_texts() -> st.SearchStrategy[str]:
    mutated_text = st.builds(dump, mutated_config(), st.booleans(), st.booleans())
    return st.one_of(
        mutated_text.flatmap(damaged_yaml),
        mutated_text.flatmap(damaged_yaml),
        mutated_text.flatmap(damaged_yaml),
        st.builds(dump, yaml_garbage, st.booleans(), st.booleans()).flatmap(damaged_yaml),
        st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=4), max_size=40).map("".join),
        st.text(max_size=200),
        bombs(),
    )


ERROR_LINE = re.compile(r"fuzz\.yaml:\d+: .+")  # and printable: one error, one line


def check_config(text: str) -> None:
    try:
        with no_hang():
            config = parse_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.errors, "a ConfigError must say what is wrong"
        for line in exc.errors:
            assert ERROR_LINE.fullmatch(line) and line.isprintable(), line[:200]
        return
    assert isinstance(config, Config)


@FUZZ
@given(config_texts())
def test_fuzz_yaml_loader(text: str) -> None:
    check_config(text)


def test_load_config_and_parse_config_text_agree(tmp_path: Path) -> None:
    from telephony.config import load_config

    path = tmp_path / "n.yaml"
    path.write_text("profiles:\n  p:\n    mode: flux\n    flux: {eot_threshold: 0.95}\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(path)
    with pytest.raises(ConfigError) as from_text:
        parse_config_text(path.read_text(), str(path))
    assert from_file.value.errors == from_text.value.errors
    assert f"{path}:4: profiles.p.flux.eot_threshold: must be between 0.5 and 0.9" in (
        from_file.value.errors
    )


# --- regressions: what fuzzing found (each raised something other than the documented error) --


@pytest.mark.parametrize(
    "frame",
    [
        # base64.b64decode raises ValueError, not binascii.Error, for non-ASCII text: the call
        # ended with "internal error" instead of skipping one malformed frame.
        '{"event":"media","sequenceNumber":"2","streamSid":"MZ1","media":{"track":"inbound",'
        '"chunk":"1","timestamp":"0","payload":"ÿÿÿÿ"}}',
        # int() refuses decimal strings past 4300 digits with ValueError.
        '{"event":"media","sequenceNumber":"' + "1" * 5000 + '","streamSid":"MZ1","media":'
        '{"track":"inbound","chunk":"1","timestamp":"0","payload":""}}',
        '{"event":"mark","sequenceNumber":"3","streamSid":"MZ1","mark":{"name":"' + "9" * 30 + '"},'
        '"x":"' + "1" * 4301 + '"}',
    ],
)
def test_twilio_inbound_regressions(frame: str) -> None:
    check_inbound(frame)
    check_inbound(frame.encode())


@pytest.mark.parametrize(
    "frame",
    [
        '{"event":[],"streamSid":"MZ1"}',  # TypeError: unhashable type: 'list'
        '{"event":{"a":1},"streamSid":"MZ1"}',
        '{"event":"media","streamSid":"MZ1","media":{"payload":"é"}}',  # ValueError
    ],
)
def test_twilio_outbound_regressions(frame: str) -> None:
    with pytest.raises(tm.MessageError):
        tm.parse_outbound(frame, "MZ1")


@pytest.mark.parametrize("value", ['"nan"', '"inf"', '"-Infinity"', '"1e999"'])
def test_flux_configure_non_finite_timeout_regression(value: str) -> None:
    """int(float("nan")) raised ValueError, int(float("inf")) OverflowError."""
    text = '{"type":"Configure","thresholds":{"eot_timeout_ms":%s,"eot_threshold":%s}}'
    for frame in (text % (value, "0.7"), text % ("1000", value)):
        with pytest.raises(dm.DeepgramMessageError, match="not a finite number"):
            dm.parse_flux_client(frame)


def _refused_quickly(text: str, needle: str, max_s: float = 2.0, max_mb: float | None = 64) -> None:
    """ConfigError naming `needle`, within `max_s` of CPU time and (traced) `max_mb` of peak
    memory. CPU time of this thread, not wall time: the work the parse does, whatever else runs
    on the machine (the suite's other workers); no_hang still bounds the wall time."""
    if max_mb is not None:
        tracemalloc.start()  # slows deep recursion a lot: not for the nesting tests
    t0 = time.thread_time()
    try:
        with no_hang(), pytest.raises(ConfigError) as info:
            parse_config_text(text, "fuzz.yaml")
        elapsed = time.thread_time() - t0
        peak = tracemalloc.get_traced_memory()[1] if max_mb is not None else 0
    finally:
        tracemalloc.stop()
    assert any(needle in e for e in info.value.errors), info.value.errors
    assert all(ERROR_LINE.fullmatch(e) for e in info.value.errors), info.value.errors
    assert elapsed < max_s, f"{elapsed:.2f} s"
    assert max_mb is None or peak < max_mb * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("use", BOMB_USES)
def test_yaml_alias_bomb_is_refused_fast(use: str) -> None:
    """9**9 = 387 million leaves if expanded: it took minutes (and walked each alias again)."""
    _refused_quickly(billion_laughs(9, 9, use), "aliases expand the document past")


def test_yaml_string_bomb_is_refused() -> None:
    """Few nodes, but a 20 kB string aliased 100 000 times: an error message quoting it
    (`must be 'flux', ... (got [...])`) would have been 2 GB."""
    big = "x" * 20_000
    text = (
        f"s: &s {big}\nl: &l [{', '.join(['*s'] * 1000)}]\n"
        "profiles:\n  p:\n    mode: [" + ", ".join(["*l"] * 100) + "]\n"
    )
    _refused_quickly(text, "aliases expand the document past")


@pytest.mark.parametrize(
    "text", ["r: &r [*r, *r]\n", "a: &a {b: *a, c: *a}\n", "profiles: &p {x: *p}\n"]
)
def test_yaml_recursive_alias_is_refused(text: str) -> None:
    """`&r [*r, *r]` walked 2**64 paths: a hang."""
    _refused_quickly(text, "recursive alias")


@pytest.mark.parametrize("n", [1000, 5000, 50_000])
@pytest.mark.parametrize("shape", ["[%s]", "{a: %s}", "- %s"])
def test_yaml_deep_nesting_is_refused(n: int, shape: str) -> None:
    """PyYAML composes recursively: RecursionError escaped."""
    if shape == "- %s":
        text = "- " * n + "x\n"  # block sequences, compact: `- - - x`
    else:
        text = "profiles: " + shape.split("%s")[0] * n + "1" + shape.split("%s")[1] * n + "\n"
    _refused_quickly(text, "nested too deeply", max_mb=None)


def test_flow_nesting_a_file_could_use_still_loads() -> None:
    """The depth bound counts brackets over the raw text: 150 levels of a JSON-schema default,
    and brackets in quoted text, are still read as written."""
    nested = "[" * 150 + "1" + "]" * 150
    text = (
        "profiles:\n  p:\n    mode: agent\n    greeting: 'Press [1] or {2}]]'\n"
        "    agent:\n      think_prompt: Help.\n      functions:\n        - name: f\n"
        "          description: d\n          url: https://hooks.example.com/f\n"
        f"          parameters: {{type: object, default: {nested}}}\n"
    )
    profile = parse_config_text(text, "fuzz.yaml").profiles["p"]
    assert profile.greeting == "Press [1] or {2}]]"
    value = profile.agent.functions[0].parameters["default"]
    for _ in range(150):
        [value] = value
    assert value == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_call_seconds: " + "1" * 5000 + "\n", "fuzz.yaml:1: YAML error: cannot read a value"),
        ("numbers: {x: 2001-13-45}\n", "cannot read a value (ValueError)"),
        ("a: !!int ''\n", "cannot read a value (IndexError"),
        ("a: !!float ''\n", "cannot read a value (IndexError"),
        ("a: !!bool x\n", "cannot read a value (KeyError"),
        ("a: !!timestamp x\n", "cannot read a value (AttributeError"),
        ("a: !!float .1.1\n", "cannot read a value (ValueError"),
        (
            "profiles:\n  p:\n    mode: flux\n    responder: {type: scripted, fallback: x,\n"
            '      rules: [{pattern: "a{4294967296}", reply: r}]}\n',
            "fuzz.yaml:5: profiles.p.responder.rules[0].pattern: not a valid regular expression",
        ),
        (
            "profiles:\n  p:\n    mode: flux\n    responder: {type: scripted, fallback: x,\n"
            '      rules: [{pattern: "' + "(" * 2000 + ")" * 2000 + '", reply: r}]}\n',
            "not a valid regular expression: nested too deeply",
        ),
    ],
)
def test_yaml_value_regressions(text: str, needle: str) -> None:
    """PyYAML's constructors raised ValueError (int digit limit, bad dates), IndexError,
    KeyError, AttributeError (explicit tags on bad scalars); re.compile OverflowError and
    RecursionError. All escaped load_config."""
    _refused_quickly(text, needle)


def test_legitimate_aliases_still_load() -> None:
    config = parse_config_text(
        """\
numbers: {"+15550001000": a, "+15550002000": b}
profiles:
  a:
    mode: flux
    responder: &scripted {type: scripted, rules: [{pattern: bye, reply: Bye., action: hangup}],
                          fallback: "Sorry?"}
    flux: &flux {eot_threshold: 0.8, keyterms: [Acme]}
  b:
    <<: {mode: flux, greeting: Hi.}
    responder: *scripted
    flux: *flux
"""
    )
    assert config.profiles["b"].responder == config.profiles["a"].responder
    assert config.profiles["b"].flux.eot_threshold == 0.8 and config.profiles["b"].greeting == "Hi."


# --- one malformed stream among twenty good calls, through the real app ----------------------

GOOD_CALLS = 20
TOLERATED = 40  # TELEPHONY_MAX_BAD_FRAMES here: every malformed kind below is skipped first


def _media(seq: str = "900", ts: str = "0", payload: Any = "/w==", sid: str = "MZwrong") -> str:
    media = {"track": "inbound", "chunk": "1", "timestamp": ts, "payload": payload}
    return json.dumps({"event": "media", "sequenceNumber": seq, "streamSid": sid, "media": media})


MALFORMED: list[str | bytes] = [
    "{garbage",
    "",
    "[]",
    "null",
    '"media"',
    "123",
    b"\x00\x01binary frame",
    b"",
    '{"event":"nonsense"}',
    '{"event":["media"]}',
    '{"event":"\\ud800"}',  # a lone surrogate escape
    '{"event":"media","sequenceNumber":NaN}',
    "[" * 3000 + "]" * 3000,  # past orjson's nesting limit
    '{"event":"connected","protocol":"Call","version":"1.0.0"}',  # valid, but mid-stream
    '{"event":"media"}',
    _media(payload="!!!!"),  # not base64
    _media(payload="ÿÿÿÿ"),  # non-ASCII: ended the call with "internal error" before the fix
    _media(payload="A" * 40_001),  # 40 kB of broken base64 (under the 64 KiB frame bound)
    _media(payload=12345),
    _media(seq="1" * 5000),  # a 5000-digit sequenceNumber: also "internal error" before
    _media(ts="-20"),
    _media(ts="１２"),  # fullwidth digits
    _media(),  # well-formed, but another stream's streamSid
    '{"event":"dtmf","sequenceNumber":"5","streamSid":"MZx","dtmf":{"digit":"X"}}',
    '{"event":"mark","sequenceNumber":"5","streamSid":"MZx","mark":{}}',
    '{"event":"stop","sequenceNumber":"5","streamSid":"MZx"}',
]


ISOLATION_YAML = """\
numbers:
  "+15550001000": support
profiles:
  support:
    mode: flux
    greeting: "Thanks for calling."
    responder:
      type: scripted
      rules: [{pattern: "bye", reply: "Goodbye!", action: hangup}]
      fallback: "Sorry, could you say that again?"
"""


@pytest.fixture
async def tolerant_app(
    tmp_path: Path, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> Any:
    """The real app on loopback, tolerating TOLERATED malformed frames per call."""
    numbers_yaml = tmp_path / "isolation.yaml"
    numbers_yaml.write_text(ISOLATION_YAML)
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings_ = settings_for_fakes(
        numbers_yaml,
        url,
        fake_deepgram,
        fake_rest,
        AUTH_TOKEN,
        DEEPGRAM_KEY,
        TELEPHONY_MAX_BAD_FRAMES=TOLERATED,
    )
    app = create_app(settings_)
    async with serve_app(app, sock):
        yield RunningApp(url, settings_, app, numbers_yaml)


async def test_one_malformed_stream_among_twenty_good_calls(
    tolerant_app: RunningApp, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> None:
    """Twenty callers greet, say "okay bye", hear the goodbye and are hung up on; meanwhile a
    twenty-first sends every kind of malformed frame (each skipped and counted, the call still
    taking DTMF after them), then a flood, and only that call is closed, with its reason."""
    app = tolerant_app
    # The caller speaks well after the greeting (~1.3 s of audio) has played: a barge-in here
    # would be the load delaying the greeting, not the property under test (at 2.6 s, 21 calls
    # starting at once on a loaded 4x clock once made it).
    fake_deepgram.set_script(None, Script(turns=[ScriptedTurn(4000, 4600, "okay bye")]))
    hangups = {f"CAgood{i:02d}": asyncio.Event() for i in range(GOOD_CALLS)}

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        if call_sid in hangups:  # Twilio ends the stream when the call is hung up
            hangups[call_sid].set()

    fake_rest.on_request = on_rest
    dialler = FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN)
    good = [
        dialler.dial(
            "+15550001000",
            call_sid=sid,
            audio=silence_ms(600),
            tail_ms=None,
            hangup=hangups[sid],
            max_call_ms=10_000,
        )
        for sid in hangups
    ]
    bad_timeline = [
        *(SendRaw(200 + 10 * i, frame) for i, frame in enumerate(MALFORMED)),
        SendDtmf(600, "7"),  # after every kind of malformed frame, the call still works
        *(SendRaw(900, "{flood") for _ in range(TOLERATED)),
    ]
    bad = dialler.dial(
        "+15550001000", call_sid="CAbad", audio=silence_ms(3000), timeline=bad_timeline
    )
    t0 = time.monotonic()
    bad_result, *results = await asyncio.wait_for(asyncio.gather(bad, *good), 30)
    elapsed = time.monotonic() - t0

    assert (bad_result.close_code, bad_result.close_reason) == (1008, "too many malformed frames")
    bad_summary = await finished(app, "CAbad")
    assert (bad_summary.end_reason, bad_summary.end_detail) == (
        "error",
        "too many malformed frames",
    )
    # Every malformed kind was skipped (none ended the call another way), then the flood.
    assert bad_summary.stats.bad_frames == TOLERATED + 1
    assert bad_summary.stats.dtmf and bad_summary.stats.dtmf[0][1] == "7"
    assert "CAbad" not in {r.call_sid for r in fake_rest.requests}

    for result in results:
        sid = result.call_sid
        assert result.close_code == 1000, (sid, result.close_code, result.close_reason)
        summary = await finished(app, sid)
        assert summary.end_reason == "bot-hangup", (sid, summary.end_reason)
        assert summary.stats.bad_frames == 0
        turns = [(t.role, t.text, t.heard) for t in summary.transcript.turns]
        assert turns == [
            ("bot", "Thanks for calling.", "Thanks for calling."),
            ("caller", "okay bye", None),
            ("bot", "Goodbye!", "Goodbye!"),
        ], (sid, turns)
        assert result.heard and not any(m.cleared for m in result.marks), sid
    completed = [r.call_sid for r in fake_rest.requests if r.form == {"Status": "completed"}]
    assert sorted(completed) == sorted(hangups)
    assert not fake_deepgram.violations()

    store = app.app.state.services.transcripts
    for sid in [*hangups, "CAbad"]:
        stored = None
        for _ in range(300):  # write-behind: committed within about a second
            stored = await store.get_call(sid)
            if stored and stored.get("ended_at") and (sid == "CAbad" or len(stored["turns"]) == 3):
                break
            await asyncio.sleep(0.01)
        assert stored is not None and stored.get("ended_at"), sid
        expected = (
            ("error", "too many malformed frames") if sid == "CAbad" else ("bot-hangup", "stop")
        )
        assert (stored["end_reason"], stored["end_detail"]) == expected, (sid, stored)
    assert elapsed < 20, f"{elapsed:.1f} s"


@pytest.mark.parametrize("key", ["\\r", "a\\nb", "\\x85", "\\u2028"])
def test_yaml_error_lines_stay_one_line(key: str) -> None:
    """A control character in a key printed raw: `\\r` overwrote the `file:line:` on a
    terminal, `\\n` split one error into two lines of `telephony config check` output."""
    text = f'"{key}": 1\nprofiles: {{}}\n'
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "fuzz.yaml")
    (line,) = info.value.errors
    assert line.isprintable() and line.startswith("fuzz.yaml:1: ")
    assert line.endswith(
        ": unknown field (allowed: numbers, default_profile, unknown_number_message, profiles, qa)"
    )
