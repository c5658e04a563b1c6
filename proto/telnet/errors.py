"""The telnet / RFC 2217 codec's exception hierarchy.

`RemoteProtocolError` means the peer sent something malformed; the codec has
already skipped it and stays usable (telnet has no framing to lose, so a bad
subnegotiation costs only itself).  `LocalProtocolError` means our caller asked
to send something invalid; nothing was produced.
"""

from __future__ import annotations

__all__ = [
    "ComPortValueError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SubnegotiationError",
    "TelnetError",
]


class TelnetError(Exception):
    """Base of every telnet codec error; `reason` says what was wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RemoteProtocolError(TelnetError):
    """The peer sent malformed telnet; the offending part was skipped."""


class SubnegotiationError(RemoteProtocolError):
    """A subnegotiation that is too long, unterminated or interrupted."""

    def __init__(self, reason: str, option: int | None) -> None:
        self.option = option
        super().__init__(reason)


class ComPortValueError(RemoteProtocolError):
    """An RFC 2217 command with an unknown code or a value of the wrong size/range.

    `command` is the base command code (0..12) when known, so a server can
    still answer with the port's actual setting.
    """

    def __init__(self, reason: str, command: int | None, value: bytes) -> None:
        self.command = command
        self.value = value
        super().__init__(reason)


class LocalProtocolError(TelnetError):
    """Our caller asked to send something the protocol does not allow."""
