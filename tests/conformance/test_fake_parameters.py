"""The fakes' URL parameters are the ones the SDK's connect() offers (issue 19 item 7).

Each is accepted with a valid value and refused with a mistyped one; on the socket a refusal
is an HTTP 400 naming the parameter.
"""

from __future__ import annotations

import contextlib
import typing
from typing import Literal, get_args, get_origin

import pytest
from websockets.exceptions import InvalidStatus

from telephony.deepgram.connection import open_socket
from telephony.sim.deepgram import params as qp
from telephony.sim.deepgram_server import FakeDeepgram
from tests.conformance.capture import KEY
from tests.conformance.sdk_oracle import CONNECT, NoneType, sdk_query_names

# Valid values for SDK parameters typed `Any` (the SDK's docstrings say what they take), and
# the kind the fake must check each as; parameters typed Literal/float are derived.
ANY_SAMPLES: dict[str, tuple[str, str]] = {
    "callback": ("https://example.com/callback", "str"),
    "channels": ("1", "int"),
    "endpointing": ("300", "ms_or_bool"),
    "extra": ("team:support", "str"),
    "keyterm": ("Acme", "str"),
    "keywords": ("Acme:2", "str"),
    "language": ("en", "str"),
    "language_hint": ("en", "str"),
    "mip_opt_out": ("true", "bool"),
    "replace": ("colour:color", "str"),
    "sample_rate": ("16000", "int"),
    "search": ("refund", "str"),
    "tag": ("desk", "str"),
    "utterance_end_ms": ("1000", "int"),
    "version": ("latest", "str"),
    "eot_threshold": ("0.8", "float"),
    "eager_eot_threshold": ("0.5", "float"),
    "eot_timeout_ms": ("3000", "int"),
}
WRONG = {
    "bool": "maybe",
    "int": "1.5",
    "float": "fast",
    "enum": "no-such-value",
    "ms_or_bool": "soon",
}
BASE_QUERY: dict[str, dict[str, list[str]]] = {
    "flux": {"model": ["flux-general-en"], "encoding": ["mulaw"], "sample_rate": ["8000"]},
    "speak": {"model": ["aura-2-thalia-en"], "encoding": ["mulaw"], "sample_rate": ["8000"]},
    "listen": {
        "model": ["nova-3"],
        "encoding": ["mulaw"],
        "sample_rate": ["8000"],
        "interim_results": ["true"],
    },
}
# Parameters that only make sense with another: the base query is adjusted for them.
CONTEXT: dict[tuple[str, str], dict[str, list[str]]] = {
    ("flux", "language_hint"): {"model": ["flux-general-multi"]},
    ("speak", "sample_rate"): {"encoding": ["linear16"]},  # 24000 etc. are not μ-law rates
    ("listen", "keywords"): {"model": ["nova-2"]},  # keywords is not a Nova-3 feature
}
PARSE_QUERY = {"flux": qp.flux_params, "speak": qp.speak_params, "listen": qp.listen_params}


def sdk_parameters(endpoint: str) -> dict[str, tuple[str, list[str]]]:
    """Each connect() parameter: (kind, valid values), from the SDK's annotations."""
    hints = typing.get_type_hints(CONNECT[endpoint])
    out: dict[str, tuple[str, list[str]]] = {}
    for name in sdk_query_names(endpoint):
        args = [a for a in get_args(hints[name]) if a is not NoneType] or [hints[name]]
        literals = [str(v) for a in args if get_origin(a) is Literal for v in get_args(a)]
        if literals:
            out[name] = ("bool" if set(literals) == {"true", "false"} else "enum", literals)
        elif float in args:
            out[name] = ("float", ["1.25"])
        else:
            assert name in ANY_SAMPLES, f"{endpoint} {name}: add a sample value and its kind"
            sample, kind = ANY_SAMPLES[name]
            out[name] = (kind, [sample])
    return out


@pytest.mark.parametrize("endpoint", ["flux", "speak", "listen"])
def test_fake_accepts_every_parameter_the_sdk_connect_offers(endpoint: str) -> None:
    refused = []
    for name, (_, values) in sdk_parameters(endpoint).items():
        for value in values:
            query = {**BASE_QUERY[endpoint], **CONTEXT.get((endpoint, name), {}), name: [value]}
            try:
                PARSE_QUERY[endpoint](query)
            except qp.ParamError as exc:
                refused.append(f"{name}={value}: {exc}")
    assert refused == []


@pytest.mark.parametrize("endpoint", ["flux", "speak", "listen"])
def test_fake_checks_the_type_of_every_parameter(endpoint: str) -> None:
    accepted = []
    for name, (kind, _) in sdk_parameters(endpoint).items():
        if kind == "str" or name == "model":  # model names: each endpoint's own rules
            continue
        query = {**BASE_QUERY[endpoint], **CONTEXT.get((endpoint, name), {}), name: [WRONG[kind]]}
        with contextlib.suppress(qp.ParamError):
            PARSE_QUERY[endpoint](query)
            accepted.append(f"{name}={WRONG[kind]} ({kind})")
    assert accepted == []


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/v2/listen?model=flux-general-en&profanity_filter=true&redact=numbers", True),
        ("/v2/listen?model=flux-general-en&profanity_filter=maybe", False),
        ("/v1/listen?model=nova-3&detect_entities=true&diarize_model=v1&language_hint=en", True),
        ("/v1/listen?model=nova-3&diarize_model=v2", False),
        ("/v1/speak?model=aura-2-thalia-en&speed=1.2", True),
        ("/v1/speak?model=aura-2-thalia-en&speed=fast", False),
    ],
)
async def test_parameters_on_the_upgrade(path: str, ok: bool) -> None:
    """On the socket: accepted, or refused with HTTP 400 and the parameter named."""
    async with FakeDeepgram(api_key=KEY) as fake:
        if ok:
            ws = await open_socket(fake.url + path, KEY)
            await ws.close()
            assert fake.rejections == []
            return
        with pytest.raises(InvalidStatus) as info:
            await open_socket(fake.url + path, KEY)
    assert info.value.response.status_code == 400
    assert path.rsplit("&", 1)[-1].split("=")[0] in fake.rejections[0].reason
