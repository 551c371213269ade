"""Files only this service's user may read: the SQLite database and the call recordings.

Transcripts and callers' voices must not be readable by every account on the host, whatever
the process umask is: directories we create are 0700, files we create 0600 (SQLite gives its
-wal and -shm files the database file's mode). Existing directories are left as they are (a
volume mount point or /tmp is not ours to change).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """`mkdir -p` with every directory it creates 0700."""
    missing: list[Path] = []
    for part in (path, *path.parents):
        if part.exists():
            break
        missing.append(part)
    for part in reversed(missing):
        try:
            part.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made meanwhile (another call's recording thread)
            continue
        os.chmod(part, DIR_MODE)  # mkdir's mode is filtered by the umask


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (a database file to be)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def open_private(path: Path, *, truncate: bool = False) -> BinaryIO:
    """`path` opened for writing (appending unless `truncate`); created 0600 if new."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    return os.fdopen(os.open(path, flags, FILE_MODE), "wb")
