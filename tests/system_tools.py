"""Programs some tests drive (Chromium, nginx): found on the system, else installed from
Debian's packages when this user may (root, or passwordless sudo), else None with a one-line
reason naming the fix. Never a browser build from outside the package registries.

`TELEPHONY_TEST_CHROMIUM` names the browser to use; set to `none` it hides every browser (how
a test, or a person, checks what a machine without one would do).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_ENV = "TELEPHONY_TEST_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
NGINX_NAMES = ("nginx",)
NGINX_PATHS = ("/usr/sbin/nginx",)


@dataclass(frozen=True)
class Found:
    path: str | None
    reason: str  # why there is none, naming the fix ("" when found)


def find(names: Sequence[str], paths: Sequence[str]) -> str | None:
    for name in names:
        hit = shutil.which(name)
        if hit:
            return hit
    return next((p for p in paths if os.access(p, os.X_OK)), None)


def apt_prefix() -> list[str] | None:
    """How this user runs apt-get as root, or None if it cannot."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0:
        return [sudo, "-n"]
    return None


def apt_install(package: str) -> str:
    """Install a Debian package; '' on success, else the last lines apt printed. One at a time
    across the xdist workers (dpkg takes a lock of its own and fails rather than waits)."""
    prefix = apt_prefix()
    if prefix is None:
        return "no root and no passwordless sudo to run apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = Path(tempfile.gettempdir()) / "telephony-tests-apt.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        install = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:  # a stale or missing package list: update once, then retry
            update = [*prefix, "apt-get", "update", "-q"]
            subprocess.run(update, capture_output=True, text=True, env=env, timeout=600)
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode == 0:
        return ""
    return " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])


def find_or_install(names: Sequence[str], paths: Sequence[str], package: str) -> Found:
    path = find(names, paths)
    if path is None:
        failure = apt_install(package)
        path = find(names, paths)
        if path is None:
            return Found(
                None,
                f"{names[0]} not found; install it: `sudo apt-get install {package}`"
                f" (the tests' own attempt failed: {failure or 'installed, yet not found'})",
            )
    return Found(path, "")


def chromium() -> Found:
    chosen = os.environ.get(CHROMIUM_ENV, "").strip()
    if chosen.lower() == "none":
        return Found(None, f"no browser ({CHROMIUM_ENV}=none); unset it to use Chromium")
    if chosen:
        if os.access(chosen, os.X_OK):
            return Found(chosen, "")
        return Found(None, f"{CHROMIUM_ENV}={chosen} is not an executable; fix or unset it")
    return find_or_install(CHROMIUM_NAMES, CHROMIUM_PATHS, "chromium")


def nginx() -> Found:
    return find_or_install(NGINX_NAMES, NGINX_PATHS, "nginx")
