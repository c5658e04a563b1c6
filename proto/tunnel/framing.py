"""Tunnel framing: a 4-byte big-endian length, then one msgpack map.

This module owns the byte level of both tunnel codecs (control connection and
attach preamble): the length prefix and its limit, the buffer of received
bytes, and the msgpack boundary.  It knows nothing about message kinds or
connection state, never touches a socket and never logs.

Limits
    The length is checked against the limit as soon as its 4 bytes are in,
    before a byte of the body is waited for: a peer announcing 1 GiB is
    refused with 4 bytes buffered.  The buffer then holds at most one body
    plus whatever the caller fed in one `receive_data` call, so callers feed
    bounded chunks (their receive size) and drain `next_frame()` between them.

msgpack boundary
    `decode_body` is the one place msgpack runs on peer bytes.  msgpack
    documents that "other exceptions can be raised during unpacking" besides
    its own (ValueError, TypeError, OverflowError, UnicodeDecodeError, ...),
    so everything it raises becomes `DecodeError`.  Bodies must be exactly one
    map of plain values: no ext types, str keys only, no duplicate keys,
    bytes only as `bin` (raw=False decodes `str` to text).  Timestamps decode
    to `msgpack.Timestamp` objects, which no field accepts.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import msgpack

from redirgate.proto.tunnel.errors import DecodeError, FrameTooLargeError, LocalProtocolError, TruncatedError

__all__ = [
    "MAX_FRAME_LIMIT",
    "PREFIX_SIZE",
    "Buffer",
    "FrameDecoder",
    "check_limit",
    "decode_body",
    "encode_body",
    "frame",
]

Buffer = bytes | bytearray | memoryview

_PREFIX: Final = struct.Struct(">I")
#: Size of the length prefix.
PREFIX_SIZE: Final = _PREFIX.size
#: No limit may exceed what the 4-byte prefix can say.
MAX_FRAME_LIMIT: Final = 0xFFFFFFFF


class _ExtRejected(Exception):
    """Raised from msgpack's ext_hook; translated to DecodeError."""


class _KeyRejected(Exception):
    """Raised from msgpack's object_pairs_hook; translated to DecodeError."""


def _reject_ext(code: int, data: bytes) -> Any:
    raise _ExtRejected(f"msgpack ext type {code} is not allowed")


def _strict_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if type(key) is not str:
            raise _KeyRejected(f"map key of type {type(key).__name__} (only str keys are allowed)")
        if key in result:
            raise _KeyRejected(f"duplicate map key {key[:64]!r}")
        result[key] = value
    return result


def decode_body(body: Buffer) -> dict[str, Any]:
    """One msgpack map of plain values from a frame body, or DecodeError."""
    size = len(body)
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            timestamp=0,
            ext_hook=_reject_ext,
            object_pairs_hook=_strict_pairs,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=size,
        )
    except (_ExtRejected, _KeyRejected) as exc:
        raise DecodeError(str(exc)) from exc
    except Exception as exc:
        detail = str(exc)[:200]
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}{': ' + detail if detail else ''}") from exc
    if type(value) is not dict:
        raise DecodeError(f"the body is a msgpack {type(value).__name__}, not a map")
    return value


def encode_body(value: dict[str, Any]) -> bytes:
    """msgpack for a map of plain values (bytes as bin, str as str)."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False, datetime=False)
    except Exception as exc:
        raise LocalProtocolError(f"cannot encode: {type(exc).__name__}: {exc}") from exc
    return packed


def frame(body: bytes, limit: int, kind: str | None = None) -> bytes:
    """The length prefix + `body`; LocalProtocolError if it exceeds `limit`."""
    if len(body) > limit:
        raise LocalProtocolError(f"message of {len(body)} bytes exceeds the limit of {limit}", kind=kind)
    return _PREFIX.pack(len(body)) + body


def check_limit(limit: int, name: str = "max_message_size") -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_FRAME_LIMIT:
        raise LocalProtocolError(f"{name}={limit!r} is not an integer in 1..{MAX_FRAME_LIMIT}")
    return limit


class FrameDecoder:
    """Received bytes in, frame bodies out (see the module docstring)."""

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = check_limit(max_message_size)
        self._buf = bytearray()
        self._start = 0
        self._body_len: int | None = None  # checked length of the frame at _start
        self._eof = False
        #: stream offset of the next unread byte (for error messages)
        self.offset = 0

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a frame."""
        return len(self._buf) - self._start

    def receive_data(self, data: Buffer) -> None:
        """Add received bytes; `b""` means the peer closed the stream."""
        if len(data) == 0:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data after EOF")
        if self._start and self._start * 2 >= len(self._buf):
            del self._buf[: self._start]
            self._start = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None if it is not all in yet.

        Raises FrameTooLargeError as soon as a bad length prefix is in, and
        TruncatedError at EOF in the middle of a frame.
        """
        available = len(self._buf) - self._start
        if self._body_len is None:
            if available < PREFIX_SIZE:
                if available and self._eof:
                    raise TruncatedError(f"stream ended inside a length prefix at offset {self.offset}")
                return None
            (length,) = _PREFIX.unpack_from(self._buf, self._start)
            if not 1 <= length <= self.max_message_size:
                raise FrameTooLargeError(
                    f"message length {length} at offset {self.offset} is outside 1..{self.max_message_size}",
                    length=length,
                    limit=self.max_message_size,
                )
            self._body_len = length
        total = PREFIX_SIZE + self._body_len
        if available < total:
            if self._eof:
                raise TruncatedError(f"stream ended inside a {self._body_len}-byte message at offset {self.offset}")
            return None
        start = self._start + PREFIX_SIZE
        body = bytes(self._buf[start : start + self._body_len])
        self._start += total
        self.offset += total
        self._body_len = None
        if self._start == len(self._buf):
            self._buf.clear()
            self._start = 0
        return body

    def take_remaining(self) -> bytes:
        """All bytes buffered and not yet framed (what follows a preamble)."""
        rest = bytes(self._buf[self._start :])
        self._buf.clear()
        self._start = 0
        self._body_len = None
        return rest
