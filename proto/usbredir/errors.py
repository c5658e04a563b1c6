"""The usbredir codec's exception hierarchy.

`RemoteProtocolError` (and its subclasses) means the peer sent bytes the
reference parser would reject; `LocalProtocolError` means our own caller asked
us to send something the peer's parser would reject (QEMU aborts on those, so
we refuse before a byte is written).  Both derive from `ProtocolError`.
After a remote error the connection object refuses further input.
"""

from __future__ import annotations

__all__ = [
    "CapabilityError",
    "DataLengthError",
    "HeaderSizeError",
    "InvalidFieldError",
    "LengthLimitError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "UnexpectedDataError",
    "UnknownTypeError",
    "WrongDirectionError",
]


class ProtocolError(Exception):
    """Base of every usbredir codec error.

    `msg_type` is the raw type number (None when not known), `offset` the
    stream offset of the message's first byte.
    """

    def __init__(self, reason: str, *, msg_type: int | None = None, offset: int | None = None):
        self.reason = reason
        self.msg_type = msg_type
        self.offset = offset
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = []
        if self.msg_type is not None:
            where.append(f"type {_type_name(self.msg_type)}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{self.reason} ({', '.join(where)})" if where else self.reason

    def at_offset(self, offset: int) -> ProtocolError:
        """Record the stream offset of the offending message (returns self)."""
        self.offset = offset
        self.args = (self._describe(),)
        return self


class RemoteProtocolError(ProtocolError):
    """The peer sent something the reference parser rejects."""


class UnknownTypeError(RemoteProtocolError):
    """A message type that does not exist."""


class WrongDirectionError(RemoteProtocolError):
    """A message type that may not travel towards our role."""


class LengthLimitError(RemoteProtocolError):
    """A length field beyond the reference's maximum."""


class HeaderSizeError(RemoteProtocolError):
    """`length` is shorter than the type-specific header in force."""


class UnexpectedDataError(RemoteProtocolError):
    """Data bytes on a message type or direction that carries none."""


class DataLengthError(RemoteProtocolError):
    """The data size differs from the length in the type-specific header."""


class CapabilityError(RemoteProtocolError):
    """A capability-gated message without the capability."""


class InvalidFieldError(RemoteProtocolError):
    """A field value the reference rejects (endpoint direction, counts)."""


class LocalProtocolError(ProtocolError):
    """Our caller asked to send a message the peer would reject."""


def _type_name(msg_type: int) -> str:
    from redirgate.proto.usbredir.constants import MsgType

    try:
        return f"{MsgType(msg_type).name.lower()}({msg_type})"
    except ValueError:
        return str(msg_type)
