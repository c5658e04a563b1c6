"""What streams are handed over as: the types the relay, the client's engines and the gateway's reactor rely on.

Owns the typing Protocols a stream is passed around as (no implementation
here): :class:`ReceiveIntoStream` (zero-copy receive), :class:`NonBlockingStream`
(moves that never wait, and the waits apart), :class:`SocketLender` with
:class:`Handover` (a stream lends its socket to another driver), and
:data:`Inspector` (what sees a relay's chunks).  ZeroCopyTLSStream,
PlainSocketStream and PrefixedStream implement them; the client's and the
gateway's code is written against these, never against ``hasattr``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeGuard, runtime_checkable

from redirgate.proto import tunnel as t

__all__ = [
    "Buffer",
    "Handover",
    "Inspector",
    "NonBlockingStream",
    "ReceiveIntoStream",
    "ResumeHook",
    "SocketLender",
    "nonblocking",
]

Buffer = bytearray | memoryview

#: Sees each chunk of its direction before it is sent; raises to end the
#: relay (the chunk is not sent), returns True once it needs no more.
Inspector = Callable[[memoryview], bool | None]


@runtime_checkable
class ReceiveIntoStream(Protocol):
    """What the relay pump needs: receive into a caller's buffer, send a view, close."""

    async def receive_into(self, buffer: Buffer) -> int: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class NonBlockingStream(Protocol):
    """The fast path: moves that never wait, and the waits apart.

    `try_receive_into` / `try_send` return None where the call would block
    (0 from `try_receive_into` is the end of the stream); the `wait_*`
    methods are the only checkpoints.  One owner: a task that receives and
    one that sends at most.  `supports_nonblocking` is False on a wrapper
    whose inner stream has no fast path (use :func:`nonblocking`).
    """

    supports_nonblocking: bool

    def try_receive_into(self, buffer: Buffer) -> int | None: ...

    async def wait_receivable(self) -> None: ...

    def try_send(self, view: memoryview) -> int | None: ...

    async def wait_sendable(self) -> None: ...


#: whether a type has NonBlockingStream's members: `isinstance` against a runtime Protocol
#: walks them every time (tens of microseconds; twice per client connection at the gateway)
_FAST_TYPES: dict[type, bool] = {}


def nonblocking(stream: object) -> TypeGuard[NonBlockingStream]:
    """Whether `stream` offers the fast path (a wrapper may say it does not)."""
    kind = type(stream)
    fast = _FAST_TYPES.get(kind)
    if fast is None:
        fast = _FAST_TYPES[kind] = isinstance(stream, NonBlockingStream)
    return fast and bool(getattr(stream, "supports_nonblocking", False))


@dataclass
class Handover:
    """A stream's socket, lent to another driver (the gateway's relay reactor thread).

    Ownership: the stream that lent it still owns the socket and is the one
    that closes it.  Between the lend and the borrower's "done", the
    borrower alone reads and writes it (trio does not touch it: the relay
    just waits), from one thread, so an SSL object is never used from two
    threads at once; the borrower never closes it.
    """

    #: the handshaken TLS socket, or None for plain TCP
    tls: ssl.SSLSocket | None
    #: the socket's file descriptor (of `tls` where there is one)
    fd: int
    #: 0, or the most bytes one write may carry (a TLS record's plaintext cap)
    max_send: int = 0
    #: bytes already read from this side, to be delivered before the socket's
    prefix: bytes = b""
    #: a resumable channel's data connection (transport.resumable): the
    #: borrower records what it writes to this socket and counts what it reads
    resume: ResumeHook | None = None


class ResumeHook(Protocol):
    """What a `ResumableStream` lends with its socket.

    Between `borrow` and `give_back` the borrower's thread alone uses
    `channel` (the sans-IO replay buffer and counts): it calls
    `channel.sent(chunk)` for every chunk it will write to the socket
    (reading no more than `channel.room()`), `channel.received(n)` for what
    it read, and hands an ack that returns to `ack_due` on the trio loop.
    Acks from the peer arrive in trio meanwhile and are passed to
    `deliver`, which must carry them to the borrower's thread; one that
    reaches the borrower after it gave the socket back (it no longer uses
    `channel`) comes back to `returned_ack` on the trio loop."""

    channel: t.ResumableChannel

    def borrow(self, deliver: Callable[[t.ChannelAck], None]) -> None: ...

    def ack_due(self, ack: t.ChannelAck) -> None: ...

    def returned_ack(self, ack: t.ChannelAck) -> None: ...

    def give_back(self) -> None: ...


@runtime_checkable
class SocketLender(Protocol):
    """A stream that can lend its socket (see :class:`Handover`)."""

    def lend(self) -> Handover | None:
        """The socket and what goes with it; None where this stream cannot lend one.

        No side effect: a caller that does not use the handover leaves the
        stream as it was."""
        ...
