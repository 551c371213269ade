"""An ended call is freed by reference counting, at once: none of its objects is left in a
reference cycle.

Why it matters: objects in a cycle wait for a full garbage collection, and a full collection
stops the event loop — every live call's audio — for as long as it takes to scan every live
call's objects (~110 ms at 300 calls, more than the audio Twilio holds ahead). With ended calls
leaving no cycles, the full collections find next to nothing and can be rare (routes/app.py).

How: the cyclic collector is off for the call; afterwards the Call, its engine, its playout and
its media socket must be gone (a weak reference to each is dead), with nothing but reference
counting having run. A failure names what is still alive and what holds it.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from telephony.demo import run_offline_call
from telephony.session.call import Call

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)


def _parts(call: Call) -> Iterator[tuple[str, Any]]:
    yield "call", call
    yield "engine", call.engine
    yield "playout", call.playout
    yield "media socket", call.socket
    yield "transcript listeners", call.transcript.listeners


def _holders(obj: object) -> list[str]:
    """What refers to `obj` (for the failure message): types, a level up."""
    return sorted({type(r).__qualname__ for r in gc.get_referrers(obj)} - {"list", "frame"})


@pytest.mark.parametrize("mode", ["flux", "agent", "transcribe"])
async def test_an_ended_call_leaves_nothing_for_the_cyclic_collector(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched: list[tuple[str, weakref.ref[Any]]] = []
    built = Call.__init__

    def init(self: Call, *args: Any, **kwargs: Any) -> None:
        built(self, *args, **kwargs)
        watched.extend(
            (name, weakref.ref(part))
            for name, part in _parts(self)
            if part is not None and type(part).__weakrefoffset__
        )

    monkeypatch.setattr(Call, "__init__", init)
    gc.collect()
    gc.disable()  # from here only reference counting frees anything
    try:
        result = await run_offline_call(
            mode=mode, hang_up_after_reply_s=None if mode == "transcribe" else 0.3
        )
        alive = [(name, ref()) for name, ref in watched if ref() is not None]
        detail = [f"{name} {type(obj).__qualname__} held by {_holders(obj)}" for name, obj in alive]
        del alive
    finally:
        gc.enable()
    assert result.summary is not None and result.summary.transcript.turns  # a real call ran
    assert len(watched) >= 4, watched  # the call, its engine, playout and socket were watched
    assert not detail, detail
