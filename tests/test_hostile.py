"""One hostile client beside 20 good calls: the good calls keep their reply latency and pacing.

Runs `telephony bench --hostile` in a small configuration: a real `telephony serve`, the
fakes, 20 good Flux calls per phase, and each attack of telephony/sim/hostile.py in a process
of its own. The bounds here are generous (this runs beside other tests on a shared CI
machine); the exact figures come from a benchmark run and are in the project's notes. Each
attack must also have been refused, so a "pass" cannot come from an attack that never landed.
"""

from __future__ import annotations

import pytest

from telephony.bench import load_run
from telephony.bench_hostile import QUIET, HostileOptions, format_hostile, run_hostile
from telephony.sim.hostile import ATTACKS

CALLS = 20
SECONDS = 4.0
# Generous: this runs beside another test worker on two cores, whose load comes and goes
# between phases. Before the fixes a good call's reply took seconds under the body attack
# (and every attack went unrefused, which the refusal checks catch on their own); a few ms
# is what a benchmark run on a quiet machine shows now.
REPLY_P95_MARGIN_MS = 400.0
JITTER_P99_MARGIN_MS = 60.0


def _refused(attack: str, got: dict[str, int]) -> bool:
    """Did the service turn the attack away (rather than the attack never landing)?"""
    if attack == "body":  # several posts answered, every one 413 or cut off before parsing
        answers = {k: n for k, n in got.items() if k.startswith("/twilio/")}
        return sum(answers.values()) >= 2 and all(k.endswith((" 413", " cut off")) for k in answers)
    if attack == "replay":  # at most one of the duplicate streams lived
        return got.get("streams alive at the end", 99) <= 1
    if attack in ("pump", "bigframes"):  # the service closed every call the attack made (but
        # the one still running when the phase ended), so the attacker had to dial again
        closed = sum(n for k, n in got.items() if k.startswith("closed"))
        return got.get("calls", 0) >= 2 and closed >= got.get("calls", 0) - 1
    if attack == "login":  # throttled, not answered one guess after another
        return any(k in got for k in ("login 429", "login 503"))
    raise AssertionError(f"no refusal rule for {attack}")


@pytest.mark.process
def test_one_hostile_client_leaves_good_calls_alone() -> None:
    """One run (about a minute) for every attack: a module fixture would run again on each
    xdist worker that a parametrized test landed on."""
    report = load_run(run_hostile(HostileOptions(calls=CALLS, seconds=SECONDS, pin=False)))
    quiet = report["phases"][QUIET]
    assert quiet["errors"] == {}
    assert quiet["calls"] == CALLS
    assert quiet["replies"] >= CALLS  # every call got at least its first reply in the window
    failures = []
    for attack in ATTACKS:
        phase = report["phases"][attack]
        checks = {
            "refused": _refused(attack, phase["attack"]),
            "no errors": phase["errors"] == {},
            "every call up": phase["calls"] == CALLS,
            "replies": phase["replies"] >= quiet["replies"] * 0.8,
            "reply p95": phase["eot_to_first_audio_p95_ms"]
            <= quiet["eot_to_first_audio_p95_ms"] + REPLY_P95_MARGIN_MS,
            "jitter p99": phase["pacing_jitter_p99_ms"]
            <= quiet["pacing_jitter_p99_ms"] + JITTER_P99_MARGIN_MS,
        }
        failures += [f"{attack}: {name}" for name, ok in checks.items() if not ok]
    if failures:
        pytest.fail("\n".join([*failures, format_hostile(report)]), pytrace=False)
