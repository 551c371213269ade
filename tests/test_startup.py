"""Start-up hardening: no public Twilio auth token, one log line per defaulted setting, no
credentials in URLs, config errors that never echo a value (nor reach /healthz)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pydantic
import pytest

from routes.app import create_app
from telephony.config import ConfigError, load_config
from telephony.inprocess import bind_loopback, serve_app
from telephony.settings import DEV_FLAG, Settings
from telephony.startup import InsecureSettings
from tests.conftest import NUMBERS_YAML, RunningApp

REPO = Path(__file__).resolve().parent.parent
SECRET = "sk-live-0SECRET0abcdef123456"


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPHONY_", "TWILIO_"))}
    env.pop("DEEPGRAM_API_KEY", None)
    config = tmp_path / "numbers.yaml"
    config.write_text(NUMBERS_YAML)
    env.update(
        PYTHONPATH=str(REPO),
        TELEPHONY_CONFIG=str(config),
        TELEPHONY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/s.db",
        **extra,
    )
    return env


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Port 9 (discard): never reached, the process must refuse before it binds. On a build
    # without the check it would serve until the timeout, which fails the test.
    return subprocess.run(
        [sys.executable, "-m", "telephony.cli", "serve", "--port", "9"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("token", [None, "dev-auth-token", "change-me"])
def test_serve_refuses_a_missing_or_public_auth_token(tmp_path: Path, token: str | None) -> None:
    env = _clean_env(tmp_path, **({"TWILIO_AUTH_TOKEN": token} if token else {}))
    try:
        out = _serve(env)
    except subprocess.TimeoutExpired:
        pytest.fail("telephony serve started without a real TWILIO_AUTH_TOKEN")
    assert out.returncode == 2, out.stderr
    assert "TWILIO_AUTH_TOKEN" in out.stderr and f"{DEV_FLAG}=1" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_refuses_credentials_in_a_url_without_echoing_them(tmp_path: Path) -> None:
    env = _clean_env(
        tmp_path,
        TWILIO_AUTH_TOKEN="a-real-token-from-twilio",
        DEEPGRAM_URL=f"wss://user:{SECRET}@api.deepgram.com",
    )
    out = _serve(env)
    assert out.returncode == 2
    assert "DEEPGRAM_URL" in out.stderr and "credentials in the URL" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_create_app_refuses_the_public_token_unless_development(
    numbers_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        DEV_FLAG,
        "TWILIO_AUTH_TOKEN",
        "TELEPHONY_STREAM_TOKEN_SECRET",
        "TELEPHONY_SESSION_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InsecureSettings, match="TWILIO_AUTH_TOKEN"):
        create_app(Settings(TELEPHONY_CONFIG=numbers_yaml))
    with pytest.raises(InsecureSettings, match="TELEPHONY_STREAM_TOKEN_SECRET"):
        create_app(
            Settings(
                TELEPHONY_CONFIG=numbers_yaml,
                TWILIO_AUTH_TOKEN="a-real-token",
                TELEPHONY_STREAM_TOKEN_SECRET="change-me-32-random-bytes",
            )
        )
    with pytest.raises(InsecureSettings, match="TELEPHONY_SESSION_SECRET"):
        create_app(
            Settings(
                TELEPHONY_CONFIG=numbers_yaml,
                TWILIO_AUTH_TOKEN="a-real-token",
                TELEPHONY_SESSION_SECRET="change-me-32-random-bytes",
            )
        )
    create_app(Settings(TELEPHONY_CONFIG=numbers_yaml, TWILIO_AUTH_TOKEN="a-real-token"))
    create_app(Settings(TELEPHONY_CONFIG=numbers_yaml, TELEPHONY_ALLOW_INSECURE_DEV=True))


def test_defaulted_settings_get_one_line_each_and_no_secret(
    numbers_yaml: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("DEEPGRAM_API_KEY", "TELEPHONY_PUBLIC_URL", "TELEPHONY_STREAM_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO, logger="telephony.startup")
    create_app(Settings(TELEPHONY_CONFIG=numbers_yaml, TWILIO_AUTH_TOKEN=SECRET))
    lines = [r.getMessage() for r in caplog.records if r.name == "telephony.startup"]
    for variable in (
        "DEEPGRAM_API_KEY",
        "TELEPHONY_PUBLIC_URL",
        "TELEPHONY_STREAM_TOKEN_SECRET",
        "TWILIO_ACCOUNT_SID",
    ):
        assert sum(line.startswith(variable + " ") for line in lines) == 1, (variable, lines)
    warned = {r.getMessage().split()[0] for r in caplog.records if r.levelno >= logging.WARNING}
    assert {"DEEPGRAM_API_KEY", "TELEPHONY_PUBLIC_URL"} <= warned
    assert not any(SECRET in line for line in lines)
    assert not any(line.startswith("TWILIO_AUTH_TOKEN") for line in lines)  # it was given


@pytest.mark.parametrize(
    "variable",
    [
        "TELEPHONY_PUBLIC_URL",
        "TELEPHONY_OVERFLOW_REDIRECT_URL",
        "TWILIO_API_URL",
        "DEEPGRAM_URL",
        "DEEPGRAM_AGENT_URL",
    ],
)
def test_settings_urls_refuse_credentials_without_echoing_them(variable: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(**{variable: f"https://admin:{SECRET}@example.com/x"})
    assert "credentials in the URL" in str(caught.value)
    assert SECRET not in str(caught.value)


LLM_YAML = """\
numbers:
  "+15550001000": sales
  "+15550002000": concierge
