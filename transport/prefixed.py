"""A stream whose first bytes were already read by someone else.

The tunnel preamble and the gateway's hold phase read a few bytes ahead of
the channel proper (what followed an attach frame in the same TLS record,
or what QEMU sent while its device was on its way).  `PrefixedStream`
hands those bytes out first, then reads the wrapped stream; writes and
close go straight through.  No gateway state here.
"""

from __future__ import annotations

import dataclasses

import trio

from redirgate.transport.interfaces import (
    Buffer,
    Handover,
    NonBlockingStream,
    ReceiveIntoStream,
    SocketLender,
    nonblocking,
)
from redirgate.transport.sockets import DEFAULT_RECEIVE_BYTES

__all__ = ["PrefixedStream"]


class PrefixedStream(trio.abc.Stream):
    """`prefix` first, then `inner` (both directions otherwise untouched).

    It owns `inner` (closes it in `aclose`).  It offers the fast path
    (interfaces.NonBlockingStream) and lends a socket (SocketLender) exactly
    where `inner` does; a lent socket carries the prefix along.
    """

    def __init__(self, inner: ReceiveIntoStream, prefix: bytes | bytearray = b"") -> None:
        self.inner = inner
        self._prefix = memoryview(bytes(prefix))
        #: `inner` where it offers the fast path: it then works through us
        self._fast: NonBlockingStream | None = inner if nonblocking(inner) else None
        self.supports_nonblocking = self._fast is not None

    def _take_prefix(self, buffer: Buffer) -> int:
        n = min(len(buffer), len(self._prefix))
        memoryview(buffer)[:n] = self._prefix[:n]
        self._prefix = self._prefix[n:]
        return n

    # -- the fast path: only called where supports_nonblocking says so -----
    def try_receive_into(self, buffer: Buffer) -> int | None:
        if self._prefix:
            return self._take_prefix(buffer)
        assert self._fast is not None
        return self._fast.try_receive_into(buffer)

    async def wait_receivable(self) -> None:
        assert self._fast is not None
        await self._fast.wait_receivable()

    def try_send(self, view: memoryview) -> int | None:
        assert self._fast is not None
        return self._fast.try_send(view)

    async def wait_sendable(self) -> None:
        assert self._fast is not None
        await self._fast.wait_sendable()

    def lend(self) -> Handover | None:
        """`inner`'s socket with our prefix before whatever it carries; None where `inner` cannot lend."""
        lent = self.inner.lend() if isinstance(self.inner, SocketLender) else None
        if lent is None:
            return None
        return dataclasses.replace(lent, prefix=bytes(self._prefix) + lent.prefix)

    def pending_prefix(self) -> bytes:
        """The prefix bytes not handed out yet (a gateway restart passes them on)."""
        return bytes(self._prefix)

    def drop_prefix(self) -> None:
        """A borrower of the lent socket delivered the prefix (it is not lent again)."""
        self._prefix = memoryview(b"")

    # -- the trio stream ---------------------------------------------------
    async def receive_into(self, buffer: Buffer) -> int:
        if self._prefix:
            n = self._take_prefix(buffer)
            await trio.lowlevel.checkpoint()
            return n
        return await self.inner.receive_into(buffer)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buf = bytearray(max_bytes or DEFAULT_RECEIVE_BYTES)
        n = await self.receive_into(buf)
        return bytes(buf[:n])

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        if isinstance(self.inner, trio.abc.SendStream):
            await self.inner.wait_send_all_might_not_block()
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.inner.aclose()
