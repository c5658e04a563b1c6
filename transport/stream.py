"""Zero-copy byte streams: TLS on a non-blocking ssl.SSLSocket, and plain TCP.

Owns :class:`ZeroCopyTLSStream`, :class:`PlainSocketStream`, the
:class:`ReceiveIntoStream` protocol the relay is written against, and the
helpers that open or accept them.  Never holds gateway state.

Why not ``trio.SSLStream``: it allocates a new ``bytes`` per read and pushes
every record through Python-level MemoryBIO copies; on this hardware it
relayed about 160 MB/s against 620 MB/s for the approach taken here, where
OpenSSL reads the socket itself and decrypts straight into the caller's
buffer (``SSLSocket.recv_into``) and encrypts straight from the caller's
memoryview (``SSLSocket.send``).

How the TLS stream is driven.  The SSLSocket is non-blocking; every
operation is *tried first* and only on ``SSLWantReadError`` /
``SSLWantWriteError`` does the task park in ``trio.lowlevel.wait_readable``
/ ``wait_writable``.  Trying first matters: decrypted bytes can sit inside
OpenSSL (``pending()``) while the socket itself has nothing to read, and
waiting for readability then would hang.  Either direction may need the
other (a read can have to write, a write can have to read); trio allows one
waiter per fd and direction, so waits go through one lock per direction.
Operations that did not wait end with a cancel-shielded checkpoint, as
trio's own sockets do, so every call is a checkpoint.

Cancellation.  A cancelled ``receive_into`` loses nothing (OpenSSL keeps the
record).  A ``send_all`` cancelled after OpenSSL accepted part of the data
leaves a half-written record that only the same bytes could finish; the
stream then refuses further sends with BrokenResourceError (trio's SSLStream
makes the same choice).

Closing.  ``aclose`` sends close_notify (best effort, at most
``close_timeout_s``, skipped if the stream is broken or a send is in
flight), then ``notify_closing`` wakes any task parked on the socket with
ClosedResourceError, then the socket is closed.  It does not wait for the
peer's close_notify.  TLS 1.3 has no half-close, so this is a two-way
``trio.abc.Stream`` only.

Errors: handshake failures become :class:`TlsRefused` (via
``refusal_from_ssl_error``); data-phase ``ssl.SSLError``/``OSError`` become
``trio.BrokenResourceError`` (``__cause__`` keeps the original) and use
after close ``trio.ClosedResourceError``.  A peer that drops the TCP
connection without close_notify is a BrokenResourceError, not EOF:
truncation must not look like a clean end.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import trio
from cryptography import x509

from redirgate.transport.errors import Refusal, TlsRefused
from redirgate.transport.tls import ClientContext, refusal_from_ssl_error

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT_S",
    "DEFAULT_HANDSHAKE_TIMEOUT_S",
    "PlainSocketStream",
    "ReceiveIntoStream",
    "ZeroCopyTLSStream",
    "accept_tls",
    "open_plain_connection",
    "open_tls_connection",
    "peer_label",
    "set_nodelay",
]

DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_CLOSE_TIMEOUT_S = 1.0
DEFAULT_RECEIVE_BYTES = 65536
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
#: A full TLS record's plaintext (RFC 8446 5.1): the most one TLS read returns.
FULL_RECORD_BYTES = 16384

Buffer = bytearray | memoryview


@runtime_checkable
class ReceiveIntoStream(Protocol):
    """What the relay pump needs: receive into a caller's buffer, send a view, close."""

    async def receive_into(self, buffer: Buffer) -> int: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class NonBlockingStream(Protocol):
    """The relay's fast path: moves that never wait, and the waits apart.

    `try_receive_into` / `try_send` return None where the call would block
    (0 from `try_receive_into` is the end of the stream); the `wait_*`
    methods are the only checkpoints.  ZeroCopyTLSStream, PlainSocketStream
    and PrefixedStream over them implement it.
    """

    def try_receive_into(self, buffer: bytearray | memoryview) -> int | None: ...

    async def wait_receivable(self) -> None: ...

    def try_send(self, view: memoryview) -> int | None: ...

    async def wait_sendable(self) -> None: ...


