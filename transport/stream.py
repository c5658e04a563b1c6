"""The zero-copy TLS stream: TLS on a non-blocking ssl.SSLSocket.

Owns :class:`ZeroCopyTLSStream`, its record-layer binding
(:func:`record_layer`, also what the gateway's relay reactor reads and
writes through) and the helpers that open or accept one.  Plain TCP is
:mod:`.plain`; the Protocols these implement are :mod:`.interfaces`.  Never
holds gateway state.

Why not ``trio.SSLStream``: it allocates a new ``bytes`` per read and pushes
every record through Python-level MemoryBIO copies; on this hardware it
relayed about 160 MB/s against 620 MB/s for the approach taken here, where
OpenSSL reads the socket itself and decrypts straight into the caller's
buffer and encrypts straight from the caller's memoryview.

How the TLS stream is driven.  The SSLSocket is non-blocking; every call
into OpenSSL goes through one helper, `_attempt`, that *tries first* and
says what OpenSSL needs where it would block (the socket readable or
writable); the one wait helper, `_wait`, parks on that.  Trying first
matters: decrypted bytes can sit inside OpenSSL (``pending()``) while the
socket itself has nothing to read, and waiting for readability then would
hang.  Either direction may need the other (a read can have to write, a
write can have to read); trio allows one waiter per fd and direction, so
waits go through one gate (a lock) per direction.  Operations that did not wait end
with a cancel-shielded checkpoint, as trio's own sockets do, so every call
is a checkpoint.

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
``refusal_from_ssl_error``; a client whose server answered with the
gateway's busy line instead of TLS gets ``Refusal.BUSY`` and its
``retry_after_s``: the first bytes are peeked at before OpenSSL reads them); data-phase ``ssl.SSLError``/``OSError`` go
through :func:`redirgate.transport.errors.stream_error` (``__cause__``
keeps the original) and the stream is broken from then on.  A peer that
drops the TCP connection without close_notify is a BrokenResourceError,
not EOF: truncation must not look like a clean end.
"""

from __future__ import annotations

import enum
import socket
import ssl
from collections.abc import Callable
from typing import Final, TypeVar

import trio
from cryptography import x509

from redirgate.proto.tunnel.busy import (
    BUSY_MAX_BYTES,
    BUSY_PREFIX,
    TICKET_LINE_MAX_BYTES,
    looks_like_tls,
    parse_busy,
    parse_busy_ticket,
    ticket_line,
)
from redirgate.transport.errors import Refusal, TlsRefused, stream_error
from redirgate.transport.interfaces import Buffer, Handover
from redirgate.transport.sockets import Busy, check_receive_size, cut_fd, peer_label, set_nodelay
from redirgate.transport.tls import ClientContext, refusal_from_ssl_error

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT_S",
    "DEFAULT_HANDSHAKE_TIMEOUT_S",
    "FULL_RECORD_BYTES",
    "BusyTickets",
    "ZeroCopyTLSStream",
    "accept_tls",
    "open_tls_connection",
    "record_layer",
]

DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_CLOSE_TIMEOUT_S = 1.0
#: A full TLS record's plaintext (RFC 8446 5.1): the most one TLS read returns.
FULL_RECORD_BYTES = 16384

T = TypeVar("T")

#: What OpenSSL needs before a call that would block can go on.
WANT_READ: Final = 1
WANT_WRITE: Final = 2
#: A TLS record header (RFC 8446 5.1): what OpenSSL reads before it checks the version.
_RECORD_HEADER_BYTES: Final = 5


class _State(enum.Enum):
    NEW = "before the handshake"
    OPEN = "open"
    EOF = "the peer's close_notify came; sending still works"
    BROKEN = "broken"
    CLOSED = "closed"


_NEW, _OPEN, _EOF, _BROKEN, _CLOSED = _State


def record_layer(sslsock: ssl.SSLSocket) -> tuple[Callable[[int, Buffer], int], Callable[[Buffer], int]]:
    """``read(nbytes, buffer) -> count`` and ``write(view) -> count`` of a handshaken socket.

    The one place that reads CPython's private ``SSLSocket._sslobj``, on
    purpose: ssl.SSLSocket's recv_into/send are Python wrappers (two or
    three frames and their checks per call) around the same methods of that
    object; with suppress_ragged_eofs=False (our streams) they add nothing
    else, and the callers make their own closed/broken checks first.
    Measured (loopback, 64-byte records, write + read + a read that would
    block, best of 30): 12.6 us through `_sslobj`, 13.5 us through the
    public read/write, 14.1 us through recv_into/send; per small message
    the reactor makes three such calls per side.  Where the attribute is
    not there (another Python), the public methods stand in.
    """
    sslobj = getattr(sslsock, "_sslobj", None)
    if sslobj is not None and hasattr(sslobj, "read") and hasattr(sslobj, "write"):
        return sslobj.read, sslobj.write
    return (lambda n, buf: sslsock.recv_into(buf, n)), sslsock.send


