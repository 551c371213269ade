"""What every `telephony` command shares for user mistakes: `UsageError` (printed by `main` as
one line, no traceback, exit 2) and the environment's settings checked into one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telephony.settings import Settings


class UsageError(Exception):
    """A mistake on the command line, in the environment or in a file they name: `main` prints
    the message as one line (no traceback) and exits 2."""


def checked_settings() -> Settings:
    """The environment's settings; invalid ones are a UsageError on one line naming each
    variable and what is wrong, never its value (it may be a secret)."""
    from pydantic import ValidationError

    from telephony.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        why = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid settings: {why}") from None


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """A database that cannot be reached or used (server down, wrong password, unwritable file)
    is the operator's setting to fix, not a crash: one line naming TELEPHONY_DATABASE_URL and
    the driver's reason. Never the URL itself: it may carry a password."""
    import socket

    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except (DBAPIError, ConnectionError, TimeoutError, socket.gaierror) as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ""
        raise UsageError(
            f"cannot use the database (TELEPHONY_DATABASE_URL): {type(cause).__name__}"
            + (f": {reason}" if reason else "")
        ) from None


def check_port_free(host: str, port: int) -> None:
    """Raise UsageError when HOST:PORT cannot be listened on (another process has it): checked
    before starting, since uvicorn and the emulator would fail later with a log or traceback."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise UsageError(f"cannot listen on {host}:{port}: {why}") from None


def check_config_file(path: object, what: str) -> None:
    from pathlib import Path

    if not Path(str(path)).is_file():
        raise UsageError(f"{what}: no such file: {path}")
