"""The relay for raw (serial/parallel) channels: the hypervisor is never stalled.

QEMU's 16550 throttles the guest's UART and its isa-parallel model blocks the
vCPU, holding the big QEMU lock, as soon as the chardev peer stops reading
(qemu-libvirt-serial-facts.md §1).  A thin client that hangs, or a device
that stops taking bytes, must never do that to a VM.  So on raw routes the
gateway keeps reading the hypervisor whatever the client side does, and
this module owns that relay:

* hypervisor -> client: a *reader* task that reads the hypervisor socket
  into a preallocated ring (`buffer_bytes`, 256 KiB by default), and a
  *writer* task that sends from the ring to the client's data connection at
  whatever pace it takes.  While the client side takes bytes, a full ring
  makes the reader wait for the writer: the guest is paced to the client
  side (a real 115200-baud UART paces it the same way) and nothing is lost.
  When the client side takes *nothing* for `stall_s` while the ring is full
  (the thin client hangs, or its device stopped taking bytes), the reader
  goes back to reading everything at once and discards it, counted: a
  WARNING when a discard period starts, one summary line with the count
  when it ends (the ring is empty again: the client side caught up), and
  every discarded chunk reported through `on_discard`.  The ring takes
  bytes again once it drained to half, so a period leaves a few large gaps
  rather than many small ones, and a resumed client is paced, not
  discarded against, again.

  Why not discard the moment the ring is full: a guest writing faster than
  the client's device would then lose everything past 256 KiB even though
  the device is working - QEMU's socket chardev has no baud rate, a real
  UART has.  What reaches the VM is at most `stall_s` (0.25 s) without
  reads, most of it absorbed by the kernel's socket buffers; never a stall
  that lasts as long as the client side's.
* client -> hypervisor: the plain `transport.pump`.  QEMU only reads its
  socket when the guest's side has room, so that direction back-pressures
  the client through TCP; it loses nothing and stalls nothing.

The direct path: while the writer waits for bytes holding none (the ring
is empty) and both streams offer non-blocking moves, the reader sends what
it just read into the ring to the client side itself, and wakes the
writer only for what that did not take.  A typed byte then costs one
scheduler pass through the gateway instead of two (the reader's and the
writer's wake-ups).  Nothing else changes: the bytes still go through the
ring (so a would-block send is retried by the writer from the same head,
as OpenSSL needs), order is kept (only an empty ring is sent from
directly), and a send error is handed to the writer, which raises it as
its own.

Zero copy as in `transport.relay`: the ring and one scratch buffer (where
discarded bytes land) are allocated once per channel; reads go straight into
the ring's free space, sends straight out of its filled space (only
memoryview slices are made per chunk; the one copy is on the awaiting path,
when a read into the scratch buffer returns just as a discard period ends);
each task takes the non-blocking fast path when its stream offers it.  The
reactor's structural backpressure is exactly what must not reach a VM
here, hence the hand-back on congestion (below).

The reactor (`mover`, the gateway's `RelayReactor`): while the client side
takes every byte at once, neither the ring nor the discard rule has
anything to do, and the channel's two sockets are lent to the reactor
thread (`RelayReactor.move_raw`), which moves a typed byte with one epoll
wake-up and no trio scheduler pass (issue 13: the trio hop cost about two
thirds of the gateway's CPU per round trip).  The reactor gives the
channel back the moment a write to the client side would block or the
replay buffer is full ("congested"), or the client's connection breaks, a
freeze or `interrupt()` cancels the lend, or an end: what it read and did
not write goes into the ring (already recorded for the replay:
`ResumableStream.recorded_ahead`) or to the client -> hypervisor task, and
these three trio tasks run as described above.  When the writer finds the
ring empty again with nothing else in flight (no discard period, no write
to the hypervisor, not frozen, replay room), it stops the other two where
they wait holding nothing and the sockets are lent again.  Ownership: the
trio tasks and the reactor take turns, never both at once (`relay_raw`'s
loop: tasks, lend, tasks, ...).

It never parses what it moves and holds no gateway state (the caller keeps
the counters).  It is for raw channels only: an RFC 2217 consumer is a
telnet program rather than a VM, and a discard would cut its commands.

Shutdown choreography: the three tasks run in one nursery.  When the
hypervisor side ends (EOF or a broken socket) the writer still gets
`flush_budget_s` to deliver what the ring holds - every byte read from the
hypervisor before its end reaches the client, as with the plain pump -
then the relay ends.  When the writer or the client -> hypervisor pump
fails, the relay ends at once.  Then both streams are closed, as
`transport.relay` does; the first side to end is recorded in the stats
("a" = the hypervisor, "b" = the client side).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio

from redirgate.transport import (
    Handover,
    NonBlockingStream,
    PrefixedStream,
    ReceiveIntoStream,
    RelayReactor,
    RelayStats,
    SocketLender,
    nonblocking,
    pump,
    resumable_under,
)

__all__ = ["DEFAULT_RAW_BUFFER_BYTES", "DEFAULT_STALL_S", "DISCARD_CHUNK_BYTES", "RawFreezer", "relay_raw"]

log = logging.getLogger(__name__)

#: Hypervisor -> client bytes the gateway holds per raw channel: a few
#: seconds of a 460800-baud line, a whole boot log of a console.
DEFAULT_RAW_BUFFER_BYTES: Final = 256 * 1024
#: Read size while discarding (the scratch buffer, allocated once per channel).
DISCARD_CHUNK_BYTES: Final = 64 * 1024
#: A full ring with no byte taken by the client side for this long is a stall:
#: from then on the hypervisor's bytes are read and discarded.  Long enough
#: for a scheduling hiccup on a busy gateway, short next to what a VM tolerates.
DEFAULT_STALL_S: Final = 0.25
#: How long the writer may still deliver the ring once the hypervisor left.
DEFAULT_FLUSH_BUDGET_S: Final = 2.0
#: Per stream, for the graceful close at the end (as transport.relay).
_CLOSE_BUDGET_S: Final = 2.0
#: Chunks moved without waiting before a task yields anyway (as transport.relay).
_YIELD_EVERY: Final = 16


class _Ring:
    """A fixed byte ring: contiguous free space to read into, filled space to send from.

    One reader commits, one writer consumes; nothing here awaits.  While a
    read into the free space is in flight across an await (`pinned`), an
    emptied ring keeps its position instead of rewinding to 0, so that
    space stays where the reader is writing.
    """

    __slots__ = ("capacity", "head", "pinned", "size", "view")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the ring needs at least one byte")
        self.capacity = capacity
        self.view = memoryview(bytearray(capacity))
        self.head = 0
        self.size = 0
        self.pinned = False

    def free_view(self) -> memoryview:
        """The contiguous free space after the filled bytes (empty when full)."""
        tail = (self.head + self.size) % self.capacity
        if self.size == self.capacity:
            return self.view[0:0]
        end = self.capacity if tail >= self.head else self.head
        return self.view[tail:end]

    def filled_view(self) -> memoryview:
        """The oldest contiguous run of filled bytes."""
        end = min(self.head + self.size, self.capacity)
        return self.view[self.head : end]

    def commit(self, n: int) -> None:
        self.size += n

    def consume(self, n: int) -> None:
        self.head = (self.head + n) % self.capacity
        self.size -= n
        if self.size == 0 and not self.pinned:
            self.head = 0  # the whole buffer is one free run again


class RawFreezer:
    """Stops a running `relay_raw` where nothing is in flight, for a gateway restart (issue 16 step 3).

    `offset`: where the hypervisor -> client direction stands in the
    channel's byte count when the relay starts (the resumable stream's
    `sent_total`: 0 for a new channel, more for one taken over).  `freeze()`
    stops reading the hypervisor (at a point where every byte read is in the
    ring) and waits until nothing is being written to it; `thaw()` lets the
    relay go on (the restart failed).  While frozen the hypervisor is not
    read: a restart is the one moment a raw route's never-stall rule yields.
    Owner: the trio loop (the route's relay and the handover code)."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.relay: _Relay | None = None

    async def freeze(self) -> None:
        relay = self.relay
        if relay is None:
            return
        relay.frozen = True
        relay.thawed = trio.Event()
        if relay.reader_scope is not None:
            relay.reader_scope.cancel()
        if relay.lend_scope is not None:
            relay.lend_scope.cancel()  # the reactor gives the sockets back; the trio tasks park
        while not relay.reader_parked or relay.delivering:
            await relay.settled.park()

    def thaw(self) -> None:
        relay = self.relay
        if relay is not None:
            relay.frozen = False
            relay.thawed.set()

    def unsent(self, recorded: int) -> bytes:
        """Frozen: the bytes read from the hypervisor that the client side has
        not taken yet, given that the channel recorded `recorded` bytes in all."""
        relay = self.relay
        if relay is None:
            return b""
        ring = relay.ring
        held = bytes(ring.filled_view())
        if ring.size > len(held):  # wrapped
            held += bytes(ring.view[: ring.size - len(held)])
        missing = relay.committed - recorded
        if not 0 <= missing <= len(held):
            raise ValueError(f"the ring holds {len(held)} bytes, {missing} of them said to be unrecorded")
        return held[len(held) - missing :]


class _Relay:
    """State shared by the three tasks of one `relay_raw` call."""

    def __init__(
        self,
        hypervisor: ReceiveIntoStream,
        device: ReceiveIntoStream,
        *,
        label: str,
        stats: RelayStats,
        buffer_bytes: int,
        on_discard: Callable[[int], None] | None,
        stall_s: float,
        flush_budget_s: float,
        mover: RelayReactor | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.device = device
        self.label = label
        self.stats = stats
        self.on_discard = on_discard
        self.stall_s = stall_s
        self.flush_budget_s = flush_budget_s
        self.ring = _Ring(buffer_bytes)
        self.low_water = buffer_bytes // 2
        self.scratch = memoryview(bytearray(min(DISCARD_CHUNK_BYTES, buffer_bytes)))
        #: the writer waits here for bytes, the reader of a full ring for room
        self.filled = trio.lowlevel.ParkingLot()
        self.room = trio.lowlevel.ParkingLot()
        #: False from the stall on until the ring drained to `low_water`.
        self.accepting = True
        self.hypervisor_done = False
        self.discarded_bytes = 0
        self.period_bytes = 0
        self.period_started: float | None = None
        self.writer_scope = trio.CancelScope()
        # a gateway restart (RawFreezer): the reader stops, the c -> h pump finishes its write
        self.frozen = False
        self.thawed = trio.Event()
        self.reader_scope: trio.CancelScope | None = None
        self.reader_parked = False
        self.delivering = False
        self.settled = trio.lowlevel.ParkingLot()
        #: bytes committed to the ring over the channel's life (RawFreezer.offset first)
        self.committed = 0
        self.freezable = False
        #: the client side, while the writer waits for bytes holding none: the
        #: reader sends to it directly (set only by `_write_fast`)
        self.direct: NonBlockingStream | None = None
        #: what the reader's direct send raised, for the writer to raise
        self.direct_error: trio.BrokenResourceError | trio.ClosedResourceError | None = None
        #: the relay reactor that moves the bytes while the client side takes them at once
        #: (see "The reactor"); None: trio tasks only
        self.mover = mover
        self.resumable = resumable_under(device)
        #: the current lend's scope (a freeze cancels it)
        self.lend_scope: trio.CancelScope | None = None
        #: the trio tasks stopped to lend the sockets to the reactor again
        self.calm = False
        #: read from the client side by the reactor and not yet written to the hypervisor
        self.unsent_to_hypervisor = b""
        #: the client -> hypervisor task's wait for bytes (a lend cancels it)
        self.c2h_wait: trio.CancelScope | None = None

    # -- bookkeeping --------------------------------------------------------

    def _end(self, side: str, reason: str) -> None:
        if not self.stats.ended_by:
            self.stats.ended_by, self.stats.reason = side, reason

    def _discarded(self, n: int) -> None:
        self.discarded_bytes += n
        self.period_bytes += n
        if self.on_discard is not None:
            self.on_discard(n)
        if self.period_started is None:
            self.period_started = trio.current_time()
            log.warning(
                "%s: the client side took nothing for %.2f s with %d bytes buffered; discarding what the "
                "hypervisor sends until it catches up (the hypervisor is never stalled)",
                self.label,
                self.stall_s,
                self.ring.size,
            )

    def _consumed(self, n: int) -> None:
        self.ring.consume(n)
        self.stats.a_to_b += n
        self.room.unpark_all()
        if not self.accepting and self.ring.size <= self.low_water:
            self.accepting = True
        if self.ring.size == 0 and self.period_started is not None:
            self._summary("the client side caught up")

    def _summary(self, why: str) -> None:
        assert self.period_started is not None
        log.warning(
            "%s: %s; discarded %d bytes from the hypervisor over %.1f s (%d on this channel)",
            self.label,
            why,
            self.period_bytes,
            trio.current_time() - self.period_started,
            self.discarded_bytes,
        )
        self.period_started = None
        self.period_bytes = 0

    def _target(self) -> memoryview | None:
        """Where the next hypervisor read goes: the ring's free space, or None
        (discarding, or the ring is full: then see `_wait_for_room`)."""
        if self.accepting:
            free = self.ring.free_view()
            if len(free):
                return free
        return None

    async def _wait_for_room(self) -> memoryview | None:
        """The ring is full: wait up to `stall_s` for the writer to free some;
        the free space, or None when the client side stalled (discard from now)."""
        with trio.move_on_after(self.stall_s):
            while self.ring.size == self.ring.capacity:
                await self.room.park()
        if self.ring.size == self.ring.capacity:
            # After the whole process was descheduled, this deadline fires in
            # the same scheduler batch as the writer's wake-up: let the writer
            # run once before calling it a stall.
            await trio.lowlevel.checkpoint()
        free = self.ring.free_view()
        if len(free):
            return free
        self.accepting = False
        return None

    def _keep_from_scratch(self, n: int) -> int:
        """Move what fits of scratch[:n] into the ring; the count still to discard."""
        kept = 0
        while kept < n:
            free = self.ring.free_view()
            k = min(len(free), n - kept)
            if not k:
                break
            free[:k] = self.scratch[kept : kept + k]
            self.ring.commit(k)
            self.committed += k
            kept += k
        if kept:
            self.filled.unpark_all()
        return n - kept

    def _took(self, target: memoryview | None, n: int) -> None:
        if target is None:
            self._discarded(n)
        else:
            self.ring.commit(n)
            self.committed += n
            self.filled.unpark_all()

    # -- hypervisor -> ring ---------------------------------------------------

    async def read_hypervisor(self) -> None:
        try:
            while True:
                if self.frozen:
                    self.reader_parked = True
                    self.settled.unpark_all()
                    await self.thawed.wait()
                    self.reader_parked = False
                with trio.CancelScope() as self.reader_scope:
                    if self.frozen:
                        continue
                    if nonblocking(self.hypervisor):
                        await self._read_fast(self.hypervisor)
                    else:
                        await self._read_slow()
                    break
                self.reader_scope = None
                if self.calm:
                    return  # the reactor takes over (the writer cancelled this read)
            reason = "end of stream"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        self._end("a", reason)
        self.hypervisor_done = True
        self.writer_scope.deadline = trio.current_time() + self.flush_budget_s
        self.filled.unpark_all()

    async def _read_fast(self, src: NonBlockingStream) -> None:
        try_receive_into, wait_receivable = src.try_receive_into, src.wait_receivable
        scratch = self.scratch
        unyielded = 0
        await trio.lowlevel.checkpoint()
        while True:
            target = self._target()
            if target is None and self.accepting:
                target = await self._wait_for_room()
                unyielded = 0
            buffer = scratch if target is None else target
            n = try_receive_into(buffer)
            if n is None:
                await wait_receivable()
                unyielded = 0
                continue
            if n == 0:
                return
            if target is not None and self.direct is not None and not self.ring.size:
                self.ring.commit(n)
                self.committed += n
                self._send_direct(self.direct)
            else:
                self._took(target, n)
            if n < len(buffer):
                # the socket had no more: wait rather than ask again (typed
                # bytes come one burst at a time; if more came, this returns at once)
                await wait_receivable()
                unyielded = 0
                continue
            unyielded += 1
            if unyielded >= _YIELD_EVERY:
                unyielded = 0
                await trio.lowlevel.checkpoint()

    def _send_direct(self, dst: NonBlockingStream) -> None:
        """The reader's bytes, just put in an empty ring, to the client side
        while the writer waits holding nothing (see "The direct path"); what
        it does not take stays for the writer, woken for it.  An error of
        the client side is the writer's: it raises it."""
        try:
            k = dst.try_send(self.ring.filled_view())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.direct, self.direct_error = None, exc
            self.filled.unpark_all()
            return
        if k:
            self._consumed(k)
        if self.ring.size:
            self.filled.unpark_all()

    async def _read_slow(self) -> None:
        receive_into = self.hypervisor.receive_into
        while True:
            target = self._target()
            if target is None and self.accepting:
                target = await self._wait_for_room()
            if target is None:
                n = await receive_into(self.scratch)
                if n and self.accepting:
                    n = self._keep_from_scratch(n)  # the client side caught up during the wait
                    if not n:
                        continue
            else:
                self.ring.pinned = True
                try:
                    n = await receive_into(target)
                finally:
                    self.ring.pinned = False
            if n == 0:
                return
            self._took(target, n)

    # -- ring -> client -------------------------------------------------------

    async def write_device(self, cancel: trio.CancelScope) -> None:
        try:
            with self.writer_scope:
                if nonblocking(self.device):
                    await self._write_fast(self.device)
                else:
                    await self._write_slow()
            if self.ring.size:
                log.warning(
                    "%s: the hypervisor left; %d buffered bytes did not reach the client side within %.1f s",
                    self.label,
                    self.ring.size,
                    self.flush_budget_s,
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end("b", f"{type(exc).__name__}: {exc}")
        if not self.calm:
            cancel.cancel()

    def _stop_for_lend(self) -> None:
        """The writer holds nothing and may lend: stop the other two tasks where
        they wait holding nothing (not a cancel of the nursery: the client ->
        hypervisor task may be writing; it stops after the write)."""
        self.calm = True
        if self.reader_scope is not None:
            self.reader_scope.cancel()
        if self.c2h_wait is not None:
            self.c2h_wait.cancel()

    async def _until_filled(self) -> bool:
        """Wait for bytes to send; False when the hypervisor is done and all of them went."""
        while not self.ring.size:
            if self.hypervisor_done:
                return False
            await self.filled.park()
        return True

    async def _write_fast(self, dst: NonBlockingStream) -> None:
        try_send, wait_sendable = dst.try_send, dst.wait_sendable
        unyielded = 0
        await trio.lowlevel.checkpoint()
        while True:
            if not self.ring.size:
                # holding nothing: the reader may send to `dst` itself meanwhile
                self.direct = dst
                try:
                    while not self.ring.size and self.direct_error is None:
                        if self.hypervisor_done:
                            return
                        if self.mover is not None and self._may_lend():
                            self._stop_for_lend()
                            return
                        await self.filled.park()
                finally:
                    self.direct = None
                if self.direct_error is not None:
                    raise self.direct_error  # what the reader's send raised: the bytes stay in the ring
                unyielded = 0
            k = try_send(self.ring.filled_view())
            if k is None:
                await wait_sendable()
                unyielded = 0
                continue
            self._consumed(k)
            unyielded += 1
            if unyielded >= _YIELD_EVERY:
                unyielded = 0
                await trio.lowlevel.checkpoint()

    async def _write_slow(self) -> None:
        send_all = self.device.send_all
        while await self._until_filled():
            view = self.ring.filled_view()
            await send_all(view)  # the reader only ever writes outside this run
            self._consumed(len(view))

    # -- the reactor -------------------------------------------------------------

    def _lend_both(self) -> tuple[Handover, Handover] | None:
        """Both streams' sockets, or None while either cannot lend (nothing is taken)."""
        try:
            a = self.hypervisor.lend() if isinstance(self.hypervisor, SocketLender) else None
            b = self.device.lend() if isinstance(self.device, SocketLender) else None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return None if a is None or b is None else (a, b)

    def _may_lend(self) -> bool:
        """Whether the trio tasks may stop for a lend now: nothing held, nothing
        to discard, not frozen, and both sockets lendable with replay room."""
        if self.frozen or not self.accepting or self.period_started is not None or self.delivering:
            return False
        r = self.resumable
        if r is not None and (r.suspended or not r.channel.room()):
            return False
        return self._lend_both() is not None

    async def lend(self) -> bool:
        """One lend of both sockets to the reactor; True when the channel ended in it.

        Whatever else ends the lend (the client side took nothing at once, its
        connection broke, a freeze or `interrupt()` cancelled it, the
        hypervisor ended) leaves what the reactor read and did not write
        with the trio tasks: a -> b in the ring (recorded already), b -> a
        for the client -> hypervisor task to write first."""
        assert self.mover is not None and not self.ring.size
        lent = self._lend_both()
        if lent is None:
            return False
        stats = self.stats
        before = stats.a_to_b
        outcome = None
        r = self.resumable
        with r.lent_scope() if r is not None else trio.CancelScope() as self.lend_scope:
            # reads of at most a quarter of the ring: what a congestion hands back leaves it room
            outcome = await self.mover.move_raw(*lent, stats, max(1, self.ring.capacity // 4))
        self.lend_scope = None
        for stream in (self.hypervisor, self.device):
            if isinstance(stream, PrefixedStream):
                stream.drop_prefix()  # the reactor delivered them
        to_b, to_a = stats.unsent_to_b, stats.unsent_to_a
        stats.unsent_to_a = stats.unsent_to_b = b""
        self.committed += stats.a_to_b - before + len(to_b)
        if to_b:
            self.ring.view[: len(to_b)] = to_b
            self.ring.commit(len(to_b))
            if r is not None:
                r.recorded_ahead(len(to_b))
        if to_a:
            self.unsent_to_hypervisor, self.delivering = to_a, True
        if stats.ended_by == "b" and not stats.broken:
            if to_a:  # the client side ended the channel: what it sent still reaches the hypervisor
                with trio.move_on_after(self.flush_budget_s):
                    await self.hypervisor.send_all(to_a)
                    stats.b_to_a += len(to_a)
            return True
        if outcome is not None and not outcome.congested and not outcome.ended_by:
            self.mover = None  # the reactor is not running: trio tasks from now on
        # everything else is the trio tasks' to find again (an end, a break to recover from)
        stats.ended_by, stats.reason, stats.broken = "", "", False
        return False

    # -- client -> hypervisor ---------------------------------------------------

    async def client_to_hypervisor(self, buffer_bytes: int, cancel: trio.CancelScope) -> None:
        """The plain pump; with a freezer or a reactor, one that says while it writes (a freeze,
        and a lend to the reactor, wait for the write to end)."""
        if not self.freezable and self.mover is None:
            try:
                await pump(self.device, self.hypervisor, buffer_size=buffer_bytes, stats=self.stats, forward=False)
                reason = "end of stream"
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self._end("b", reason)
            cancel.cancel()
            return
        buf = bytearray(buffer_bytes)
        view = memoryview(buf)
        receive_into, send_all = self.device.receive_into, self.hypervisor.send_all
        try:
            if self.delivering:  # what the reactor read from the client side and did not write
                try:
                    await send_all(self.unsent_to_hypervisor)
                    self.stats.b_to_a += len(self.unsent_to_hypervisor)
                    self.unsent_to_hypervisor = b""
                finally:
                    self.delivering = False
                    self.settled.unpark_all()
            while True:
                if self.calm:
                    return  # the reactor takes over
                n = -1
                with trio.CancelScope() as self.c2h_wait:
                    n = await receive_into(buf)
                self.c2h_wait = None
                if n < 0:
                    return  # stopped for a lend while it waited: nothing was read
                if n == 0:
                    break
                self.delivering = True
                try:
                    await send_all(view[:n])
                finally:
                    self.delivering = False
                    self.settled.unpark_all()
                    if self.mover is not None:
                        self.filled.unpark_all()  # the writer may lend now
                self.stats.b_to_a += n
            reason = "end of stream"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        self._end("b", reason)
        cancel.cancel()


async def relay_raw(
    hypervisor: ReceiveIntoStream,
    device: ReceiveIntoStream,
    *,
    label: str,
    stats: RelayStats | None = None,
    buffer_bytes: int = DEFAULT_RAW_BUFFER_BYTES,
    on_discard: Callable[[int], None] | None = None,
    stall_s: float = DEFAULT_STALL_S,
    flush_budget_s: float = DEFAULT_FLUSH_BUDGET_S,
    freezer: RawFreezer | None = None,
    mover: RelayReactor | None = None,
) -> RelayStats:
    """Relay hypervisor (a) <-> client data connection (b) without ever stalling a.

    `label` starts every log line ("route console: hypervisor 127.0.0.1:4242").
    Counts into `stats`: ``a_to_b`` = bytes that reached the client side,
    ``b_to_a`` = bytes that reached the hypervisor; `on_discard(n)` is called
    for every discarded chunk.  `stall_s`: how long a full ring waits for
    the client side to take something before discarding starts.  Returns
    when either side ended (see the module docstring), after closing both
    streams.
    """
    result = stats if stats is not None else RelayStats()
    state = _Relay(
        hypervisor,
        device,
        label=label,
        stats=result,
        buffer_bytes=buffer_bytes,
        on_discard=on_discard,
        stall_s=stall_s,
        flush_budget_s=flush_budget_s,
        mover=mover,
    )
    if freezer is not None:
        state.committed = freezer.offset
        state.freezable = True
        freezer.relay = state

    try:
        while True:
            state.calm = False
            state.writer_scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                # The reader does not end the relay: the writer flushes first.
                nursery.start_soon(state.read_hypervisor)
                nursery.start_soon(state.write_device, nursery.cancel_scope)
                nursery.start_soon(state.client_to_hypervisor, buffer_bytes, nursery.cancel_scope)
            if not state.calm or state.stats.ended_by == "b":
                break  # the channel ended
            if state.hypervisor_done:
                state.hypervisor_done = False  # it ended as the tasks stopped: a last run reads its end and flushes
                continue
            if state.ring.size or not state._may_lend():
                continue  # bytes came in as the tasks stopped (or a freeze): the tasks again
            if await state.lend():
                break
    finally:
        if state.period_started is not None:
            state._summary("the channel ended while discarding")
        for stream in (hypervisor, device):
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_BUDGET_S):
                await stream.aclose()
    return result
