"""The admin YAML: schema, line-numbered errors, routing, hot reload."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import pytest

from telephony.config import (
    AgentConfig,
    AgentFunction,
    BusinessHours,
    Config,
    ConfigError,
    ConfigStore,
    FluxConfig,
    LLMResponderConfig,
    PhraseSet,
    Profile,
    ScriptedResponderConfig,
    ScriptRuleConfig,
    TranscribeConfig,
    check,
    load_config,
)
from telephony.config.barge_in import BargeInConfig
from telephony.config.filler import FillerConfig
from telephony.config.idle import IdleConfig
from telephony.config.qa import Criterion, QAConfig, ReviewConfig, Scorecard
from telephony.config.transfer import DEFAULT_WHISPER_TEMPLATE, TransferConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "infra" / "numbers.example.yaml"
SECRET_HINT = "secrets come from the environment; name the variable with api_key_env"

VALID = """\
numbers:
  "+15550001000": support
  "+15550002000": sales
profiles:
  support:
    mode: flux
    responder:
      type: scripted
      rules:
        - pattern: "bye"
          reply: "Goodbye!"
          action: hangup
      fallback: "Sorry?"
  sales:
    mode: flux
    responder: {type: scripted, fallback: "Sales here."}
"""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path so errors carry the short relative path the caller gave."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str, name: str = "numbers.yaml") -> str:
    Path(name).write_text(textwrap.dedent(text))
    return name


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(text))
    return info.value.errors


# --- the example file -----------------------------------------------------------------------


def test_example_file_passes_check() -> None:
    ok, text = check(EXAMPLE)
    assert ok, text
    assert f"{EXAMPLE}: OK: 4 numbers, 5 profiles" in text
    assert "+15550001000 -> front-desk (flux)" in text
    assert "+15550003000 -> concierge (agent)" in text
    assert "+15550004000 -> support-desk (transcribe)" in text
    assert "support-desk: forwarded to +15550009002, both sides transcribed (nova-3)" in text
    assert "front-desk: transfers to +15550009000 stay transcribed" in text
    assert "sales: answers in en, es (Flux hints: en, es)" in text
    assert "front-desk: warm transfers to +15550009000: a whisper from the template" in text
    assert (
        "sales: warm transfers to +15550009001: a whisper from the LLM, else the template" in text
    )
    assert "default profile: front-desk" in text


def test_example_file_covers_the_required_setups() -> None:
    config = load_config(EXAMPLE)
    front = config.profiles["front-desk"]
    assert isinstance(front.responder, ScriptedResponderConfig)
    actions = {r.action for r in front.responder.rules}
    assert actions == {"none", "transfer", "hangup"}
    llm = config.profiles["sales"].responder
    assert isinstance(llm, LLMResponderConfig)
    assert (llm.api_key_env, llm.base_url) == ("OPENAI_API_KEY", "https://api.openai.com/v1")
    agent = config.profiles["concierge"].agent
    assert agent is not None and "check_order" in [f.name for f in agent.functions]
    assert config.profiles["sales"].business_hours is not None
    assert config.default_profile == "front-desk"


def test_example_file_documents_every_field() -> None:
    text = EXAMPLE.read_text()
    models = [Config, Profile, LLMResponderConfig, ScriptedResponderConfig, ScriptRuleConfig]
    models += [FluxConfig, AgentConfig, AgentFunction, TranscribeConfig, BusinessHours]
    models += [BargeInConfig, IdleConfig, FillerConfig, PhraseSet, TransferConfig]
    models += [QAConfig, Scorecard, Criterion, ReviewConfig]
    missing = [f"{m.__name__}.{f}" for m in models for f in m.model_fields if f not in text]
    assert missing == []


# --- errors: file, line, path, message ------------------------------------------------------

CASES = {
    "range": (
        """\
        numbers: {}
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            flux:
              eot_threshold: 0.95
        """,
        "numbers.yaml:7: profiles.sales.flux.eot_threshold: must be between 0.5 and 0.9",
    ),
    "integer range": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            flux: {eot_timeout_ms: 200}
        """,
        "numbers.yaml:5: profiles.sales.flux.eot_timeout_ms: must be between 500 and 10000",
    ),
    "lower bound": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            retention_days: 0
        """,
        "numbers.yaml:5: profiles.sales.retention_days: must be at least 1",
    ),
    "token limit param": (
        """\
        profiles:
          sales:
            mode: flux
            responder:
              type: llm
              base_url: https://api.openai.com/v1
              model: o4-mini
              api_key_env: OPENAI_API_KEY
              system_prompt: Hi.
              token_limit_param: max_output_tokens
        """,
        "numbers.yaml:10: profiles.sales.responder.token_limit_param: must be"
        " 'max_completion_tokens' or 'max_tokens'",
    ),
    "unknown field": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            flux:
              keyterm: [Acme]
        """,
        "numbers.yaml:6: profiles.sales.flux.keyterm: unknown field (allowed: model, encoding,"
        " eot_threshold, eager_eot_threshold, eot_timeout_ms, keyterms, language_hints,"
        " follow_language)",
    ),
    "missing field": (
        """\
        profiles:
          sales:
            mode: flux
            responder:
              type: scripted
              rules: []
        """,
        "numbers.yaml:4: profiles.sales.responder.fallback: required",
    ),
    "unknown profile": (
        """\
        numbers:
          "+15550001000": sales
          "+15550002000": salse
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
        """,
        "numbers.yaml:3: numbers.+15550002000: unknown profile (defined: sales)",
    ),
    "unknown default profile": (
        """\
        default_profile: nobody
        profiles:
          sales: {mode: flux, responder: {type: scripted, fallback: x}}
        """,
        "numbers.yaml:1: default_profile: unknown profile (defined: sales)",
    ),
    "eager above eot": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            flux:
              eot_threshold: 0.6
              eager_eot_threshold: 0.8
        """,
        "numbers.yaml:7: profiles.sales.flux.eager_eot_threshold: must be <= eot_threshold (0.6)",
    ),
    "bad E.164": (
        """\
        numbers:
          "+1555": sales
        profiles:
          sales: {mode: flux, responder: {type: scripted, fallback: x}}
        """,
        'numbers.yaml:2: numbers.+1555: must be an E.164 number like "+15550001000"',
    ),
    "unquoted number": (
        """\
        numbers:
          +15550001000: sales
        profiles:
          sales: {mode: flux, responder: {type: scripted, fallback: x}}
        """,
        'numbers.yaml:2: numbers.15550001000: quote phone numbers, like "+15550001000"',
    ),
    "bad regex in a list item": (
        """\
        profiles:
          sales:
            mode: flux
            responder:
              type: scripted
              rules:
                - pattern: ok
                  reply: fine
                - pattern: "(oops"
                  reply: nope
              fallback: x
        """,
        "numbers.yaml:9: profiles.sales.responder.rules[1].pattern: not a valid regular"
        " expression: missing ), unterminated subpattern at position 0",
    ),
    "unquoted yes/no": (
        """\
        profiles:
          sales:
            mode: flux
            greeting: no
            responder: {type: scripted, fallback: x}
        """,
        "numbers.yaml:4: profiles.sales.greeting: must be text: quote it (YAML reads unquoted"
        " yes/no/on/off as true/false)",
    ),
    "bad responder type": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: gpt, fallback: x}
        """,
        "numbers.yaml:4: profiles.sales.responder: type must be 'llm', 'scripted'",
    ),
    "llm field inside the union": (
        """\
        profiles:
          sales:
            mode: flux
            responder:
              type: llm
              base_url: https://api.openai.com/v1
              model: gpt-4o-mini
              api_key_env: openai_key
              system_prompt: Be brief.
        """,
        "numbers.yaml:8: profiles.sales.responder.api_key_env: must be the NAME of an"
        " environment variable, like OPENAI_API_KEY",
    ),
    "flux mode needs a responder": (
        """\
        profiles:
          sales:
            mode: flux
        """,
        "numbers.yaml:2: profiles.sales.responder: required when mode is flux",
    ),
    "agent mode needs agent": (
        """\
        profiles:
          helper:
            mode: agent
        """,
        "numbers.yaml:2: profiles.helper.agent: required when mode is agent",
    ),
    "bad mode": (
        """\
        profiles:
          sales:
            mode: fluxx
        """,
        "numbers.yaml:3: profiles.sales.mode: must be 'flux', 'agent' or 'transcribe'",
    ),
    "voice must be aura": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            voice: polly-joanna
        """,
        'numbers.yaml:5: profiles.sales.voice: must be an Aura voice like "aura-2-thalia-en"',
    ),
    "transfer needs a number": (
        """\
        profiles:
          sales:
            mode: flux
            on_failure: transfer
            responder: {type: scripted, fallback: x}
        """,
        "numbers.yaml:2: profiles.sales.transfer_number: required because on_failure is transfer"
        " (transfer.number or transfer_number)",
    ),
    "bad time zone": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            business_hours:
              timezone: Mars/Olympus_Mons
              days: {mon: "09:00-17:00"}
              after_hours_profile: sales
        """,
        "numbers.yaml:6: profiles.sales.business_hours.timezone: unknown time zone (use an"
        " IANA name like Europe/London)",
    ),
    "bad hours": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            business_hours:
              timezone: Europe/London
              days:
                mon: "9am-5pm"
              after_hours_profile: sales
        """,
        'numbers.yaml:8: profiles.sales.business_hours.days.mon: must be "HH:MM-HH:MM" or "closed"',
    ),
    "bad day": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            business_hours:
              timezone: Europe/London
              days:
                monday: "09:00-17:00"
              after_hours_profile: sales
        """,
        "numbers.yaml:8: profiles.sales.business_hours.days.monday: must be 'mon', 'tue',"
        " 'wed', 'thu', 'fri', 'sat' or 'sun'",
    ),
    "unknown after-hours profile": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            business_hours:
              timezone: Europe/London
              days: {mon: closed}
              after_hours_profile: night
        """,
        "numbers.yaml:8: profiles.sales.business_hours.after_hours_profile: unknown profile"
        " (defined: sales)",
    ),
    "webhook url": (
        """\
        profiles:
          helper:
            mode: agent
            agent:
              think_prompt: Help.
              functions:
                - name: end_call
                  description: End the call.
                  url: ftp://hooks.example.com/end
        """,
        "numbers.yaml:9: profiles.helper.agent.functions[0].url: must be an http:// or"
        " https:// URL",
    ),
    "duplicate key": (
        """\
        numbers:
          "+15550001000": sales
          "+15550001000": sales
        profiles:
          sales: {mode: flux, responder: {type: scripted, fallback: x}}
        """,
        "numbers.yaml:3: numbers.+15550001000: duplicate key (first on line 2)",
    ),
    "no profiles": ("numbers: {}\n", "numbers.yaml:1: profiles: required"),
    "top level not a mapping": (
        "- just\n- a list\n",
        "numbers.yaml:1: the top level must be a mapping with numbers and profiles",
    ),
}


@pytest.mark.parametrize(("text", "expected"), CASES.values(), ids=CASES.keys())
def test_each_error_names_file_line_path_and_message(
    in_tmp: Path, text: str, expected: str
) -> None:
    assert errors(text) == [expected]


def test_all_errors_are_reported_in_file_order(in_tmp: Path) -> None:
    found = errors(
        """\
        numbers:
          "+15550001000": ghost
        profiles:
          sales:
            mode: flux
            responder:
              type: llm
              base_url: https://api.openai.com/v1
              model: gpt-4o-mini
              api_key_env: OPENAI_API_KEY
              system_prompt: Hi.
              temperature: 3
            flux:
              eot_threshold: 1.5
            recordings: true
        """
    )
    assert found == [
        "numbers.yaml:2: numbers.+15550001000: unknown profile (defined: sales)",
        "numbers.yaml:12: profiles.sales.responder.temperature: must be between 0 and 2",
        "numbers.yaml:14: profiles.sales.flux.eot_threshold: must be between 0.5 and 0.9",
        "numbers.yaml:15: profiles.sales.recordings: unknown field (allowed: mode, greeting,"
        " greeting_interruptible, barge_in, responder, voice, flux, agent, transcribe, on_failure,"
        " transfer, transfer_number, transcribe_after_transfer, recording, retention_days,"
        " redaction, max_call_seconds, business_hours, insights, idle, filler, review, voices,"
        " phrases)",
    ]


def test_errors_use_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "numbers.yaml"
    path.parent.mkdir()
    path.write_text("profiles:\n  a: {mode: flux}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}:2: profiles.a.responder: required when mode is flux"]


def test_yaml_syntax_error(in_tmp: Path) -> None:
    assert errors("numbers:\n  - [broken\nprofiles: {}\n") == [
        "numbers.yaml:3: YAML syntax error: while parsing a flow sequence: expected ',' or"
        " ']', but got ':'"
    ]
    assert errors("profiles:\n  a:\n\tmode: flux\n") == [
        "numbers.yaml:3: YAML syntax error: while scanning for the next token: found"
        " character '\\t' that cannot start any token"
    ]


def test_unreadable_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config("missing.yaml")


def test_check_lists_every_error_one_per_line(in_tmp: Path) -> None:
    ok, text = check(write("profiles:\n  a: {mode: flux}\n  b: {mode: agent}\n"))
    assert not ok
    assert text.splitlines() == [
        "numbers.yaml:2: profiles.a.responder: required when mode is flux",
        "numbers.yaml:3: profiles.b.agent: required when mode is agent",
    ]


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_are_rejected_anywhere(in_tmp: Path) -> None:
    found = errors(
        """\
        token: abc
        profiles:
          sales:
            mode: flux
            responder:
              type: llm
              base_url: https://api.openai.com/v1
              model: gpt-4o-mini
              api_key: sk-live-123
              system_prompt: Hi.
            business_hours:
              timezone: UTC
              days: {mon: closed}
              after_hours_profile: sales
              db_password: hunter2
        """
    )
    assert found == [
        f"numbers.yaml:1: token: {SECRET_HINT}",
        # api_key_env is then missing as well: the fix is to name the variable.
        "numbers.yaml:5: profiles.sales.responder.api_key_env: required",
        f"numbers.yaml:9: profiles.sales.responder.api_key: {SECRET_HINT}",
        f"numbers.yaml:15: profiles.sales.business_hours.db_password: {SECRET_HINT}",
    ]


def test_secret_like_names_that_are_not_secrets_pass(in_tmp: Path) -> None:
    config = load_config(
        write(
            """\
            profiles:
              token:
                mode: agent
                agent:
                  think_prompt: Help.
                  functions:
                    - name: verify
                      description: Check a caller's one-time code.
                      parameters:
                        type: object
                        properties:
                          token: {type: string}
                      url: https://hooks.example.com/verify
              llm:
                mode: flux
                responder:
                  type: llm
                  base_url: https://api.openai.com/v1
                  model: gpt-4o-mini
                  api_key_env: OPENAI_API_KEY
                  system_prompt: Hi.
                  max_tokens: 100
                  token_limit_param: max_tokens
            """
        )
    )
    assert set(config.profiles) == {"token", "llm"}


# --- routing ----------------------------------------------------------------------------------

HOURS = """\
numbers:
  "+15550001000": sales
