"""Plain TCP as a zero-copy stream: :class:`PlainSocketStream` and :func:`open_plain_connection`.

Ownership: a PlainSocketStream owns the trio.SocketStream it wraps and closes
it in `aclose`.  It may lend the descriptor (`lend`) to the gateway's relay
reactor, which reads and writes it from its thread until the channel ends
and never closes it.  Errors go through the one translator,
:func:`redirgate.transport.errors.stream_error`.
"""

from __future__ import annotations

import os

import trio

from redirgate.transport.errors import stream_error
from redirgate.transport.interfaces import Buffer, Handover
from redirgate.transport.sockets import Busy, check_receive_size, peer_label

__all__ = ["PlainSocketStream", "open_plain_connection"]


class PlainSocketStream(trio.abc.HalfCloseableStream):
    """A trio.SocketStream with a zero-copy ``receive_into`` (socket.recv_into) and the fast path."""

    #: the relay's fast path (interfaces.NonBlockingStream)
    supports_nonblocking = True

    def __init__(self, socket_stream: trio.SocketStream) -> None:
        self._stream = socket_stream
        self.socket = socket_stream.socket
        self.peer = peer_label(self.socket)
        self._recv_busy = Busy("another task is receiving on this stream")
        self._fd = self.socket.fileno()

    async def receive_into(self, buffer: Buffer) -> int:
        if len(buffer) == 0:
            raise ValueError("receive_into needs a non-empty buffer")
        with self._recv_busy:
            try:
                return await self.socket.recv_into(buffer)
            except OSError as exc:
                raise stream_error(exc, self.peer) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_receive_size(max_bytes)
        with self._recv_busy:
            try:
                return await self.socket.recv(max_bytes)
            except OSError as exc:
                raise stream_error(exc, self.peer) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    # -- the fast path (interfaces.NonBlockingStream) ----------------------
    def _check_open(self) -> None:
        if self.socket.fileno() < 0:  # closed: never touch a recycled fd number
            raise trio.ClosedResourceError(f"{self.peer}: stream was closed")

    def try_receive_into(self, buffer: Buffer) -> int | None:
        self._check_open()
        try:
            return os.readv(self._fd, (buffer,))
        except BlockingIOError:
            return None
        except OSError as exc:
            raise stream_error(exc, self.peer) from exc

    async def wait_receivable(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)

    def try_send(self, view: memoryview) -> int | None:
        self._check_open()
        try:
            return os.write(self._fd, view)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise stream_error(exc, self.peer) from exc

    async def wait_sendable(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    def lend(self) -> Handover:
        """The descriptor for the gateway's relay reactor (interfaces.Handover)."""
        self._check_open()
        return Handover(None, self._fd)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_plain_connection(host: str, port: int) -> PlainSocketStream:
    """Connect over TCP (TCP_NODELAY is trio's default)."""
    return PlainSocketStream(await trio.open_tcp_stream(host, port))