def nonblocking(stream: object) -> bool:
    """Whether `stream` offers the fast path (a wrapper may say it does not)."""
    return isinstance(stream, NonBlockingStream) and getattr(stream, "supports_nonblocking", True)


class _Busy:
    """One task at a time per direction, else trio.BusyResourceError."""

    __slots__ = ("_message", "held")

    def __init__(self, message: str) -> None:
        self.held = False
        self._message = message

    def __enter__(self) -> None:
        if self.held:
            raise trio.BusyResourceError(self._message)
        self.held = True

    def __exit__(self, *exc: object) -> None:
        self.held = False


def peer_label(sock: socket.socket | trio.socket.SocketType) -> str:
    """ "host:port" of the peer (IPv6 in brackets), or the family name."""
    try:
        address = sock.getpeername()
    except OSError:
        return "unconnected"
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return "unix" if sock.family == socket.AF_UNIX else str(address)


def set_nodelay(sock: socket.socket | trio.socket.SocketType) -> None:
    """Disable Nagle on TCP sockets (a relay forwards what it has at once)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _detach(socket_stream: trio.SocketStream) -> socket.socket:
    """Take the fd out of a trio.SocketStream as a stdlib socket (same fd)."""
    fd = socket_stream.socket.detach()
    return socket.socket(fileno=fd)


def record_layer(sslsock: ssl.SSLSocket) -> tuple[Callable[[int, Buffer], int], Callable[[Buffer], int]]:
    """``read(nbytes, buffer) -> count`` and ``write(view) -> count`` of a handshaken socket.

    ssl.SSLSocket's recv_into/send are Python wrappers (two frames and
    their checks per call) around the same methods of its `_sslobj`; with
    suppress_ragged_eofs=False (our streams) they add nothing else, and the
    callers make their own closed/broken checks first.  Where that attribute
    is not there, the public methods stand in."""
    sslobj = getattr(sslsock, "_sslobj", None)
    if sslobj is not None and hasattr(sslobj, "read") and hasattr(sslobj, "write"):
        return sslobj.read, sslobj.write
    return (lambda n, buf: sslsock.recv_into(buf, n)), sslsock.send


class ZeroCopyTLSStream(trio.abc.Stream):
    """A TLS stream over a non-blocking ssl.SSLSocket with zero-copy receive_into/send_all.

    Build it on a connected socket, then ``await do_handshake()``.  The
    socket is owned from then on (also on failure: call ``aclose``).
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        peer: str | None = None,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        max_send_bytes: int = 0,
    ) -> None:
        self.peer = peer if peer is not None else peer_label(sock)
        #: 0, or the most plaintext one write (so one TLS record) carries; QEMU
        #: 7.2's TLS chardev needs 4 KiB records (see route_server)
        self.max_send_bytes = max_send_bytes
        sock.setblocking(False)
        set_nodelay(sock)
        self._ssl = context.wrap_socket(
            sock,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=False,
        )
        self._close_timeout_s = close_timeout_s
        sslsock = self._ssl
        #: (nbytes, buffer) -> count, and view -> count: see _bind_record_layer
        self._ssl_read: Callable[[int, Buffer], int] = lambda n, buf: sslsock.recv_into(buf, n)
        self._ssl_write: Callable[[Buffer], int] = sslsock.send
        self._send_busy = _Busy("another task is sending on this stream")
        self._recv_busy = _Busy("another task is receiving on this stream")
        self._read_wait = trio.Lock()
        self._write_wait = trio.Lock()
        self._handshaken = False
        self._closed = False
        self._broken: BaseException | None = None
        self._eof = False
        self._fast_wants_write = False
        self._fast_send_wants_read = False

    # -- waiting ---------------------------------------------------------
    async def _wait(self, lock: trio.Lock, waiter: Callable[[socket.socket], Awaitable[None]]) -> None:
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            await waiter(self._ssl)
        finally:
            lock.release()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")

    async def _wait_for(self, exc: ssl.SSLError) -> None:
        if isinstance(exc, ssl.SSLWantWriteError):
            await self._wait(self._write_wait, trio.lowlevel.wait_writable)
        else:
            await self._wait(self._read_wait, trio.lowlevel.wait_readable)

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(f"{self.peer}: stream is broken") from self._broken
        if not self._handshaken:
            raise RuntimeError("do_handshake() first")

    def _broken_error(self, exc: BaseException) -> trio.BrokenResourceError:
        if (
            isinstance(exc, OSError)
            and not isinstance(exc, ssl.SSLError)
            and exc.errno in _CLOSED_ERRNOS
            and self._closed
        ):
            raise trio.ClosedResourceError("stream was closed") from None
        self._broken = exc
        return trio.BrokenResourceError(f"{self.peer}: {exc}")

    # -- handshake -------------------------------------------------------
    async def do_handshake(self, timeout_s: float | None = DEFAULT_HANDSHAKE_TIMEOUT_S) -> None:
        """Run the TLS handshake; TlsRefused on failure or after `timeout_s`."""
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        with self._send_busy, self._recv_busy:
            with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")) as scope:
                await trio.lowlevel.checkpoint()
                while True:
                    try:
                        self._ssl.do_handshake()
                        break
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                        await self._wait_for(want)
                    except (ssl.SSLError, OSError) as exc:
                        self._broken = exc
                        raise refusal_from_ssl_error(exc, self.peer) from exc
            if scope.cancelled_caught:
                self._broken = TimeoutError("handshake timed out")
                raise TlsRefused(self.peer, Refusal.HANDSHAKE_TIMEOUT, f"no handshake within {timeout_s} s")
        self._handshaken = True
        self._bind_record_layer()

    def _bind_record_layer(self) -> None:
        """Read and write through the SSL object itself from now on (`record_layer`)."""
        self._ssl_read, self._ssl_write = record_layer(self._ssl)

    # -- receiving -------------------------------------------------------
    async def receive_into(self, buffer: Buffer) -> int:
        """Decrypt into `buffer`; return the byte count, 0 at a clean end (close_notify).

        Fills as much of `buffer` as the socket has ready (several TLS
        records per call), but waits only for the first byte.
        """
        with self._recv_busy:
            self._check()
            nbytes = len(buffer)
            if nbytes == 0:
                raise ValueError("receive_into needs a non-empty buffer")
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return 0
            waited = False
            while True:
                try:
                    n = self._ssl_read(nbytes, buffer)
                    break
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    await self._wait_for(want)
                    waited = True
                except (ssl.SSLError, OSError) as exc:
                    raise self._broken_error(exc) from exc
            if n == 0:
                self._eof = True
            elif n < nbytes:
                n = self._read_more(buffer, n, trains_only=False)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return n

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_BYTES
        if not isinstance(max_bytes, int):
            raise TypeError("max_bytes must be an int")
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_busy:
            self._check()
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            waited = False
            while True:
                try:
                    data = self._ssl.recv(max_bytes)
                    break
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    await self._wait_for(want)
                    waited = True
                except (ssl.SSLError, OSError) as exc:
                    raise self._broken_error(exc) from exc
            if not data:
                self._eof = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    # -- the relay's fast path ------------------------------------------
    # `try_receive_into` / `try_send` never wait: None means "would block",
    # and the caller then awaits `wait_receivable` / `wait_sendable` (the
    # only checkpoints).  The relay pump uses them so a chunk that can move
    # at once costs no trip through trio's scheduler.  One owner only: no
    # busy-guards here, the relay is the sole user of both its streams.
    def try_receive_into(self, buffer: Buffer) -> int | None:
        if self._eof:
            return 0
        if self._closed or self._broken is not None:
            self._check()
        nbytes = len(buffer)
        try:
            n = self._ssl_read(nbytes, buffer)
        except ssl.SSLWantReadError:
            self._fast_wants_write = False
            return None
        except ssl.SSLWantWriteError:
            self._fast_wants_write = True
            return None
        except (ssl.SSLError, OSError) as exc:
            raise self._broken_error(exc) from exc
        if n == 0:
            self._eof = True
            return 0
        # Full records usually come in trains (bulk): batch them into one
        # send.  A short one (interactive traffic) goes on at once.
        if n >= FULL_RECORD_BYTES and n < nbytes:
            n = self._read_more(buffer, n, trains_only=True)
        return n

    def _read_more(self, buffer: Buffer, n: int, *, trains_only: bool) -> int:
        """Add whatever is ready to the `n` bytes already in `buffer`; with
        `trains_only`, stop after the first record that is not full."""
        nbytes = len(buffer)
        view = memoryview(buffer)
        while n < nbytes:
            try:
                more = self._ssl_read(nbytes - n, view[n:])
            except (ssl.SSLError, OSError):
                break  # nothing ready, or an error the next call reports
            if more == 0:
                self._eof = True
                break
            n += more
            if trains_only and more < FULL_RECORD_BYTES:
                break
        return n

    async def wait_receivable(self) -> None:
        # No locks: the fast path has one owner (trio still refuses a second
        # waiter on the same fd with BusyResourceError).
        if self._ssl.pending():
            await trio.lowlevel.checkpoint()
        elif self._fast_wants_write:
            await trio.lowlevel.wait_writable(self._ssl)
        else:
            await trio.lowlevel.wait_readable(self._ssl)
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")

    def try_send(self, view: memoryview) -> int | None:
        if self._closed or self._broken is not None:
            self._check()
        if self.max_send_bytes and len(view) > self.max_send_bytes:
            view = view[: self.max_send_bytes]
        try:
            return self._ssl_write(view)
        except ssl.SSLWantWriteError:
            self._fast_send_wants_read = False
            return None
        except ssl.SSLWantReadError:
            self._fast_send_wants_read = True
            return None
        except (ssl.SSLError, OSError) as exc:
            raise self._broken_error(exc) from exc

    def reactor_side(self) -> Any:
        """Hand the socket to the relay reactor (see transport.reactor)."""
        from redirgate.transport.reactor import ReactorSide

        self._check()
        return ReactorSide("tls", self._ssl, max_send=self.max_send_bytes)

    async def wait_sendable(self) -> None:
        if self._fast_send_wants_read:
            await trio.lowlevel.wait_readable(self._ssl)
        else:
            await trio.lowlevel.wait_writable(self._ssl)
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")

    # -- sending ---------------------------------------------------------
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt from `data` (no copy of it is made) and write it all."""
        with self._send_busy:
            self._check()
            await trio.lowlevel.checkpoint_if_cancelled()
            with memoryview(data) as raw:
                view = raw if raw.format == "B" and raw.ndim == 1 else raw.cast("B")
                total = len(view)
                sent = 0
                waited = False
                write = self._ssl_write
                step = self.max_send_bytes or total
                try:
                    while sent < total:
                        try:
                            sent += write(view[sent : sent + step])
                        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                            await self._wait_for(want)
                            waited = True
                        except (ssl.SSLError, OSError) as exc:
                            raise self._broken_error(exc) from exc
                except trio.Cancelled as cancelled:
                    # OpenSSL may hold part of a record made from `data`
                    self._broken = cancelled
                    raise
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_busy:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            await self._wait(self._write_wait, trio.lowlevel.wait_writable)

    # -- closing ---------------------------------------------------------
    async def _send_close_notify(self) -> None:
        while True:
            try:
                self._ssl.unwrap()
                return
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self._ssl)
            except (ssl.SSLError, OSError, ValueError):
                return  # SSLWantReadError: ours is out, not waiting for theirs; ValueError: no socket

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._handshaken and self._broken is None and not self._send_busy.held:
                with trio.move_on_after(self._close_timeout_s):
                    await self._send_close_notify()
        finally:
            if self._ssl.fileno() != -1:
                trio.lowlevel.notify_closing(self._ssl)
            self._ssl.close()
        await trio.lowlevel.checkpoint()

    # -- introspection ---------------------------------------------------
    def getpeercert(self) -> bytes | None:
        """The peer's certificate, DER, or None."""
        return self._ssl.getpeercert(binary_form=True)

    def peer_certificate(self) -> x509.Certificate | None:
        der = self.getpeercert()
        return x509.load_der_x509_certificate(der) if der else None

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


