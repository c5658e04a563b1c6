"""The base of every tunnel message: roles, and the map each record is on the wire.

A record is a frozen dataclass whose constructor validates every field (and
normalises lists to tuples, wire strings to enums), so an object that exists
can always be encoded.  On the wire a record is a msgpack map from field
names to values; a message adds `"kind"`.  Decoding is strict: an unknown
field, a missing required field or a bad value is an error, never ignored.
New fields and kinds in later minor versions are sent only to peers that
advertised the capability for them, so strictness never breaks a peer.

This module owns the generic record <-> map conversion; the field rules live
in each class's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from enum import Enum, StrEnum
from typing import Any, ClassVar, TypeVar

from redirgate.proto.sentinels import CLOSED, NEED_DATA, Sentinel
from redirgate.proto.tunnel.errors import InvalidMessageError, LocalProtocolError
from redirgate.proto.tunnel.framing import Buffer, decode_body, encode_body, frame

__all__ = [
    "CLOSED",
    "KIND_KEY",
    "NEED_DATA",
    "Role",
    "Sentinel",
    "TunnelMessage",
    "WireRecord",
    "decode_message",
    "encode_message",
]

#: The key naming a message's kind in its map.
KIND_KEY = "kind"

R = TypeVar("R", bound="WireRecord")


class Role(StrEnum):
    """Which end of the tunnel: the client dials, the gateway accepts."""

    CLIENT = "client"
    GATEWAY = "gateway"

    @property
    def peer(self) -> Role:
        return Role.GATEWAY if self is Role.CLIENT else Role.CLIENT


def _to_wire(value: Any) -> Any:
    if isinstance(value, WireRecord):
        return value.to_wire()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(_to_wire(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


#: a record type's fields by name, and their names in order (`dataclasses.fields` builds its tuple anew on each call)
_FIELDS: dict[type, tuple[Mapping[str, dataclasses.Field[Any]], tuple[str, ...]]] = {}


def _fields_of(cls: type) -> tuple[Mapping[str, dataclasses.Field[Any]], tuple[str, ...]]:
    known = _FIELDS.get(cls)
    if known is None:
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        known = _FIELDS[cls] = (types.MappingProxyType(by_name), tuple(by_name))
    return known


@dataclasses.dataclass(frozen=True, slots=True)
class WireRecord:
    """A frozen record that is one msgpack map on the wire."""

    def to_wire(self) -> dict[str, Any]:
        """The map of plain values this record is on the wire."""
        return {name: _to_wire(getattr(self, name)) for name in _fields_of(type(self))[1]}

    @classmethod
    def _field_from_wire(cls, name: str, value: Any) -> Any:
        """Turn one decoded wire value into what the constructor takes
        (nested records override this); plain values pass through."""
        return value

    #: wire keys that are not fields (a message's "kind")
    _NOT_FIELDS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_wire(cls: type[R], data: Mapping[str, Any]) -> R:
        """Build from a decoded map; LocalProtocolError (re-raised by the
        receive path as InvalidMessageError) on any unknown, missing or bad field."""
        if not isinstance(data, Mapping):
            raise LocalProtocolError(f"{cls.__name__}: expected a map, got {type(data).__name__}")
        known = _fields_of(cls)[0]
        for key in data:
            if key not in known and key not in cls._NOT_FIELDS:
                shown = repr(key[:40])
                raise LocalProtocolError(f"{cls.__name__}: unknown field {shown}")
        kwargs: dict[str, Any] = {}
        for name, field in known.items():
            if name in data:
                kwargs[name] = cls._field_from_wire(name, data[name])
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise LocalProtocolError(f"{cls.__name__}: missing field {name!r}")
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True, slots=True)
class TunnelMessage(WireRecord):
    """A message: a record with a `kind` on the wire and a set of roles
    that may send it."""

    KIND: ClassVar[str]
    SENDERS: ClassVar[frozenset[Role]]
    _NOT_FIELDS: ClassVar[frozenset[str]] = frozenset({KIND_KEY})

    def to_wire(self) -> dict[str, Any]:
        wire = WireRecord.to_wire(self)
        wire[KIND_KEY] = self.KIND
        return wire


def encode_message(message: TunnelMessage, limit: int) -> bytes:
    """The frame (length prefix + msgpack map) for `message`; LocalProtocolError
    if it would exceed `limit` bytes of body."""
    return frame(encode_body(message.to_wire()), limit, message.KIND)


def decode_message(body: Buffer, registry: Mapping[str, type[TunnelMessage]]) -> TunnelMessage:
    """The message in one frame body, looked up by kind in `registry`.

    DecodeError for bad msgpack, InvalidMessageError for an unknown kind or a
    bad field; nothing else escapes.
    """
    data = decode_body(body)
    kind = data.get(KIND_KEY)
    if type(kind) is not str:
        raise InvalidMessageError(f"the map has no {KIND_KEY!r} string")
    cls = registry.get(kind)
    if cls is None:
        raise InvalidMessageError(f"unknown message kind {kind[:64]!r}")
    try:
        return cls.from_wire(data)
    except LocalProtocolError as exc:
        raise InvalidMessageError(exc.reason, kind=kind) from exc
