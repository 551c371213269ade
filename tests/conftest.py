"""Shared fixtures: the real app under uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from routes.app import create_app
from telephony.demo import settings_for_fakes
from telephony.inprocess import bind_loopback, serve_app
from telephony.session.summary import CallSummary
from telephony.settings import Settings
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_rest import FakeTwilioRest

try:
    import uvloop  # uvicorn[standard] installs it; `telephony serve` runs on it
except ImportError:  # pragma: no cover
    uvloop = None

AUTH_TOKEN = "test-auth-token"
DEEPGRAM_KEY = "test-deepgram-key"

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


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """Tests marked `both_loops` run twice: on asyncio's loop and on uvloop, whose transports
    are other classes (the media socket's fast paths reach into them); the rest on asyncio's."""
    factories = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None and item.get_closest_marker("both_loops") is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


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
        return httpx.AsyncClient(base_url=self.url)


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


@pytest.fixture
async def running_app(
    numbers_yaml: Path, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> AsyncIterator[RunningApp]:
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = settings_for_fakes(
        numbers_yaml,
        url,
        fake_deepgram,
        fake_rest,
        AUTH_TOKEN,
        DEEPGRAM_KEY,
        TELEPHONY_MAX_BAD_FRAMES=5,
    )
    app = create_app(settings)
    async with serve_app(app, sock):
        yield RunningApp(url, settings, app, numbers_yaml)


async def finished(app: RunningApp, call_sid: str, timeout_s: float = 5.0) -> CallSummary:
    """The call's summary, once the server has wound it down (just after the socket closes)."""
    registry = app.app.state.services.registry
    for _ in range(int(timeout_s * 100)):
        summary = registry.find_finished(call_sid)
        if summary is not None:
            return summary
        await asyncio.sleep(0.01)
    raise AssertionError(f"call {call_sid} did not finish")
