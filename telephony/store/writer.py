"""The write-behind queue under the transcript store, and its one writer task.

The call path only enqueues (``put_nowait`` on a bounded queue): it never waits for the
database. The writer drains the queue into a buffer, writes the buffer in one transaction at
least every ``flush_interval`` seconds, and on a database error keeps the buffer and retries
with backoff. While it retries it stops draining, so the queue fills up and further rows are
counted in ``dropped`` (with an error log) instead of growing memory or blocking the caller.
Rows the database rejects as invalid are isolated (written one by one) and counted in
``failed``. The SQL a batch becomes is in telephony/store/batch.py; what the rows are is
telephony/store/transcripts.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypedDict

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.batch import Row, insight_sids, write_batch
from telephony.store.engine import make_engine
from telephony.store.health import StoreHealth, describe, reopen
from telephony.store.keeper import Keeper
from telephony.store.review_queue import ReviewFor, default_review

log = logging.getLogger(__name__)

STATUS_RETRY_S = 1.0  # a status callback whose call has no row yet is tried again this often


def _permanent(exc: BaseException) -> bool:
    """Errors caused by the rows themselves: retrying the same rows can never succeed."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


class WriterOptions(TypedDict, total=False):
    """The writer's knobs (BatchWriter's keyword arguments, passed on by its subclasses)."""

    queue_size: int
    flush_interval: float
    max_batch: int
    min_backoff: float
    max_backoff: float
    stop_timeout: float