default_profile: {default}
unknown_number_message: "Wrong number, goodbye."
profiles:
  sales:
    mode: flux
    responder: {{type: scripted, fallback: x}}
    business_hours:
      timezone: America/New_York
      days:
        mon: "09:00-17:00"
        sat: closed
      after_hours_profile: night
  night:
    mode: flux
    responder: {{type: scripted, fallback: "We are closed."}}
"""


def hours_config(default: str = "null") -> Config:
    return load_config(write(HOURS.format(default=default)))


@pytest.mark.parametrize(
    ("now", "profile", "after_hours"),
    [
        (datetime(2025, 1, 6, 14, 0, tzinfo=UTC), "sales", False),  # Mon 09:00 in New York
        (datetime(2025, 1, 6, 13, 59, tzinfo=UTC), "night", True),  # Mon 08:59 in New York
        (datetime(2025, 1, 6, 21, 59, tzinfo=UTC), "sales", False),  # Mon 16:59
        (datetime(2025, 1, 6, 22, 0, tzinfo=UTC), "night", True),  # Mon 17:00: closed
        (datetime(2025, 7, 7, 13, 30, tzinfo=UTC), "sales", False),  # Mon 09:30 EDT (summer)
        (datetime(2025, 1, 11, 15, 0, tzinfo=UTC), "night", True),  # Sat: closed
        (datetime(2025, 1, 7, 15, 0, tzinfo=UTC), "night", True),  # Tue: not listed, closed
        (datetime(2025, 1, 6, 14, 0), "sales", False),  # naive: taken as UTC
    ],
)
def test_business_hours_route_after_hours(
    in_tmp: Path, now: datetime, profile: str, after_hours: bool
) -> None:
    config = hours_config()
    route = config.route("+15550001000", now=now)
    assert (route.profile_name, route.after_hours) == (profile, after_hours)
    assert route.profile is config.profiles[profile]


def test_unknown_number_is_refused_without_default(in_tmp: Path) -> None:
    route = hours_config().route("+15559999999")
    assert route.refused
    assert (route.profile_name, route.profile) == (None, None)
    assert route.message == "Wrong number, goodbye."


def test_unknown_number_uses_default_profile(in_tmp: Path) -> None:
    config = hours_config(default="night")
    route = config.route("+15559999999")
    assert not route.refused
    assert route.profile_name == "night"
    assert route.profile is config.profiles["night"]


def test_default_unknown_number_message(in_tmp: Path) -> None:
    config = load_config(write(VALID))
    assert config.route("+15559999999").message == (
        "Sorry, this number is not in service. Goodbye."
    )
    assert config.route("+15550002000").profile_name == "sales"


def test_config_is_frozen_and_checks_references_when_built_directly(in_tmp: Path) -> None:
    config = load_config(write(VALID))
    with pytest.raises(pydantic.ValidationError):
        config.default_profile = "sales"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="unknown profile"):
        Config.model_validate(
            {"numbers": {"+15550001000": "ghost"}, "profiles": {}},
        )


# --- hot reload -------------------------------------------------------------------------------


def test_first_load_failure_raises(in_tmp: Path) -> None:
    with pytest.raises(ConfigError):
        ConfigStore(write("profiles: [\n"))


def test_reload_swaps_config_and_keeps_live_references(in_tmp: Path) -> None:
    store = ConfigStore(write(VALID))
    old = store.current
    assert store.version == 1
    write(VALID.replace('"+15550001000": support', '"+15550001000": sales'))
    assert store.reload() is True
    assert (store.version, store.last_error) == (2, None)
    assert store.current.numbers["+15550001000"] == "sales"
    assert old.numbers["+15550001000"] == "support"  # a live call's Config is untouched


def test_broken_reload_keeps_previous_config(
    in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ConfigStore(write(VALID))
    old = store.current
    write(VALID.replace("mode: flux", "mode: fluxx", 1))
    with caplog.at_level(logging.WARNING, logger="telephony.config"):
        assert store.reload() is False
    assert store.current is old and store.version == 1
    expected = "numbers.yaml:6: profiles.support.mode: must be 'flux', 'agent' or 'transcribe'"
    assert store.last_error is not None and store.last_error.startswith(expected)
    assert expected in caplog.text
    write(VALID)
    assert store.reload() is True
    assert (store.version, store.last_error) == (2, None)


async def test_watch_picks_up_changes(in_tmp: Path) -> None:
    store = ConfigStore(write(VALID), poll_interval_s=0.01)
    old = store.current
    watcher = asyncio.create_task(store.watch())
    try:
        write(VALID.replace('"+15550001000": support', '"+15550001000": sales'))
        await wait_for(lambda: store.version == 2)
        assert store.current.numbers["+15550001000"] == "sales"
        assert old.numbers["+15550001000"] == "support"

        write("numbers: [broken\n")
        await wait_for(lambda: store.last_error is not None)
        assert store.version == 2 and store.current.numbers["+15550001000"] == "sales"

        write(VALID)
        await wait_for(lambda: store.version == 3)
        assert store.last_error is None
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polling is what the watcher is tested against
            await asyncio.sleep(0.005)


def test_builtin_agent_functions_cannot_be_redefined(tmp_path: Path) -> None:
    path = tmp_path / "n.yaml"
    path.write_text(
        "profiles:\n"
        "  a:\n"
        "    mode: agent\n"
        "    agent:\n"
        "      think_prompt: hi\n"
        "      functions:\n"
        "        - {name: end_call, description: x, url: 'https://h.example.com/x'}\n"
    )
    ok, text = check(path)
    assert not ok
    assert f"{path}:6: profiles.a.agent.functions: end_call are built in" in text


def test_agent_function_defer_until_eot_option(in_tmp: Path) -> None:
    text = """\
        profiles:
          a:
            mode: agent
            agent:
              think_prompt: hi
              functions:
                - {name: book, description: x, url: 'https://h.x/b', defer_until_eot: true}
                - {name: look, description: x, url: 'https://h.x/l'}
        """
    functions = load_config(write(text)).profiles["a"].agent.functions  # type: ignore[union-attr]
    assert [f.defer_until_eot for f in functions] == [True, False]  # default: false
    assert errors(text.replace("defer_until_eot: true", "defer_until_eot: soon")) == [
        "numbers.yaml:7: profiles.a.agent.functions[0].defer_until_eot: must be a valid boolean,"
        " unable to interpret input"
    ]


# --- transcribe mode (Nova) -------------------------------------------------------------------

TRANSCRIBE_CASES = {
    "transcribe mode needs a target": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe: {listen_model: nova-3}
        """,
        "numbers.yaml:4: profiles.desk.transcribe: needs dial (a number) or queue: who takes"
        " the call",
    ),
    "transcribe mode needs the section": (
        """\
        profiles:
          desk:
            mode: transcribe
        """,
        "numbers.yaml:2: profiles.desk.transcribe: required when mode is transcribe",
    ),
    "dial or queue, not both": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe: {dial: "+15550009000", queue: support}
        """,
        "numbers.yaml:4: profiles.desk.transcribe: give dial or queue, not both",
    ),
    "dial is for transcribe mode": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transcribe: {dial: "+15550009000"}
        """,
        "numbers.yaml:5: profiles.sales.transcribe: dial and queue are for transcribe mode; a"
        " flux or agent profile hands over to transfer_number",
    ),
    "not a nova model": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe:
              dial: "+15550009000"
              listen_model: flux-general-en
        """,
        "numbers.yaml:6: profiles.desk.transcribe.listen_model: must be a Nova model like"
        ' "nova-3" or "nova-2"',
    ),
    "endpointing range": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe: {dial: "+15550009000", endpointing: 5}
        """,
        "numbers.yaml:4: profiles.desk.transcribe.endpointing: must be between 10 and 10000",
    ),
    "utterance end needs interim results": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe:
              dial: "+15550009000"
              interim_results: false
              utterance_end_ms: 1500
        """,
        "numbers.yaml:7: profiles.desk.transcribe.utterance_end_ms: needs interim_results:"
        " true (or set utterance_end_ms: null)",
    ),
    "keywords are nova-2": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe:
              dial: "+15550009000"
              keywords: [Acme]
        """,
        "numbers.yaml:6: profiles.desk.transcribe.keywords: keywords are for nova-2; nova-3"
        " uses keyterms",
    ),
    "keyterms are nova-3": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe:
              dial: "+15550009000"
              listen_model: nova-2
              keyterms: [Acme]
        """,
        "numbers.yaml:7: profiles.desk.transcribe.keyterms: keyterms need a nova-3 model (use"
        " keywords)",
    ),
    "redact kinds": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe: {dial: "+15550009000", redact: [cards]}
        """,
        "numbers.yaml:4: profiles.desk.transcribe.redact[0]: must be 'pci', 'pii', 'phi',"
        " 'numbers' or 'ssn'",
    ),
    "after transfer needs a transfer number": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transcribe_after_transfer: true
        """,
        "numbers.yaml:5: profiles.sales.transcribe_after_transfer: needs transfer_number",
    ),
    "after transfer is for bot profiles": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe: {queue: support}
            transcribe_after_transfer: true
        """,
        "numbers.yaml:5: profiles.desk.transcribe_after_transfer: only for flux and agent"
        " profiles (transcribe mode always is)",
    ),
}


