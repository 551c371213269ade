"""An ended call is freed by reference counting, at once: none of its objects is left in a
reference cycle.

Why it matters: objects in a cycle wait for a full garbage collection, and a full collection
stops the event loop — every live call's audio — for as long as it takes to scan every live
call's objects (~110 ms at 300 calls, more than the audio Twilio holds ahead). With ended calls
leaving no cycles, full collections find next to nothing and run only on a slow schedule
(telephony/collector.py).

How (`CallWatch`): the cyclic collector is off while the calls run; afterwards each Call, its
engine, its playout and its media socket must be gone (a weak reference to each is dead), with
nothing but reference counting having run. A failure names what is still alive and what holds
it. The transfer to a person (two streams, one call) is in tests/test_transcribe.py.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from telephony.demo import parse_fault, run_offline_call
from telephony.session.call import Call

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)


def _parts(call: Call) -> Iterator[tuple[str, Any]]:
    yield "call", call
    yield "engine", call.engine
    yield "playout", call.playout
    yield "media socket", call.socket


class CallWatch:
    """Weak references to every call built (and its parts) while installed, with the cyclic
    collector off; `left()` waits for them to go and names what did not."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.watched: list[tuple[str, weakref.ref[Any]]] = []
        built = Call.__init__

        def init(call: Call, *args: Any, **kwargs: Any) -> None:
            built(call, *args, **kwargs)
            self.watched.extend((name, weakref.ref(p)) for name, p in _parts(call) if p)

        monkeypatch.setattr(Call, "__init__", init)
        gc.collect()
        gc.disable()  # from here only reference counting frees anything (see `left`)

    @property
    def calls(self) -> int:
        return sum(1 for name, _ in self.watched if name == "call")

    async def left(self, within_s: float = 5.0) -> list[str]:
        """What is still alive once the calls are over (a call's last writes may still be
        finishing when the test's side is done: waited for, up to `within_s` of real time,
        whatever the loop's clock)."""
        try:
            deadline = time.monotonic() + within_s
            while time.monotonic() < deadline:
                if all(ref() is None for _, ref in self.watched):
                    return []
                await asyncio.sleep(0.05)
            return [self._describe(name, ref) for name, ref in self.watched if ref() is not None]
        finally:
            gc.enable()

    @staticmethod
    def _describe(name: str, ref: weakref.ref[Any]) -> str:
        holders = {type(r).__qualname__ for r in gc.get_referrers(ref())} - {"frame", "list"}
        return f"{name} held by {sorted(holders)}"


@pytest.fixture
def call_watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[CallWatch]:
    watch = CallWatch(monkeypatch)
    try:
        yield watch
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("mode", "faults"),
    [
        ("flux", []),
        ("flux", ["flux-drop@0.5", "speak-drop@1.0"]),  # reconnects
        ("flux", ["flux-stuck@0.5"]),  # a reply cancelled by the stuck-turn watchdog
        ("agent", []),
        ("agent", ["agent-drop@0.8"]),
        ("transcribe", []),
    ],
)
async def test_an_ended_call_leaves_nothing_for_the_cyclic_collector(
    mode: str, faults: list[str], call_watch: CallWatch
) -> None:
    result = await run_offline_call(
        mode=mode,
        hang_up_after_reply_s=None if mode == "transcribe" else 0.3,
        faults=[parse_fault(f) for f in faults],
    )
    left = await call_watch.left()
    assert result.summary is not None and result.summary.transcript.turns  # a real call ran
    assert call_watch.calls == 1 and len(call_watch.watched) == 4  # its engine, playout, socket
    assert not left, left
