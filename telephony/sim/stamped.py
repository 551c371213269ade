"""Kernel receive times for the load generator's sockets.

The benchmark's probes time bytes "at the caller" and "at Deepgram". Stamped with the clock
when the generator's event loop gets round to a read, they include the generator's own
lateness: one busy loop drives hundreds of callers, fake Deepgram and the fake LLM, and the
bare relay's pacing jitter measured that way moved between 1.6 and 5.2 ms with nothing but the
host's load changing. Linux stamps every received packet (`SO_TIMESTAMPNS`); read with
`recvmsg`, the stamp says when the last byte of a read reached this host's socket, which is
what Twilio or Deepgram would see, whatever the generator was doing. Where the kernel gives no
stamp (another OS), a read is timed when it is read, as before.

`StampedTransport` wraps a connected transport (asyncio's or uvloop's): the wrapped transport
keeps writing and closing, its own reading stays paused, and a duplicate of its socket is read
here with `recvmsg`. `received_at` is the stamp of the last read on `time.monotonic()`'s
clock, set before the protocol's `data_received` runs. The protocol must call `detach()` from
`connection_lost`: the duplicate keeps the connection open until it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import struct
import time
from typing import Any

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it from 3.13 on
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
READ_SIZE = 65536


@functools.cache
def kernel_stamps_available() -> bool:
    """True where a TCP socket accepts SO_TIMESTAMPNS (Linux)."""
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time on the monotonic clock, if the read carried one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            # The stamp is on CLOCK_REALTIME; the offset is read now, so a clock step or slew
            # between two reads never carries over.
            return sec + nsec * 1e-9 - (time.time() - time.monotonic())
    return None


class StampedTransport:
    """A connected transport whose reads are done here, each with the kernel's receive time."""

    def __init__(self, transport: Any, protocol: asyncio.Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self.received_at = 0.0
        self.stamped_reads = 0  # reads the kernel stamped (the rest use the read's own time)
        self.reads = 0
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._reading = False
        # One reader at a time: uvloop starts the transport's own reading once the protocol's
        # connection_made returns, so it is paused now and again just after.
        transport.pause_reading()
        self._loop.call_soon(self._pause_wrapped)
        fileno = transport.get_extra_info("socket").fileno()
        self._sock: socket.socket | None = socket.socket(fileno=os.dup(fileno))
        self._sock.setblocking(False)
        with contextlib.suppress(OSError):  # without kernel stamps, a read is timed as it is read
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.resume_reading()

    # --- the transport's interface: ours for reading and closing, the wrapped one's for the rest

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def pause_reading(self) -> None:
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._read_ready)
            self._reading = True

    def is_reading(self) -> bool:
        return self._reading

    def _pause_wrapped(self) -> None:
        if not self._transport.is_closing():
            self._transport.pause_reading()

    def close(self) -> None:
        self.detach()
        self._transport.close()

    def abort(self) -> None:
        self.detach()
        self._transport.abort()

    def detach(self) -> None:
        """Stop reading and close the duplicate socket (idempotent)."""
        self.pause_reading()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- reading ------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            size, ancillary, _flags, _addr = sock.recvmsg_into([self._view], _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()  # the wrapped transport reports the loss to the protocol
            return
        if size == 0:
            self.pause_reading()
            if not self._protocol.eof_received():
                self.close()
            return
        stamp = _stamp(ancillary)
        self.reads += 1
        if stamp is None:
            stamp = time.monotonic()
        else:
            self.stamped_reads += 1
        self.received_at = stamp
        self._protocol.data_received(bytes(self._view[:size]))
