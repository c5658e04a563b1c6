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
received again (reading what the peer replays meanwhile: `_replay`), and
carries on.  The code above it sees one slow read or
write, never the break.  A clean end (close_notify: the peer ended the
channel) is an end, as on any stream.

Costs on the hot path: a received chunk is one addition (an ack every
`ack_every` bytes is handed to `on_ack`: the owner sends it on the control
connection); a sent chunk is one copy into the replay buffer, which holds
storage only while bytes are unacknowledged.  When the replay buffer is
full, `send_all` waits for an ack (`acked`): the channel's sender is paced
by the peer's acks, never by an unbounded buffer.

The fast path (interfaces.NonBlockingStream) is offered where the inner
stream offers it, with the same counting and recording: `try_send` records
what it offers before offering it (OpenSSL may send part of a write it
answers "would block" to), `try_receive_into` counts what it delivered.  A non-blocking move never recovers (it cannot wait): one that
finds the connection gone answers "would block", and the `wait_*` the
caller makes next recovers before it returns, so the serial handler and
the raw relay, which drive the port's or the hypervisor's socket and this
stream from one task, see one slow move here too.

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
from redirgate.transport.interfaces import Buffer, Handover, SocketLender, nonblocking

__all__ = ["Reconnect", "ResumableStream"]

