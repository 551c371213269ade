"""Shared fixtures: the real app under uvicorn on a loopback port; and the test lanes.

Every test is classified at collection, from what its code and its fixtures' code use (helper
functions followed through the tests package), so a new test needs no marker by hand:

- `browser`: drives Chromium through Playwright;
- `process`: spawns a subprocess (`telephony serve`, the CLI, openssl, nginx, ...);
- `e2e`: runs a call or a fake over real sockets in this process (the app, the fakes);
- `unit`: none of these.

A test may be both `process` and `e2e` (or `browser` and `e2e`). `-m "not process and not
browser"` is the fast lane; plain `pytest` runs everything. A test that spawns a subprocess
without being classified `process` fails (see `_spawn_guard`), so the lanes stay honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import subprocess
import tempfile
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from routes.app import create_app
from telephony.demo import settings_for_fakes
from telephony.http_pool import tls_context
from telephony.inprocess import InProcessServer, bind_loopback, serve_app
from telephony.session.summary import CallSummary
from telephony.settings import ENV_FILE_VAR, Settings
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.migrate import upgrade
from telephony.store.private_files import FILE_MODE
from tests import fast_clock, pg_server, system_tools
from tests.ci_skips import (  # noqa: F401  (hooks: CI=true fails on a skipped PG/browser test)
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from tests.pg_server import PgServer

try:
    import uvloop  # uvicorn[standard] installs it; `telephony serve` runs on it
except ImportError:  # pragma: no cover
    uvloop = None

# The CLI reads ./.env (telephony/settings.py load_env_file); tests run in the repository
# root, where a developer's own .env must reach neither `cli.main` nor the CLI subprocesses.
os.environ[ENV_FILE_VAR] = ""

AUTH_TOKEN = "test-auth-token"
DEEPGRAM_KEY = "test-deepgram-key"
HTTP_TIMEOUT_S = 30.0  # a test's own requests to the app, real seconds (see RunningApp.http)

NUMBERS_YAML = """\
numbers:
  "+15550001000": support
  "+15550002000": sales
profiles:
  support:
    mode: flux
    greeting: "Thanks for calling."
    responder:
      type: scripted
      rules:
        - pattern: "bye"
          reply: "Goodbye!"
          action: hangup
      fallback: "Sorry, could you say that again?"
  sales:
    mode: flux
    flux: {eot_timeout_ms: 1000}
    responder:
      type: scripted
      rules: []
      fallback: "Sales here."
