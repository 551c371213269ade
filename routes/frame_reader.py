"""The media socket's ordinary frames parsed here rather than by websockets, while a call pumps.

Twilio sends 50 small text frames a second per call, each whole (FIN set), masked and with no
extension bits. websockets' sans-I/O parser reads every frame through
a chain of generator coroutines (header, length, mask, payload) and uvicorn wraps each message
in an ASGI dict: on 200 calls those layers were about a tenth of the event loop's busy time
(py-spy, `telephony bench`). `FrameReader` sits between the transport and uvicorn's protocol
and parses frames of that one shape itself: a header, an unmask (websockets' own C function),
a UTF-8 decode, and the message goes straight to the call.

Every other frame goes, byte for byte, to uvicorn's protocol, which runs websockets as it always
would: control frames (ping, pong, close), fragments, unmasked frames, messages
over the size limit, invalid UTF-8 (close 1007), and any frame once the connection is closing.
The reader reads every frame's header, so it always knows where the next frame starts, and
websockets only ever gets whole frames from their first byte, exactly as it would have read
them. The reader parses a frame itself only while websockets' parser waits at a frame boundary
with nothing buffered and no fragmented message open (`_may_parse`). If websockets is in the
middle of a frame when the reader is installed, everything goes to it until it reaches a
boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from websockets.protocol import Protocol, State
from websockets.streams import StreamReader

from telephony.client_frames import apply_mask  # websockets' C masking, one choice for both

# First header byte of a whole, unextended text or binary frame: FIN, RSV1-3 clear, opcode.
_WHOLE_TEXT = 0x81
_WHOLE_BINARY = 0x82
_WHOLE = (_WHOLE_TEXT, _WHOLE_BINARY)
_MASKED = 0x80
_EXTENDED_LENGTH = {126: 2, 127: 8}  # 7-bit length codes for a 16- and a 64-bit length

_FRAME_LOOP = Protocol.parse.__code__
_WAITING_FOR_DATA = StreamReader.at_eof.__code__


def _waits_for_a_frame(parser: Any) -> bool:
    """The parser generator is suspended where its frame loop waits for the next frame's
    first byte: in `at_eof`, called from `Protocol.parse` (the server's handshake parser
    delegates to that loop with `yield from`, so the chain is followed down)."""
    outer, inner = parser, getattr(parser, "gi_yieldfrom", None)
    while inner is not None and getattr(inner, "gi_code", None) is not _WAITING_FOR_DATA:
        outer, inner = inner, getattr(inner, "gi_yieldfrom", None)
    return inner is not None and getattr(outer, "gi_code", None) is _FRAME_LOOP


def _at_boundary(conn: Any) -> bool:
    """websockets' parser waits for the first byte of a frame with its buffer empty."""
    return _waits_for_a_frame(conn.parser) and not conn.reader.buffer


def _may_parse(conn: Any) -> bool:
    """At a boundary, no fragmented message open, the connection open: a whole text or binary
    frame now is one websockets would take as a message of its own."""
    return _at_boundary(conn) and conn.current_size is None and conn.state is State.OPEN


def _frame_limit(conn: Any) -> int | None:
    """The largest whole frame websockets would accept (its message and fragment limits)."""
    limits = [x for x in (conn.max_message_size, conn.max_fragment_size) if x is not None]
    return min(limits) if limits else None


CONN_ATTRIBUTES = (
    "parser",
    "reader",
    "current_size",
    "state",
    "max_message_size",
    "max_fragment_size",
)


def can_read(protocol: Any) -> bool:
    """The connection's shape is the one this reader was written against (websockets' sans-I/O
    ServerProtocol with no extension negotiated, a transport that can swap protocols)."""
    conn = getattr(protocol, "conn", None)
    transport = getattr(protocol, "transport", None)
    return (
        conn is not None
        and not getattr(conn, "extensions", True)
        and all(hasattr(conn, a) for a in CONN_ATTRIBUTES)
        and hasattr(transport, "set_protocol")
    )


