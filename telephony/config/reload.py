"""Hot reload of the numbers YAML: on file change (polled) and on demand (SIGHUP, admin page).

New calls read `ConfigStore.current`; a live call keeps the `Config` it started with. A broken
file keeps the previous configuration and logs every error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from telephony.config.loader import ConfigError, load_config
from telephony.config.schema import Config

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int] | None


class ConfigStore:
    """The current Config, reloaded on file change (watch) or on demand (SIGHUP -> reload)."""

    def __init__(self, path: str | Path, *, poll_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.poll_interval_s = poll_interval_s
        self._seen = self._stamp()
        self._config = load_config(self.path)  # a bad file at start-up is fatal
        self.version = 1
        self.last_error: str | None = None
        self.loaded_at = time.time()  # epoch s of the version in use

    @property
    def current(self) -> Config:
        return self._config

    def reload(self) -> bool:
        """Re-read now. On error the previous config stays and `last_error` says why."""
        return self._apply(*self._read())

    async def watch(self) -> None:
        """Poll the file's mtime, size and inode; reload when they change. Runs until cancelled."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            if self._stamp() == self._seen:
                continue
            try:
                result = await asyncio.to_thread(self._read)  # file I/O off the event loop
            except Exception:  # the watcher must outlive any surprise
                log.exception("config reload crashed; keeping version %d", self.version)
                self._seen = self._stamp()
                continue
            self._apply(*result)

    def _stamp(self) -> _Stamp:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> tuple[_Stamp, Config | ConfigError]:
        stamp = self._stamp()  # taken first: a write during the load triggers another reload
        try:
            return stamp, load_config(self.path)
        except ConfigError as exc:
            return stamp, exc

    def _apply(self, stamp: _Stamp, result: Config | ConfigError) -> bool:
        self._seen = stamp
        if isinstance(result, ConfigError):
            self.last_error = "\n".join(result.errors)
            log.warning(
                "config reload failed; keeping version %d: %s",
                self.version,
                " | ".join(result.errors),
            )
            return False
        self._config = result
        self.version += 1
        self.last_error = None
        self.loaded_at = time.time()
        log.info("config reloaded: version %d from %s", self.version, self.path)
        return True