class BatchWriter:
    """A bounded queue of rows and the task that writes them in batches, retried."""

    def __init__(
        self,
        engine: AsyncEngine | str,
        *,
        queue_size: int = 10_000,
        flush_interval: float = 0.5,
        max_batch: int = 1_000,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._owns_engine = isinstance(engine, str)
        # Public seam: the writer reads it on every attempt, so it may be swapped live.
        self.engine: AsyncEngine = make_engine(engine) if isinstance(engine, str) else engine
        self._queue: asyncio.Queue[Row | None] = asyncio.Queue(queue_size)
        self._buffer: list[Row] = []
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0  # rows refused because the queue was full (or lost at stop)
        self.retries = 0  # failed write attempts that were retried
        self.failed = 0  # rows the database rejected as invalid (logged)
        self.written = 0  # rows committed
        self.unknown_status = 0  # status callbacks for calls never carried: not recorded
        self._status_retries: dict[int, asyncio.TimerHandle] = {}  # id(row) -> its retry
        self._watch: Keeper | None = None  # the store's keeper, which tells a failure's cause
        self.health = StoreHealth()
        # Public seam: the profiles' QA review thresholds, from the current YAML (the app
        # wires it; read at each write, so a reload applies to the next call's end).
        self.review_for: ReviewFor = default_review
        self._wake = asyncio.Event()  # stop() wakes a writer holding its rows
        # Told the SIDs of calls whose pending insights row was just committed (the insights
        # worker's queue: it must not block). Runs on the writer task, never the call's.
        self.on_insights: Callable[[list[str]], None] | None = None

    def _start_writer(self) -> None:
        if self._task is None:
            self._stopping = False
            self._wake.clear()
            self._task = asyncio.create_task(self._run(), name="transcript-store-writer")

    async def _stop_writer(self) -> None:
        """Flush everything queued (bounded by ``stop_timeout``); count what could not be."""
        for handle in self._status_retries.values():
            handle.cancel()
        self.dropped += len(self._status_retries)  # lost at stop, like the queue's rows
        self._status_retries.clear()
        task, self._task = self._task, None
        if self.health.replaced and task is not None:
            # Held rows go to the file at the path now: a restored backup, or a new database.
            self.engine = await reopen(self.engine, owned=self._owns_engine)
            self._owns_engine = True
        if task is not None:
            self._stopping = True
            self._wake.set()
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # wake the writer; if full it is awake anyway
            with contextlib.suppress(TimeoutError):  # on timeout wait_for cancels the writer
                await asyncio.wait_for(task, self.stop_timeout)
        lost = len(self._buffer) + sum(1 for r in self._drain() if r is not None)
        self._buffer.clear()
        if lost:
            self.dropped += lost
            log.error("transcript store stopped with %d rows unwritten", lost)

    @property
    def queue_depth(self) -> int:
        """Rows waiting: queued plus buffered in the writer."""
        return self._queue.qsize() + len(self._buffer)

    def _put_row(self, row: Row) -> None:
        kind, values = row.kind, row.values
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1
            # One line per drop would flood the log during an outage: log at powers of two
            if self.dropped & (self.dropped - 1) == 0 or self.dropped % 1000 == 0:
                log.error(
                    "transcript store queue full: dropped %s row (%d dropped so far)",
                    kind,
                    self.dropped,
                    extra={"call_sid": values.get("sid") or values.get("call_sid")},
                )

    # -- the writer --------------------------------------------------------------------
    def _drain(self) -> list[Row | None]:
        out: list[Row | None] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def _take(self, limit: int) -> None:
        while len(self._buffer) < limit and not self._queue.empty():
            row = self._queue.get_nowait()
            if row is not None:
                self._buffer.append(row)

    async def _run(self) -> None:
        backoff = self.min_backoff
        while True:
            if not self._buffer:
                if self._stopping and self._queue.empty():
                    return
                row = await self._queue.get()  # idle: wait for the first row
                if row is not None:
                    self._buffer.append(row)
                # Gather for up to flush_interval so a batch shares one commit.
                deadline = asyncio.get_running_loop().time() + self.flush_interval
                while not self._stopping and len(self._buffer) < self.max_batch:
                    self._take(self.max_batch)
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0 or len(self._buffer) >= self.max_batch:
                        break
                    try:
                        row = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                    if row is not None:
                        self._buffer.append(row)
            self._take(self.max_batch)
            if not self._buffer:
                continue
            if self.health.replaced and not self._stopping:
                # Writing on would commit into the unlinked file: hold the rows until stop().
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.max_backoff)
                continue
            exc = await self._attempt()
            if exc is None:
                backoff = self.min_backoff
                if self.health.failing and self._watch and self._watch.file is not None:
                    # A SQLite file recovered: connections opened during the fault may be
                    # read-only for good (schema.py), so the pool starts afresh.
                    await self.engine.dispose()
                self.health.succeeded("write")
                continue
            self.retries += 1
            if self._watch is not None:  # a deleted file is reported as that
                await self._watch.failed("write", exc)
            else:
                self.health.failed("write", exc, self.queue_depth)  # logged once per episode
            log.debug("transcript store write failed, retry in %.2fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _attempt(self) -> Exception | None:
        """Write the buffer; on success it is emptied. Returns the transient error, if any."""
        try:
            unmatched = await write_batch(self.engine, self._buffer, self.review_for)
        except Exception as exc:
            if not _permanent(exc):
                return exc
        else:
            self.written += len(self._buffer) - len(unmatched)
            self._ended_with_insights(self._buffer)
            self._buffer.clear()
            self._retry_status(unmatched)
            return None
        try:
            await self._flush_one_by_one()
        except Exception as exc:
            return exc
        return None

    async def _flush_one_by_one(self) -> None:
        """Isolate rows the database rejects; the rest are written. Transient errors raise
        through to the caller's retry path with the unwritten rows still buffered."""
        while self._buffer:
            row = self._buffer[0]
            try:
                unmatched = await write_batch(self.engine, [row], self.review_for)
            except Exception as exc:
                if not _permanent(exc):
                    raise
                self.failed += 1
                # Not the row's values: what a caller said stays out of the logs.
                log.error("transcript store rejected a %s row: %s", row.kind, describe(exc))
            else:
                self.written += 1 - len(unmatched)
                self._ended_with_insights([row])
                self._retry_status(unmatched)
            self._buffer.pop(0)

    def _ended_with_insights(self, rows: list[Row]) -> None:
        if self.on_insights is not None and (sids := insight_sids(rows)):
            try:
                self.on_insights(sids)
            except Exception:  # a listener's bug must not make a committed batch look failed
                log.exception("insights listener failed; the calls stay pending")

    def _retry_status(self, rows: list[Row]) -> None:
        """Status callbacks whose call has no row yet: again in a while, or given up."""
        if not rows:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for row in rows:
            if now + STATUS_RETRY_S > row.until or self._stopping:
                self.unknown_status += 1
                log.info(
                    "status callback for a call not carried here: not recorded (%s)",
                    row.values["data"],
                    extra={"call_sid": row.values["call_sid"]},
                )
                continue
            self._status_retries[id(row)] = loop.call_later(STATUS_RETRY_S, self._requeue, row)

    def _requeue(self, row: Row) -> None:
        self._status_retries.pop(id(row), None)
        if not self._stopping:
            self._put_row(row)
