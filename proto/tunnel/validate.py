"""Field checks shared by the tunnel's message constructors.

Every check raises `LocalProtocolError` naming the class, the field and the
rule; the receive path re-raises it as `InvalidMessageError`.  Text that a
peer sends ends up in log lines, so free text must be printable (no newlines,
no control or format characters) and every string and sequence has a bound.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

from redirgate.proto.tunnel.errors import LocalProtocolError

__all__ = [
    "U32",
    "U64",
    "blob",
    "boolean",
    "enum_value",
    "mapping",
    "number",
    "sequence",
    "text",
    "token_text",
    "uint",
]

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF

#: Machine words on the wire: capability names, error codes, option keys.
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.\-]*")

E = TypeVar("E", bound=Enum)


#: Bounded repr for error messages: a peer's value may be huge or deeply nested.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxlong = 40


def _fail(owner: str, name: str, value: Any, rule: str) -> LocalProtocolError:
    shown = _REPR.repr(value)
    return LocalProtocolError(f"{owner}.{name}={shown}: {rule}")


def uint(owner: str, name: str, value: Any, high: int, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(owner, name, value, f"must be an integer in {low}..{high}")
    return value


def number(owner: str, name: str, value: Any, low: float, high: float) -> float:
    """A finite int or float in (low, high], returned as float."""
    if type(value) not in (int, float) or not math.isfinite(value) or not low < value <= high:
        raise _fail(owner, name, value, f"must be a finite number in ({low}, {high}]")
    return float(value)


def boolean(owner: str, name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _fail(owner, name, value, "must be a boolean")
    return value


def text(owner: str, name: str, value: Any, max_len: int, *, empty: bool = True) -> str:
    """Printable text of at most `max_len` characters."""
    if not isinstance(value, str):
        raise _fail(owner, name, value, "must be a string")
    plain: str = str.__str__(value)  # a StrEnum member or other str subclass -> plain str
    value = plain
    if len(value) > max_len:
        raise _fail(owner, name, value, f"longer than {max_len} characters")
    if not value and not empty:
        raise _fail(owner, name, value, "must not be empty")
    if not value.isprintable():
        raise _fail(owner, name, value, "contains control or non-printable characters")
    return plain


def token_text(owner: str, name: str, value: Any, max_len: int = 64) -> str:
    """A machine word: [a-z0-9][a-z0-9_.-]*, at most `max_len` characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_len or not _TOKEN.fullmatch(value):
        raise _fail(owner, name, value, f"must match [a-z0-9][a-z0-9_.-]* (1..{max_len} characters)")
    return str.__str__(value)


def blob(owner: str, name: str, value: Any, low: int, high: int) -> bytes:
    if type(value) not in (bytes, bytearray, memoryview) or not low <= len(value) <= high:
        raise _fail(owner, name, value, f"must be {low}..{high} bytes")
    return bytes(value)


def sequence(owner: str, name: str, value: Any, max_len: int) -> tuple[Any, ...]:
    """A list or tuple (never a str, bytes or set) of at most `max_len` items."""
    if type(value) not in (list, tuple):
        raise _fail(owner, name, value, "must be a list")
    if len(value) > max_len:
        raise _fail(owner, name, value, f"has more than {max_len} items")
    return tuple(value)


def mapping(owner: str, name: str, value: Any, max_len: int) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise _fail(owner, name, value, "must be a map")
    if len(value) > max_len:
        raise _fail(owner, name, value, f"has more than {max_len} entries")
    return value


def enum_value(owner: str, name: str, value: Any, enum: type[E]) -> E:
    """A member of a str-valued enum, given as the member or its wire string."""
    if isinstance(value, enum):
        return value
    if type(value) is str:
        try:
            return enum(value)
        except ValueError:
            pass
    allowed = ", ".join(repr(m.value) for m in enum)
    raise _fail(owner, name, value, f"must be one of {allowed}")