"""


LANES: dict[str, tuple[str, ...]] = {
    "browser": ("async_playwright", "sync_playwright"),
    "process": (
        "subprocess.run",
        "subprocess.Popen",
        "subprocess.check_output",
        "subprocess.check_call",
        "create_subprocess_exec",
        "create_subprocess_shell",
        "os.system",
        "os.spawn",
    ),
    "e2e": (
        "serve_app(",
        "run_offline_call(",
        "FakeTwilioCaller(",
        "FakeDeepgram(",
        "FakeTwilioRest(",
        "FakeLLM(",
    ),
}


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:  # nested functions, lambdas, comprehensions
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


_SOURCES: dict[Callable, str] = {}


def _reachable_source(func: Callable) -> str:
    """The source of `func` and of every function of the tests package it refers to by name
    (followed transitively): what the test can run, short of library code."""
    if func in _SOURCES:
        return _SOURCES[func]
    _SOURCES[func] = ""  # recursion guard
    inner = inspect.unwrap(func)
    try:
        parts = [inspect.getsource(inner)]
    except (OSError, TypeError):
        return ""
    code = getattr(inner, "__code__", None)
    namespace = getattr(inner, "__globals__", {})
    for name in set(_code_names(code)) if code is not None else ():
        target = namespace.get(name)
        if isinstance(target, type):  # a helper class: its methods
            candidates = [v for v in vars(target).values() if isinstance(v, types.FunctionType)]
        else:
            candidates = [target]
        for candidate in candidates:
            if isinstance(candidate, types.FunctionType) and (
                candidate.__module__ or ""
            ).startswith("tests"):
                parts.append(_reachable_source(candidate))
    _SOURCES[func] = "\n".join(parts)
    return _SOURCES[func]


def lanes_of(item: pytest.Item) -> set[str]:
    """The lanes of one test, from its own code and its fixtures' code."""
    funcs: list[Callable] = [item.function] if isinstance(item, pytest.Function) else []
    info = getattr(item, "_fixtureinfo", None)
    names = set(info.names_closure) if info is not None else set()
    for defs in info.name2fixturedefs.values() if info is not None else ():
        funcs += [
            d.func
            for d in defs
            if (d.func.__module__ or "").startswith("tests") and d.argname != "_spawn_guard"
        ]
    text = "\n".join(_reachable_source(f) for f in funcs)
    lanes = {lane for lane, needles in LANES.items() if any(n in text for n in needles)}
    if "running_app" in names or "fake_deepgram" in names or "fake_rest" in names:
        lanes.add("e2e")
    return lanes or {"unit"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is not None and "postgres_server" in info.names_closure:
            item.add_marker("postgres")
        explicit = {m.name for m in item.iter_markers()} & {*LANES, "unit"}
        lanes = lanes_of(item) | explicit
        if lanes - {"unit"}:
            lanes.discard("unit")  # e.g. a test marked `process` by hand
        for lane in sorted(lanes - explicit):
            item.add_marker(lane)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most 8 (PYTEST_XDIST_AUTO_NUM_WORKERS overrides).

    Most tests wait on a call's clock rather than compute, so a worker more than the cores
    fills the waits: 226-251 s instead of 276-335 s for 1 678 tests on two cores (2026-12-08).
    But that worker oversubscribes the cores (the workers and what the tests spawn: a service,
    a load generator, chromium). A thread that waited 100-400 ms for a core used to lose that
    time off its call's clock: of four full runs at three workers on 2026-12-07, three had one
    test miss its timing, each a different one. The scaled clock now stops while its thread
    waits for a CPU (tests/fast_clock.py): of nine runs at three workers on 2026-12-08 seven
    passed; one missed a timing its test left too tight (since widened), and one was the
    hostile bench, which times a real service against real attackers in other processes on
    the real clock, where no test clock can help (a phase 500 ms slow twice). A red CI lands
    nothing, so the default is the reliable count; `PYTEST_XDIST_AUTO_NUM_WORKERS=3` is the
    quicker local loop.
    History: at one per core 306-331 s before the scripted-call modules moved to an 8x clock
    (tests/fast_clock.py), 287 s after; `--dist worksteal` was slower, as was handing the
    longest tests out first.
    """
    override = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if override:
        return int(override)
    return min(os.cpu_count() or 1, 8)


@pytest.fixture(autouse=True)
def _spawn_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not classified `process` or `browser` must not spawn a process: it would run in
    the fast lane. Mark it `@pytest.mark.process` if the classification above missed it."""
    node = request.node
    if node.get_closest_marker("process") or node.get_closest_marker("browser"):
        return

    original = subprocess.Popen.__init__

    def refuse(self: subprocess.Popen, *args: object, **kwargs: object) -> None:
        if pg_server.harness_spawning():  # the session's PostgreSQL, started on first use
            original(self, *args, **kwargs)  # type: ignore[arg-type]
            return
        raise AssertionError(
            f"{node.nodeid} spawns a subprocess but is not classified `process` "
            "(tests/conftest.py LANES): add @pytest.mark.process"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """Tests marked `both_loops` run twice: on asyncio's loop and on uvloop, whose transports
    are other classes (the media socket's fast paths reach into them); the rest on asyncio's.
    A test marked `clock(N)` runs on a loop whose clock runs N times faster (tests/fast_clock.py;
    uvloop's clock cannot be scaled, so its run stays real time)."""
    factories = {"asyncio": fast_clock.loop_factory(fast_clock.clock_scale(item))}
    if uvloop is not None and item.get_closest_marker("both_loops") is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """The PostgreSQL server of this test process (tests/pg_server.py): started on first use."""
    with pg_server.session_server() as server:
        yield server


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The browser Playwright drives (tests/system_tools.py): found, or installed from
    Debian's packages, or the test skips naming what to install."""
    found = system_tools.chromium()
    if found.path is None:
        pytest.skip(found.reason)
    return found.path


@dataclass
class RunningApp:
    url: str  # http://127.0.0.1:PORT, also the public URL Twilio "calls"
    settings: Settings
    app: Starlette
    yaml_path: Path

    @property
    def ws_url(self) -> str:
        return self.settings.media_stream_url

    def http(self) -> httpx.AsyncClient:
        # httpx's timeout is on the loop's clock: its default 5 s was 1.25 s of real time on a
        # 4x clock, which a login (a scrypt run on a thread) missed on a loaded CI machine. So
        # HTTP_TIMEOUT_S of real time, whatever the clock. Not an assertion.
        timeout = HTTP_TIMEOUT_S * fast_clock.scale_of_running_loop()
        return httpx.AsyncClient(
            base_url=self.url, verify=tls_context(), timeout=timeout
        )  # one CA parse


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test's app writes transcripts to its own SQLite file (never ./data)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/telephony.db"
    monkeypatch.setenv("TELEPHONY_DATABASE_URL", url)
    return url


@pytest.fixture(autouse=True)
def recordings_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Call recordings, likewise, go to the test's own directory (never ./data)."""
    path = tmp_path / "recordings"
    monkeypatch.setenv("TELEPHONY_RECORDINGS_DIR", str(path))
    # ...and so does the phrase cache (telephony/session/phrases.py).
    monkeypatch.setenv("TELEPHONY_PHRASE_CACHE_DIR", str(tmp_path / "phrases"))
    return path


@pytest.fixture
def numbers_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS_YAML)
    return path


@pytest.fixture
async def fake_deepgram() -> AsyncIterator[FakeDeepgram]:
    async with FakeDeepgram(api_key=DEEPGRAM_KEY) as fake:
        yield fake


@pytest.fixture
async def fake_rest() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(auth_token=AUTH_TOKEN) as fake:
        yield fake


_TEMPLATE: list[Path] = []  # this worker's migrated SQLite file, made on first use


async def _schema_template() -> Path:
    if not _TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="telephony-schema-")) / "template.db"
        await upgrade(f"sqlite+aiosqlite:///{path}")
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