class _Gate:
    """One waiter per direction on the socket (trio allows one), the others
    queue behind it.  A flag while nobody queues: a trio.Lock's bookkeeping
    on every wait was a measurable share of a small message's cost."""

    __slots__ = ("_queue", "held")

    def __init__(self) -> None:
        self.held = False
        self._queue = trio.lowlevel.ParkingLot()

    async def queue(self) -> None:
        """Until the gate is free (then the caller sets `held`, with no checkpoint between)."""
        while self.held:
            await self._queue.park()

    def release(self) -> None:
        self.held = False
        if self._queue:
            self._queue.unpark_all()  # they try again: a cancelled one must not strand the rest


class ZeroCopyTLSStream(trio.abc.Stream):
    """A TLS stream over a non-blocking ssl.SSLSocket with zero-copy receive_into/send_all.

    Build it on a connected stdlib socket, then ``await do_handshake()``.

    Who owns the socket when: `accept_tls` / `open_tls_connection` detach
    the descriptor from trio's SocketStream (which is not used again) and
    hand it to this constructor, which wraps it as an ssl.SSLSocket; from
    then on this stream owns it, also on failure (call ``aclose``, the one
    place it is closed).  `lend` lets the gateway's relay reactor drive it
    from its thread for the life of a channel (see interfaces.Handover); the
    stream is not used meanwhile and closes it afterwards.
    """

    #: the relay's fast path (interfaces.NonBlockingStream)
    supports_nonblocking = True

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
        #: (nbytes, buffer) -> count, and view -> count: `record_layer` once handshaken
        self._ssl_read: Callable[[int, Buffer], int] = lambda n, buf: sslsock.recv_into(buf, n)
        self._ssl_write: Callable[[Buffer], int] = sslsock.send
        self._send_busy = Busy("another task is sending on this stream")
        self._recv_busy = Busy("another task is receiving on this stream")
        self._read_wait = _Gate()
        self._write_wait = _Gate()
        self._state = _NEW
        #: why the stream is broken (the __cause__ of later errors)
        self._cause: BaseException | None = None
        #: what the last would-block `_attempt` needed (read right after it)
        self._want = WANT_READ
        #: what the fast path's last would-block receive / send needs
        self._recv_want = WANT_READ
        self._send_want = WANT_WRITE

    # -- the record layer: one attempt, one wait ---------------------------
    def _attempt(self, op: Callable[..., T], *args: object) -> T | None:
        """One call into OpenSSL: its result, or None where it would block
        (`_want` then says on what).  Failures break the stream and raise
        trio's Closed/Broken error (stream_error)."""
        try:
            return op(*args)
        except ssl.SSLWantReadError:
            self._want = WANT_READ
            return None
        except ssl.SSLWantWriteError:
            self._want = WANT_WRITE
            return None
        except (ssl.SSLError, OSError) as exc:
            if self._state is not _CLOSED:
                self._state, self._cause = _BROKEN, exc
            raise stream_error(exc, self.peer) from exc

    async def _wait(self, want: int) -> None:
        """The one wait: park until the socket is readable (WANT_READ) or
        writable (WANT_WRITE); ClosedResourceError if the stream was closed."""
        if want == WANT_READ:
            gate, waiter = self._read_wait, trio.lowlevel.wait_readable
        else:
            gate, waiter = self._write_wait, trio.lowlevel.wait_writable
        if gate.held:
            await gate.queue()
        gate.held = True
        try:
            if self._state is _CLOSED:
                raise trio.ClosedResourceError(f"{self.peer}: stream was closed")
            await waiter(self._ssl)
        finally:
            gate.release()
        if self._state is _CLOSED:
            raise trio.ClosedResourceError(f"{self.peer}: stream was closed")

    async def _complete(self, op: Callable[..., T], *args: object) -> tuple[T, bool]:
        """`op` until it completes (`_attempt`, `_wait` on what it needs, again);
        the result and whether it waited (a call that did not wait still owes
        its caller a checkpoint)."""
        result = self._attempt(op, *args)
        if result is not None:
            return result, False
        while True:
            await self._wait(self._want)
            result = self._attempt(op, *args)
            if result is not None:
                return result, True

    def _check(self) -> None:
        """Raise unless the stream can move data (open, or at EOF for sends)."""
        state = self._state
        if state is _OPEN or state is _EOF:
            return
        if state is _CLOSED:
            raise trio.ClosedResourceError(f"{self.peer}: stream was closed")
        if state is _BROKEN:
            raise trio.BrokenResourceError(f"{self.peer}: stream is broken") from self._cause
        raise RuntimeError("do_handshake() first")

    # -- handshake -------------------------------------------------------
    def _handshake_step(self) -> bool:
        self._ssl.do_handshake()
        return True

    def _busy_hint(self) -> tuple[bool, float | None, bytes | None]:
        """The client side: (whether the server's first bytes are here, the hint
        of its busy line if they are one, and the ticket on the line after it:
        `redirgate.proto.tunnel.busy`).  Read with MSG_PEEK, so OpenSSL still
        gets every byte of a real ServerHello."""
        try:  # the plain socket's recv under the SSLSocket: OpenSSL has not seen these bytes
            first = socket.socket.recv(self._ssl, BUSY_MAX_BYTES + TICKET_LINE_MAX_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            return False, None, None
        except OSError:
            return True, None, None  # reset, ...: OpenSSL will say
        if looks_like_tls(first):
            return True, None, None
        return True, parse_busy(first), parse_busy_ticket(first)

    def _busy_line_openssl_cut(self) -> tuple[float | None, bytes | None]:
        """The client side, after OpenSSL failed its first read with a wrong
        record version: whether those bytes were a busy line that came after
        `_busy_hint` looked (a race the herd hits: the client is preempted
        between its ClientHello and OpenSSL's read).  OpenSSL took the 5 bytes
        of a record header and left the rest in the socket: (hint, ticket), or
        (None, None) when the rest is no busy line."""
        cause = self._cause
        if not (isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER"):
            return None, None
        taken = BUSY_PREFIX[:_RECORD_HEADER_BYTES]
        try:
            rest = socket.socket.recv(self._ssl, BUSY_MAX_BYTES + TICKET_LINE_MAX_BYTES, socket.MSG_PEEK)
        except OSError:
            return None, None
        return parse_busy(taken + rest), parse_busy_ticket(taken + rest)

    async def _handshake(self) -> None:
        """`_complete(_handshake_step)`; a client first looks whether the
        server's first bytes are a busy line instead of TLS (before OpenSSL
        reads them: they may be here before our ClientHello left)."""
        if self._ssl.server_side:
            await self._complete(self._handshake_step)
            return
        looked = False
        while True:
            if not looked:
                looked, hint, ticket = self._busy_hint()
                if hint is not None:
                    self._state, self._cause = _BROKEN, OSError("the gateway is busy")
                    raise TlsRefused(
                        self.peer, Refusal.BUSY, f"retry after {hint:g} s", retry_after_s=hint, ticket=ticket
                    )
            try:
                done = self._attempt(self._handshake_step)
            except trio.BrokenResourceError:
                hint, ticket = self._busy_line_openssl_cut()
                if hint is None:
                    raise
                raise TlsRefused(
                    self.peer, Refusal.BUSY, f"retry after {hint:g} s", retry_after_s=hint, ticket=ticket
                ) from None
            if done is not None:
                return
            await self._wait(self._want)

    async def do_handshake(self, timeout_s: float | None = DEFAULT_HANDSHAKE_TIMEOUT_S) -> None:
        """Run the TLS handshake; TlsRefused on failure or after `timeout_s`."""
        if self._state is _CLOSED:
            raise trio.ClosedResourceError(f"{self.peer}: stream was closed")
        with self._send_busy, self._recv_busy:
            with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")) as scope:
                await trio.lowlevel.checkpoint()
                try:
                    await self._handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as failed:
                    cause = failed.__cause__
                    assert isinstance(cause, OSError)  # _attempt raises from what OpenSSL raised
                    raise refusal_from_ssl_error(cause, self.peer) from cause
            if scope.cancelled_caught:
                self._state, self._cause = _BROKEN, TimeoutError("handshake timed out")
                raise TlsRefused(self.peer, Refusal.HANDSHAKE_TIMEOUT, f"no handshake within {timeout_s} s")
        self._state = _OPEN
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
            if self._state is _EOF:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return 0
            n, waited = await self._complete(self._ssl_read, nbytes, buffer)
            if n == 0:
                self._state = _EOF
            elif n < nbytes:
                n = self._read_more(buffer, n, trains_only=False)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return n

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_receive_size(max_bytes)
        with self._recv_busy:
            self._check()
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._state is _EOF:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            data, waited = await self._complete(self._ssl.recv, max_bytes)
            if not data:
                self._state = _EOF
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def _read_more(self, buffer: Buffer, n: int, *, trains_only: bool) -> int:
        """Add whatever is ready to the `n` bytes already in `buffer`; with
        `trains_only`, stop after the first record that is not full.  Not a
        retry: it stops at the first read that would block or fails (the
        next call reports a failure; the `n` bytes read are not lost)."""
        nbytes = len(buffer)
        view = memoryview(buffer)
        while n < nbytes:
            try:
                more = self._ssl_read(nbytes - n, view[n:])
            except (ssl.SSLError, OSError):
                break
            if more == 0:
                self._state = _EOF
                break
            n += more
            if trains_only and more < FULL_RECORD_BYTES:
                break
        return n

    # -- the fast path (interfaces.NonBlockingStream) ----------------------
    # `try_receive_into` / `try_send` never wait: None means "would block",
    # and the caller then awaits `wait_receivable` / `wait_sendable` (the
    # only checkpoints).  The relay pump and the client's engines use them
    # so a chunk that can move at once costs no trip through trio's
    # scheduler.  One owner only: no busy-guards here.
    def try_receive_into(self, buffer: Buffer) -> int | None:
        state = self._state
        if state is not _OPEN:
            if state is _EOF:
                return 0
            self._check()
        nbytes = len(buffer)
        n = self._attempt(self._ssl_read, nbytes, buffer)
        if n is None:
            self._recv_want = self._want
            return None
        if n == 0:
            self._state = _EOF
            return 0
        # Full records usually come in trains (bulk): batch them into one
        # send.  A short one (interactive traffic) goes on at once.
        if n >= FULL_RECORD_BYTES and n < nbytes:
            n = self._read_more(buffer, n, trains_only=True)
        return n

    def quiet_fd(self) -> int | None:
        """The descriptor whose readability means `try_receive_into` can go on, where that is
        so now (a `transport.QuietReader` may watch it): None while OpenSSL holds decrypted
        bytes or needs the socket writable first (then `wait_receivable`)."""
        if self._state is not _OPEN or self._recv_want != WANT_READ or self._ssl.pending():
            return None
        return self._ssl.fileno()

    async def wait_receivable(self) -> None:
        if self._ssl.pending():
            await trio.lowlevel.checkpoint()
        else:
            await self._wait(self._recv_want)

    def try_send(self, view: memoryview) -> int | None:
        state = self._state
        if state is not _OPEN and state is not _EOF:
            self._check()
        if self.max_send_bytes and len(view) > self.max_send_bytes:
            view = view[: self.max_send_bytes]
        k = self._attempt(self._ssl_write, view)
        if k is None:
            self._send_want = self._want
        return k

    async def wait_sendable(self) -> None:
        await self._wait(self._send_want)

    def cut(self) -> None:
        """Break the TCP connection under the TLS session at once, with no
        close_notify (the peer sees a broken connection, not an end); nothing
        else changes here: reads and writes then fail as on any broken
        connection, and `aclose` still closes.  A gateway restart cuts its
        clients' connections so that they resume against its successor."""
        fd = self._ssl.fileno()
        if fd == -1:
            return
        cut_fd(fd)

    def lend(self) -> Handover:
        """The SSL socket for the gateway's relay reactor (interfaces.Handover)."""
        self._check()
        return Handover(self._ssl, self._ssl.fileno(), self.max_send_bytes)

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
                        k, waited_now = await self._complete(write, view[sent : sent + step])
                        sent += k
                        waited |= waited_now
                except trio.Cancelled as cancelled:
                    # OpenSSL may hold part of a record made from `data`
                    if self._state is not _CLOSED:
                        self._state, self._cause = _BROKEN, cancelled
                    raise
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_busy:
            if self._state is _CLOSED:
                raise trio.ClosedResourceError(f"{self.peer}: stream was closed")
            await self._wait(WANT_WRITE)

    # -- closing ---------------------------------------------------------
    def _unwrap_step(self) -> bool:
        self._ssl.unwrap()
        return True

    async def _send_close_notify(self) -> None:
        """Ours out; not waiting for theirs (a WANT_READ is where it stops)."""
        try:
            while self._attempt(self._unwrap_step) is None and self._want == WANT_WRITE:
                await trio.lowlevel.wait_writable(self._ssl)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return  # ValueError: no socket any more

    async def aclose(self) -> None:
        if self._state is _CLOSED:
            await trio.lowlevel.checkpoint()
            return
        was, self._state = self._state, _CLOSED
        try:
            if (was is _OPEN or was is _EOF) and not self._send_busy.held:
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


def _detach(socket_stream: trio.SocketStream) -> socket.socket:
    """Take the fd out of a trio.SocketStream as a stdlib socket (same fd; trio's object is done)."""
    fd = socket_stream.socket.detach()
    return socket.socket(fileno=fd)


def _wrapped(
    sock: socket.socket,
    context: ssl.SSLContext,
    peer: str,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    max_send_bytes: int = 0,
) -> ZeroCopyTLSStream:
    """A ZeroCopyTLSStream on `sock`; a peer that is already gone (reset before the handshake: ssl's
    "Closed before TLS handshake with data in recv buffer", ENOTCONN) is TlsRefused(CLOSED), the
    socket closed: a dial abandoned while it waited in the backlog is a refusal, not an internal error.
    A client whose gateway sent its busy line at once and closed (our ticket line then reached a
    closed socket, and the reset came back before this wrap) is told the busy line: ssl's check
    for that reset reads a byte of it and closes the socket, so it is looked for first."""
    if not server_side:
        try:
            sock.getpeername()
        except OSError:
            hint, ticket = _busy_line_left(sock)
            if hint is not None:
                sock.close()
                raise TlsRefused(
                    peer, Refusal.BUSY, f"retry after {hint:g} s", retry_after_s=hint, ticket=ticket
                ) from None
    try:
        return ZeroCopyTLSStream(
            sock,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            peer=peer,
            max_send_bytes=max_send_bytes,
        )
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise TlsRefused(peer, Refusal.CLOSED, str(exc) or type(exc).__name__) from exc


def _busy_line_left(sock: socket.socket) -> tuple[float | None, bytes | None]:
    """(hint, ticket) of a busy line waiting unread on a client's socket the peer reset, or (None, None)."""
    try:
        first = sock.recv(BUSY_MAX_BYTES + TICKET_LINE_MAX_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return None, None
    return parse_busy(first), parse_busy_ticket(first)


class BusyTickets:
    """A client's places in busy gateways' queues (`redirgate.proto.tunnel.busy`), by gateway address:
    `open_tls_connection` keeps the ticket a busy refusal handed out and sends it back as the first
    bytes of the next dial to that address (once: a dial that is not turned away again ends it)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], bytes] = {}

    def take(self, host: str, port: int) -> bytes | None:
        return self._held.pop((host, port), None)

    def keep(self, host: str, port: int, ticket: bytes | None) -> None:
        if ticket is not None:
            self._held[(host, port)] = ticket

    def __len__(self) -> int:
        return len(self._held)


async def open_tls_connection(
    host: str,
    port: int,
    client: ClientContext,
    *,
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    tickets: BusyTickets | None = None,
) -> ZeroCopyTLSStream:
    """Connect and handshake as a TLS client; TlsRefused if the handshake fails.  With `tickets`, a
    busy gateway's ticket for this address goes first, and the one a busy refusal hands out is kept."""
    tcp = await trio.open_tcp_stream(host, port)
    ticket = tickets.take(host, port) if tickets is not None else None
    if ticket is not None:
        try:
            await tcp.send_all(ticket_line(ticket))
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
    peer = peer_label(tcp.socket)
    if peer == "unconnected":  # reset already (a busy gateway that closed): name what we dialled
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    stream = _wrapped(_detach(tcp), client.ssl_context, peer, server_side=False, server_hostname=client.server_name)
    try:
        await stream.do_handshake(handshake_timeout_s)
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if tickets is not None and isinstance(exc, TlsRefused):
            tickets.keep(host, port, exc.ticket)
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
    stream = _wrapped(_detach(socket_stream), context, peer, server_side=True, max_send_bytes=max_send_bytes)
    try:
        await stream.do_handshake(handshake_timeout_s)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream
