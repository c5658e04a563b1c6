"""RESP, the Redis wire protocol, sans-IO: commands out, replies in.

`encode_command(*args)` gives the bytes of one command (an array of bulk
strings, what every Redis since 1.2 reads).  `RespParser` takes whatever
bytes arrived (`receive_data`) and yields one reply at a time
(`next_reply`): `NEED_DATA` until a whole reply is buffered.  It reads
RESP2 (`+ - : $ *`) and the RESP3 types a server may send after `HELLO 3`
(`_ , # % ~ > ( = !`), so a connection may speak either; pub/sub messages
arrive as `Push` under RESP3 and as plain arrays under RESP2.

Replies are Python values: simple strings are `str`, bulk strings `bytes`,
integers `int`, doubles `float`, booleans `bool`, null `None`, arrays
`list`, maps `dict`, sets `set` (`frozenset` members are not needed: keys
are bytes or str), pushes `Push`, and an error reply is a `ReplyError`
value (not raised: the caller decides, a pipeline keeps going).

Bounds: a bulk string longer than `max_bulk_bytes` or an aggregate with
more than `max_items` elements is a `RespProtocolError`, never a huge
allocation; nesting is bounded too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from redirgate.proto.sentinels import NEED_DATA, Sentinel

__all__ = [
    "NEED_DATA",
    "Push",
    "Reply",
    "ReplyError",
    "RespParser",
    "RespProtocolError",
    "encode_command",
]

#: A bulk string (512 MB is Redis's own limit; we never need more than a few MB).
MAX_BULK_BYTES: Final = 64 * 1024 * 1024
MAX_ITEMS: Final = 1_000_000
MAX_DEPTH: Final = 16
#: A type/length line longer than this is not RESP.
MAX_LINE_BYTES: Final = 64 * 1024


class RespProtocolError(Exception):
    """The server sent something that is not RESP (or is past our bounds)."""


@dataclass(frozen=True, slots=True)
class ReplyError:
    """An error reply (`-ERR ...`, `!...`): the first word is the code."""

    message: str

    @property
    def code(self) -> str:
        return self.message.split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Push:
    """A RESP3 out-of-band push (pub/sub messages, invalidations)."""

    items: list[Reply]


Reply: TypeAlias = (
    str | bytes | int | float | bool | list["Reply"] | dict["Reply", "Reply"] | set["Reply"] | Push | ReplyError | None
)

Arg: TypeAlias = str | bytes | int | float


def _arg_bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, bool):
        raise TypeError("a Redis command argument is str, bytes, int or float, not bool")
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, (int, float)):
        return repr(arg).encode()
    raise TypeError(f"a Redis command argument is str, bytes, int or float, not {type(arg).__name__}")


def encode_command(*args: Arg) -> bytes:
    """One command as RESP: `*N` then `$len` + bytes for each argument."""
    if not args:
        raise ValueError("a Redis command has at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg_bytes(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class _Incomplete(Exception):
    """Not enough bytes buffered for the reply yet (internal)."""


class RespParser:
    """Replies from a byte stream (see the module docstring)."""

    def __init__(self, *, max_bulk_bytes: int = MAX_BULK_BYTES, max_items: int = MAX_ITEMS) -> None:
        self._buf = bytearray()
        self._max_bulk = max_bulk_bytes
        self._max_items = max_items

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_reply(self) -> Reply | Literal[Sentinel.NEED_DATA]:
        """The next whole reply, or NEED_DATA; RespProtocolError on garbage."""
        try:
            value, end = self._parse(0, 0)
        except _Incomplete:
            return NEED_DATA
        del self._buf[:end]
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            if len(self._buf) - pos > MAX_LINE_BYTES:
                raise RespProtocolError(f"no line end within {MAX_LINE_BYTES} bytes")
            raise _Incomplete
        return bytes(self._buf[pos:end]), end + 2

    def _int(self, text: bytes) -> int:
        try:
            return int(text)
        except ValueError:
            raise RespProtocolError(f"not an integer: {text[:40]!r}") from None

    def _count(self, text: bytes, what: str) -> int:
        n = self._int(text)
        if n > self._max_items:
            raise RespProtocolError(f"{what} of {n} elements is past the bound {self._max_items}")
        return n

    def _blob(self, text: bytes, pos: int) -> tuple[bytes | None, int]:
        n = self._int(text)
        if n < 0:
            return None, pos
        if n > self._max_bulk:
            raise RespProtocolError(f"bulk string of {n} bytes is past the bound {self._max_bulk}")
        if len(self._buf) < pos + n + 2:
            raise _Incomplete
        if self._buf[pos + n : pos + n + 2] != b"\r\n":
            raise RespProtocolError("bulk string not followed by CRLF")
        return bytes(self._buf[pos : pos + n]), pos + n + 2

    def _items(self, n: int, pos: int, depth: int) -> tuple[list[Reply], int]:
        items: list[Reply] = []
        for _ in range(n):
            value, pos = self._parse(pos, depth + 1)
            items.append(value)
        return items, pos

    def _parse(self, pos: int, depth: int) -> tuple[Reply, int]:
        if depth > MAX_DEPTH:
            raise RespProtocolError(f"replies nested deeper than {MAX_DEPTH}")
        if pos >= len(self._buf):
            raise _Incomplete
        kind = bytes(self._buf[pos : pos + 1])
        line, pos = self._line(pos + 1)
        if kind == b"+":
            return line.decode(errors="replace"), pos
        if kind == b"-":
            return ReplyError(line.decode(errors="replace")), pos
        if kind == b":":
            return self._int(line), pos
        if kind in (b"$", b"="):  # bulk, verbatim ("txt:" prefix kept)
            return self._blob(line, pos)
        if kind == b"!":
            blob, pos = self._blob(line, pos)
            return ReplyError((blob or b"").decode(errors="replace")), pos
        if kind in (b"*", b"~", b">"):
            n = self._count(line, "an array")
            if n < 0:
                return None, pos
            items, pos = self._items(n, pos, depth)
            if kind == b"~":
                try:
                    return set(items), pos
                except TypeError:
                    raise RespProtocolError("a set with an unhashable member") from None
            return (Push(items) if kind == b">" else items), pos
        if kind == b"%":
            n = self._count(line, "a map")
            flat, pos = self._items(2 * n, pos, depth)
            try:
                return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}, pos
            except TypeError:
                raise RespProtocolError("a map with an unhashable key") from None
        if kind == b"_":
            return None, pos
        if kind == b"#":
            if line not in (b"t", b"f"):
                raise RespProtocolError(f"not a boolean: {line[:40]!r}")
            return line == b"t", pos
        if kind == b",":
            try:
                return float(line), pos
            except ValueError:
                raise RespProtocolError(f"not a double: {line[:40]!r}") from None
        if kind == b"(":
            return self._int(line), pos
        raise RespProtocolError(f"unknown reply type {kind!r}")