def _new_sqlite_file(database_url: str) -> Path | None:
    """The SQLite file at the URL if it does not exist yet (in a directory that does)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database)
    return path if path.parent.is_dir() and not path.exists() else None


def _copy_schema(template: Path, path: Path) -> None:
    shutil.copyfile(template, path)
    path.chmod(FILE_MODE)  # as telephony/store/schema.py make_engine creates it


async def with_schema(database_url: str) -> None:
    """A SQLite file the app is about to create gets the migrated schema copied in: what the
    app's start-up migration would make (it then finds the schema at head), without running
    every migration again for each of the ~500 app starts (~80 ms each). Tests of the
    migrations themselves call `upgrade` on their own files, never this."""
    path = _new_sqlite_file(database_url)
    if path is not None:
        _copy_schema(await _schema_template(), path)


@contextlib.asynccontextmanager
async def served_with_fakes(
    numbers_yaml: Path,
    deepgram: FakeDeepgram,
    rest: FakeTwilioRest,
    server_options: Callable[[Settings], Mapping[str, Any]] | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningApp]:
    """A fresh app on a loopback port, its Deepgram and Twilio REST URLs pointed at the fakes;
    `overrides` are TELEPHONY_* settings; `server_options` gives uvicorn's options from the
    settings (e.g. telephony serve's: telephony/http_server.py)."""
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    overrides = {"TELEPHONY_INTERNAL_URL": url, **overrides}  # how its peers reach it
    settings = settings_for_fakes(
        numbers_yaml, url, deepgram, rest, AUTH_TOKEN, DEEPGRAM_KEY, **overrides
    )
    await with_schema(settings.database_url)
    app = create_app(settings)
    if server_options is None:
        async with serve_app(app, sock):
            yield RunningApp(url, settings, app, numbers_yaml)
    else:
        options = {"lifespan": "on", **server_options(settings)}
        async with InProcessServer(app, sock, **options):
            yield RunningApp(url, settings, app, numbers_yaml)


@pytest.fixture
async def running_app(
    numbers_yaml: Path, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> AsyncIterator[RunningApp]:
    async with served_with_fakes(
        numbers_yaml, fake_deepgram, fake_rest, TELEPHONY_MAX_BAD_FRAMES=5
    ) as running:
        yield running


async def finished(app: RunningApp, call_sid: str, timeout_s: float = 5.0) -> CallSummary:
    """The call's summary, once the server has wound it down (just after the socket closes)."""
    registry = app.app.state.services.registry
    for _ in range(int(timeout_s * 100)):
        summary = registry.find_finished(call_sid)
        if summary is not None:
            return summary
        await asyncio.sleep(0.01)
    raise AssertionError(f"call {call_sid} did not finish")
