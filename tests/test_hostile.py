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
from telephony.sim.hostile import ATTACKS, attack_seconds

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


# What a CPU spike from another worker moves as well as a regression does: replies finished
# in the 4 s window count too (a slow reply lands after it).
LATENCY_CHECKS = ("replies", "reply p95", "jitter p99")


def _failures(report: dict, attacks: tuple[str, ...]) -> dict[str, list[str]]:
    """The checks each attack phase failed, against the same run's quiet phase."""
    quiet = report["phases"][QUIET]
    assert quiet["errors"] == {}
    assert quiet["calls"] == CALLS
    assert quiet["replies"] >= CALLS  # every call got at least its first reply in the window
    failed: dict[str, list[str]] = {}
    for attack in attacks:
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
        if names := [name for name, ok in checks.items() if not ok]:
            failed[attack] = names
    return failed


def _run(attacks: tuple[str, ...]) -> dict:
    # 20 calls need no 1 s ramp (a CLI run's default, for more calls): 0.5 s each phase.
    options = HostileOptions(attacks=attacks, calls=CALLS, seconds=SECONDS, pin=False, ramp_s=0.5)
    return load_run(run_hostile(options))


@pytest.mark.process
def test_one_hostile_client_leaves_good_calls_alone() -> None:
    """One run (about a minute) for every attack: a module fixture would run again on each
    xdist worker that a parametrized test landed on.

    A phase that misses only a latency bound is measured once more (a new run of the quiet
    phase and that attack): the other worker's load comes and goes between 4 s phases, and
    a spike lands on one phase, where a regression (seconds, as before the fixes) lands on
    both runs. Any other failed check fails at once."""
    report = _run(ATTACKS)
    failed = _failures(report, ATTACKS)
    again = tuple(a for a, names in failed.items() if set(names) <= set(LATENCY_CHECKS))
    reports = [report]
    if again:
        retry = _run(again)
        reports.append(retry)
        still = _failures(retry, again)
        for attack in again:
            if attack in still:
                failed[attack] = [f"{name} (twice)" for name in still[attack]]
            else:
                del failed[attack]
    if failed:
        lines = [f"{attack}: {name}" for attack, names in failed.items() for name in names]
        pytest.fail("\n".join([*lines, *map(format_hostile, reports)]), pytrace=False)


def _canned(reply_p95: dict[str, float]) -> dict:
    """A report in run_hostile's shape: every attack refused, the given reply p95s."""
    attack_got = {
        "body": {"/twilio/voice 413": 3},
        "replay": {"streams alive at the end": 1},
        "pump": {"calls": 3, "closed 1008": 2},
        "bigframes": {"calls": 3, "closed 1009": 2},
        "login": {"login 429": 5},
    }
    phases = {
        name: {
            "attack": attack_got.get(name, {}),
            "errors": {},
            "calls": CALLS,
            "replies": 40,
            "eot_to_first_audio_p95_ms": p95,
            "pacing_jitter_p99_ms": 2.0,
        }
        for name, p95 in reply_p95.items()
    }
    return {"phases": phases}


@pytest.mark.parametrize(
    "second, fails",
    [(420.0, False), (900.0, True)],
    ids=["a spike measured again passes", "slow twice fails"],
)
def test_a_latency_miss_is_measured_again_before_failing(
    monkeypatch: pytest.MonkeyPatch, second: float, fails: bool
) -> None:
    first = _canned({QUIET: 400.0, **dict.fromkeys(ATTACKS, 410.0), "replay": 900.0})
    runs = iter([first, _canned({QUIET: 400.0, "replay": second})])
    asked: list[tuple[str, ...]] = []

    def fake_run(attacks: tuple[str, ...]) -> dict:
        asked.append(attacks)
        return next(runs)

    monkeypatch.setattr("tests.test_hostile._run", fake_run)
    monkeypatch.setattr("tests.test_hostile.format_hostile", lambda report: "")
    if fails:
        with pytest.raises(pytest.fail.Exception, match=r"replay: reply p95 \(twice\)"):
            test_one_hostile_client_leaves_good_calls_alone()
    else:
        test_one_hostile_client_leaves_good_calls_alone()
    assert asked == [ATTACKS, ("replay",)]


def test_a_refusal_miss_fails_without_a_second_run(monkeypatch: pytest.MonkeyPatch) -> None:
    report = _canned({QUIET: 400.0, **dict.fromkeys(ATTACKS, 410.0)})
    report["phases"]["pump"]["attack"] = {"calls": 1}  # the service never closed its call
    monkeypatch.setattr("tests.test_hostile._run", lambda attacks: report)
    monkeypatch.setattr("tests.test_hostile.format_hostile", lambda report: "")
    with pytest.raises(pytest.fail.Exception, match="pump: refused"):
        test_one_hostile_client_leaves_good_calls_alone()


def test_the_attacker_attacks_until_the_window_ends_however_late_it_started() -> None:
    """bench_hostile starts the attacker while the good calls settle and passes the window's
    end: the attack lasts until then, or its minimum if its start-up ran past it."""
    assert attack_seconds(4.0, None, 100.0) == 4.0
    assert attack_seconds(1.0, 105.0, 100.5) == 4.5
    assert attack_seconds(1.0, 105.0, 104.5) == 1.0