#: (why the old connection is gone) -> (the new connection, the bytes to send
#: on it before anything new); BrokenResourceError when the channel cannot resume.
Reconnect = Callable[[str], Awaitable[tuple[trio.abc.Stream, bytes]]]

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class ResumableStream(trio.abc.Stream):
    """See the module docstring.  `inner` has a `receive_into` (a ZeroCopyTLSStream or a PrefixedStream of one)."""

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
        #: the fast path: the generation whose connection a non-blocking move
        #: (or `interrupt`) found gone, and why; the next wait recovers
        self._lost_generation = -1
        self._lost_why = ""
        #: whether the fast path was offered (a replacement connection must offer it too)
        self._fast = nonblocking(inner)
        #: fast-path waits running on the inner stream (`interrupt` wakes them)
        self._fast_waits = 0
        #: the fast path: bytes recorded and not yet reported sent, and on which connection (see `try_send`)
        self._ahead = 0
        self._ahead_generation = 0
        #: why the last `interrupt()` gave up on the connection (for the log)
        self.interrupted_why = "interrupted"
        #: bytes the peer sent while we wrote our replay, counted and not yet delivered (see `_replay`)
        self._stash = bytearray()

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

    def interrupt(self, why: str = "interrupted") -> None:
        """Give up on the current connection: the running operations recover,
        and so does the next non-blocking move (a fast-path task may be
        waiting on something else than this stream right now); their log
        line says `why` (a new connection, a gateway restart)."""
        self.interrupted_why = why
        self._lost(self._generation, why)
        for scope in self._ops:
            scope.cancel()
        if self._fast_waits:
            _wake_waiters(self.inner)

    # ------------------------------------------------------------ lending (interfaces.ResumeHook)
    def lend(self) -> Handover | None:
        """The inner stream's socket with the channel's state (None where it lends none)."""
        if self._closed or self._failed is not None or not isinstance(self.inner, SocketLender):
            return None
        if self._stash:  # counted already: a borrower would count them again (the trio pumps deliver them)
            return None
        if self._lost_generation == self._generation or self._ahead:
            return None  # the next wait recovers first / the trio side still owes a retried write
        lent = self.inner.lend()
        if lent is None:
            return None
        lent.resume = _Hook(self)
        return lent

    def recorded_ahead(self, n: int) -> None:
        """A borrower gave the socket back with `n` bytes it recorded (`channel.sent`)
        and did not get written: they are the head of the next `try_send`'s
        view, which offers them without recording them again (as after a
        would-block `try_send`; a write OpenSSL answered "would block" to is
        retried with the same bytes first)."""
        self._ahead, self._ahead_generation = n, self._generation

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

    # ------------------------------------------------------------ the fast path
    # interfaces.NonBlockingStream, where the inner stream offers it: the
    # moves never wait and never recover; a move that finds the connection
    # gone says "would block" and the wait after it recovers (so the caller
    # sees one slow move, as on the awaiting path).  Counting and recording
    # are the awaiting path's: what the inner stream delivered is counted,
    # what it accepted is recorded for the replay.
    @property
    def supports_nonblocking(self) -> bool:
        return self._fast

    def _lost(self, generation: int, why: str) -> None:
        if self._lost_generation != generation:
            self._lost_generation, self._lost_why = generation, why

    def try_receive_into(self, buffer: Buffer) -> int | None:
        self._check()
        generation = self._generation
        if self._lost_generation == generation:
            return None
        if self._stash:
            return self._unstash(buffer)
        try:
            n = self.inner.try_receive_into(buffer)  # type: ignore[attr-defined]
        except _GONE as exc:
            if self._closed:
                raise
            self._lost(generation, f"{type(exc).__name__}: {exc}")
            return None
        if n:
            ack = self.channel.received(n)
            if ack is not None and self._on_ack is not None:
                self._on_ack(ack)
        return n  # type: ignore[no-any-return]

    def try_send(self, view: memoryview) -> int | None:
        """Record, then offer to the inner stream, as `send_all` does.

        OpenSSL may put records of a write on the wire and still answer
        "would block" (it reports them with the retry), so bytes are
        recorded before they are offered: `_ahead` counts those recorded
        and not yet reported sent, which are the head of the caller's next
        view (a would-block send is retried with the same bytes first, as
        OpenSSL needs).  After a break the replay carries them, so the next
        call reports them sent without writing them again."""
        self._check()
        generation = self._generation
        if self._lost_generation == generation:
            return None
        ahead = self._ahead
        if ahead and self._ahead_generation != generation:
            k = min(ahead, len(view))  # went out with the replay
            self._ahead = ahead - k
            return k
        room = self.channel.room()
        if ahead < len(view) and room:
            new = view[ahead : ahead + room]
            self.channel.sent(new)  # from here on the replay carries it, whatever happens below
            ahead += len(new)
        self._ahead, self._ahead_generation = ahead, generation
        if not ahead:
            return None  # the replay buffer is full: wait_sendable waits for an ack
        try:
            k = self.inner.try_send(view[:ahead])  # type: ignore[attr-defined]
        except _GONE as exc:
            if self._closed:
                raise
            self._lost(generation, f"{type(exc).__name__}: {exc}")
            return None
        if k:
            self._ahead = ahead - k
        return k  # type: ignore[no-any-return]

    async def wait_receivable(self) -> None:
        if self._stash:
            await trio.lowlevel.checkpoint()
            return
        await self._fast_wait(self.inner.wait_receivable)  # type: ignore[attr-defined]

    async def wait_sendable(self) -> None:
        self._check()
        if self._lost_generation != self._generation and self.channel.room() == 0 and not self._ahead:
            self._room = trio.Event()
            await self._room.wait()
            return
        await self._fast_wait(self.inner.wait_sendable)  # type: ignore[attr-defined]

    async def _fast_wait(self, wait: Callable[[], Awaitable[None]]) -> None:
        """`wait` on the current connection; when that one is gone (a move
        found it so, it breaks now, or `interrupt`), recover instead.

        No cancel scope per wait (unlike `_op`: a scope's bookkeeping was a
        fifth of a typed byte's cost): `interrupt` wakes these waits by
        telling trio the socket is closing, which it is (the recovery they
        start closes it)."""
        self._check()
        generation = self._generation
        if self._lost_generation != generation:
            self._fast_waits += 1
            try:
                await wait()
                return
            except _GONE as exc:
                if self._closed:
                    raise
                self._lost(generation, f"{type(exc).__name__}: {exc}")
            finally:
                self._fast_waits -= 1
        await self._recover(generation, self._lost_why)

    # ------------------------------------------------------------ the stream
    async def receive_into(self, buffer: Buffer) -> int:
        while True:
            self._check()
            if self._stash:
                await trio.lowlevel.checkpoint()
                return self._unstash(buffer)
            generation, inner = self._generation, self.inner
            why = self.interrupted_why
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
                        why = self.interrupted_why
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
                    if self._fast and not nonblocking(inner):
                        await trio.aclose_forcefully(inner)
                        self._failed = trio.BrokenResourceError(
                            f"{self.peer}: the new connection has no non-blocking moves, which this channel uses"
                        )
                        raise self._failed
                    self.inner = inner
                    self._generation += 1
                    try:
                        if replay:
                            await self._replay(inner, replay)
                    except _GONE as exc:
                        why = f"{type(exc).__name__}: {exc} (while replaying)"
                        continue
                    self.resumes += 1
                    return
            finally:
                self.suspended = False
                self._room.set()

    async def _replay(self, inner: trio.abc.Stream, replay: bytes) -> None:
        """Write `replay` to the new connection while reading what the peer sends meanwhile.

        The peer writes its own replay at the same moment: two ends that
        each wrote theirs before reading again would both wait forever once
        both replays are bigger than the socket and TLS buffers (issue 16).
        What arrives is counted (it is ours now: a later resume does not ask
        for it again) and kept in `_stash` until the channel code reads it.
        The stash holds at most a replay limit (both ends use the same one),
        which is as much as the peer's replay can be: past that we stop
        reading, and the peer is reading ours."""
        failed: list[BaseException] = []

        async def read(scope: trio.CancelScope) -> None:
            buf = bytearray(65536)
            try:
                while len(self._stash) < self.channel.outgoing.limit:
                    n = await inner.receive_into(buf)  # type: ignore[attr-defined]
                    if not n:
                        break  # a clean end: the channel code sees it once it has read the stash
                    self._stash += memoryview(buf)[:n]
                    ack = self.channel.received(n)
                    if ack is not None and self._on_ack is not None:
                        self._on_ack(ack)
            except _GONE as exc:
                failed.append(exc)
                scope.cancel()
                return
            await trio.sleep_forever()  # until the replay is written

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, nursery.cancel_scope)
            try:
                await inner.send_all(replay)
            except _GONE as exc:
                failed.append(exc)
            nursery.cancel_scope.cancel()
        if failed:
            raise failed[0]

    def _unstash(self, buffer: Buffer) -> int:
        """Deliver from `_stash` (counted when it arrived)."""
        stash = self._stash
        with memoryview(buffer) as view:
            n = min(len(view), len(stash))
            view[:n] = stash[:n]
        del stash[:n]
        return n


