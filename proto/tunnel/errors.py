"""The tunnel codec's exception hierarchy (control connection and attach preamble).

Every error is a `TunnelProtocolError` carrying `reason` (a sentence fit for a
log line) and `kind` (the message kind on the wire, when known).  The caller
adds the peer when it logs.

- `RemoteProtocolError` and its subclasses: the peer sent something we refuse.
  The connection object then refuses further input (it may still send one
  `Error` message so the peer learns why).
- `LocalProtocolError`: our own caller built an invalid message or sent one
  the protocol does not allow now; nothing was written, the state is unchanged.

msgpack's own exceptions never escape this package: they are translated at
one boundary (`framing.decode_body`) into `DecodeError`.
"""

from __future__ import annotations

__all__ = [
    "DecodeError",
    "FrameTooLargeError",
    "InvalidMessageError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SelectorError",
    "TruncatedError",
    "TunnelProtocolError",
    "UnexpectedMessageError",
    "VersionMismatchError",
]


class TunnelProtocolError(Exception):
    """Base of every tunnel codec error."""

    def __init__(self, reason: str, *, kind: str | None = None) -> None:
        self.reason = reason
        self.kind = kind
        super().__init__(f"{reason} (message {kind!r})" if kind is not None else reason)


class RemoteProtocolError(TunnelProtocolError):
    """The peer broke the protocol."""


class FrameTooLargeError(RemoteProtocolError):
    """A length prefix beyond the limit (or zero); refused before the body is buffered."""

    def __init__(self, reason: str, *, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(reason)


class TruncatedError(RemoteProtocolError):
    """The stream ended in the middle of a frame."""


class DecodeError(RemoteProtocolError):
    """The frame body is not one well-formed msgpack map of plain values."""


class InvalidMessageError(RemoteProtocolError):
    """Unknown kind, unknown or missing field, or a field value out of range."""


class UnexpectedMessageError(RemoteProtocolError):
    """A message the peer's role may not send, or not in this state."""


class VersionMismatchError(RemoteProtocolError):
    """The peer speaks a major protocol version we do not."""

    def __init__(self, reason: str, *, ours: tuple[int, int], theirs: tuple[int, int], kind: str | None = None) -> None:
        self.ours = ours
        self.theirs = theirs
        super().__init__(reason, kind=kind)


class LocalProtocolError(TunnelProtocolError):
    """Our caller built an invalid message or sent one the protocol forbids now."""


class SelectorError(LocalProtocolError, ValueError):
    """A device selector string that does not follow the grammar."""
