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

Resumable channels (issue 16): the gateway's `AttachResult` to a client that
advertised `RESUME_CAPABILITY` carries the channel's first resume
credential (omitted from the wire when empty, so an older client decodes
it as before).  A data connection that resumes a channel opens with
`ResumeChannel` instead of `Attach` and is answered `ResumeAnswer`;
`resume.py` says what the counts in them mean.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final

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
from redirgate.proto.tunnel.messages import (
    MAX_REASON_LEN,
    RESUME_CREDENTIAL_BYTES,
    TOKEN_MAX_BYTES,
    TOKEN_MIN_BYTES,
    ResumeAnswer,
    ResumeChannel,
)

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
    #: the channel's first resume credential (only to a client with the capability; else empty)
    credential: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        v.boolean("AttachResult", "ok", self.ok)
        object.__setattr__(self, "reason", v.text("AttachResult", "reason", self.reason, MAX_REASON_LEN))
        n = RESUME_CREDENTIAL_BYTES if self.credential else 0
        object.__setattr__(self, "credential", v.blob("AttachResult", "credential", self.credential, n, n))

    def to_wire(self) -> dict[str, Any]:
        wire = TunnelMessage.to_wire(self)
        if not self.credential:
            del wire["credential"]  # what a client without resume expects: no unknown field
        return wire


ATTACH_MESSAGES: Final[Mapping[str, type[TunnelMessage]]] = MappingProxyType(
    {cls.KIND: cls for cls in (Attach, AttachResult, ResumeChannel, ResumeAnswer)}
)

#: the preamble frames each role may send, and the answer each opening gets
_SENDS: dict[Role, tuple[type[TunnelMessage], ...]] = {
    Role.CLIENT: (Attach, ResumeChannel),
    Role.GATEWAY: (AttachResult, ResumeAnswer),
}
_ANSWER: dict[type[TunnelMessage], type[TunnelMessage]] = {Attach: AttachResult, ResumeChannel: ResumeAnswer}


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
            if type(message) not in _SENDS[self.role.peer]:
                raise UnexpectedMessageError(f"a {self.role.peer.value} may not send it", kind=message.KIND)
            if self.role is Role.CLIENT:
                if self.sent is None:
                    raise UnexpectedMessageError("before our attach", kind=message.KIND)
                if type(message) is not _ANSWER[type(self.sent)]:
                    raise UnexpectedMessageError(f"not the answer to {self.sent.KIND!r}", kind=message.KIND)
        except RemoteProtocolError as exc:
            self._failure = exc
            raise
        self.received = message
        return message

    def send(self, message: TunnelMessage) -> bytes:
        """The bytes of our one preamble frame."""
        allowed = _SENDS[self.role]
        if type(message) not in allowed:
            kinds = " or ".join(repr(cls.KIND) for cls in allowed)
            raise LocalProtocolError(f"a {self.role.value} sends only {kinds} here")
        if self.sent is not None:
            raise LocalProtocolError("the preamble frame was already sent", kind=message.KIND)
        if self.role is Role.GATEWAY:
            if self.received is None:
                raise LocalProtocolError("answer only after the client's attach", kind=message.KIND)
            if type(message) is not _ANSWER[type(self.received)]:
                raise LocalProtocolError(f"not the answer to {self.received.KIND!r}", kind=message.KIND)
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
