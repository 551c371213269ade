"""Operational entry points: SIGHUP reload, `telephony emulator` (and its `--script`),
`telephony config check`, `telephony db upgrade`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from routes.app import create_app
from telephony.bench_process import port_is_free
from telephony.config import ConfigStore
from telephony.deepgram import messages as dm
from telephony.inprocess import bind_loopback, serve_app
from telephony.settings import Settings
from tests.conftest import NUMBERS_YAML
from tests.ports import free_port


def _emulator_ports() -> int:
    """The emulator's port; the next one (Text Intelligence) is free too. From below the
    ephemeral range: one from bind(0) may be taken by another worker's outgoing connection
    before the emulator binds it (tests/ports.py)."""
    port = free_port()
    while not port_is_free(port + 1):
        port = free_port()
    return port


async def test_sighup_reloads_the_numbers_yaml(numbers_yaml: Path) -> None:
    # A watcher that would not look again for an hour: only SIGHUP can trigger the reload.
    store = ConfigStore(numbers_yaml, poll_interval_s=3600)
    sock = bind_loopback()
    app = create_app(
        Settings(TELEPHONY_CONFIG=numbers_yaml, TELEPHONY_ALLOW_INSECURE_DEV=True), config=store
    )
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
    port = _emulator_ports()
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
        read_url = f"http://127.0.0.1:{port + 1}"  # Text Intelligence: HTTP, the next port
        while f"fake Deepgram /v1/read on {read_url}" not in line.decode():
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line, "emulator exited"
        async with httpx.AsyncClient() as http:
            got = await http.post(
                read_url + "/v1/read",
                params={"language": "en", "sentiment": "true"},
                json={"text": "Great, thanks."},
                headers={"Authorization": "Token emulator-key"},
            )
        assert got.status_code == 200, got.text
        assert got.json()["results"]["sentiments"]["average"]["sentiment"] == "positive"
    finally:
        proc.terminate()
        await proc.wait()


FRAME = b"\xff" * 160  # 20 ms of μ-law silence
EMULATOR_SCRIPT = """\
turns:
  - {start_ms: 200, end_ms: 800, text: "Hello from the script."}
staff:
  - {start_ms: 100, end_ms: 600, text: "Staff side here."}
"""


async def test_emulator_serves_a_script_file_to_a_real_client(tmp_path: Path) -> None:
    """`telephony emulator --script` takes `telephony call --script`'s timeline; a client
    authenticating with the documented default key (no DEEPGRAM_API_KEY) gets its turns."""
    timeline = tmp_path / "timeline.yaml"
    timeline.write_text(EMULATOR_SCRIPT)
    port = _emulator_ports()
    env = {k: v for k, v in os.environ.items() if k != "DEEPGRAM_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "telephony.cli", "emulator", "--port", str(port)),
        *("--script", str(timeline)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = b""
        while b"fake Deepgram listening" not in line:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line, "the emulator exited"
        base = f"ws://127.0.0.1:{port}"
        auth = {"Authorization": "Token test-key"}
        flux = f"{base}/v2/listen?model=flux-general-en&encoding=mulaw&sample_rate=8000"
        async with connect(flux, additional_headers=auth) as ws:
            await ws.send(FRAME * 50)  # 1 s of audio
            end = None
            async with asyncio.timeout(5):
                while end is None:
                    event = dm.parse_flux_server(await ws.recv())
                    if isinstance(event, dm.TurnInfo) and event.event == "EndOfTurn":
                        end = event
        assert end.transcript == "Hello from the script."
        nova = f"{base}/v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000&punctuate=true"
        nova += "&tag=staff"  # the transcribe mode's other side: the script's `staff` turns
        async with connect(nova, additional_headers=auth) as ws:
            await ws.send(FRAME * 50)
            async with asyncio.timeout(5):
                while not isinstance(result := dm.parse_listen_server(await ws.recv()), dm.Results):
                    pass
        assert result.transcript == "Staff side here."
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
