"""Fixed phrases, synthesised once and played at once: greetings, fillers, reprompts, goodbyes
and the apology of every Flux profile.

Each (voice, text) is synthesised through Aura's REST endpoint (telephony/deepgram/
speak_rest.py) as raw μ-law 8 kHz, the bytes the playout sends Twilio, when the configuration
is loaded and again when it changes, in the background. The audio path only looks phrases up
in memory (`get`: one dict lookup); a phrase not cached yet goes through Aura's socket as
before, so a cold cache costs a round trip, never a failure.

Kept in memory (bounded, `memory_bytes`) for the phrases the current configuration uses, and
on disk under `directory` (bounded, `disk_bytes`, oldest removed first) so a restart does not
synthesise them again. A key is a hash of the voice, the format and the text: a phrase edited
in the YAML is a new key, and the old one leaves memory at the next warm-up and the disk when
space is needed. Files are written whole (a temporary file, then a rename), readable by the
service's user only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from telephony.config import Config, ConfigStore
from telephony.session.language import phrase_texts
from telephony.store.private_files import open_private, private_dir

log = logging.getLogger(__name__)

FORMAT = "mulaw-8000"  # what the playout sends Twilio, and so what is synthesised
MEMORY_BYTES = 16 * 1024 * 1024  # ~35 min of μ-law audio
DISK_BYTES = 64 * 1024 * 1024
CHECK_S = 1.0  # how often the configuration's version is compared
RETRY_S = 60.0  # after a failed warm-up, the missing phrases are tried again this much later

Synthesize = Callable[[str, str], Awaitable[bytes]]  # (text, voice) -> μ-law audio


def phrase_key(voice: str, text: str) -> str:
    return hashlib.sha256(f"{voice}\0{FORMAT}\0{text}".encode()).hexdigest()


def fixed_phrases(config: Config) -> set[tuple[str, str]]:
    """(voice, text) of every phrase a Flux call of `config` may say word for word, in every
    language its profiles speak."""
    wanted: set[tuple[str, str]] = set()
    for profile in config.profiles.values():
        if profile.mode == "flux":  # the Voice Agent speaks through its own socket
            wanted |= phrase_texts(profile)
    return wanted


@dataclass
class WarmReport:
    wanted: int = 0
    from_disk: int = 0
    synthesised: int = 0
    failed: int = 0


class PhraseCache:
    def __init__(
        self,
        synthesize: Synthesize,
        directory: Path | None = None,
        *,
        memory_bytes: int = MEMORY_BYTES,
        disk_bytes: int = DISK_BYTES,
    ) -> None:
        self._synthesize = synthesize
        self.directory = directory
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self._audio: dict[str, bytes] = {}
        self.ready = asyncio.Event()  # the first warm-up is over (whatever it found)
        self.hits = 0
        self.misses = 0

    def get(self, voice: str, text: str) -> bytes | None:
        """The phrase's audio if cached (memory only: safe on the audio path)."""
        audio = self._audio.get(phrase_key(voice, text))
        if audio is None:
            self.misses += 1
        else:
            self.hits += 1
        return audio

    @property
    def size(self) -> int:
        return sum(len(a) for a in self._audio.values())

    async def warm(self, wanted: Iterable[tuple[str, str]]) -> WarmReport:
        """Have every wanted phrase in memory, and nothing else."""
        keys = {phrase_key(voice, text): (voice, text) for voice, text in wanted}
        report = WarmReport(wanted=len(keys))
        audio = {k: a for k, a in self._audio.items() if k in keys}
        used = sum(len(a) for a in audio.values())
        for key, (voice, text) in sorted(keys.items(), key=lambda kv: kv[1]):
            if key in audio:
                continue
            found = await asyncio.to_thread(self._read, key)
            if found is not None:
                report.from_disk += 1
            else:
                try:
                    found = await self._synthesize(text, voice)
                except Exception as exc:  # the next warm-up tries again
                    report.failed += 1
                    log.warning("phrase cache: %r in %s not synthesised: %s", text[:40], voice, exc)
                    continue
                report.synthesised += 1
                await asyncio.to_thread(self._write, key, found)
            if used + len(found) > self.memory_bytes:
                log.warning("phrase cache: memory bound (%d bytes) reached", self.memory_bytes)
                break
            audio[key] = found
            used += len(found)
        self._audio = audio  # swapped whole: a lookup never sees a half-built cache
        self.ready.set()
        return report

    async def run(self, config: ConfigStore) -> None:
        """Warm up now and whenever the configuration changes (or failed last time)."""
        seen, retry_at = -1, 0.0
        loop = asyncio.get_running_loop()
        while True:
            if config.version != seen or (retry_at and loop.time() >= retry_at):
                seen = config.version
                report = await self.warm(fixed_phrases(config.current))
                retry_at = loop.time() + RETRY_S if report.failed else 0.0
                log.info(
                    "phrase cache: %d phrases (%d from disk, %d synthesised, %d failed), %d bytes",
                    report.wanted,
                    report.from_disk,
                    report.synthesised,
                    report.failed,
                    self.size,
                )
            await asyncio.sleep(CHECK_S)

    # --- disk (worker threads only) -------------------------------------------------------------

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.ulaw"

    def _read(self, key: str) -> bytes | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be evicted
        return data or None

    def _write(self, key: str, audio: bytes) -> None:
        path = self._path(key)
        if path is None or self.directory is None:
            return
        try:
            private_dir(self.directory)
            tmp = path.with_suffix(".tmp")
            with open_private(tmp, truncate=True) as out:
                out.write(audio)
            os.replace(tmp, path)
            self._evict()
        except OSError as exc:  # a full or read-only disk: memory still serves the phrase
            log.warning("phrase cache: cannot write %s: %s", path, exc)

    def _evict(self) -> None:
        assert self.directory is not None
        files = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".ulaw"):
                st = entry.stat()
                files.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.disk_bytes:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