@contextmanager
def _translate_socket_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in _CLOSED_ERRNOS:
            raise trio.ClosedResourceError("this socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


class PlainSocketStream(trio.abc.HalfCloseableStream):
    """A trio.SocketStream with a zero-copy ``receive_into`` (socket.recv_into)."""

    def __init__(self, socket_stream: trio.SocketStream) -> None:
        self._stream = socket_stream
        self.socket = socket_stream.socket
        self.peer = peer_label(self.socket)
        self._recv_busy = _Busy("another task is receiving on this stream")
        self._fd = self.socket.fileno()

    async def receive_into(self, buffer: Buffer) -> int:
        if len(buffer) == 0:
            raise ValueError("receive_into needs a non-empty buffer")
        with self._recv_busy, _translate_socket_errors():
            return await self.socket.recv_into(buffer)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_BYTES
        if not isinstance(max_bytes, int):
            raise TypeError("max_bytes must be an int")
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_busy, _translate_socket_errors():
            return await self.socket.recv(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    # -- the relay's fast path (see ZeroCopyTLSStream) --------------------
    def try_receive_into(self, buffer: Buffer) -> int | None:
        if self.socket.fileno() < 0:  # closed: never touch a recycled fd number
            raise trio.ClosedResourceError("this socket was already closed")
        try:
            return os.readv(self._fd, (buffer,))
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def wait_receivable(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)

    def try_send(self, view: memoryview) -> int | None:
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("this socket was already closed")
        try:
            return os.write(self._fd, view)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def wait_sendable(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    def reactor_side(self) -> Any:
        from redirgate.transport.reactor import ReactorSide

        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("this socket was already closed")
        return ReactorSide("plain", self._fd)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_plain_connection(host: str, port: int) -> PlainSocketStream:
    """Connect over TCP (TCP_NODELAY is trio's default)."""
    return PlainSocketStream(await trio.open_tcp_stream(host, port))


async def open_tls_connection(
    host: str,
    port: int,
    client: ClientContext,
    *,
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
) -> ZeroCopyTLSStream:
    """Connect and handshake as a TLS client; TlsRefused if the handshake fails."""
    tcp = await trio.open_tcp_stream(host, port)
    peer = peer_label(tcp.socket)
    stream = ZeroCopyTLSStream(
        _detach(tcp), client.ssl_context, server_side=False, server_hostname=client.server_name, peer=peer
    )
    try:
        await stream.do_handshake(handshake_timeout_s)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def accept_tls(
    socket_stream: trio.SocketStream,
    context: ssl.SSLContext,
    *,
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    max_send_bytes: int = 0,
) -> ZeroCopyTLSStream:
    """Take over an accepted connection and handshake as the TLS server.

    On failure the connection is closed and TlsRefused (naming the peer and
    the reason) raised; nothing is logged here, the caller logs once.
    `max_send_bytes` caps the plaintext per TLS record (0: no cap).
    """
    peer = peer_label(socket_stream.socket)
    stream = ZeroCopyTLSStream(
        _detach(socket_stream), context, server_side=True, peer=peer, max_send_bytes=max_send_bytes
    )
    try:
        await stream.do_handshake(handshake_timeout_s)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream
