"""The app's insights worker: ended calls through `/v1/read`, in the background.

Fed by the transcript writer once a call's end (and its `pending` row) is committed
(`TranscriptStore.on_insights`): `offer` only does `put_nowait` on a bounded queue, so
nothing upstream ever waits here. A full queue drops the offer; the row stays `pending` and
a sweep, at start and every `sweep_s`, offers the pending rows untouched for `lease_s`: a row
is touched when its call is claimed for analysis, and one analysis with every retry (four
tries of up to 30 s, Retry-After waits of up to 2 min) ends well within the default 10 min, so
no instance's sweep takes a call another one is still working on. `stop` lets requests
in flight finish for up to `stop_timeout_s`, then cancels them: whatever is not `done` or
`failed` stays `pending` for the next start's sweep or `telephony insights run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.config.schema import Profile
from telephony.deepgram.read import ReadClient
from telephony.insights.analyze import POLICY, analyze_call
from telephony.insights.metrics import InsightsMetrics
from telephony.retry import RetryPolicy
from telephony.store import insights as store
from telephony.store.health import describe

log = logging.getLogger(__name__)


class InsightsWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        client: ReadClient,
        profiles: Callable[[], Mapping[str, Profile]],
        *,
        metrics: InsightsMetrics | None = None,
        queue_size: int = 1000,
        workers: int = 2,
        sweep_s: float = 60.0,
        lease_s: float = 600.0,
        stop_timeout_s: float = 5.0,
        policy: RetryPolicy = POLICY,
    ) -> None:
        self.engine = engine
        self.client = client
        self._profiles = profiles  # read per call: a YAML reload applies to the next one
        self.metrics = metrics
        self.policy = policy
        self.sweep_s = sweep_s
        self.lease_s = lease_s
        self.stop_timeout_s = stop_timeout_s
        self._queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self._known: set[str] = set()  # queued or being analysed: offered once at a time
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[str]] = set()
        self.dropped = 0  # offers refused by a full queue (their rows stay pending)
        if metrics is not None:
            metrics.watch_queue(lambda: self._queue.qsize())

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def offer(self, sids: list[str]) -> None:
        """Queue these calls for analysis; never blocks. A full queue leaves them pending."""
        for sid in sids:
            if sid in self._known:
                continue
            try:
                self._queue.put_nowait(sid)
            except asyncio.QueueFull:
                self.dropped += 1
                continue
            self._known.add(sid)

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._consume(), name=f"insights-{n}") for n in range(self._workers)
        ]
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="insights-sweep"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        sweeper, consumers = tasks[-1], tasks[:-1]
        sweeper.cancel()
        # Take nothing new; what is in flight may finish within the timeout.
        while not self._queue.empty():
            self._known.discard(self._queue.get_nowait())
        if self._busy:
            await asyncio.wait(set(self._busy), timeout=self.stop_timeout_s)
        busy = list(self._busy)  # past the timeout: cancelled, their rows stay pending
        for task in [*busy, *consumers]:
            task.cancel()
        for task in [*busy, *tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._known.clear()

    async def sweep(self) -> int:
        """Offer the pending rows untouched for `lease_s`; how many were found."""
        room = self._queue.maxsize - self._queue.qsize()
        if room <= 0:
            return 0
        older_than = time.time() - self.lease_s
        sids = await store.pending_sids(self.engine, room, older_than=older_than)
        self.offer(sids)
        return len(sids)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the database is down: the next sweep tries again
                log.warning("insights sweep failed: %s", describe(exc))
            await asyncio.sleep(self.sweep_s)

    async def _consume(self) -> None:
        while True:
            sid = await self._queue.get()
            task = asyncio.create_task(self._analyze(sid), name="insights-call")
            self._busy.add(task)
            try:
                # shield: stop() waits for the analysis itself, then cancels this loop
                await asyncio.shield(task)
            except Exception as exc:
                log.warning(
                    "insights for a call failed: %s", describe(exc), extra={"call_sid": sid}
                )
            finally:
                self._busy.discard(task)
                self._known.discard(sid)

    async def _analyze(self, sid: str) -> str:
        return await analyze_call(
            self.engine,
            self.client,
            self._profiles(),
            sid,
            policy=self.policy,
            metrics=self.metrics,
            only_pending=True,  # a call offered twice (its recording's end) is analysed once
        )
