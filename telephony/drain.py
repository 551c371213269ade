"""Graceful drain for `telephony serve`: on SIGTERM stop taking calls, let live ones finish.

uvicorn's own handler starts shutting down on the first SIGTERM, and its shutdown closes every
WebSocket, so every live call would be cut mid-sentence. `DrainingServer` takes SIGTERM and
SIGINT over:

1. First signal: `services.drain.draining = True` at once. /readyz answers 503 (the load balancer or
   Kubernetes stops routing here) and the webhook turns new calls away (busy message, or
   `<Redirect>` to TELEPHONY_OVERFLOW_REDIRECT_URL). HTTP and WebSockets are still served, so
   live calls go on, and calls answered just before (socket on its way) still connect.
2. The drain waits until no call is live or expected, or for TELEPHONY_DRAIN_TIMEOUT_S. Calls
   still live then hear a goodbye through Twilio's REST API and their streams are closed
   (`Call.end`, the time limit's path): end reason `drained`, detail "server draining".
3. Then uvicorn shuts down as usual; the app's lifespan shutdown flushes the transcript store,
   and the process exits 0.

A second signal skips the rest of the wait (step 2 at once; transcripts are still flushed). A
third exits at once (uvicorn's force exit: connections are not waited for and the lifespan
shutdown is skipped, so buffered transcript rows can be lost; the exit status is 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Protocol

import uvicorn

from telephony.outcome import Outcome
from telephony.session.call import Call
from telephony.session.registry import CallRegistry
from telephony.session.services import DrainState
from telephony.transcript import EventKind
from telephony.twilio import twiml

log = logging.getLogger(__name__)

DRAIN_REASON = "server draining"  # the end detail of calls the drain ends (outcome: drained)
DRAIN_TWIML = twiml.say_and_hang_up(
    "Sorry, this line has to close now for maintenance. Please call again. Goodbye."
)
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
END_GRACE_S = 15.0  # for the goodbyes (one REST round trip each) and the calls to wind down
# uvicorn's graceful shutdown after the drain (connections, tasks); whole seconds, as
# uvicorn's timeout_graceful_shutdown is declared.
SHUTDOWN_GRACE_S = 10
PROGRESS_LOG_S = 10.0
POLL_S = 0.1


class Drainable(Protocol):
    """What the drain needs of the app's `Services` (telephony/session/services.py)."""

    @property
    def registry(self) -> CallRegistry: ...

    @property
    def drain(self) -> DrainState: ...


async def drain(
    services: Drainable,
    timeout_s: float,
    hurry: asyncio.Event | None = None,
    *,
    end_grace_s: float = END_GRACE_S,
) -> None:
    """Turn new calls away, wait for live ones, end the rest at `timeout_s` (or on `hurry`).

    Returns once no call is left on this instance, or `end_grace_s` after the goodbyes began.
    """
    registry = services.registry
    services.drain.draining = True
    hurry = hurry or asyncio.Event()
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout_s
    log.warning(
        "drain started: /readyz is 503 and new calls are turned away; %d call(s) live, "
        "%d answered and connecting; waiting up to %.0f s for them to finish",
        len(registry.live),
        len(registry.reserved),
        timeout_s,
    )
    next_report = start + PROGRESS_LOG_S
    while registry.load() and not hurry.is_set():
        now = loop.time()
        if now >= deadline:
            break
        if now >= next_report:
            next_report += PROGRESS_LOG_S
            log.info("draining: %d call(s) live, %.0f s left", len(registry.live), deadline - now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), min(POLL_S, deadline - now))
    if not registry.live:
        if registry.reserved:
            log.warning(
                "drain: %d answered call(s) never connected; not waiting for them",
                len(registry.reserved),
            )
        log.info("drain complete after %.1f s: no live calls", loop.time() - start)
        return
    why = "second signal" if hurry.is_set() else f"drain limit of {timeout_s:.0f} s reached"
    await end_live_calls(registry, why, end_grace_s)


async def end_live_calls(registry: CallRegistry, why: str, grace_s: float) -> None:
    """Every live call (and any that connects meanwhile) hears the goodbye and is closed."""
    log.warning("drain: %s; ending %d live call(s) with a goodbye", why, len(registry.live))
    asked: set[Call] = set()
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    try:
        while registry.live and loop.time() < deadline:
            for call in list(registry.live.values()):
                if call not in asked:
                    asked.add(call)
                    twiml = _goodbye(call)
                    what = "with a goodbye" if twiml else "stream only (the call goes on)"
                    call.log.warning("ending the call: %s, %s", DRAIN_REASON, what)
                    end = call.end(
                        DRAIN_REASON, twiml, EventKind.DRAIN, outcome=Outcome.DRAINED, why=why
                    )
                    task = loop.create_task(end)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.sleep(POLL_S)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if registry.live:
        log.error(
            "drain: %d call(s) still open %.0f s after their goodbye; shutdown closes them",
            len(registry.live),
            grace_s,
        )
    else:
        log.info("drain: all %d ended call(s) are over", len(asked))


def _goodbye(call: Call) -> str | None:
    """The drain's goodbye, for calls the bot is in. A call we only transcribe (a transcribe
    profile, or transcription continuing after a transfer to a person) is not ours to end:
    only its stream is closed, the conversation goes on."""
    if call.profile.mode == "transcribe" or getattr(call, "continuation", None) is not None:
        return None
    return DRAIN_TWIML


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM/SIGINT drains calls (see the module doc) before exiting."""

    def __init__(
        self,
        config: uvicorn.Config,
        services: Callable[[], Drainable | None],
        drain_timeout_s: float,
    ) -> None:
        """`services`: the app's, once its lifespan has built them (None before)."""
        super().__init__(config)
        self.services = services
        self.drain_timeout_s = drain_timeout_s
        self.signals = 0
        self.forced = False  # a third signal: exited without waiting
        self._hurry = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Replace uvicorn's handlers (exit at once, then re-raise the signal on the way out)."""
        loop = asyncio.get_running_loop()
        try:
            for sig in DRAIN_SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            log.warning("cannot handle signals here: no graceful drain, uvicorn's own handling")
            with super().capture_signals():
                yield
            return
        try:
            yield
        finally:
            for sig in DRAIN_SIGNALS:
                loop.remove_signal_handler(sig)
            if self._drain_task is not None and not self._drain_task.done():
                self._drain_task.cancel()  # a forced exit: the drain was still waiting

    def _on_signal(self, sig: int) -> None:
        self.signals += 1
        name = signal.Signals(sig).name
        if self.signals == 1:
            log.warning(
                "%s: draining (send again to end the remaining calls now, a third time to "
                "exit without waiting)",
                name,
            )
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="drain")
        elif self.signals == 2:
            log.warning("%s again: ending the remaining calls now", name)
            self._hurry.set()
        else:
            log.error("%s a third time: exiting now, without waiting or flushing", name)
            self.forced = True
            self.should_exit = True
            self.force_exit = True

    async def _drain(self) -> None:
        try:
            services = self.services()
            if services is None:  # a signal during start-up: no call can be live yet
                log.warning("signal before the app had started: nothing to drain")
            else:
                await drain(services, self.drain_timeout_s, self._hurry)
        except Exception:
            log.exception("drain failed; shutting down anyway")
        finally:
            log.warning("drain over: shutting down (the transcript store is flushed on the way)")
            self.should_exit = True