profiles:
  sales:
    mode: flux
    responder:
      type: llm
      base_url: {base_url}
      model: gpt-4o-mini
      api_key_env: OPENAI_API_KEY
      system_prompt: Hi.
  concierge:
    mode: agent
    agent:
      think_provider: open_ai
      think_model: gpt-4o-mini
      think_prompt: Be brief.
      functions:
        - name: lookup
          description: Look up.
          url: {webhook}
"""


@pytest.mark.parametrize(
    ("base_url", "webhook", "where"),
    [
        (f"https://user:{SECRET}@llm.example.com/v1", "https://hooks.example.com/a", "base_url"),
        ("https://llm.example.com/v1", f"https://{SECRET}@hooks.example.com/a", "functions[0].url"),
    ],
)
def test_config_urls_refuse_credentials(
    tmp_path: Path, base_url: str, webhook: str, where: str
) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(LLM_YAML.format(base_url=base_url, webhook=webhook))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [error] = caught.value.errors
    assert where in error and "credentials in the URL" in error, error
    assert SECRET not in error


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("mode: flux", f"mode: {SECRET}"),  # an enum
        ("type: scripted", f"type: {SECRET}"),  # a union tag
        ('"+15550002000": sales', f'"+15550002000": {SECRET}'),  # a profile reference
        ('"+15550002000"', "+15550002000"),  # an unquoted number
    ],
)
def test_config_errors_never_echo_the_value(tmp_path: Path, old: str, new: str) -> None:
    text = NUMBERS_YAML.replace(old, new, 1)
    path = tmp_path / "numbers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = caught.value.errors
    assert errors and not any(SECRET in e or "15550002000" in e.split(": ", 2)[-1] for e in errors)


def test_yaml_constructor_errors_do_not_quote_the_value(tmp_path: Path) -> None:
    path = tmp_path / "numbers.yaml"
    secret = SECRET.lower()  # PyYAML lowercases a !!bool before it fails on it
    path.write_text(f"a: !!bool {secret}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "cannot read a value" in caught.value.errors[0]
    assert secret not in caught.value.errors[0]


async def test_healthz_says_only_config_error(running_app: RunningApp) -> None:
    store = running_app.app.state.services.config
    running_app.yaml_path.write_text(NUMBERS_YAML.replace("mode: flux", f"mode: {SECRET}", 1))
    assert not store.reload()
    async with running_app.http() as client:
        body = (await client.get("/healthz")).json()
    assert body["config_error"] == "config error"
    assert SECRET not in str(body)


async def test_healthz_without_config_error(numbers_yaml: Path) -> None:
    app = create_app(Settings(TELEPHONY_CONFIG=numbers_yaml, TELEPHONY_ALLOW_INSECURE_DEV=True))
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/healthz"
    async with serve_app(app, sock), httpx.AsyncClient() as client:
        assert (await client.get(url)).json()["config_error"] is None
