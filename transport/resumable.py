"""A channel's data connection that survives its TCP connection (issue 16): `ResumableStream`.

Both ends of a resumable channel hand their channel code (the client's
usbredir engine or serial handler, the gateway's relay) this stream instead
of the TLS data connection.  It counts what it delivers and records what it
sends in the channel's sans-IO `proto.tunnel.ResumableChannel`; when the
connection under it breaks (an RST, a TLS connection cut without
close_notify, a stalled connection that the other side gave up on) it gets
a new one from its side's `reconnect` - the client redials and sends
`ResumeChannel`, the gateway waits (within the grace period) for the
client's new connection and answers - writes what the peer has not
received again, and carries on.  The code above it sees one slow read or
write, never the break.  A clean end (close_notify: the peer ended the
channel) is an end, as on any stream.

Costs on the hot path: a received chunk is one addition (an ack every
`ack_every` bytes is handed to `on_ack`: the owner sends it on the control
connection); a sent chunk is one copy into the replay buffer, which holds
storage only while bytes are unacknowledged.  When the replay buffer is
full, `send_all` waits for an ack (`acked`): the channel's sender is paced
by the peer's acks, never by an unbounded buffer.

Lending (the gateway's relay reactor): `lend()` hands the inner stream's
socket over with a `ResumeHook`: while the reactor thread moves the bytes
it records and counts in the channel itself, acks from the peer reach it
through `deliver`, and acks due come back through the trio token.  When the
reactor stops because this socket broke, `transport.relay` calls
`recover()` and lends again; `interrupt()` cancels the relay's wait
(`lent_scope`), which takes the socket back from the reactor first.

Who does what (one trio loop; no threads): at most one receiving and one
sending task, as on any stream; the first of them to see the break recovers
under a lock while the other waits for it, so the count we state is final
(the old connection is closed first).  `interrupt()` makes the running
operations give up on the current connection (the gateway calls it when
the client comes back on a new one while the old one still looks alive).
If `reconnect` gives up, every later operation raises BrokenResourceError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

from redirgate.proto import tunnel as t
from redirgate.transport.interfaces import Buffer, Handover, SocketLender

__all__ = ["Reconnect", "ResumableStream"]

#: (why the old connection is gone) -> (the new connection, the bytes to send
#: on it before anything new); BrokenResourceError when the channel cannot resume.
Reconnect = Callable[[str], Awaitable[tuple[trio.abc.Stream, bytes]]]

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class ResumableStream(trio.abc.Stream):
    """See the module docstring.  `inner` has a `receive_into` (a ZeroCopyTLSStream or a PrefixedStream of one)."""

    #: the non-blocking fast path is the inner stream's only; callers use the awaiting one here
    supports_nonblocking = False

    def __init__(
        self,
        inner: trio.abc.Stream,
        channel: t.ResumableChannel,
        reconnect: Reconnect,
        *,
        peer: str,
        on_ack: Callable[[t.ChannelAck], None] | None = None,
    ) -> None:
        self.inner = inner
        self.channel = channel
        self.peer = peer
        self._reconnect = reconnect
        self._on_ack = on_ack
        #: bumped at each new connection: a task that saw the old one break recovers only once
        self._generation = 0
        self._lock = trio.Lock()
        self._room = trio.Event()
        self._ops: set[trio.CancelScope] = set()
        self._failed: trio.BrokenResourceError | None = None
        self._closed = False
        #: connections taken over so far (for status and tests)
        self.resumes = 0
        #: set while a recovery is under way (the channel is suspended)
        self.suspended = False
        #: while lent: carries a peer's ack to the borrower's thread
        self._deliver: Callable[[t.ChannelAck], None] | None = None

    # ------------------------------------------------------------ acks
    def acked(self, message: t.ChannelAck) -> None:
        """The peer's ack arrived (on the control connection): free replay room.
        ResumeError if it acknowledges what we never sent (from the borrower, if lent)."""
        if self._deliver is not None:  # the borrower's thread owns the channel: check here what it cannot
            outgoing = self.channel.outgoing
            if message.channel_id != self.channel.channel_id or message.received > outgoing.sent_total:
                raise t.ResumeError(f"ack {message.received} is beyond the {outgoing.sent_total} bytes sent")
            self._deliver(message)
            return
        self.channel.acked(message)
        self._room.set()

    def ack_now(self) -> t.ChannelAck | None:
        """An ack for what we received and have not acknowledged (idle, timer)."""
        return self.channel.ack_now()

    def interrupt(self) -> None:
        """Give up on the current connection: the running operations recover."""
        for scope in self._ops:
            scope.cancel()

    # ------------------------------------------------------------ lending (interfaces.ResumeHook)
    def lend(self) -> Handover | None:
        """The inner stream's socket with the channel's state (None where it lends none)."""
        if self._closed or self._failed is not None or not isinstance(self.inner, SocketLender):
            return None
        lent = self.inner.lend()
        if lent is None:
            return None
        lent.resume = _Hook(self)
        return lent

    def lent_scope(self) -> contextlib.AbstractContextManager[trio.CancelScope]:
        """The scope a borrower's wait runs in: `interrupt()` cancels it."""
        return self._op()

    async def recover(self, why: str) -> None:
        """The lent socket broke (the borrower said so): take a new connection.
        BrokenResourceError when the channel cannot resume."""
        await self._recover(self._generation, why)

    @contextmanager
    def _op(self) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        self._ops.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._ops.discard(scope)

    # ------------------------------------------------------------ the stream
    async def receive_into(self, buffer: Buffer) -> int:
        while True:
            self._check()
            generation, inner = self._generation, self.inner
            why = "interrupted"
            n = -1
            try:
                with self._op():
                    n = await inner.receive_into(buffer)  # type: ignore[attr-defined]
            except _GONE as exc:
                if self._closed:
                    raise
                why = f"{type(exc).__name__}: {exc}"
            if n < 0:
                await self._recover(generation, why)
                continue
            if n:
                ack = self.channel.received(n)
                if ack is not None and self._on_ack is not None:
                    self._on_ack(ack)
            return n

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buf = bytearray(max_bytes or 65536)
        n = await self.receive_into(buf)
        return bytes(buf[:n])

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as raw:
            view = raw if raw.format == "B" and raw.ndim == 1 else raw.cast("B")
            while view:
                self._check()
                room = self.channel.room()
                if room == 0:
                    self._room = trio.Event()
                    await self._room.wait()
                    continue
                chunk = view[:room]
                self.channel.sent(chunk)  # from here on the replay carries it, whatever happens below
                view = view[len(chunk) :]
                generation = self._generation
                why = ""
                try:
                    with self._op() as scope:
                        await self.inner.send_all(chunk)
                    if scope.cancelled_caught:
                        why = "interrupted"
                except _GONE as exc:
                    if self._closed:
                        raise
                    why = f"{type(exc).__name__}: {exc}"
                if why:
                    await self._recover(generation, why)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._closed = True
        self.interrupt()
        self._room.set()
        await self.inner.aclose()

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self.peer}: stream was closed")
        if self._failed is not None:
            raise self._failed

    # ------------------------------------------------------------ recovery
    async def _recover(self, generation: int, why: str) -> None:
        """The connection of `generation` broke: take a new one, unless another task already did."""
        async with self._lock:
            if generation != self._generation or self._closed:
                return
            self._check()
            self.suspended = True
            try:
                while True:
                    await trio.aclose_forcefully(self.inner)
                    try:
                        inner, replay = await self._reconnect(why)
                    except trio.BrokenResourceError as exc:
                        self._failed = exc
                        raise
                    self.inner = inner
                    self._generation += 1
                    try:
                        if replay:
                            await inner.send_all(replay)
                    except _GONE as exc:
                        why = f"{type(exc).__name__}: {exc} (while replaying)"
                        continue
                    self.resumes += 1
                    return
            finally:
                self.suspended = False
                self._room.set()


class _Hook:
    """`interfaces.ResumeHook` for one lend of a `ResumableStream`."""

    def __init__(self, stream: ResumableStream) -> None:
        self.stream = stream
        self.channel = stream.channel

    def borrow(self, deliver: Callable[[t.ChannelAck], None]) -> None:
        self.stream._deliver = deliver

    def ack_due(self, ack: t.ChannelAck) -> None:
        on_ack = self.stream._on_ack
        if on_ack is not None:
            on_ack(ack)

    def give_back(self) -> None:
        self.stream._deliver = None
        self.stream._room.set()
