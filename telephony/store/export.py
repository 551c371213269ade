"""A stored call as staff see it: heard vs unheard text, one timeline, JSON and plain-text export.

Input is the dict `get_call` returns (the call row with `turns` and `events`). Times are call
audio milliseconds; wall-clock instants are epoch seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from telephony.outcome import label

_WORD = re.compile(r"[\w']+")


def heard_split(text: str, heard: str | None) -> tuple[str, str]:
    """(heard part, unheard rest) of a bot turn's generated text.

    `heard` None means the whole text was heard (caller turns, uninterrupted bot turns). When
    the heard text is a prefix of the generated text the split is exact; otherwise (heard text
    assembled from spoken segments, or estimated from audio played) it is made after the last
    word the two share in order.
    """
    if heard is None:
        return text, ""
    if text.startswith(heard):
        return heard, text[len(heard) :]
    heard_words = [w.lower() for w in _WORD.findall(heard)]
    end = 0
    for matched, m in enumerate(_WORD.finditer(text)):
        if matched >= len(heard_words) or m.group().lower() != heard_words[matched]:
            break
        end = m.end()
    while end and end < len(text) and not text[end].isspace() and not text[end].isalnum():
        end += 1  # the matched word's punctuation was heard with it
    return text[:end], text[end:]


def clock(ms: int | None) -> str:
    """Call-audio milliseconds as m:ss.d (h:mm:ss.d past an hour)."""
    if ms is None:
        return ""
    tenths = max(0, int(ms)) // 100
    s, d = divmod(tenths, 10)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02}:{s:02}.{d}" if h else f"{m}:{s:02}.{d}"


@dataclass(frozen=True, slots=True)
class Item:
    """One row of the timeline: a turn or an event, at a call-audio time."""

    ms: int
    kind: str  # "turn" or the event kind
    turn: dict[str, Any] | None = None
    event: dict[str, Any] | None = None


def timeline(call: dict[str, Any]) -> list[Item]:
    """Turns and events in call-audio order; at equal times a turn precedes its events."""
    items = [Item(t["start_ms"], "turn", turn=t) for t in call.get("turns", [])]
    items += [Item(e["ms"], e["kind"], event=e) for e in call.get("events", [])]
    return sorted(items, key=lambda i: (i.ms, i.turn is None))


def _utc(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def as_json(call: dict[str, Any]) -> dict[str, Any]:
    """A self-describing document: the call, its turns (with heard/unheard) and events."""
    turns = []
    for t in call.get("turns", []):
        heard, unheard = heard_split(t["text"], t.get("heard"))
        turns.append({**t, "heard_part": heard, "unheard_part": unheard})
    return {
        "sid": call["sid"],
        "from": call.get("from_number", ""),
        "to": call.get("to_number", ""),
        "profile": call.get("profile", ""),
        "mode": call.get("mode", ""),
        "started_at": _utc(call.get("started_at")),
        "ended_at": _utc(call.get("ended_at")),
        "end_reason": call.get("end_reason", ""),  # an Outcome (telephony/outcome.py)
        "end_detail": call.get("end_detail", ""),
        "duration_ms": call.get("duration_ms"),
        "has_recording": bool(call.get("recording_path")),
        "turns": turns,
        "events": call.get("events", []),
    }


def _details(data: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (data or {}).items())


def _outcome(call: dict[str, Any]) -> str:
    """E.g. "Bot hung up: stop" (the label, then the free-text detail)."""
    text = label(call.get("end_reason")) or "ended"
    return f"{text}: {call['end_detail']}" if call.get("end_detail") else text


def as_text(call: dict[str, Any]) -> str:
    """A transcript a person can read or paste into a ticket."""
    lines = [
        f"Call {call['sid']}",
        f"From {call.get('from_number', '')} to {call.get('to_number', '')}"
        f" - profile {call.get('profile', '')} ({call.get('mode', '')})",
        f"Started {_utc(call.get('started_at')) or '?'}"
        + (
            f", ended {_utc(call['ended_at'])} ({_outcome(call)})"
            if call.get("ended_at")
            else ", in progress"
        ),
        "",
    ]
    for item in timeline(call):
        at = f"[{clock(item.ms)}]"
        if item.turn is not None:
            t = item.turn
            heard, unheard = heard_split(t["text"], t.get("heard"))
            who = {"caller": "Caller", "staff": "Staff"}.get(t["role"], "Bot")
            latency = f" ({t['latency_ms']} ms)" if t.get("latency_ms") is not None else ""
            lines.append(f"{at} {who}{latency}: {heard.strip() or '(nothing heard)'}")
            if unheard.strip():
                lines.append(f"{' ' * len(at)}   not heard (interrupted): {unheard.strip()}")
        else:
            detail = _details((item.event or {}).get("data"))
            lines.append(f"{at} -- {item.kind}" + (f": {detail}" if detail else ""))
    return "\n".join(lines) + "\n"