def _wake_waiters(stream: trio.abc.Stream) -> None:
    """Wake the tasks waiting on `stream`'s socket (ClosedResourceError in
    them), which is given up on and closed next.  The socket's descriptor is
    the one a `SocketLender` would lend; a stream already broken or closed
    has nobody left waiting (its failure or `aclose` woke them)."""
    if not isinstance(stream, SocketLender):
        return
    try:
        lent = stream.lend()
    except _GONE:
        return
    if lent is not None:
        trio.lowlevel.notify_closing(lent.fd)


class _Hook:
    """`interfaces.ResumeHook` for one lend of a `ResumableStream`."""

    def __init__(self, stream: ResumableStream) -> None:
        self.stream = stream
        self.channel = stream.channel
        self.deliver: Callable[[t.ChannelAck], None] | None = None

    def borrow(self, deliver: Callable[[t.ChannelAck], None]) -> None:
        self.stream._deliver = self.deliver = deliver

    def ack_due(self, ack: t.ChannelAck) -> None:
        on_ack = self.stream._on_ack
        if on_ack is not None:
            on_ack(ack)

    def returned_ack(self, ack: t.ChannelAck) -> None:
        """An ack the borrower got after it was done with the channel (on the
        trio loop).  Lost, the replay buffer would keep that room for ever."""
        stream = self.stream
        if stream._deliver is not None and stream._deliver is not self.deliver:
            stream.acked(ack)  # lent again meanwhile: the new borrower takes it
            return
        self.channel.acked(ack)  # checked when it came; this borrower is done with the channel
        stream._room.set()

    def give_back(self) -> None:
        self.stream._deliver = None
        self.stream._room.set()
