"""Resilience: reconnects, the call clock across them, graceful failure (offline, through fakes)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from telephony.deepgram.clock import CallClock
from telephony.demo import OfflineCall, parse_fault, run_offline_call
from telephony.retry import Backoff
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import Fault, Script, ScriptedTurn
from telephony.sim.twilio_caller import PauseStream

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

MS_PER_CHAR = 30

NUMBERS = """\
numbers:
  "+15550001000": front
profiles:
  front:
    mode: flux
    greeting: "Hi."
    responder:
      type: scripted
      rules:
        - {pattern: "hours", reply: "Nine to five."}
        - {pattern: "bye", reply: "Goodbye!", action: hangup}
      fallback: "Sorry?"
"""


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


def test_call_clock_anchors_each_connection() -> None:
    clock = CallClock()
    clock.anchor(0, "start")
    assert clock.to_call_ms(1.25) == 1250
    second = clock.anchor(4980, "Flux closed: 1006")
    assert (second.connection, second.offset_ms) == (1, 4980)
    assert clock.to_call_ms(0.5) == 5480  # times restart at 0 on the new connection
    assert clock.to_call_ms(0.5, connection=0) == 500


def test_backoff_is_immediate_then_exponential_jittered_and_capped() -> None:
    delays = list(Backoff(attempts=8, base_s=0.1, cap_s=1.0).delays())
    assert delays[0] == 0.0 and len(delays) == 8
    for got, nominal in zip(delays[1:], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0], strict=True):
        assert 0.8 * nominal <= got <= 1.2 * nominal


def test_fault_spec_parsing() -> None:
    assert parse_fault("flux-drop@2.5") == Fault(endpoint="flux", at_ms=2500, kind="drop")
    with pytest.raises(ValueError, match="KIND@SECONDS"):
        parse_fault("flux-melt@1")


async def call(numbers: Path, script: Script, **kw) -> OfflineCall:
    kw.setdefault("max_call_ms", 8_000)
    options = {"speak_ms_per_char": MS_PER_CHAR, **kw.pop("deepgram_options", {})}
    return await run_offline_call(
        number="+15550001000",
        script=script,
        config_path=numbers,
        deepgram_options=options,
        **kw,
    )


async def test_aura_drop_is_survived(numbers: Path) -> None:
    result = await call(
        numbers,
        Script(
            turns=[
                ScriptedTurn(start_ms=1000, end_ms=1600, text="hours please"),
                ScriptedTurn(start_ms=3500, end_ms=4000, text="bye"),
            ],
            faults=[Fault(endpoint="speak", at_ms=1000, kind="drop")],
        ),
    )
    speak = [e for e in result.as_json()["events"] if e["kind"] == "speak-connection"]
    assert [e["reason"] == "start" for e in speak] == [True, False]
    assert tts_text(result.caller.heard, MS_PER_CHAR).endswith("Goodbye!")
    assert [r.form for r in result.rest.requests] == [{"Status": "completed"}]


async def test_repeated_flux_failures_end_the_call_gracefully(numbers: Path) -> None:
    # Every Flux connection fails 200 ms into its audio: past the failure budget the call is
    # handed to Twilio's own <Say> apology and <Hangup> (on_failure: hangup) — no dead air,
    # and nothing that depends on Deepgram.
    faults = [Fault(endpoint="flux", at_ms=200, kind="error", connection=i) for i in range(10)]
    result = await call(numbers, Script(faults=faults), max_call_ms=10_000)
    kinds = [e["kind"] for e in result.as_json()["events"]]
    assert "upstream-failed" in kinds
    assert len(result.rest.requests) == 1
    root = ET.fromstring(result.rest.requests[0].form["Twiml"])
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert "technical trouble" in (root.find("Say").text or "")
    # Issue 19: a failed call is told apart from a short one, with why in the detail.
    assert result.summary is not None and result.summary.end_reason == "failover"
    failed = next(e for e in result.as_json()["events"] if e["kind"] == "upstream-failed")
    assert result.summary.end_detail == failed["reason"]


async def test_agent_failures_hand_the_call_to_a_person(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        'numbers: {"+15550001000": a}\n'
        "profiles:\n"
        "  a:\n"
        "    mode: agent\n"
        "    on_failure: transfer\n"
        '    transfer_number: "+15557770000"\n'
        "    agent: {think_prompt: hi}\n"
    )
    faults = [Fault(endpoint="agent", at_ms=200, kind="drop", connection=i) for i in range(10)]
    result = await run_offline_call(
        number="+15550001000",
        mode="agent",
        script=Script(faults=faults),
        config_path=path,
        max_call_ms=10_000,
    )
    assert "upstream-failed" in [e["kind"] for e in result.as_json()["events"]]
    root = ET.fromstring(result.rest.requests[-1].form["Twiml"])
    assert [child.tag for child in root] == ["Say", "Dial"]
    assert root.find("Dial").text == "+15557770000"
    assert result.as_json()["end_reason"] == "failover"


async def test_paused_twilio_stream_keeps_flux_alive_with_pings_only(
    numbers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down: the fake closes Flux after 2 s without audio or ping (real Flux: ~60 s), we
    # ping every 0.5 s (real: 5 s). The caller's stream pauses for 4 s: no frames at all.
    monkeypatch.setattr("telephony.deepgram.connection.PING_INTERVAL_S", 0.5)
    result = await call(
        numbers,
        Script(turns=[ScriptedTurn(start_ms=1000, end_ms=1600, text="hours please")]),
        timeline=[PauseStream(at_ms=2000, ms=4000)],
        max_call_ms=7_500,
        deepgram_options={"flux_idle_timeout_s": 2.0},
    )
    flux = [c for c in result.deepgram.connections if c.endpoint == "flux"]
    assert len(flux) == 1, "the Flux socket was lost during the pause"
    assert "ping" in flux[0].received_kinds()
    assert "json:KeepAlive" not in flux[0].received_kinds()  # would kill a Flux socket
    assert not flux[0].violations
    assert flux[0].close_code == 1005  # closed by our CloseStream at the end, not by idling
