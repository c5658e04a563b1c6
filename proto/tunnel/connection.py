"""One end of a tunnel control connection, sans-IO (h11-style).

`TunnelConnection(role)` turns received bytes into control messages and
control messages into bytes, and enforces the state table of `state.py` in
both directions.  It never touches a socket, never logs and never reads a
clock (heartbeat timing is `heartbeat.HeartbeatTracker`'s, with the caller's
time).

    conn = TunnelConnection("client")
    wire = conn.send(ClientHello(software="redirgate 0.1"))
    conn.receive_data(data)          # b"" = the peer closed
    event = conn.next_event()        # a message, NEED_DATA or CLOSED

Errors
    A `RemoteProtocolError` from `next_event()` is fatal for receiving: later
    calls raise again and further data is dropped.  Sending stays possible so
    the caller can send one `Error` (its reason for the log at the other end)
    before closing.  A `LocalProtocolError` from `send()` changes nothing and
    writes nothing.  The message-size limit applies both ways: we never send
    what we would not accept, and both ends default to the same limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from redirgate.proto.tunnel.base import (
    CLOSED,
    NEED_DATA,
    Role,
    Sentinel,
    TunnelMessage,
    decode_message,
    encode_message,
)
from redirgate.proto.tunnel.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    UnexpectedMessageError,
    VersionMismatchError,
)
from redirgate.proto.tunnel.framing import Buffer, FrameDecoder, check_limit
from redirgate.proto.tunnel.messages import CONTROL_MESSAGES, PROTOCOL_VERSION, ClientHello, GatewayHello
from redirgate.proto.tunnel.state import ChannelState, ControlState, Violation

__all__ = ["DEFAULT_MAX_CHANNELS", "DEFAULT_MAX_MESSAGE_SIZE", "Event", "TunnelConnection"]

#: Control messages up to 1 MiB: room for a full inventory of MAX_DEVICES.
DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024
#: Live (pending or open) channels per control connection; a memory bound,
#: the gateway's per-client policy should stay well below it.
DEFAULT_MAX_CHANNELS: Final = 1024

Event = TunnelMessage | Sentinel


class TunnelConnection:
    """One end of a control connection (see the module docstring)."""

    def __init__(
        self,
        role: Role | str,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        protocol_version: tuple[int, int] = PROTOCOL_VERSION,
    ) -> None:
        try:
            self.role = Role(role)
        except ValueError:
            raise LocalProtocolError(f"role {role!r} is neither 'client' nor 'gateway'") from None
        self.max_message_size = check_limit(max_message_size)
        if type(max_channels) is not int or max_channels < 1:
            raise LocalProtocolError(f"max_channels={max_channels!r} must be a positive integer")
        # validated the same way as a hello's field
        self.protocol_version = ClientHello(protocol_version=protocol_version).protocol_version
        self._decoder = FrameDecoder(self.max_message_size)
        self._state = ControlState(self.protocol_version, max_channels)
        self._failure: RemoteProtocolError | None = None
        self._closed = False

    # ------------------------------------------------------------ state
    @property
    def our_hello(self) -> ClientHello | GatewayHello | None:
        return self._state.hellos.get(self.role)

    @property
    def peer_hello(self) -> ClientHello | GatewayHello | None:
        return self._state.hellos.get(self.role.peer)

    @property
    def negotiated_version(self) -> tuple[int, int] | None:
        """(our major, the lower minor) once both hellos have passed."""
        return self._state.negotiated_version

    @property
    def shared_capabilities(self) -> frozenset[str]:
        """Capabilities both hellos advertise (empty before both passed)."""
        if len(self._state.hellos) < 2:
            return frozenset()
        ours, theirs = self._state.hellos[self.role], self._state.hellos[self.role.peer]
        return ours.capabilities & theirs.capabilities

    @property
    def gateway_hello(self) -> GatewayHello | None:
        """The gateway's hello (sent or received): heartbeat timing lives there."""
        hello = self._state.hellos.get(Role.GATEWAY)
        return hello if isinstance(hello, GatewayHello) else None

    @property
    def channels(self) -> Mapping[int, ChannelState]:
        """Live channels by id (read-only view)."""
        return MappingProxyType(self._state.channels)

    @property
    def failure(self) -> RemoteProtocolError | None:
        """The remote error that ended receiving, if any."""
        return self._failure

    @property
    def error_sent(self) -> bool:
        """We sent our `Error`: nothing more may be sent."""
        return self.role in self._state.error_sent

    # ---------------------------------------------------------- receive
    def receive_data(self, data: Buffer) -> None:
        """Add received bytes (any bytes-like object); `b""` = EOF."""
        if self._failure is not None:
            return  # receiving is over; keep no more bytes
        self._decoder.receive_data(data)

    def next_event(self) -> Event:
        """The next message from the peer, NEED_DATA, or CLOSED (sticky)."""
        if self._failure is not None:
            raise RemoteProtocolError(f"the connection already failed: {self._failure.reason}")
        if self._closed:
            return CLOSED
        try:
            body = self._decoder.next_frame()
            if body is None:
                if self._decoder.eof:
                    self._closed = True
                    return CLOSED
                return NEED_DATA
            message = decode_message(body, CONTROL_MESSAGES)
            self._check(self.role.peer, message, local=False)
        except RemoteProtocolError as exc:
            self._failure = exc
            raise
        self._state.apply(self.role.peer, message)
        return message

    # ------------------------------------------------------------- send
    def send(self, message: TunnelMessage) -> bytes:
        """The bytes for `message`: LocalProtocolError if it may not be sent now."""
        if not isinstance(message, TunnelMessage) or CONTROL_MESSAGES.get(message.KIND) is not type(message):
            raise LocalProtocolError(f"{type(message).__name__} is not a control message")
        self._check(self.role, message, local=True)
        wire = encode_message(message, self.max_message_size)
        self._state.apply(self.role, message)
        return wire

    def _check(self, sender: Role, message: TunnelMessage, *, local: bool) -> None:
        try:
            self._state.check(sender, message, local=local)
        except Violation as exc:
            if local:
                raise LocalProtocolError(exc.reason, kind=message.KIND) from None
            if exc.theirs is not None:
                raise VersionMismatchError(
                    exc.reason, ours=self.protocol_version, theirs=exc.theirs, kind=message.KIND
                ) from None
            raise UnexpectedMessageError(exc.reason, kind=message.KIND) from None