class FrameReader(asyncio.Protocol):
    """The transport's protocol while a call pumps; see the module docstring.

    `deliver` gets each message the reader parses (str for text, bytes for binary) and
    returns False once the pump has ended: from then on every byte goes to uvicorn's protocol.
    """

    def __init__(self, protocol: Any, deliver: Callable[[str | bytes], bool]) -> None:
        self.protocol = protocol
        self.conn = protocol.conn
        self.deliver = deliver
        self.limit = _frame_limit(self.conn)
        self.synced = _at_boundary(self.conn)  # the next byte starts a frame
        self.ended = False  # the pump has ended: every byte is uvicorn's until uninstalled
        self.clean = _may_parse(self.conn)
        # The start of a frame not yet whole, and how many bytes it needs before it is worth
        # parsing again: a frame trickling in byte by byte costs one append per read, not a
        # copy of all that came before.
        self.pending = bytearray()
        self.needed = 0
        self.owed = 0  # bytes websockets still needs to finish the frame it is reading

    def install(self) -> None:
        self.protocol.transport.set_protocol(self)

    def uninstall(self) -> None:
        """Give the transport back to uvicorn's protocol, with any partial frame held here."""
        self.synced, self.ended = False, True
        self.protocol.transport.set_protocol(self.protocol)
        pending, self.pending = bytes(self.pending), bytearray()
        if pending:
            self.protocol.data_received(pending)

    # Every other transport callback is uvicorn's own business.
    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self.owed:
            paid = data[: self.owed]
            self._give(paid, owed=self.owed - len(paid))
            data = data[len(paid) :]
        if self.pending:
            self.pending += data
            if len(self.pending) < self.needed:
                return
            data, self.pending = bytes(self.pending), bytearray()
        if not data:
            return
        if self.synced:
            self._read(data)
        else:  # websockets is inside a frame the reader never saw the start of
            self.protocol.data_received(data)
            self.synced = not self.ended and _at_boundary(self.conn)
            self.clean = self.synced and _may_parse(self.conn)

    def _give(self, data: bytes | memoryview, owed: int = 0) -> None:
        """A frame's bytes (from its first, or the rest of it) to websockets, via uvicorn."""
        self.owed = owed
        self.protocol.data_received(bytes(data))
        if not owed:
            self.clean = _may_parse(self.conn)

    def _read(self, data: bytes) -> None:
        """Frame by frame: the one shape parsed and delivered here, the rest given to
        websockets; a frame cut off at the end waits in `pending` (or, if websockets is
        reading it, is counted in `owed`)."""
        view = memoryview(data)
        size = len(data)
        pos = 0
        needed = 2
        while size - pos >= 2:
            head = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            start = pos + 2
            extended = _EXTENDED_LENGTH.get(length, 0)  # bytes of a 16- or 64-bit length
            if extended:
                start += extended
                if size < start:
                    needed = start - pos
                    break
                length = int.from_bytes(view[start - extended : start], "big")
            if second & _MASKED:
                start += 4
            end = start + length
            if (
                self.clean
                and head in _WHOLE
                and second & _MASKED
                and (self.limit is None or length <= self.limit)
                and self.conn.state is State.OPEN  # closing: uvicorn drops what arrives
            ):
                if end > size:
                    needed = end - pos
                    break
                message = self._unmask(head, view[start - 4 : start], view[start:end])
                if message is not None:
                    pos = end
                    if not self.deliver(message):  # the pump has ended: the rest is uvicorn's
                        self.synced, self.ended = False, True
                        if pos < size:
                            self.protocol.data_received(data[pos:])
                        return
                    continue
            if end > size:  # websockets reads the rest as it comes
                self._give(view[pos:], owed=end - size)
                return
            self._give(view[pos:end])
            pos = end
        if pos < size:
            self.pending = bytearray(view[pos:])
            self.needed = needed

    @staticmethod
    def _unmask(head: int, mask: memoryview, masked: memoryview) -> str | bytes | None:
        """The message; None for text that is not UTF-8 (websockets and uvicorn close 1007)."""
        # bytes(mask): websockets' pure-Python apply_mask (no C extension) repeats the mask
        # with `*`, which a memoryview does not support.
        payload: bytes = apply_mask(masked, bytes(mask))
        if head == _WHOLE_BINARY:
            return payload
        try:
            return payload.decode()
        except UnicodeDecodeError:
            return None
