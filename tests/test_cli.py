"""The `telephony` command for a newcomer (issue 22): ./.env read under the real environment,
one-line errors (exit 2) for usage mistakes, `call --say` ending once answered, `--version`,
defaults in `serve --help`, no Alembic plugin noise at start."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from routes.app import create_app
from telephony import cli, cli_serve
from telephony import settings as settings_module
from telephony.settings import ENV_FILE_VAR, Settings, env_file_path, load_env_file
from telephony.store.migrate import upgrade_blocking
from tests import fast_clock

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env_file_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo `load_env_file`'s record of the file it read (a process-wide fact)."""
    monkeypatch.setattr(settings_module, "_env_file_read", None)
    yield


# --- .env ---------------------------------------------------------------------------------


def test_env_file_path_defaults_to_dot_env_and_can_be_turned_off() -> None:
    assert env_file_path({}) == Path(".env")
    assert env_file_path({ENV_FILE_VAR: "conf/dev.env"}) == Path("conf/dev.env")
    assert env_file_path({ENV_FILE_VAR: ""}) is None


def test_env_file_fills_in_what_the_environment_lacks(tmp_path: Path, env_file_state: None) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# a comment\n"
        "TELEPHONY_MAX_CALLS=7\n"
        'TELEPHONY_BUSY_MESSAGE="All lines busy, sorry."\n'
        "TELEPHONY_LOG_LEVEL=DEBUG\n"
        "TELEPHONY_SESSION_SECRET=\n"
        "export OPENAI_API_KEY='sk-from-dotenv'\n"
    )
    environ = {"TELEPHONY_LOG_LEVEL": "WARNING"}  # the real environment wins
    loaded = load_env_file(path, environ)
    assert environ == {
        "TELEPHONY_MAX_CALLS": "7",
        "TELEPHONY_BUSY_MESSAGE": "All lines busy, sorry.",
        "TELEPHONY_LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": "sk-from-dotenv",  # profile keys come from the environment too
    }
    assert sorted(loaded) == ["OPENAI_API_KEY", "TELEPHONY_BUSY_MESSAGE", "TELEPHONY_MAX_CALLS"]
    assert settings_module.env_file_read() == path.resolve()


def test_a_missing_env_file_reads_nothing(tmp_path: Path, env_file_state: None) -> None:
    environ: dict[str, str] = {}
    assert load_env_file(tmp_path / ".env", environ) == []
    assert load_env_file(None, environ) == []
    assert environ == {} and settings_module.env_file_read() is None


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`VAR=` as .env.example has them (and as `set -a; . ./.env` exports them) is no empty
    secret, and no invalid boolean."""
    for name in ("TELEPHONY_ALLOW_INSECURE_DEV", "TELEPHONY_SESSION_SECRET", "TWILIO_AUTH_TOKEN"):
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.allow_insecure_dev is False
    assert settings.session_secret is None
    assert "session_secret" not in settings.model_fields_set


def test_env_example_is_posix_shell_and_reads_the_same_both_ways(env_file_state: None) -> None:
    """`set -a; . ./.env.example` in /bin/sh gives every variable the value `telephony` reads
    from the same file (a value with spaces survives both)."""
    names = [
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    script = "set -a; . ./.env.example; set +a; " + "; ".join(
        f'printf "%s=%s\\n" {n} "${n}"' for n in names
    )
    out = subprocess.run(
        ["/bin/sh", "-c", script],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0 and not out.stderr, out.stderr
    from_shell = dict(line.split("=", 1) for line in out.stdout.splitlines())
    environ: dict[str, str] = {}
    load_env_file(REPO / ".env.example", environ)
    assert {k: v for k, v in from_shell.items() if v} == environ
    assert environ["TELEPHONY_BUSY_MESSAGE"] == Settings.model_fields["busy_message"].default


def test_a_copied_env_example_changes_nothing_until_filled_in(
    env_file_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cp .env.example .env` used to switch a newcomer's logs to JSON and point the stream URL
    at bridge.example.com (so `telephony call` could not reach the local service): every value
    it sets is the default; what a deployment must change is left empty."""
    environ: dict[str, str] = {}
    load_env_file(REPO / ".env.example", environ)
    by_alias = {field.alias: name for name, field in Settings.model_fields.items()}
    for alias in by_alias:  # the tests' own environment is not the defaults
        if alias:
            monkeypatch.delenv(alias, raising=False)
    from_example = Settings.model_validate(
        {by_alias[k]: v for k, v in environ.items() if k in by_alias}
    )
    defaults = Settings.model_validate({})
    changed = {
        name: getattr(from_example, name)
        for name in Settings.model_fields
        if getattr(from_example, name) != getattr(defaults, name)
    }
    assert changed == {}


