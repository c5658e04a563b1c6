"""The relay reactor: one thread with its own epoll that moves the bytes of many channels.

Why a thread: the gateway's hot loop on trio costs two scheduler round trips
and several Python layers per small message; measured against stunnel4 the
round trip of a 64-byte message through it was about twice stunnel's, while
bulk throughput was already ahead (bench/relay.py).  Here a channel's two
sockets, once the channel is set up, are driven by a plain epoll loop in one
thread: a message that arrives costs one `epoll_wait` wake-up, one read (two
system calls for a TLS record: OpenSSL reads its header, then its body) and
one write, with the GIL released in each system call and in OpenSSL, and -
on the fast path in `_loop`, which takes every message that is read and
written at once - no Python function call of ours at all.  trio
keeps everything else - accepting, handshakes, the attach preamble,
timeouts, cancellation, closing - and waits for a channel's end on an
event the reactor sets through the trio token.  Who starts one: the
gateway runs one for the whole process (`transport.relay` takes it as its
`SocketMover` hook, `relay(..., mover=reactor)`, and its raw relay lends
serial/parallel channels with `move_raw`).

Ownership: the streams lend their sockets (transport.Handover: the stream
keeps owning and closing them).  Between `add` and the end notification
the reactor is the only user of both sockets (trio does not touch them:
`move` just waits), and a channel's sockets are used by this one thread
only, so an SSL object is never used from two threads at once.  The
reactor never closes a socket: when a channel ends (EOF, error, an
inspector's exception, or `drop` from trio on cancellation) it unregisters
both and hands them back; `relay` closes the streams (TLS close_notify
included).

Per direction one preallocated buffer (zero-copy: `recv_into` it, send
memoryview slices of it); backpressure is structural - a direction reads
again only when its buffer has been written out - so a channel holds at
most two buffers.  An inspector (the usbredir guard) sees each chunk before
it is sent, in the reactor thread; what it raises ends the channel and is
re-raised by `relay` in trio; once it returns True it has seen all it needs
and is not called again.

A resumable channel's client socket (transport.resumable) comes with its
sans-IO state (`Handover.resume`): the direction that writes to it records
each chunk in the replay buffer as it is read (and reads no more than the
buffer's room: with no room, QEMU's socket is not read until an ack makes
some), the direction that reads it counts, and an ack due goes to trio
through the token.  The peer's acks come in as commands.  When the channel
ends the outcome says whether the ending socket failed (`broken`, rather
than a clean end) and what was read and not yet written each way, so that
`relay` can resume the client side and carry on.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import select
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from redirgate.proto import tunnel as t
from redirgate.transport.interfaces import Handover, Inspector, ResumeHook
from redirgate.transport.relay import RelayStats
from redirgate.transport.stream import FULL_RECORD_BYTES, record_layer

__all__ = ["ReactorOutcome", "ReactorSide", "RelayReactor"]

log = logging.getLogger(__name__)

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP


class ReactorSide:
    """One end of a channel as the reactor drives it: a lent socket (transport.Handover)."""

    __slots__ = ("fd", "max_send", "prefix", "resume", "ssl_pending", "ssl_read", "ssl_write", "tls")

    def __init__(self, lent: Handover) -> None:
        self.fd = lent.fd
        #: 0: no cap per write; else at most this many bytes per write
        self.max_send = lent.max_send
        #: bytes already read from this side (delivered first)
        self.prefix = lent.prefix
        #: a resumable channel's state (interfaces.ResumeHook), or None
        self.resume = lent.resume
        self.tls = lent.tls is not None
        if lent.tls is not None:
            self.ssl_read, self.ssl_write = record_layer(lent.tls)
            self.ssl_pending = lent.tls.pending


@dataclass
class ReactorOutcome:
    ended_by: str = ""  # "a" or "b"
    reason: str = ""
    error: BaseException | None = None  # what an inspector raised
    #: `ended_by`'s socket failed (not a clean end of stream)
    broken: bool = False
    #: read from b (a) and not yet written to a (b)
    unsent_to_a: bytes = b""
    unsent_to_b: bytes = b""
    #: a raw channel given back because b stopped taking a's bytes (see `RelayReactor.move_raw`)
    congested: bool = False


class _Direction:
    __slots__ = (
        "buf",
        "channel",
        "count",
        "dst",
        "end",
        "forward",
        "hooked",
        "inspect",
        "iov",
        "need_dst",
        "need_src",
        "opposite",
        "out",
        "record",
        "room",
        "short_read",
        "side",
        "size",
        "src",
        "start",
        "view",
    )

    def __init__(
        self, channel: _Channel, src: ReactorSide, dst: ReactorSide, size: int, forward: bool, inspect: Inspector | None
    ) -> None:
        self.channel = channel
        self.src, self.dst = src, dst
        self.size = size
        #: a resumable channel: the replay buffer of what we write to dst, the count of what we read from src
        self.record: t.ResumableChannel | None = dst.resume.channel if dst.resume is not None else None
        self.count: t.ResumableChannel | None = src.resume.channel if src.resume is not None else None
        self.hooked = self.record is not None or self.count is not None
        #: where the next read goes: our own buffer, or (recording) a window of the replay ring itself
        self.view = memoryview(bytearray(size)) if self.record is None else memoryview(bytearray())
        self.room = len(self.view)
        self.iov = (self.view,)
        #: what is being written out: out[start:end] is read and not yet written
        self.out = self.view
        self.start = 0
        self.end = 0
        self.forward = forward
        self.side = "a" if forward else "b"  # the side this direction reads
        self.inspect = inspect
        #: the other direction of the channel (set by _Channel once both exist)
        self.opposite = self
        #: the epoll event this direction waits for on src / dst (0: none)
        self.need_src = 0
        self.need_dst = 0
        self.short_read = False
        if src.prefix:
            prefix = memoryview(src.prefix)
            n = len(prefix)
            self.out, self.end = prefix, n  # written out before the first read
            if inspect is not None and inspect(prefix):
                self.inspect = None
            if self.count is not None:
                self.counted(n)
            if self.record is not None:
                self.record.sent(prefix)  # copied in: the prefix is not in the ring
        if self.record is not None:
            self.limit()

    def limit(self) -> None:
        """Recording: the next read goes into the replay ring, no more than its room
        (an empty window: do not read until an ack makes room)."""
        assert self.record is not None
        self.view = view = self.record.outgoing.window(self.size)
        self.room = len(view)
        self.iov = (view,)

    def counted(self, n: int) -> None:
        assert self.count is not None
        ack = self.count.received(n)
        if ack is not None and self.src.resume is not None:
            self.channel.call_soon(self.src.resume.ack_due, ack)

    def hook(self, chunk: memoryview) -> None:
        """A resumable channel's bookkeeping for a chunk just read into `view`
        (in the reactor thread): counted, and when recording it is in the
        replay ring already (committed, no copy), the next read goes after it."""
        if self.count is not None:
            self.counted(len(chunk))
        if self.record is not None:
            self.record.outgoing.commit(len(chunk))
            self.limit()


class _Ended(Exception):
    def __init__(self, side: str, reason: str, error: BaseException | None = None, *, broken: bool = False) -> None:
        super().__init__(reason)
        self.side, self.reason, self.error, self.broken = side, reason, error, broken


#: Events taken per epoll_wait.  CPython allocates the event array on every
#: call (select.epoll.poll: maxevents defaults to FD_SETSIZE - 1, 12 KiB), so
#: a small array keeps a wake-up cheap; ready fds beyond it come next call.
_MAX_EVENTS = 64

#: Bytes one direction moves per turn before the reactor serves the other
#: ready channels: a bulk flow must not hold a keyboard's message back for
#: longer than one buffer's worth of work.
_STEP_BUDGET = 256 * 1024


def _recv_tls(side: ReactorSide, view: memoryview, d: _Direction) -> int | None:
    """Read TLS plaintext into view; None when it would block (d.need_src says on what)."""
    try:
        n = side.ssl_read(d.room, view)
    except ssl.SSLWantReadError:
        d.need_src = _IN
        return None
    except ssl.SSLWantWriteError:
        d.need_src = _OUT
        return None
    return _tls_train(side, view, n, d)


def _tls_train(side: ReactorSide, view: memoryview, n: int, d: _Direction) -> int:
    """After a first TLS read of `n` bytes: the bytes to send now.

    Sets `d.short_read` when the socket was drained by this read, so the
    next read waits for epoll instead of failing.  TLS hands out one record
    per read: a record shorter than a full one that fitted the buffer is the
    end of what the peer sent (OpenSSL, without read-ahead, holds nothing
    more); full records (bulk) are batched until the buffer fills or the
    socket runs dry, so one send carries many of them.
    """
    room = d.room
    if n < FULL_RECORD_BYTES:
        if n:
            d.short_read = n < room or not side.ssl_pending()
        return n
    read = side.ssl_read
    total = n
    while total + FULL_RECORD_BYTES <= room:
        try:
            n = read(room - total, view[total:])
        except ssl.SSLWantReadError:
            d.short_read = True
            return total
        except ssl.SSLWantWriteError:
            return total
        if n == 0:
            return total  # EOF after data: reported on the next read
        total += n
        if n < FULL_RECORD_BYTES:
            d.short_read = not side.ssl_pending()
            return total
    return total


def _send(side: ReactorSide, view: memoryview, d: _Direction) -> int | None:
    if side.max_send and len(view) > side.max_send:
        view = view[: side.max_send]
    try:
        if side.tls:
            try:
                return side.ssl_write(view)
            except ssl.SSLWantWriteError:
                d.need_dst = _OUT
                return None
            except ssl.SSLWantReadError:
                d.need_dst = _IN
                return None
        try:
            return os.write(side.fd, view)
        except BlockingIOError:
            d.need_dst = _OUT
            return None
    except (ssl.SSLError, OSError) as exc:  # the writing side's socket failed
        raise _Ended(d.opposite.side, f"{type(exc).__name__}: {exc}", broken=True) from exc


class _Channel:
    def __init__(
        self,
        a: ReactorSide,
        b: ReactorSide,
        stats: RelayStats,
        size: int,
        inspect_ab: Inspector | None,
        inspect_ba: Inspector | None,
        done: Callable[[ReactorOutcome], None],
    ) -> None:
        self.a, self.b = a, b
        self.stats = stats
        self.done = done
        self.ab = _Direction(self, a, b, size, True, inspect_ab)
        self.ba = _Direction(self, b, a, size, False, inspect_ba)
        self.ab.opposite, self.ba.opposite = self.ba, self.ab
        self.fds = (a.fd, b.fd)
        self.a_fd, self.b_fd = a.fd, b.fd
        #: a raw channel (`move_raw`): given back as soon as a -> b cannot go on at once
        self.yields = False
        self.mask_a = self.mask_b = 0
        #: runs a function on the trio loop (the trio token's run_sync_soon; set by `move`)
        self.call_soon: Callable[..., Any] = lambda fn, *args: None

    def take_ack(self, message: t.ChannelAck) -> None:
        """The peer's ack (checked in trio against what was sent): room in the replay buffer."""
        for d in (self.ab, self.ba):
            if d.record is not None:
                d.record.acked(message)
                d.limit()

    def unsent(self) -> tuple[bytes, bytes]:
        """(read from b, not yet written to a; read from a, not yet written to b)."""
        ba, ab = self.ba, self.ab
        return bytes(ba.out[ba.start : ba.end]), bytes(ab.out[ab.start : ab.end])

    def step(self, d: _Direction, fresh: int = 0) -> None:
        """Move what can move now in direction d; raise _Ended at its end.

        `fresh`: bytes the reactor's fast path already read into the empty
        buffer (not yet inspected or sent).  Read then write with no state
        stored in between, the common case of the loop below.
        """
        d.need_src = d.need_dst = 0
        src, dst = d.src, d.dst
        moved = 0
        n: int | None  # bytes read this turn; None from a TLS read that would block
        try:
            if d.end > d.start and not self._flush(d):
                return  # an earlier chunk is still waiting for room
            while True:
                if moved >= _STEP_BUDGET and not (src.tls and src.ssl_pending()):
                    # a flat-out flow gives the other channels their turn:
                    # back to epoll, which reports the rest at once
                    # (level-triggered; OpenSSL holds nothing unread)
                    d.need_src = _IN
                    return
                view = d.view  # a recording direction's moves on after each chunk (hook)
                if fresh:
                    n, fresh = fresh, 0
                    if src.tls:
                        n = _tls_train(src, view, n, d)
                    else:
                        d.short_read = n < d.room
                elif d.room == 0:
                    d.need_src = 0  # the replay buffer is full: read again once an ack makes room
                    return
                elif d.short_read:
                    # the last read did not fill the buffer: the socket was
                    # drained then, so wait for epoll instead of a read that
                    # would only fail (level-triggered: nothing is missed)
                    d.short_read = False
                    d.need_src = _IN
                    return
                elif src.tls:
                    got = _recv_tls(src, view, d)
                    if got is None:
                        return
                    n = got
                else:
                    try:
                        n = os.readv(src.fd, d.iov)
                    except BlockingIOError:
                        d.need_src = _IN
                        return
                    d.short_read = 0 < n < d.room
                if n == 0:
                    raise _Ended(d.side, "end of stream")
                chunk = view[:n]
                if d.inspect is not None:
                    try:
                        if d.inspect(chunk):
                            d.inspect = None  # it has seen all it needs
                    except Exception as exc:  # an inspector's verdict ends the channel
                        raise _Ended(d.side, str(exc), exc) from exc
                if d.hooked:
                    d.hook(chunk)
                k = _send(dst, chunk, d) or 0
                self._count(d, k)
                moved += n
                if k < n:
                    d.out, d.start, d.end = chunk, k, n
                    if d.need_dst or not self._flush(d):
                        return
        except (ssl.SSLError, OSError) as exc:  # the reading side's socket (writes raise _Ended themselves)
            raise _Ended(d.side, f"{type(exc).__name__}: {exc}", broken=True) from exc

    def _flush(self, d: _Direction) -> bool:
        """Write out view[start:end]; True when it all went (the buffer is free again)."""
        while d.end > d.start:
            k = _send(d.dst, d.out[d.start : d.end], d)
            if k is None:
                return False
            d.start += k
            self._count(d, k)
        d.start = d.end = 0
        return True

    def _count(self, d: _Direction, k: int) -> None:
        """`k` bytes of direction d went out (the fast path in `_loop` counts inline)."""
        if d.forward:
            self.stats.a_to_b += k
        else:
            self.stats.b_to_a += k


