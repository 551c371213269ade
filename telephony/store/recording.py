"""Per-call stereo recordings: the caller on the left, on the right what the caller heard
(the bot, or the person who took the call).

Both tracks are μ-law bytes on the call's audio clock (8 bytes per ms of Twilio's
`media.timestamp`):

- caller: every inbound frame at its timestamp. Lost frames are padded with silence the way the
  call's gap fill pads them for the engine (a jump of more than `MAX_GAP_MS` is squeezed to
  `MAX_GAP_MS`), so the track is continuous and its length *is* the call clock.
- bot: every frame the playout sends, placed where it plays. The playout knows that on its own
  monotonic clock; a caller frame anchors the two clocks (call ms ≈ its media.timestamp +
  the time since it arrived), the least late of the recent ones, since lateness only ever
  makes that read early.
  Frames of one paced run are laid end to end, and a new run never goes over an earlier one
  (Twilio plays what it was sent in order). A `clear` cuts the track at the moment it went
  out, and so does the stream's end (`end`): whatever was sent but had not played yet never
  reached the caller, so it is not kept.
- the person: on a `both_tracks` fork (transcribe mode, or after a transfer) Twilio's
  `outbound` track is what the caller hears, so it is the right channel, each frame at its
  timestamp (less the caller track's squeezed gaps: both tracks of a fork share timestamps),
  but never more than `MAX_GAP_MS` ahead of the call's present (the caller's gap fill's bound),
  so a hostile timestamp cannot make the file grow faster than real time.

The audio path only appends to two bytearrays. Every `flush_ms` of caller audio the part that
can no longer change (everything older than `hold_ms` before the newest caller audio; a clear
cannot reach further back) is handed to one worker thread shared by every recorder in the
process, which appends it to two spool files. `finish()` hands over the rest and has the same
thread write `<dir>/<CallSid>.wav` (stereo PCM16 8 kHz, the shorter track padded with silence)
through a temporary file and a rename, then delete the spools. The event loop never touches
the disk and never waits for the thread except in `finish()`, which awaits it asynchronously.

A transfer that stays transcribed (`transcribe_after_transfer`) makes one call two streams:
the bot's, whose recorder writes `<CallSid>.wav` when it stops, then Twilio's fork, whose
recorder starts at `start_ms` (the call time the fork continues from) and spools apart. When
the fork ends it rewrites the same file: the bot part's first `start_ms` (cut or padded with
silence to exactly that), then its own tracks. So the call has one WAV on one clock, and every
stored turn time (the fork's are offset by the same `start_ms`) points into it. One file
rather than a second one the player joins: the browser's own player, seeking and the
recording route stay as they are. Both parts must use the same directory (one instance, or a
volume shared by all): a fork that finds no earlier part keeps silence in its place. The bot
part's file is written as its stream stops, long before the fork's; on one instance the single
worker thread also keeps that order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import sys
import threading
import warnings
import wave
from collections.abc import Callable, Sequence
from pathlib import Path

from telephony.audio import MULAW_SILENCE, TWILIO_RATE
from telephony.store.private_files import open_private, private_dir

with warnings.catch_warnings():
    # stdlib audioop (3.11/3.12) warns on import; on >= 3.13 `audioop-lts` installs the same name.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger(__name__)

BYTES_PER_MS = TWILIO_RATE // 1000  # μ-law 8 kHz: one byte per sample
MAX_GAP_MS = 2000  # as the call's gap fill (telephony.session.call.MAX_GAP_FILL_MS)
FLUSH_MS = 5000  # hand caller audio to the worker in chunks of this much
HOLD_MS = 1000  # bot audio this close to "now" stays in memory: a clear may still cut it
WAV_CHUNK = 64 * 1024  # samples per channel converted at a time when the WAV is written
_SILENCE = bytes((MULAW_SILENCE,)) * (MAX_GAP_MS * BYTES_PER_MS)
_PCM_FRAME = 4  # one stereo PCM16 sample pair in the WAV
_CONTIGUOUS_S = 0.001  # a frame due within 1 ms of the previous one's end continues its run
# How far (bytes per second of the anchor's age) a frame may read earlier than the anchor and
# still replace it: 1 %, far above any clock drift, far below a stall's lateness.
_ANCHOR_LEAK_BYTES_PER_S = 0.01 * TWILIO_RATE
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def recording_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The one worker thread every recorder in this process writes through (in order)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="recording"
            )
        return _executor


def _silence(n: int) -> bytes:
    if n <= len(_SILENCE):
        return _SILENCE[:n]
    return bytes((MULAW_SILENCE,)) * n


class CallRecorder:
    """One call's recording. Loop side: `caller`, `bot`, `outbound`, `clear` (cheap), `finish`
    (async).

    `clock` is the monotonic clock the playout paces on (the event loop's by default).
    `start_ms` > 0: this stream continues the call from that call time (a fork after a
    transfer); `finish` puts it after that much of the call's existing recording.
    """

    def __init__(
        self,
        call_sid: str,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] | None = None,
        executor: concurrent.futures.Executor | None = None,
        flush_ms: int = FLUSH_MS,
        hold_ms: int = HOLD_MS,
        start_ms: int = 0,
    ) -> None:
        self.call_sid = call_sid
        directory = Path(directory).absolute()
        name = _UNSAFE.sub("_", call_sid) or "call"
        self.path = directory / f"{name}.wav"
        # A continuation's spools and temporary file never share a name with the first part's.
        part = f"{name}.from{start_ms}" if start_ms > 0 else name
        self._caller_spool = directory / f"{part}.caller.ulaw.part"
        self._bot_spool = directory / f"{part}.bot.ulaw.part"
        self._tmp = directory / f"{part}.wav.tmp"
        # Byte position of the spools' first byte on the call clock (0 but for a continuation).
        self._base = max(start_ms, 0) * BYTES_PER_MS
        self._clock = clock or asyncio.get_running_loop().time
        self._executor = executor or recording_executor()
        self._flush_bytes = flush_ms * BYTES_PER_MS
        self._hold_bytes = hold_ms * BYTES_PER_MS
        # Loop side. Positions are absolute byte offsets on the recording's clock.
        self._caller = bytearray()  # caller audio after `_caller_spooled`
        self._caller_spooled = self._base  # end of the caller audio handed to the worker
        self._caller_end_ms = self._base // BYTES_PER_MS  # call clock at the caller track's end
        # The clocks' anchor: a caller frame (the least late of late) started at byte
        # `_anchor_pos` and arrived at monotonic `_anchor_t` (before any, the start of the
        # recording is "now").
        self._anchor_t = self._clock()
        self._anchor_pos = self._base
        self._anchored = False
        self._bot = bytearray()  # right track (bot or person) from `_bot_base` on
        self._bot_base = self._base
        self._bot_floor = self._base  # the right track before this is with the worker: final
        self._run_end_t: float | None = None  # monotonic end of the last bot frame's run
        self.squeezed_ms = 0  # caller clock jumps beyond MAX_GAP_MS, left out of the file
        self._finished = False
        self._fork = False  # outbound frames came: the right channel is Twilio's track
        self._end_pos: int | None = None  # where the stream ended (`end`): nothing plays after
        self._submit_ok = True
        self._broken = False  # set by a failure on the loop side: recording stops
        # Worker side (touched only by the worker thread).
        self._bot_written = self._base
        self._error: BaseException | None = None
        self._started = False

    # --- the audio path (event loop; no I/O, no conversions) --------------------------------

    def caller(self, ts_ms: int, payload: bytes) -> None:
        """An inbound frame at `ts_ms` on the call clock, as the call received it."""
        if self._broken:
            return
        try:
            now = self._clock()
            end_ms = self._caller_end_ms
            squeezed = False
            if ts_ms != end_ms:
                if ts_ms > end_ms:  # lost frames: silence, as the call's gap fill does
                    gap = ts_ms - end_ms
                    fill = min(gap, MAX_GAP_MS)
                    squeezed = gap > fill
                    self.squeezed_ms += gap - fill
                    self._caller += _silence(fill * BYTES_PER_MS)
                    end_ms += fill
                else:  # overlap (the clock never runs back): keep only what is new
                    payload = payload[(end_ms - ts_ms) * BYTES_PER_MS :]
            self._caller += payload
            self._caller_end_ms = end_ms + len(payload) // BYTES_PER_MS
            pos = self._caller_spooled + len(self._caller) - len(payload)
            # A frame can only read early (it arrived after it was captured), so the least
            # late one anchors best: a frame that reads earlier than the anchor in hand (less
            # a leak, so a drift between the two clocks cannot pin an old anchor) was held up
            # on the way, and moves nothing. A burst after a stall would otherwise place the
            # bot as early as the stall was long. A squeezed jump moves the track: re-anchor.
            leak = (now - self._anchor_t) * _ANCHOR_LEAK_BYTES_PER_S
            if squeezed or not self._anchored or pos >= self._pos_at(now) - leak:
                self._anchor_t, self._anchor_pos = now, pos
                self._anchored = True
            if len(self._caller) >= self._flush_bytes:
                self._flush(final=False)
        except Exception:
            self._break()

    def bot(self, frame: bytes, play_at: float) -> None:
        """A media frame sent to Twilio that plays at monotonic time `play_at`."""
        if self._broken:
            return
        try:
            run_end = self._run_end_t
            end = self._bot_base + len(self._bot)  # just after the bot audio placed so far
            if run_end is not None and abs(play_at - run_end) < _CONTIGUOUS_S:
                pos = end  # the run goes on: no jitter inside
            else:
                # A new run plays after everything already sent (the playout queues it; a
                # clear cuts the track first), so it never goes over audio placed before it:
                # the anchor reads early by a caller frame's lateness, which can exceed the
                # gap between two runs (an underrun mid-reply). The gap itself is the
                # playout's to tell.
                pos = self._pos_at(play_at)
                if run_end is not None:
                    pos = max(pos, end + round((play_at - run_end) * TWILIO_RATE))
                pos = max(pos, end)
            self._run_end_t = play_at + len(frame) / TWILIO_RATE
            self._put_right(pos, frame)
        except Exception:
            self._break()

    def outbound(self, ts_ms: int, payload: bytes) -> None:
        """An `outbound` frame of a both_tracks fork at `ts_ms` on the call clock: the person
        the caller is talking to. Placed by its timestamp, as the caller's are (Twilio gives
        both tracks of a fork the same clock), less the caller gaps squeezed out so far."""
        if self._broken:
            return
        self._fork = True
        try:
            pos = (ts_ms - self.squeezed_ms) * BYTES_PER_MS
            if pos > self._bot_base + len(self._bot):  # a jump ahead, or the track's first frame
                # The caller picks the timestamp: never further ahead of the call's present
                # than the caller track's gap fill, or one frame would have us pad, spool and
                # write gigabytes of silence. (A clock read only off the contiguous path.)
                ceiling = self._pos_at(self._clock()) + MAX_GAP_MS * BYTES_PER_MS
                pos = min(pos, ceiling)
            self._put_right(pos, payload)
        except Exception:
            self._break()

    def _put_right(self, pos: int, frame: bytes) -> None:
        """`frame` on the right track at byte `pos`: appended, or over what it replaces."""
        if pos < self._bot_floor:  # only if the clocks jumped by more than hold_ms
            frame = frame[self._bot_floor - pos :]
            pos = self._bot_floor
        bot = self._bot
        if not bot:
            self._bot_base = pos
            bot += frame
            return
        at = pos - self._bot_base
        if at > len(bot):
            bot += _silence(at - len(bot))
        bot[at : at + len(frame)] = frame  # append, or overwrite what a new run replaces
        if len(bot) >= 2 * self._flush_bytes:  # only if the caller's frames stopped
            self._flush(final=False)

    def clear(self, at: float) -> None:
        """Twilio `clear` at monotonic `at`: bot audio that had not played by then is dropped."""
        if self._broken:
            return
        try:
            self._run_end_t = None
            cut = max(self._pos_at(at), self._bot_floor) - self._bot_base
            if cut < len(self._bot):
                del self._bot[max(cut, 0) :]
        except Exception:
            self._break()

    def end(self, at: float) -> None:
        """The bot's stream ended at monotonic `at` (the caller hung up, the call was
        redirected, the stream was lost): bot audio sent ahead that would have played after
        it never reached the caller, so it is cut as a `clear` cuts, now and at `finish`. Not
        on a fork, whose right channel is Twilio's own outbound track, placed by timestamp."""
        if self._broken or self._fork:
            return
        self._end_pos = max(self._pos_at(at), self._bot_floor)
        self.clear(at)

    def _break(self) -> None:
        """A bug here must never reach the call: log it, stop recording, keep no file."""
        log.exception("recording abandoned", extra={"call_sid": self.call_sid})
        self._broken = True
        self._caller, self._bot = bytearray(), bytearray()

    def _pos_at(self, t: float) -> int:
        """Byte position on the recording of monotonic time `t`: call ms ≈ newest
        media.timestamp + time since it arrived (so transport delays count as zero)."""
        return self._anchor_pos + round((t - self._anchor_t) * TWILIO_RATE)

    def _flush(self, *, final: bool) -> None:
        caller, self._caller = self._caller, bytearray()
        self._caller_spooled += len(caller)
        bot_start = self._bot_base
        if final:
            bot, self._bot = bytes(self._bot), bytearray()
        else:  # what a clear could still cut stays: everything from `hold_ms` before now
            keep_from = self._pos_at(self._clock()) - self._hold_bytes - self._bot_base
            n = min(max(keep_from, 0), len(self._bot))
            bot = bytes(self._bot[:n])
            del self._bot[:n]
        self._bot_base += len(bot)
        self._bot_floor = max(self._bot_floor, self._bot_base)
        if (caller or bot) and self._submit_ok:
            try:
                self._executor.submit(self._spool, caller, bot_start, bot)  # caller: ours no more
            except RuntimeError as exc:  # executor shut down (interpreter exit): stop quietly
                self._submit_ok = False
                log.error("recording stopped: %s", exc, extra={"call_sid": self.call_sid})

    # --- finishing --------------------------------------------------------------------------

    async def finish(self, silence: tuple[Spans, Spans] = ((), ())) -> Path | None:
        """Write the WAV; its path, or None (logged with the call SID) if that failed.

        `silence`: spans of call-clock ms (start, end) to silence on the left and the right
        channel, written as silence from the spools, so the WAV never holds what they cover
        (audio redaction: telephony/store/redact.py `audio_spans`).

        Runs on the worker thread; shielded, so a cancelled caller does not lose the file.
        """
        if self._finished:
            return None
        self._finished = True
        try:
            if not self._broken:
                if self._end_pos is not None:  # frames the playout sent after the end
                    del self._bot[max(self._end_pos - self._bot_base, 0) :]
                self._flush(final=True)
            future = self._executor.submit(self._write_wav, silence)
            return await asyncio.shield(asyncio.wrap_future(future))
        except Exception:
            log.exception("recording failed", extra={"call_sid": self.call_sid})
            return None

    # --- the worker thread ------------------------------------------------------------------

    def _spool(self, caller: bytes | bytearray, bot_start: int, bot: bytes) -> None:
        if self._error is not None:
            return
        try:
            if not self._started:
                # Callers' voices: the directory 0700 and every file 0600 (private_files.py).
                private_dir(self.path.parent)
                for spool in (self._caller_spool, self._bot_spool):
                    open_private(spool, truncate=True).close()  # a stale spool is replaced
                self._started = True
            if caller:
                with open_private(self._caller_spool) as f:
                    f.write(caller)
            if bot:
                skip = max(self._bot_written - bot_start, 0)
                with open_private(self._bot_spool) as f:
                    f.write(_silence(max(bot_start - self._bot_written, 0)))
                    f.write(bot[skip:])
                self._bot_written = max(self._bot_written, bot_start + len(bot))
        except Exception as exc:
            self._error = exc
            log.error("recording spool failed: %s", exc, extra={"call_sid": self.call_sid})

    def _write_wav(self, silence: tuple[Spans, Spans] = ((), ())) -> Path | None:
        left_spans, right_spans = (_byte_spans(s) for s in silence)
        try:
            if self._error is not None:
                raise self._error
            if self._broken:
                return None  # already logged; the spools are removed below
            if not self._started:
                self._spool(b"", self._base, b"")  # a call without audio: an empty recording
                if self._error is not None:
                    raise self._error
            tmp = self._tmp
            caller_len = self._caller_spool.stat().st_size
            bot_len = self._bot_spool.stat().st_size
            with (
                self._caller_spool.open("rb") as left,
                self._bot_spool.open("rb") as right,
                open_private(tmp, truncate=True) as tmp_file,  # renamed to the WAV: 0600
                wave.open(tmp_file, "wb") as out,
            ):
                out.setnchannels(2)
                out.setsampwidth(2)
                out.setframerate(TWILIO_RATE)
                if self._base:
                    self._write_earlier_part(out, self._base)
                for offset in range(0, max(caller_len, bot_len), WAV_CHUNK):
                    at = self._base + offset  # call-clock byte of this chunk's start
                    out.writeframes(
                        _stereo(
                            _silenced(left.read(WAV_CHUNK), at, left_spans),
                            _silenced(right.read(WAV_CHUNK), at, right_spans),
                        )
                    )
            os.replace(tmp, self.path)
            return self.path
        except Exception:
            log.exception("recording failed", extra={"call_sid": self.call_sid})
            return None
        finally:
            for leftover in (self._caller_spool, self._bot_spool, self._tmp):
                try:
                    leftover.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning(
                        "cannot remove %s: %s", leftover, exc, extra={"call_sid": self.call_sid}
                    )

    def _write_earlier_part(self, out: wave.Wave_write, frames: int) -> None:
        """The call's recording so far (the bot part, before a transfer), cut or padded with
        silence to exactly `frames`, so this part starts where its call time says."""
        written = 0
        try:
            with wave.open(str(self.path), "rb") as earlier:
                fmt = (earlier.getnchannels(), earlier.getsampwidth(), earlier.getframerate())
                if fmt != (2, 2, TWILIO_RATE):
                    raise wave.Error(f"unexpected format {fmt}")
                while written < frames:
                    chunk = earlier.readframes(min(WAV_CHUNK, frames - written))
                    if not chunk:
                        break
                    out.writeframes(chunk)
                    written += len(chunk) // _PCM_FRAME
        except FileNotFoundError:
            log.warning(
                "no earlier recording of this call: silence in its place",
                extra={"call_sid": self.call_sid},
            )
        except (OSError, EOFError, wave.Error) as exc:
            log.error(
                "earlier recording unreadable (%s): silence in its place",
                exc,
                extra={"call_sid": self.call_sid},
            )
        silent = bytes(_PCM_FRAME * WAV_CHUNK)  # PCM16 zeros: μ-law silence decoded
        while written < frames:
            n = min(WAV_CHUNK, frames - written)
            out.writeframes(silent[: n * _PCM_FRAME])
            written += n


