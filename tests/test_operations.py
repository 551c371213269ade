"""Operational entry points: SIGHUP reload, `telephony emulator`, `telephony config check`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from websockets.asyncio.client import connect

from routes.app import create_app
from telephony.config import ConfigStore
from telephony.inprocess import bind_loopback, serve_app
from telephony.settings import Settings
from tests.conftest import NUMBERS_YAML


async def test_sighup_reloads_the_numbers_yaml(numbers_yaml: Path) -> None:
    # A watcher that would not look again for an hour: only SIGHUP can trigger the reload.
    store = ConfigStore(numbers_yaml, poll_interval_s=3600)
    sock = bind_loopback()
    app = create_app(Settings(TELEPHONY_CONFIG=numbers_yaml), config=store)
    async with serve_app(app, sock):
        new_text = NUMBERS_YAML.replace('"+15550002000": sales', "")
        await asyncio.to_thread(numbers_yaml.write_text, new_text)
        version = store.version
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if store.version > version:
                break
            await asyncio.sleep(0.01)
        assert store.version == version + 1
        assert "+15550002000" not in store.current.numbers


async def test_emulator_command_serves_fake_deepgram() -> None:
    sock = bind_loopback()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "DEEPGRAM_API_KEY": "emulator-key"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telephony.cli",
        "emulator",
        "--port",
        str(port),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        ready = f"fake Deepgram listening on ws://127.0.0.1:{port}"  # printed once it accepts
        line = b""
        while ready not in line.decode():
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line, "emulator exited"
        url = (
            f"ws://127.0.0.1:{port}/v2/listen?model=flux-general-en&encoding=mulaw&sample_rate=8000"
        )
        async with connect(url, additional_headers={"Authorization": "Token emulator-key"}) as ws:
            first = await asyncio.wait_for(ws.recv(), 5)
        assert '"Connected"' in str(first)
    finally:
        proc.terminate()
        await proc.wait()


def test_config_check_command_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "telephony.cli", "config", "check", "infra/numbers.example.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "front-desk" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  p:\n    mode: flux\n    flux: {eot_threshold: 0.95}\n")
    out = subprocess.run(
        [sys.executable, "-m", "telephony.cli", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert f"{bad}:4: profiles.p.flux.eot_threshold: must be between 0.5 and 0.9" in out.stderr
    # A missing field is reported at the mapping that lacks it.
    assert f"{bad}:2: profiles.p.responder: required when mode is flux" in out.stderr


def test_db_upgrade_command(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sub/telephony.db"
    out = subprocess.run(
        [sys.executable, "-m", "telephony.cli", "db", "upgrade"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TELEPHONY_DATABASE_URL": url},
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "sub" / "telephony.db").exists()
