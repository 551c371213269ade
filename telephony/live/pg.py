"""The live bus over PostgreSQL: `NOTIFY` to send, one `LISTEN`ing connection per instance.

Sending is one statement per batch (`pg_notify` over an array of payloads) on a pooled
connection; PostgreSQL delivers the notifications when it commits, in order, to every session
listening on the channel, this instance's included (the bus skips its own). The listening
connection is taken from the store's engine and held; if it is lost, it is taken again (every
second while the database is away) and the bus tells its browsers to refetch, since events
sent meanwhile never reached us.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

CHANNEL = "telephony_live"
RETRY_S = 1.0
_SEND = text("SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) payload")


class PgNotify:
    def __init__(
        self, engine: AsyncEngine, *, on_lost: Callable[[str], None] | None = None
    ) -> None:
        self.engine = engine
        self.on_lost = on_lost  # the bus's reset_all: events may have been missed
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, heard: Callable[[bytes | str], None]) -> None:
        self._task = asyncio.create_task(self._listen(heard), name="live-listen")
        with contextlib.suppress(TimeoutError):  # the service starts even with the DB away
            async with asyncio.timeout(5):
                await self.listening.wait()

    async def send(self, payloads: list[bytes]) -> None:
        """One statement for the batch; once more on a fresh connection if the pooled one
        turned out dead (the database restarted since it was last used)."""
        params = {"channel": CHANNEL, "payloads": [p.decode() for p in payloads]}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(_SEND, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            async with self.engine.begin() as conn:
                await conn.execute(_SEND, params)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self, heard: Callable[[bytes | str], None]) -> None:
        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            heard(payload)

        first = True
        while True:
            try:
                async with self.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection  # asyncpg's connection
                    lost = asyncio.Event()
                    driver.add_termination_listener(functools.partial(_set, lost))
                    await driver.add_listener(CHANNEL, on_notify)
                    self.listening.set()
                    if not first and self.on_lost is not None:
                        self.on_lost("live events resumed after the database was away")
                    first = False
                    await lost.wait()
                    await conn.invalidate()  # never back into the pool for a sender
                    raise ConnectionError("listening connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                log.warning("live events: not listening (%s); again in %g s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)


def _set(event: asyncio.Event, _conn: object) -> None:
    event.set()
