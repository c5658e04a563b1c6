"""The attach preamble of a channel's data connection, sans-IO.

The client dials a new TLS connection (same certificate as its control
connection) and sends one `Attach(channel_id, token)` frame with the token the
gateway put in `OpenChannel`; the gateway answers one `AttachResult`.  After
that, the connection carries raw bytes (usbredir, serial, ...) both ways.
Same framing as the control connection, with a tiny limit.

`AttachConnection(role)` handles exactly those two frames.  Once the message
it waits for has arrived, `trailing_data()` hands over any bytes that came
after it: they are the first raw bytes of the channel, not part of the
preamble.  The gateway compares tokens with `Attach.token_matches`, in
constant time.  This module never touches a socket and never logs.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final

from redirgate.proto.tunnel import validate as v
from redirgate.proto.tunnel.base import (
    CLOSED,
    NEED_DATA,
    Role,
    Sentinel,
    TunnelMessage,
    decode_message,
    encode_message,
)
from redirgate.proto.tunnel.errors import LocalProtocolError, RemoteProtocolError, UnexpectedMessageError
from redirgate.proto.tunnel.framing import Buffer, FrameDecoder, check_limit
from redirgate.proto.tunnel.messages import MAX_REASON_LEN, TOKEN_MAX_BYTES, TOKEN_MIN_BYTES

__all__ = ["ATTACH_MAX_MESSAGE_SIZE", "ATTACH_MESSAGES", "Attach", "AttachConnection", "AttachResult"]

#: An Attach is ~60 bytes, an AttachResult at most ~300 (a 256-character
#: reason, mostly ASCII); 1 KiB leaves room and nothing more.
ATTACH_MAX_MESSAGE_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class Attach(TunnelMessage):
    """The client's first frame on a data connection."""

    KIND: ClassVar[str] = "attach"
    SENDERS: ClassVar[frozenset[Role]] = frozenset({Role.CLIENT})

    channel_id: int
    token: bytes = field(repr=False)

    def __post_init__(self) -> None:
        v.uint("Attach", "channel_id", self.channel_id, v.U32, low=1)
        object.__setattr__(self, "token", v.blob("Attach", "token", self.token, TOKEN_MIN_BYTES, TOKEN_MAX_BYTES))

    def token_matches(self, expected: bytes) -> bool:
        """Constant-time comparison with the token the gateway issued."""
        return hmac.compare_digest(self.token, expected)


@dataclass(frozen=True, slots=True)
class AttachResult(TunnelMessage):
    """The gateway's answer; after `ok=True` raw bytes follow, after
    `ok=False` the gateway closes."""

    KIND: ClassVar[str] = "attach_result"
    SENDERS: ClassVar[frozenset[Role]] = frozenset({Role.GATEWAY})

    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        v.boolean("AttachResult", "ok", self.ok)
        object.__setattr__(self, "reason", v.text("AttachResult", "reason", self.reason, MAX_REASON_LEN))


ATTACH_MESSAGES: Final[Mapping[str, type[TunnelMessage]]] = MappingProxyType(
    {Attach.KIND: Attach, AttachResult.KIND: AttachResult}
)

_SENDS: dict[Role, type[TunnelMessage]] = {Role.CLIENT: Attach, Role.GATEWAY: AttachResult}


class AttachConnection:
    """One end of a data connection's preamble (see the module docstring).

    Client: `send(Attach(...))`, then feed bytes until `next_event()` gives the
    `AttachResult`.  Gateway: feed bytes until `next_event()` gives the
    `Attach`, then `send(AttachResult(...))`.  Either way, `trailing_data()`
    afterwards returns the raw bytes that followed the preamble.
    """

    def __init__(self, role: Role | str, *, max_message_size: int = ATTACH_MAX_MESSAGE_SIZE) -> None:
        try:
            self.role = Role(role)
        except ValueError:
            raise LocalProtocolError(f"role {role!r} is neither 'client' nor 'gateway'") from None
        self._decoder = FrameDecoder(check_limit(max_message_size))
        self.sent: TunnelMessage | None = None
        self.received: TunnelMessage | None = None
        self._failure: RemoteProtocolError | None = None
        self._trailing_taken = False

    @property
    def done(self) -> bool:
        """Both preamble frames have passed."""
        return self.sent is not None and self.received is not None

    def receive_data(self, data: Buffer) -> None:
        """Add received bytes; `b""` = EOF.  Raw bytes after the preamble are
        kept for `trailing_data()`; after that, feed the channel instead."""
        if self._failure is not None:
            return
        if self._trailing_taken:
            raise LocalProtocolError("the preamble is over: these bytes belong to the channel")
        self._decoder.receive_data(data)

    def next_event(self) -> TunnelMessage | Sentinel:
        """The peer's preamble frame, NEED_DATA, or CLOSED."""
        if self._failure is not None:
            raise RemoteProtocolError(f"the preamble already failed: {self._failure.reason}")
        if self.received is not None:
            raise LocalProtocolError("the peer's preamble frame was already returned; take trailing_data()")
        try:
            body = self._decoder.next_frame()
            if body is None:
                return CLOSED if self._decoder.eof else NEED_DATA
            message = decode_message(body, ATTACH_MESSAGES)
            expected = _SENDS[self.role.peer]
            if not isinstance(message, expected):
                raise UnexpectedMessageError(f"a {self.role.peer.value} may not send it", kind=message.KIND)
            if self.role is Role.CLIENT and self.sent is None:
                raise UnexpectedMessageError("before our attach", kind=message.KIND)
        except RemoteProtocolError as exc:
            self._failure = exc
            raise
        self.received = message
        return message

    def send(self, message: TunnelMessage) -> bytes:
        """The bytes of our one preamble frame."""
        expected = _SENDS[self.role]
        if type(message) is not expected:
            raise LocalProtocolError(f"a {self.role.value} sends only {expected.KIND!r} here")
        if self.sent is not None:
            raise LocalProtocolError("the preamble frame was already sent", kind=message.KIND)
        if self.role is Role.GATEWAY and self.received is None:
            raise LocalProtocolError("answer only after the client's attach", kind=message.KIND)
        wire = encode_message(message, self._decoder.max_message_size)
        self.sent = message
        return wire

    def trailing_data(self) -> tuple[bytes, bool]:
        """(raw bytes received after the peer's preamble frame, EOF seen).
        Once only, after `next_event()` returned that frame."""
        if self.received is None:
            raise LocalProtocolError("the peer's preamble frame has not arrived")
        if self._trailing_taken:
            raise LocalProtocolError("trailing_data() was already taken")
        self._trailing_taken = True
        return self._decoder.take_remaining(), self._decoder.eof