def test_startup_log_names_the_env_file(
    tmp_path: Path,
    numbers_yaml: Path,
    env_file_state: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="telephony.startup")
    settings = Settings(TELEPHONY_CONFIG=numbers_yaml, TELEPHONY_ALLOW_INSECURE_DEV=True)
    create_app(settings)
    assert any("environment only" in r.getMessage() for r in caplog.records)
    caplog.clear()
    env = tmp_path / "dev.env"
    env.write_text("TELEPHONY_NOTHING_ELSE=1\n")
    load_env_file(env, {})
    create_app(settings)
    assert any(str(env.resolve()) in r.getMessage() for r in caplog.records), caplog.text


def _run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPHONY_", "TWILIO_"))}
    return subprocess.run(
        [sys.executable, "-m", "telephony.cli", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_reads_dot_env_in_the_working_directory_under_the_environment(
    tmp_path: Path,
) -> None:
    """The .env names a config file that does not exist: `serve` says so, so it read it; a
    TELEPHONY_CONFIG in the real environment wins over the file's."""
    (tmp_path / ".env").write_text("TELEPHONY_CONFIG=from-dotenv.yaml\n")
    out = _run_cli("serve", "--port", "9", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == "error: TELEPHONY_CONFIG: no such file: from-dotenv.yaml\n"
    out = _run_cli("serve", "--port", "9", cwd=tmp_path, env={"TELEPHONY_CONFIG": "real.yaml"})
    assert out.stderr == "error: TELEPHONY_CONFIG: no such file: real.yaml\n"
    out = _run_cli("serve", "--port", "9", cwd=tmp_path, env={ENV_FILE_VAR: ""})
    assert "from-dotenv.yaml" not in out.stderr  # turned off: the default config is used


# --- one-line errors, exit 2 ---------------------------------------------------------------


def _main_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_call_usage_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "--fault 'bogus@1'" in _main_error(capsys, "call", "--fault", "bogus@1")
    assert "flux-drop" in _main_error(capsys, "call", "--fault", "flux-drop@soon")
    missing = tmp_path / "missing.yaml"
    assert f"--config: no such file: {missing}" in _main_error(
        capsys, "call", "--config", str(missing)
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("numbers: [\n")
    assert cli.main(["call", "--config", str(broken)]) == 1
    assert capsys.readouterr().err.startswith(f"{broken}:")  # no traceback
    not_wav = tmp_path / "note.wav"
    not_wav.write_text("not audio")
    assert "not a WAV file" in _main_error(capsys, "call", "--audio", str(not_wav))
    err = _main_error(capsys, "call", "--audio", str(tmp_path / "gone.wav"))
    assert "cannot read: No such file or directory" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "upgrade"],
        ["emulator", "--port", "0"],
        ["users", "remove", "bob"],
        ["users", "role", "bob", "admin"],
    ],
)
def test_invalid_settings_are_one_line_without_the_value(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEPHONY_MAX_CALLS", "lots")
    monkeypatch.setenv("DEEPGRAM_URL", "wss://user:sk-SECRET-value@api.deepgram.com")
    err = _main_error(capsys, *argv)
    assert "TELEPHONY_MAX_CALLS: Input should be a valid integer" in err, err
    assert "DEEPGRAM_URL" in err and "credentials in the URL" in err
    assert "lots" not in err and "sk-SECRET-value" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "upgrade"],
        ["users", "remove", "bob"],
        ["retention", "run", "--dry-run"],
    ],
)
def test_an_unreachable_database_is_one_line_without_the_url(
    argv: list[str],
    numbers_yaml: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A traceback from the driver used to be what an operator saw (and it could quote the
    URL, password included)."""
    with socket.socket() as holder:  # a port nothing listens on: connection refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    monkeypatch.setenv("TELEPHONY_CONFIG", str(numbers_yaml))
    monkeypatch.setenv(
        "TELEPHONY_DATABASE_URL", f"postgresql+asyncpg://ops:pw-SECRET@127.0.0.1:{port}/calls"
    )
    err = _main_error(capsys, *argv)
    assert err.startswith("error: cannot use the database (TELEPHONY_DATABASE_URL): "), err
    assert "ConnectionRefusedError" in err
    assert "pw-SECRET" not in err and "ops" not in err


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            'turns:\n  - {start_ms: 100, end_ms: 900, text: "hi"}\n  - start_ms: 1000\n'
            '    text: "bye"\n',
            ":3: turns[1]: missing field 'end_ms'",
        ),
        (
            'turns:\n  - start_ms: 100\n    end_ms: 900\n    txt: "hi"\n',
            ":4: turns[0]: unknown field 'txt'",
        ),
        (
            "agent:\n  - {at_ms: soon, user_text: hi, reply_text: hello}\n",
            ":2: agent[0]: field 'at_ms' must be a whole number of ms, got 'soon'",
        ),
        ("faults:\n  - {endpoint: flux, at_ms: 10, kind: melt}\n", ":2: faults[0]: Fault.kind"),
        ("turns: [\n", ":2: not valid YAML"),
        ("bogus: 1\n", ": unknown script keys: ['bogus']"),
    ],
)
def test_script_mistakes_name_the_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], document: str, expected: str
) -> None:
    script = tmp_path / "timeline.yaml"
    script.write_text(document)
    for argv in (["call"], ["emulator", "--port", "0"]):
        err = _main_error(capsys, *argv, "--script", str(script))
        assert f"--script {script}{expected}" in err, err
    assert "No such file" in _main_error(capsys, "call", "--script", str(tmp_path / "x.yaml"))


@pytest.mark.parametrize("command", ["serve", "emulator"])
def test_a_port_in_use_is_one_line(tmp_path: Path, command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _run_cli(
            command,
            "--port",
            str(port),
            cwd=REPO,
            env={"TELEPHONY_ALLOW_INSECURE_DEV": "1", ENV_FILE_VAR: ""},
        )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_the_emulator_needs_the_next_port_for_v1_read_and_serve_does_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fake Deepgram serves /v1/read over HTTP on --port + 1 (sim/deepgram/read.py), so it
    refuses a taken next port at once; `serve` has no such port and must not refuse it."""
    monkeypatch.setenv("TELEPHONY_ALLOW_INSECURE_DEV", "1")
    monkeypatch.setenv(ENV_FILE_VAR, "")
    served: list[int] = []
    monkeypatch.setattr(cli_serve, "_serve_app", lambda args, *_: served.append(args.port) or 0)

    def emulator_started(*_: object) -> None:
        raise AssertionError("the emulator started with its /v1/read port taken")

    monkeypatch.setattr("telephony.sim.deepgram_server.run_emulator", emulator_started)
    for _ in range(10):  # the port below the taken one is free only as far as we know
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1] - 1
            assert cli.main(["emulator", "--port", str(port)]) == 2
            err = capsys.readouterr().err
            if f"cannot listen on 127.0.0.1:{port}:" in err:
                continue  # another test's process took `port` meanwhile: try another pair
            assert f"cannot listen on 127.0.0.1:{port + 1}" in err
            assert cli.main(["serve", "--port", str(port)]) == 0
            break
    assert served == [port]