@pytest.mark.parametrize(("text", "expected"), TRANSCRIBE_CASES.values(), ids=TRANSCRIBE_CASES)
def test_transcribe_errors(in_tmp: Path, text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_transcribe_defaults_and_options(in_tmp: Path) -> None:
    config = load_config(
        write(
            """\
            profiles:
              desk:
                mode: transcribe
                transcribe: {queue: support, endpointing: false, utterance_end_ms: null}
              bot:
                mode: agent
                agent: {think_prompt: hi}
                transfer_number: "+15550009000"
                transcribe_after_transfer: true
            """
        )
    )
    desk = config.profiles["desk"].transcribe
    assert desk is not None
    assert (desk.dial, desk.queue, desk.endpointing, desk.utterance_end_ms) == (
        None,
        "support",
        False,
        None,
    )
    assert (desk.listen_model, desk.language, desk.interim_results) == ("nova-3", "en", True)
    assert (desk.smart_format, desk.punctuate, desk.vad_events, desk.diarize) == (
        True,
        True,
        True,
        False,
    )
    bot = config.profiles["bot"]
    assert bot.transcribe_after_transfer and bot.transcribe is None  # Nova defaults
    assert not config.profiles["desk"].transcribe_after_transfer


# --- transfer: the long form, and the whisper -----------------------------------------------

TRANSFER_CASES = {
    "both forms disagree": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transfer: {number: "+15557770000", whisper: true}
            transfer_number: "+15557770001"
        """,
        "numbers.yaml:6: profiles.sales.transfer_number: disagrees with transfer.number: give"
        " the number once (transfer.number)",
    ),
    "no number in the long form": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transfer: {whisper: true}
        """,
        "numbers.yaml:5: profiles.sales.transfer.number: required",
    ),
    "llm whisper without an llm": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transfer: {number: "+15557770000", whisper: true, whisper_source: llm}
        """,
        "numbers.yaml:5: profiles.sales.transfer: whisper_source llm needs a flux profile with"
        " an llm responder (use template)",
    ),
    "unknown placeholder": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transfer:
              number: "+15557770000"
              whisper: true
              whisper_template: "Caller {name} wants {request}"
        """,
        "numbers.yaml:8: profiles.sales.transfer.whisper_template: unknown placeholder {name};"
        " use {request}, {told}, {reason}",
    ),
    "template too long": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transfer:
              number: "+15557770000"
              whisper_template: "one two three four five six seven eight nine ten eleven twelve
                thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty twenty-one
                twenty-two twenty-three twenty-four twenty-five twenty-six {request}"
        """,
        "numbers.yaml:7: profiles.sales.transfer.whisper_template: too long: at most 25 words"
        " are spoken before the person is connected",
    ),
    "voice": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transfer: {number: "+15557770000", whisper: true, whisper_voice: aura-2-thalia-en}
        """,
        "numbers.yaml:5: profiles.sales.transfer.whisper_voice: a Twilio <Say> voice: man, woman,"
        " alice, Polly.<Name>, Google.<name>",
    ),
    "budget": (
        """\
        profiles:
          sales:
            mode: flux
            responder: {type: scripted, fallback: x}
            transfer: {number: "+15557770000", whisper_llm_ms: 5000}
        """,
        "numbers.yaml:5: profiles.sales.transfer.whisper_llm_ms: must be between 100 and 3000",
    ),
    "transcribe mode": (
        """\
        profiles:
          desk:
            mode: transcribe
            transcribe: {queue: support}
            transfer: {number: "+15557770000", whisper: true}
        """,
        "numbers.yaml:5: profiles.desk.transfer: only for flux and agent profiles (transcribe"
        " mode dials itself)",
    ),
}


