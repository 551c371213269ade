"""`telephony serve` as a real subprocess against the in-process fakes, for the tests that need
a real process: signals (SIGKILL in test_durability, SIGTERM drain in test_drain).

Also the helpers those tests share: the numbers YAML of a scripted Flux bot, polling with a
deadline, and the fake caller's live results.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from telephony.settings import ENV_FILE_VAR
from telephony.sim import twilio_caller
from telephony.sim.deepgram_server import FakeDeepgram
from telephony.sim.twilio_caller import CallResult
from telephony.sim.twilio_rest import FakeTwilioRest
from tests import fast_clock, ports
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY

REPO = Path(__file__).resolve().parents[1]
NUMBER = "+15550001000"


def scripted_yaml(replies: dict[str, str], *, goodbye: str | None = None) -> str:
    """Numbers YAML: NUMBER -> a Flux bot that greets "Hi.", answers each caller turn
    containing a key with its reply, and hangs up after "Goodbye." when `goodbye` is said."""
    rules = [f'        - {{pattern: "{k}", reply: "{v}"}}' for k, v in replies.items()]
    if goodbye is not None:
        rules.append(f'        - {{pattern: "{goodbye}", reply: "Goodbye.", action: hangup}}')
    return "\n".join(
        [
            "numbers:",
            f'  "{NUMBER}": support',
            "profiles:",
            "  support:",
            "    mode: flux",
            '    greeting: "Hi."',
            "    responder:",
            "      type: scripted",
            "      rules:",
            *rules,
            '      fallback: "Sorry?"',
            "",
        ]
    )


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float, what: str, every: float = 0.02
) -> Any:
    """Poll until `check` returns something truthy (a deadline for progress, not a speed test)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def capture_call_results(monkeypatch: pytest.MonkeyPatch) -> list[CallResult]:
    """The fake caller's CallResult objects, readable while their call is still going.

    `dial` only returns its result when the call ends; some tests must act on what the caller
    has observed so far (marks echoed = bot speech heard, frames sent = the caller's clock).
    """
    made: list[CallResult] = []

    def capture(*args: Any, **kwargs: Any) -> CallResult:
        result = CallResult(*args, **kwargs)
        made.append(result)
        return result

    monkeypatch.setattr(twilio_caller, "CallResult", capture)
    return made


free_port = ports.free_port  # below the ephemeral range: see tests/ports.py


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    url: str
    log: Path
    db: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def serve_process(
    tmp_path: Path,
    numbers_yaml: str,
    deepgram: FakeDeepgram,
    rest: FakeTwilioRest,
    serve_args: Sequence[str] = (),
    **env_vars: str,
) -> AsyncIterator[Server]:
    """`telephony serve [SERVE_ARGS]` on a free loopback port, pointed at the fakes; yields once
    /readyz answers 200. `env_vars` add to (or override) the environment. Killed on the way out
    if it is still running."""
    config = tmp_path / "numbers.yaml"
    config.write_text(numbers_yaml)
    db = tmp_path / "serve.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPHONY_", "TWILIO_"))}
    env.pop("DEEPGRAM_API_KEY", None)
    env[ENV_FILE_VAR] = ""  # no stray ./.env (see conftest)
    env.update(
        PYTHONPATH=str(REPO),
        TELEPHONY_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
        TELEPHONY_CONFIG=str(config),
        TELEPHONY_PUBLIC_URL=url,
        TELEPHONY_RECORDINGS_DIR=str(tmp_path / "recordings"),
        TELEPHONY_LOG_LEVEL="WARNING",
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TELEPHONY_ALLOW_INSECURE_DEV="1",  # the token above is in this repository
        TWILIO_ACCOUNT_SID=rest.account_sid,
        TWILIO_API_URL=rest.url,
        DEEPGRAM_API_KEY=DEEPGRAM_KEY,
        DEEPGRAM_URL=deepgram.url,
        DEEPGRAM_AGENT_URL=deepgram.url,
    )
    env.update(env_vars)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *_serve_argv(port),
            *serve_args,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    running = Server(proc, url, log, db)
    try:

        async def ready() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"telephony serve exited early:\n{running.output()}")
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(url + "/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, within=60, what="telephony serve /readyz", every=0.1)
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


def _serve_argv(port: int) -> list[str]:
    """`telephony serve`, on the test's own clock: a test on a 4x loop talks to a server on a
    4x loop (tests/fast_clock.py), or the fake caller's audio would run ahead of its clock."""
    scale = fast_clock.scale_of_running_loop()
    if scale == 1:
        return [sys.executable, "-m", "telephony.cli", "serve", "--port", str(port)]
    return fast_clock.cli_argv(scale, "serve", "--port", str(port))
