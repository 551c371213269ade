"""Whole client-to-server WebSocket frames (RFC 6455 §5.2), written without websockets' framing.

A client must mask every frame with a fresh key from a strong source of entropy (§5.3, §10.3).
websockets draws each key with `secrets.token_bytes(4)`: a getrandom system call per frame.
On the audio path (Deepgram audio from every call, and the fake callers of `telephony bench`)
that call and websockets' general-purpose `Frame.serialize` cost more than the write itself
(py-spy). Here keys come from the same kernel source, `os.urandom`, 1024 at a time, and the
payload is masked by websockets' own C function: the frame is byte for byte what websockets
would write, but for the key.

Only what the audio path sends: one whole frame (FIN set, no extension bits), text or binary.
"""

from __future__ import annotations

import os

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["MaskKeys", "apply_mask", "binary_frame", "text_frame"]

_TEXT = 0x81  # FIN + opcode 1
_BINARY = 0x82  # FIN + opcode 2
_MASKED = 0x80
_KEYS_PER_DRAW = 1024


class MaskKeys:
    """4-byte masking keys from os.urandom, drawn in bulk; each key is used once."""

    def __init__(self, per_draw: int = _KEYS_PER_DRAW) -> None:
        self._size = 4 * per_draw
        self._pool = b""
        self._at = self._size

    def next(self) -> bytes:
        at = self._at
        if at >= self._size:
            self._pool = os.urandom(self._size)
            at = 0
        self._at = at + 4
        return self._pool[at : at + 4]


_KEYS = MaskKeys()


def _frame(first: int, payload: bytes, keys: MaskKeys) -> bytes:
    length = len(payload)
    if length < 126:
        header = bytes((first, _MASKED | length))
    elif length < 65536:
        header = bytes((first, _MASKED | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, _MASKED | 127)) + length.to_bytes(8, "big")
    key = keys.next()
    return header + key + apply_mask(payload, key)


def binary_frame(payload: bytes, keys: MaskKeys = _KEYS) -> bytes:
    return _frame(_BINARY, payload, keys)


def text_frame(payload: bytes, keys: MaskKeys = _KEYS) -> bytes:
    """`payload` is the message's UTF-8 encoding."""
    return _frame(_TEXT, payload, keys)