class RelayReactor:
    """The reactor thread (see the module docstring).  Use `async with
    RelayReactor() as reactor:`; channels go through `relay(..., mover=reactor)`."""

    def __init__(self, *, buffer_size: int = 256 * 1024) -> None:
        self.buffer_size = buffer_size
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, _IN)
        self._commands: collections.deque[tuple[str, _Channel, Any]] = collections.deque()
        self._by_fd: dict[int, _Channel] = {}
        #: fd -> the direction that reads it (the fast path's lookup)
        self._reader_of: dict[int, _Direction] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.channels = 0

    # ------------------------------------------------------------ lifetime (trio side)
    async def __aenter__(self) -> RelayReactor:
        self._thread = threading.Thread(target=self._run, name="redirgate-relay", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join, 5.0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._ep.close()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # already awake-pending

    def add(self, channel: _Channel) -> None:
        if self._stopping or self._thread is None or not self._thread.is_alive():
            channel.done(ReactorOutcome("", "the relay reactor is not running"))
            return
        self._commands.append(("add", channel, None))
        self._wake()

    def drop(self, channel: _Channel) -> None:
        self._commands.append(("drop", channel, None))
        self._wake()

    def _deliver(self, channel: _Channel, hook: ResumeHook, message: t.ChannelAck) -> None:
        self.ack(channel, message, hook)

    def ack(self, channel: _Channel, message: t.ChannelAck, hook: ResumeHook) -> None:
        """A resumable channel's ack from its peer (trio thread): applied in the reactor thread,
        or handed back to `hook` on the trio loop when the channel is no longer here."""
        self._commands.append(("ack", channel, (message, hook)))
        self._wake()

    async def move(
        self,
        a: Handover,
        b: Handover,
        stats: RelayStats,
        buffer_size: int,
        inspect_a_to_b: Inspector | None,
        inspect_b_to_a: Inspector | None,
    ) -> None:
        """transport.relay's SocketMover: move a<->b in the reactor thread until
        the channel ends; re-raise what an inspector raised.  Cancelled, it
        takes the sockets back from the thread before it returns."""
        outcome = await self._lend(a, b, stats, buffer_size, inspect_a_to_b, inspect_b_to_a, yields=False)
        if outcome.error is not None:
            raise outcome.error

    async def move_raw(self, a: Handover, b: Handover, stats: RelayStats, buffer_size: int) -> ReactorOutcome:
        """A raw (serial/parallel) channel, hypervisor a, client side b: move
        a<->b in the reactor thread while b takes a's bytes at once.

        The raw relay's never-stall rule (gateway/raw_relay.py: a ring, then
        discarding, counted) is not the reactor's: the moment a write to b
        would block, or the replay buffer has no room for more of a's bytes,
        the reactor gives the channel back with ``congested`` set, and with
        what it read and did not write each way (`unsent_to_b` is recorded
        in the replay buffer already).  Also returns when either side ends or
        fails, or on a reactor that is not running (an empty `ended_by`,
        not congested); cancelled, it takes the sockets back first."""
        return await self._lend(a, b, stats, buffer_size, None, None, yields=True)

    async def _lend(
        self,
        a: Handover,
        b: Handover,
        stats: RelayStats,
        buffer_size: int,
        inspect_a_to_b: Inspector | None,
        inspect_b_to_a: Inspector | None,
        *,
        yields: bool,
    ) -> ReactorOutcome:
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        outcomes: list[ReactorOutcome] = []

        def done(outcome: ReactorOutcome) -> None:  # in the reactor thread
            outcomes.append(outcome)
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:
                pass

        size = buffer_size or self.buffer_size
        channel = _Channel(ReactorSide(a), ReactorSide(b), stats, size, inspect_a_to_b, inspect_b_to_a, done)
        channel.yields = yields
        hooks = [side.resume for side in (a, b) if side.resume is not None]
        if hooks:

            def call_soon(fn: Callable[..., Any], *args: Any) -> None:  # in the reactor thread
                try:
                    token.run_sync_soon(fn, *args)
                except trio.RunFinishedError:
                    pass

            channel.call_soon = call_soon
            for hook in hooks:
                hook.borrow(functools.partial(self._deliver, channel, hook))
        self.add(channel)
        try:
            await finished.wait()
        finally:
            if not finished.is_set():  # cancelled: take the sockets back first
                self.drop(channel)
                with trio.CancelScope(shield=True):
                    await finished.wait()
            for hook in hooks:
                hook.give_back()
            if outcomes:
                stats.unsent_to_a, stats.unsent_to_b = outcomes[0].unsent_to_a, outcomes[0].unsent_to_b
        outcome = outcomes[0]
        if not stats.ended_by:
            stats.ended_by, stats.reason, stats.broken = outcome.ended_by, outcome.reason, outcome.broken
        return outcome

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must not kill channels silently
            log.exception("relay reactor failed; ending its channels")
        finally:
            for channel in list({id(c): c for c in self._by_fd.values()}.values()):
                self._finish(channel, ReactorOutcome("", "the relay reactor stopped"))

    def _loop(self) -> None:
        """Wait for events and move bytes until stopped.

        The fast path, inline here because per small message it is most of
        the relay's Python cost: a readable fd whose reader waits for
        exactly that, a read that drains the socket (a plain read short of
        the buffer, a TLS record short of a full one), and a write that
        takes it all.  Anything else - a full buffer, a train of full
        records, EOF, an error, a write that would block, a capped side -
        goes to `_service`, with what was already read handed over.
        """
        poll = self._ep.poll
        wake = self._wake_r
        reader_of = self._reader_of.get
        service = self._service
        readv, write = os.readv, os.write
        would_block = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)
        failed = (ssl.SSLError, OSError)
        while not self._stopping:
            for fd, mask in poll(-1, _MAX_EVENTS):
                d = reader_of(fd)
                if d is None:
                    if fd == wake:
                        self._drain_wake()
                    continue
                if mask != _IN or d.need_src != _IN or d.opposite.need_dst:
                    service(d.channel, fd, mask)
                    continue
                src = d.src
                try:
                    n = src.ssl_read(d.room, d.view) if src.tls else readv(fd, d.iov)
                except would_block:
                    continue  # nothing after all; still waiting for the same
                except failed:
                    service(d.channel, fd, mask)  # it reads again and names the failure
                    continue
                if n == 0 or n == d.room or (n >= FULL_RECORD_BYTES and src.tls):
                    service(d.channel, fd, mask, d, n)
                    continue
                chunk = d.view[:n]
                channel = d.channel
                if d.inspect is not None:
                    try:
                        if d.inspect(chunk):
                            d.inspect = None  # it has seen all it needs
                    except Exception as exc:  # an inspector's verdict ends the channel
                        self._finish(channel, ReactorOutcome(d.side, str(exc), exc))
                        continue
                if d.hooked:
                    d.hook(chunk)
                dst = d.dst
                if dst.max_send:
                    k = 0
                else:
                    try:
                        k = dst.ssl_write(chunk) if dst.tls else write(dst.fd, chunk)
                    except would_block:
                        k = 0
                    except failed as exc:  # the writing side's socket
                        reason = f"{type(exc).__name__}: {exc}"
                        self._finish(channel, ReactorOutcome(d.opposite.side, reason, broken=True))
                        continue
                if d.forward:
                    channel.stats.a_to_b += k
                else:
                    channel.stats.b_to_a += k
                if k < n:  # the rest waits for room: the general path takes it
                    d.out, d.start, d.end = chunk, k, n
                    service(channel)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while self._commands:
            what, channel, message = self._commands.popleft()
            if what == "add":
                for fd in channel.fds:
                    self._by_fd[fd] = channel
                    self._ep.register(fd, 0)
                self._reader_of[channel.a_fd] = channel.ab
                self._reader_of[channel.b_fd] = channel.ba
                self.channels += 1
                self._service(channel)
            elif what == "drop" and self._by_fd.get(channel.fds[0]) is channel:
                self._finish(channel, ReactorOutcome("", "cancelled"))
            elif what == "ack":
                ack, hook = message
                if self._by_fd.get(channel.fds[0]) is channel:
                    channel.take_ack(ack)
                    self._service(channel)
                else:  # it ended meanwhile: lost, the replay buffer would keep that room for ever
                    channel.call_soon(hook.returned_ack, ack)

    def _service(
        self, channel: _Channel, fd: int = -1, mask: int = 0, fresh_in: _Direction | None = None, fresh: int = 0
    ) -> None:
        """Step the directions the event on `fd` concerns (all on fd=-1 or an error).

        `fresh_in`/`fresh`: the fast path already read `fresh` bytes (maybe
        0: EOF) for that direction; it is stepped with them first."""
        ab, ba = channel.ab, channel.ba
        try:
            if fresh_in is not None:
                if fresh == 0:
                    raise _Ended(fresh_in.side, "end of stream")
                channel.step(fresh_in, fresh)
                other = fresh_in.opposite
                if mask & _ERR or other.need_dst & mask:
                    channel.step(other)
            elif fd < 0 or mask & _ERR:
                channel.step(ab)
                channel.step(ba)
            else:
                # ab reads a's fd and writes b's; ba the other way round
                on_a = fd == channel.a_fd
                if (ab.need_src & mask) if on_a else (ab.need_dst & mask):
                    channel.step(ab)
                if (ba.need_dst & mask) if on_a else (ba.need_src & mask):
                    channel.step(ba)
        except _Ended as ended:
            self._finish(channel, ReactorOutcome(ended.side, ended.reason, ended.error, ended.broken))
            return
        if channel.yields and (ab.need_dst or ab.room == 0):
            # b does not take a's bytes at once (or the replay buffer is full):
            # the raw relay's ring and its never-stall rule take over in trio
            self._finish(channel, ReactorOutcome("", "congested", congested=True))
            return
        mask_a = ab.need_src | ba.need_dst
        if mask_a != channel.mask_a:
            self._ep.modify(channel.a_fd, mask_a)
            channel.mask_a = mask_a
        mask_b = ab.need_dst | ba.need_src
        if mask_b != channel.mask_b:
            self._ep.modify(channel.b_fd, mask_b)
            channel.mask_b = mask_b

    def _finish(self, channel: _Channel, outcome: ReactorOutcome) -> None:
        for fd in channel.fds:
            if self._by_fd.get(fd) is channel:
                del self._by_fd[fd]
                self._reader_of.pop(fd, None)
                try:
                    self._ep.unregister(fd)
                except OSError:
                    pass
        self.channels -= 1
        outcome.unsent_to_a, outcome.unsent_to_b = channel.unsent()
        channel.done(outcome)
