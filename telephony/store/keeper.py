"""The transcript store's keeper task: off the audio path, it watches the store's database.

Every ``check_s`` it checks that the SQLite file is still the one opened at start
(telephony/store/health.py); every ``heartbeat_s`` it writes this process's heartbeat and closes
the calls dead instances left open (telephony/store/instances.py). A failure is a fault episode
of the store's health, retried at the next heartbeat; a deleted or replaced file stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store import instances
from telephony.store.bounded_wait import wait_at_most
from telephony.store.health import FileIdentity, StoreHealth, sqlite_path
from telephony.store.instances import Instance
from telephony.store.review_queue import ReviewFor

KEEPER_FIRST_TIMEOUT_S = 5.0  # start() waits no longer for the first heartbeat and sweep


class Kept(Protocol):
    """What the keeper reads of the store (``TranscriptStore``); re-read at every use."""

    engine: AsyncEngine
    health: StoreHealth
    instance: Instance | None
    heartbeat_s: float
    stale_after_s: float
    check_s: float
    review_for: ReviewFor

    @property
    def queue_depth(self) -> int: ...


class Keeper:
    def __init__(self, store: Kept, file: FileIdentity | None) -> None:
        self.store = store
        self.file = file  # None: not a SQLite file, nothing to watch

    async def check_file(self) -> None:
        health = self.store.health
        if self.file is None or health.replaced:
            return
        if not await asyncio.to_thread(self.file.still_there):  # a stat: never on the loop
            health.file_replaced(self.file.path, self.store.queue_depth)

    async def heartbeat(self) -> None:
        """One heartbeat and one sweep."""
        store = self.store
        if store.instance is None or store.health.replaced:
            return
        try:
            await instances.heartbeat(store.engine, store.instance)
            await instances.sweep(
                store.engine,
                store.instance,
                stale_after_s=store.stale_after_s,
                review_for=store.review_for,
            )
        except Exception as exc:
            await self.failed("heartbeat", exc)
        else:
            store.health.succeeded("heartbeat")

    async def failed(self, what: str, exc: Exception) -> None:
        """A write or heartbeat failed: reported as the file's deletion or replacement when
        that is the cause (a deleted file fails as "attempt to write a readonly database"),
        else as a fault episode. One ERROR naming the real cause, not two."""
        await self.check_file()
        if not self.store.health.replaced:
            self.store.health.failed(what, exc, self.store.queue_depth)

    async def once(self) -> None:
        await self.check_file()
        await self.heartbeat()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(min(self.store.check_s, self.store.heartbeat_s))
            await self.check_file()
            if loop.time() - last >= self.store.heartbeat_s:
                last = loop.time()
                # The store's stop cancels this task: the heartbeat's transaction is let
                # finish, or it could hold SQLite's lock against the final flush.
                await wait_at_most(self.heartbeat(), None)


async def start_keeper(store: Kept) -> tuple[Keeper, asyncio.Task[None]] | None:
    """The store's keeper and its task, after its first round; None when it has nothing to
    keep."""
    path = sqlite_path(store.engine.url.render_as_string(hide_password=False))
    file = await asyncio.to_thread(FileIdentity.of, path) if path else None
    if store.instance is None and file is None:
        return None
    keeper = Keeper(store, file)
    # The first heartbeat before any call row names this instance, and the calls a crashed
    # predecessor left open are closed before the first page is served.
    with contextlib.suppress(TimeoutError):
        await wait_at_most(keeper.once(), KEEPER_FIRST_TIMEOUT_S)  # never cancelled mid-write
    return keeper, asyncio.create_task(keeper.run(), name="store-keeper")
