"""`LoginLimiter`: staff login attempts in sliding windows, at three levels.

- per (client, account name): guessing one account's password from one place;
- per client, any names: a spray of names (made up or real) from one place;
- for the whole instance: many clients at once. This one sheds load rather than guessing: past
  it every login is refused for a moment, so a flood costs the CPU of the budget, not of the
  flood (each attempt is a ~50 ms scrypt run), and the calls' audio keeps its CPU.

An attempt is counted when it starts, before its password is checked: parallel attempts cannot
all slip in under the limit before the first of them is counted. A login that succeeds clears
its (client, name) window only. The client is the address uvicorn reports: the peer, or the
X-Forwarded-For of a proxy in TELEPHONY_TRUSTED_PROXIES (telephony/http_server.py).

In memory and per process, and bounded: each window keeps at most limit + 1 times, and past
`max_keys` keys per level the least recently used key is forgotten. Forgetting cannot reopen
guessing: a client that floods keys to push its own out still spends its per-client budget, and
many clients spend the global one.
"""

from __future__ import annotations

import time
from enum import StrEnum

from telephony.window import SlidingWindow


class Refusal(StrEnum):
    ACCOUNT = "account"  # this client, this name
    CLIENT = "client"  # this client, any names
    GLOBAL = "global"  # everyone


class _Windows:
    """One sliding window per key, at most `max_keys` of them (least recently used dropped)."""

    __slots__ = ("_windows", "limit", "max_keys", "window_s")

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._windows: dict[object, SlidingWindow] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def full(self, key: object, now: float) -> bool:
        window = self._windows.get(key)
        return window is not None and window.count(now) >= self.limit

    def add(self, key: object, now: float) -> None:
        window = self._windows.pop(key, None)  # re-inserted last: most recently used
        if window is None:
            window = SlidingWindow(self.limit, self.window_s)
            if len(self._windows) >= self.max_keys:
                del self._windows[next(iter(self._windows))]
        self._windows[key] = window
        window.add(now)

    def forget(self, key: object) -> None:
        self._windows.pop(key, None)


class LoginLimiter:
    def __init__(
        self,
        per_account: int = 5,
        per_client: int = 30,
        per_minute: int = 120,
        window_s: float = 300.0,
        max_keys: int = 10_000,
    ) -> None:
        self._accounts = _Windows(per_account, window_s, max_keys)
        self._clients = _Windows(per_client, window_s, max_keys)
        self._global = SlidingWindow(per_minute, 60.0)
        self.per_minute = per_minute

    def attempt(self, client: str, name: str, now: float | None = None) -> Refusal | None:
        """Count an attempt and return None, or refuse it (not counted) and say why."""
        now = time.monotonic() if now is None else now
        if self._accounts.full((client, name), now):
            return Refusal.ACCOUNT
        if self._clients.full(client, now):
            return Refusal.CLIENT
        if self._global.count(now) >= self.per_minute:
            return Refusal.GLOBAL
        self._accounts.add((client, name), now)
        self._clients.add(client, now)
        self._global.add(now)
        return None

    def succeeded(self, client: str, name: str) -> None:
        self._accounts.forget((client, name))

    def sizes(self) -> tuple[int, int]:
        """Keys held: (client, name) pairs and clients."""
        return len(self._accounts), len(self._clients)