@pytest.mark.parametrize(("text", "expected"), TRANSFER_CASES.values(), ids=TRANSFER_CASES)
def test_transfer_errors(in_tmp: Path, text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_transfer_long_form_is_the_transfer_number(in_tmp: Path) -> None:
    config = load_config(
        write(
            """\
            profiles:
              warm:
                mode: flux
                on_failure: transfer
                responder: {type: scripted, fallback: x}
                transfer: {number: "+15557770000", whisper: true}
                transcribe_after_transfer: true
              same:
                mode: agent
                agent: {think_prompt: hi, session_cap_action: transfer}
                transfer: {number: "+15557770000"}
                transfer_number: "+15557770000"
              short:
                mode: flux
                responder: {type: scripted, fallback: x}
                transfer_number: "+15557770000"
            """
        )
    )
    warm, same, short = (config.profiles[n] for n in ("warm", "same", "short"))
    assert warm.transfer_number == same.transfer_number == short.transfer_number == "+15557770000"
    assert warm.whisper is not None and warm.whisper.whisper_template == DEFAULT_WHISPER_TEMPLATE
    assert (warm.whisper.whisper_source, warm.whisper.whisper_llm_ms) == ("template", 800)
    assert warm.whisper.whisper_voice is None  # Twilio's default voice
    assert same.whisper is None and short.whisper is None and short.transfer is None
