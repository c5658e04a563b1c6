"""A stream whose first bytes were already read by someone else.

The tunnel preamble and the gateway's hold phase read a few bytes ahead of
the channel proper (what followed an attach frame in the same TLS record,
or what QEMU sent while its device was on its way).  `PrefixedStream`
hands those bytes out first, then reads the wrapped stream; writes and
close go straight through.  No gateway state here.
"""

from __future__ import annotations

from typing import Any

import trio

from redirgate.transport.stream import Buffer, ReceiveIntoStream, nonblocking

__all__ = ["PrefixedStream"]


class PrefixedStream(trio.abc.Stream):
    """`prefix` first, then `inner` (both directions otherwise untouched)."""

    def __init__(self, inner: ReceiveIntoStream, prefix: bytes | bytearray = b"") -> None:
        self.inner = inner
        self._prefix = memoryview(bytes(prefix))
        #: the relay's fast path works through us when it works on `inner`
        self.supports_nonblocking = nonblocking(inner)

    def try_receive_into(self, buffer: Buffer) -> int | None:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            memoryview(buffer)[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self.inner.try_receive_into(buffer)  # type: ignore[attr-defined,no-any-return]

    async def wait_receivable(self) -> None:
        await self.inner.wait_receivable()  # type: ignore[attr-defined]

    def try_send(self, view: memoryview) -> int | None:
        return self.inner.try_send(view)  # type: ignore[attr-defined,no-any-return]

    async def wait_sendable(self) -> None:
        await self.inner.wait_sendable()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        # `reactor_side` exists only where the inner stream has it
        if name == "reactor_side" and hasattr(self.inner, "reactor_side"):
            return self._reactor_side
        raise AttributeError(name)

    def _reactor_side(self) -> Any:
        side = self.inner.reactor_side()  # type: ignore[attr-defined]
        side.prefix, self._prefix = bytes(self._prefix) + side.prefix, memoryview(b"")
        return side

    async def receive_into(self, buffer: Buffer) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            memoryview(buffer)[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return n
        return await self.inner.receive_into(buffer)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buf = bytearray(max_bytes or 65536)
        n = await self.receive_into(buf)
        return bytes(buf[:n])

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        waiter = getattr(self.inner, "wait_send_all_might_not_block", None)
        if waiter is not None:
            await waiter()
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.inner.aclose()