# --- call --say, --version, --help, Alembic -------------------------------------------------


def test_call_say_ends_once_answered(capsys: pytest.CaptureFixture[str]) -> None:
    """Not the 30 s cap: the caller hangs up a moment after the answer has played."""
    started = time.monotonic()
    with fast_clock.scaled_loops(4):  # the call on a 4x clock; `elapsed` in the call's seconds
        code = cli.main(["call", "--say", "What are your opening hours?", "--json"])
    elapsed = (time.monotonic() - started) * 4
    out = capsys.readouterr().out
    assert code == 0
    assert '"end_reason": "caller-hangup"' in out
    assert "We are open nine to five" in out  # the answer played before the hang-up
    assert elapsed < 20, elapsed


def test_version_and_serve_help_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"telephony {version('telephony')}\n"
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 127.0.0.1)", "(default: 8000)", "(default: 65536)"):
        assert default in help_text, help_text


def test_upgrade_logs_no_alembic_plugin_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Alembic sets its plugins up (and would log them) once per process, so whether this
    upgrade is the first here depends on test order: the logger's own level is checked too."""
    caplog.set_level(logging.INFO)
    assert not logging.getLogger("alembic.runtime.plugins").isEnabledFor(logging.INFO)
    upgrade_blocking(f"sqlite+aiosqlite:///{tmp_path}/a.db")
    names = {r.name for r in caplog.records}
    assert "alembic.runtime.migration" in names  # the migrations themselves still log
    assert "alembic.runtime.plugins" not in names
