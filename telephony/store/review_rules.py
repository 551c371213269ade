"""Why an ended call needs a supervisor's look: the review queue's rules, as pure functions of
the call's stored row, turns and events and its profile's thresholds (`review:` in the YAML).

- `failover`: Deepgram gave up and the call was handed over (the outcome, or the event);
- `unanswered`: a caller turn no bot turn answered before the caller spoke again or hung up
  (the call page marks the same turns);
- `latency`: a bot reply slower than the profile's `latency_ms`;
- `barge-ins`: the caller spoke over the bot at least `barge_ins` times;
- `human`: a caller turn with one of the profile's `human_phrases` (whole words), said to the
  bot: not in transcribe mode, nor after a handover (the caller is talking to a person then).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from telephony.config.qa import ReviewConfig
from telephony.outcome import Outcome
from telephony.transcript import CUT_BY_CALLER, EventKind

RULES: dict[str, str] = {
    "failover": "Failed over",
    "unanswered": "Unanswered question",
    "latency": "Slow reply",
    "barge-ins": "Barge-ins",
    "human": "Asked for a person",
}
BOT_MODES = ("flux", "agent")
QUOTE_CHARS = 80


def unanswered_turns(turns: Iterable[Mapping[Any, Any]], mode: str) -> set[int]:
    """Caller turns (by index) in a bot call that no bot turn followed before the caller spoke
    again or the call ended. `turns` in call-audio order (as the timeline has them).
    Backchannels ("mm-hmm" over the bot, session/barge_in.py) expect no answer."""
    if mode not in BOT_MODES:
        return set()
    ordered = [t for t in turns if not (t.get("meta") or {}).get("backchannel")]
    out: set[int] = set()
    for k, here in enumerate(ordered):
        after = ordered[k + 1] if k + 1 < len(ordered) else None
        if here["role"] == "caller" and (after is None or after["role"] == "caller"):
            out.add(here["idx"])
    return out


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"


def flags_of(
    call: Mapping[Any, Any],
    turns: list[Mapping[Any, Any]],
    events: Iterable[tuple[str, Mapping[Any, Any] | None, int]],
    review: ReviewConfig,
) -> dict[str, str]:
    """The rules an ended call trips, each with a short reason a supervisor reads. `events`:
    (kind, data, ms) of its upstream-failed and handover events."""
    flags: dict[str, str] = {}
    events = list(events)
    failed = [data or {} for kind, data, _ in events if kind == EventKind.UPSTREAM_FAILED]
    handover = min((ms for kind, _, ms in events if kind == EventKind.HANDOVER), default=None)
    if call["end_reason"] == Outcome.FAILOVER or failed:
        why = failed[0] if failed else {}
        parts = [str(why.get("endpoint", "")), str(why.get("reason", ""))]
        flags["failover"] = " ".join(p for p in parts if p) or str(call.get("end_detail") or "")
    in_order = sorted(turns, key=lambda t: (t["start_ms"], t["idx"]))  # the timeline's order
    if missed := sorted(unanswered_turns(in_order, call.get("mode") or "")):
        flags["unanswered"] = "caller turn " + ", ".join(f"#{i}" for i in missed)
    bot = [t for t in turns if t["role"] == "bot"]
    latencies = [t["latency_ms"] for t in bot if t["latency_ms"] is not None]
    if review.latency_ms is not None and latencies and max(latencies) > review.latency_ms:
        flags["latency"] = f"slowest reply {max(latencies)} ms (threshold {review.latency_ms} ms)"
    barge_ins = sum(
        1 for t in bot if t["interrupted"] and (t["meta"] or {}).get("cut_by") == CUT_BY_CALLER
    )
    if review.barge_ins is not None and barge_ins >= review.barge_ins:
        flags["barge-ins"] = f"{barge_ins} barge-ins (threshold {review.barge_ins})"
    pattern = review.human_re if call.get("mode") in BOT_MODES else None
    if pattern is not None:
        for t in in_order:
            if handover is not None and t["start_ms"] >= handover:
                break  # a person has the call from here
            if t["role"] == "caller" and pattern.search(t["text"] or ""):
                flags["human"] = f'caller turn #{t["idx"]}: "{_quote(t["text"])}"'
                break
    return flags