Spans = Sequence[tuple[int, int]]  # call-clock ms, [start, end)


def _byte_spans(spans: Spans) -> list[tuple[int, int]]:
    return sorted((max(0, s) * BYTES_PER_MS, max(0, e) * BYTES_PER_MS) for s, e in spans if e > s)


def _silenced(chunk: bytes, at: int, spans: list[tuple[int, int]]) -> bytes:
    """`chunk` (μ-law starting at call byte `at`) with what `spans` cover made silence."""
    end = at + len(chunk)
    hit = [(max(s, at), min(e, end)) for s, e in spans if s < end and e > at]
    if not hit:
        return chunk
    out = bytearray(chunk)
    for s, e in hit:
        out[s - at : e - at] = _silence(e - s)
    return bytes(out)


def _stereo(left: bytes, right: bytes) -> bytes:
    """Two μ-law chunks -> interleaved little-endian PCM16, the shorter padded with silence."""
    n = max(len(left), len(right))
    left += _silence(n - len(left))
    right += _silence(n - len(right))
    pcm = audioop.add(
        audioop.tostereo(audioop.ulaw2lin(left, 2), 2, 1, 0),
        audioop.tostereo(audioop.ulaw2lin(right, 2), 2, 0, 1),
        2,
    )
    return audioop.byteswap(pcm, 2) if sys.byteorder == "big" else pcm
