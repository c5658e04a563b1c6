"""A serial port served raw to one consumer stream: trio tasks, or the relay reactor while plain bytes flow.

Two ways to move the bytes, taking turns (`RawPath.run`'s loop):

* **The trio tasks** (any stream): consumer bytes are read and go to the
  port through `Session.write` (the TX ring back-pressures the consumer);
  device bytes go to the consumer through `Session.forward_to` (the RX
  ring; the RX pump sends directly while it is empty).  On a stream with
  non-blocking moves (the gateway's TLS data connection; a TCP consumer,
  through a `PlainSocketStream` view of its fd) a chunk that is there costs
  a read and the port write, and a scheduler pass only for the wait before
  it.
* **The reactor** (`mover`, the client's `transport.RelayReactor`; issue
  13): while nothing is queued either way the tty's fd and the data
  connection's socket are lent to the reactor thread
  (`RelayReactor.move_raw`, the tty as side a): a byte from the port goes
  straight into a TLS record and back with one epoll wake-up, no trio
  scheduler pass.  The reactor gives the channel back the moment the data
  connection does not take the port's bytes at once (or a resumable
  channel's replay buffer is full: "congested"), either side ends or
  fails, or trio cancels the lend - a settings change, modem lines, BREAK
  or purge (`PortService.interrupt_lend`), a takeover, shutdown.  What it
  read and did not write goes back into the service's rings
  (`PortService.end_lend`; for a resumable channel the port's bytes are
  recorded for the replay already: `ResumableStream.recorded_ahead`), and
  the trio tasks run until the rings are empty and the consumer task waits
  for bytes holding none ("calm": `_settle`), then the sockets are lent
  again.

Ownership, one owner at a time: the tty fd is the trio loop's (the
service's pumps) except between `PortService.begin_lend` and `end_lend`;
the data connection's socket is the trio tasks' except inside `_lend`
(the reactor's between `move_raw`'s add and its end notification).  The
reactor never closes either; the service closes the port only after a
lend gave it back.

What a lend's end means: the port failed or hung up - the trio tasks run
and the service's RX pump finds the same failure, logs it once and
reopens (no lend until a new port is open); the data connection ended
cleanly - what the reactor still held for the port is written, the TX
buffer drained, the session ends; it broke - a resumable channel resumes
on a new connection (`ResumableStream.recover`) and carries on, another
ends with one line saying the consumer went away.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from redirgate.client.serial.port import SerialPort
from redirgate.client.serial.rfc2217 import RECEIVE_BYTES
from redirgate.client.serial.service import Session
from redirgate.transport import (
    FULL_RECORD_BYTES,
    NonBlockingStream,
    PlainSocketStream,
    RelayReactor,
    RelayStats,
    SocketLender,
    drop_prefixes,
    nonblocking,
    resumable_under,
)

__all__ = ["DRAIN_EXTRA_S", "RawPath"]

log = logging.getLogger(__name__)

#: Added to the transmit time of the buffered bytes when a consumer leaves.
DRAIN_EXTRA_S: Final = 2.0


class RawPath:
    """One raw consumer session's byte mover (see the module docstring); trio thread only."""

    def __init__(self, stream: trio.abc.Stream, session: Session, peer: str, mover: RelayReactor | None) -> None:
        self.stream = stream
        self.session = session
        self.service = session.service
        self.peer = peer
        self.fast = _nonblocking_view(stream)
        self.mover = mover if isinstance(stream, SocketLender) else None
        self.resumable = resumable_under(stream)
        #: the consumer task's wait for bytes (`_settle` cancels it to lend)
        self._c2p_wait: trio.CancelScope | None = None
        #: a port the reactor saw fail: not lent again (the service reopens a new one)
        self._failed_port: SerialPort | None = None

    async def run(self) -> None:
        """Move bytes both ways until either side ends (or the session is cancelled)."""
        self.session.on_settle = self._settle
        try:
            while True:
                if self._may_lend():
                    if await self._lend():
                        return
                elif await self._trio_tasks():
                    return
        finally:
            self.session.on_settle = None

    # -- when to lend --------------------------------------------------------

    def _may_lend(self) -> bool:
        if self.mover is None or not self.service.lendable() or self.service.port is self._failed_port:
            return False
        r = self.resumable
        if r is not None and (r.suspended or not r.channel.room()):
            return False
        try:
            return isinstance(self.stream, SocketLender) and self.stream.lend() is not None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    def _settle(self) -> None:
        """The service may have settled (called in the trio thread by its tasks):
        if the consumer task waits holding nothing and all is calm, stop the
        trio tasks there so that the sockets are lent."""
        if self._c2p_wait is not None and self._may_lend():
            self._c2p_wait.cancel()

    # -- the reactor -----------------------------------------------------------

    async def _lend(self) -> bool:
        """One lend of the port's fd and the stream's socket to the reactor; True when the session ends."""
        assert self.mover is not None
        service, r = self.service, self.resumable
        lent_b = self.stream.lend() if isinstance(self.stream, SocketLender) else None
        if lent_b is None:  # _may_lend said it would, just before
            return False
        port = service.port
        stats = RelayStats()
        lent_a = service.begin_lend(stats)
        outcome = None
        try:
            with r.lent_scope() if r is not None else trio.CancelScope() as scope:
                service.lend_scope = scope
                outcome = await self.mover.move_raw(lent_a, lent_b, stats, service.lend_read_bytes)
        finally:
            drop_prefixes(self.stream)
            to_b, to_a = stats.unsent_to_b, stats.unsent_to_a
            service.end_lend(to_b, to_a)
            if to_b and r is not None:
                r.recorded_ahead(len(to_b))  # recorded by the reactor: the head of the next try_send
        log.debug(
            "%s: %s: the reactor gave the port back (%s%s)",
            service.name,
            self.peer,
            stats.ended_by or "-",
            f": {stats.reason}" if stats.reason else "",
        )
        if outcome is None or outcome.congested or scope.cancelled_caught:
            return False  # the trio tasks take what came back; a cancellation from outside goes on
        if not outcome.ended_by:
            self.mover = None  # the reactor is not running: trio tasks from now on
            return False
        if outcome.ended_by == "a":
            self._failed_port = port  # the service's RX pump finds the failure, says so once, reopens
            return False
        if not outcome.broken:  # the consumer ended: what it sent still reaches the device
            await self.session.drain(DRAIN_EXTRA_S)
            return True
        if r is not None:
            try:
                await r.recover(outcome.reason)
                return False
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("%s: %s went away: %s", service.name, self.peer, str(exc) or type(exc).__name__)
                return True
        log.info("%s: %s went away: %s", service.name, self.peer, outcome.reason)
        return True

    # -- the trio tasks --------------------------------------------------------

    async def _trio_tasks(self) -> bool:
        """Both directions on the trio loop until the session ends (True) or
        all is calm and the sockets may be lent (False)."""
        calm = False

        async def consumer_to_port(scope: trio.CancelScope) -> None:
            nonlocal calm
            try:
                if self.fast is not None:
                    if await self._consumer_to_port_fast(self.fast):
                        calm = True
                        scope.cancel()
                        return
                else:
                    while data := await self.stream.receive_some(RECEIVE_BYTES):
                        await self.session.write(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("%s: %s went away: %s", self.service.name, self.peer, str(exc) or type(exc).__name__)
            else:
                await self.session.drain(DRAIN_EXTRA_S)
            scope.cancel()

        async def port_to_consumer(scope: trio.CancelScope) -> None:
            try:
                if self.fast is not None:
                    await self.session.forward_to(self.fast, RECEIVE_BYTES)
                else:
                    while True:
                        await self.stream.send_all(await self.session.receive_some(RECEIVE_BYTES))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("%s: %s stopped reading: %s", self.service.name, self.peer, str(exc) or type(exc).__name__)
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer_to_port, nursery.cancel_scope)
            nursery.start_soon(port_to_consumer, nursery.cancel_scope)
        return not calm

    async def _consumer_to_port_fast(self, stream: NonBlockingStream) -> bool:
        """Consumer bytes to the port on non-blocking moves until EOF (False)
        or, with a reactor, until all is calm where it would wait (True).
        Errors of the stream propagate.

        After a short read (less than `FULL_RECORD_BYTES`: the socket had no
        more, or a TLS record that is not part of a train of full ones) the
        next step is the wait, not another read that would only say "nothing
        yet": typed bytes come one burst at a time, and if more did arrive
        the wait returns at once."""
        buf = bytearray(RECEIVE_BYTES)
        view = memoryview(buf)
        try_receive_into, wait_receivable = stream.try_receive_into, stream.wait_receivable
        session = self.session
        waited = drained = False
        while True:
            n = None if drained else try_receive_into(buf)
            if n is None:
                if self.mover is not None:
                    if self._may_lend():
                        return True  # holding nothing: the reactor takes over
                    with trio.CancelScope() as wait:
                        self._c2p_wait = wait
                        await wait_receivable()
                    self._c2p_wait = None
                    if wait.cancelled_caught:
                        return True  # `_settle` found all calm while we waited
                else:
                    await wait_receivable()
                waited, drained = True, False
                continue
            if not n:
                return False
            await session.write(view[:n])  # copies what the port does not take at once
            if not waited:
                # bytes that were already there: a consumer that floods faster
                # than we move must not starve the loop or miss a cancellation
                await trio.lowlevel.checkpoint()
            waited = False
            drained = n < FULL_RECORD_BYTES


def _nonblocking_view(stream: trio.abc.Stream) -> NonBlockingStream | None:
    """`stream` itself when it has non-blocking moves (the gateway's TLS data
    connection), a view of a plain trio socket stream's fd that has them (a
    standalone consumer; not ours to close), else None (the awaitable
    methods are used)."""
    if nonblocking(stream):
        return stream
    if isinstance(stream, trio.SocketStream):
        return PlainSocketStream(stream)
    return None
