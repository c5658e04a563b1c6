"""One exported printer port: keeps it open, queues what consumers send, feeds the printer.

A parallel channel carries one direction: guest -> printer.  (QEMU's
isa-parallel discards bytes from the socket, and /dev/lpN has nothing to
read without IEEE 1284 readback.)  So the state is one bounded queue
(`queue_bytes`, the config's `ring_bytes`) between the consumer and the
device, owned by the service - not by a session - so what a VM printed
reaches the printer after the VM disconnects, and what it printed while the
printer was off, offline, out of paper or unplugged is written when it
comes back.

The rule that shapes everything: **the consumer is always read.**  QEMU's
parallel model busy-waits for the socket with the big QEMU lock held, so a
peer that stops reading freezes the whole VM (shared doc, section 1 table).
`Session.put` therefore never waits: what fits in the queue is queued, the
excess is discarded, counted and logged (once, then each time the count
doubles) with the printer's state and the consumer named - never silently.
The writer side never drops a byte: partial writes and EAGAIN are retried,
a printer error keeps the queue and is retried every `status_interval_s`.

`run()` owns the port's lifetime: open (retrying every `reopen_interval_s`
while absent, logging each new reason once), write the queue, and when the
port vanishes close it and reopen it when it returns.  Every change of the
printer's state ("printer out of paper", "printer offline", back again) is
one log line naming the port, what is queued and for whom.

`attach(peer)` is the one-consumer rule: a second consumer gets `PortBusy`.
Cancellation: `run()` is cancelled by its nursery at shutdown, closes the
port and logs what was still queued; sessions just end.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

import trio

from redirgate.client.parallel.errors import PortBusy, PortUnavailable, PrinterNotReady
from redirgate.client.parallel.printer import PrinterPort
from redirgate.client.parallel.status import UNKNOWN, PrinterStatus
from redirgate.client.ring import Ring

__all__ = ["DEFAULT_QUEUE_BYTES", "PrinterService", "Session"]

log = logging.getLogger(__name__)

#: A few pages of PCL/PostScript; a bound, so a printer that is off for a
#: day costs at most this much memory.
DEFAULT_QUEUE_BYTES: Final = 4 * 1024 * 1024


class Session:
    """A consumer's handle on the port, valid while it is attached."""

    def __init__(self, service: PrinterService, peer: str) -> None:
        self.service = service
        self.peer = peer
        self.received_bytes = 0
        #: This consumer's bytes dropped because the queue was full.
        self.discarded_bytes = 0

    def put(self, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes for the printer without ever waiting; returns how many
        were discarded because the queue was full (logged)."""
        self.received_bytes += len(data)
        dropped = self.service._put(data, self.peer)
        self.discarded_bytes += dropped
        return dropped


class PrinterService:
    """One printer port exported to one consumer at a time (see the module docstring)."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        reopen_interval_s: float = 0.5,
        status_interval_s: float = 1.0,
        open_port: Callable[..., PrinterPort] = PrinterPort.open,
    ) -> None:
        self.name = name
        #: PrinterPort.open, or a stand-in for hardware in tests.
        self.open_port = open_port
        self.path = path
        self.reopen_interval_s = reopen_interval_s
        self.status_interval_s = status_interval_s
        self.port: PrinterPort | None = None
        self.session: Session | None = None
        self.status: PrinterStatus = UNKNOWN
        #: Why the printer takes no data now (absent, out of paper, ...), or None.
        self.problem: str | None = None
        self.written_bytes = 0
        self.discarded_bytes = 0
        self.opened_count = 0
        #: Set while the port is open; replaced by a fresh Event when it closes.
        self.port_up = trio.Event()
        self._queue = Ring(queue_bytes)
        self._lot = trio.lowlevel.ParkingLot()
        self._logged_discard = 0
        self._last_peer = "nobody"

    @property
    def queued_bytes(self) -> int:
        return len(self._queue)

    def describe(self) -> str:
        """One line for the inventory: the printer's state (no raw bits and no
        busy/ready flicker, so a printing printer sends no inventory updates)."""
        if self.port is None:
            return f"printer absent ({self.problem})" if self.problem else "printer absent"
        problem = self.problem or self.status.problem
        if problem is not None:
            return problem
        return "printer ready" if self.status.known else "status unknown"

    # -- lifetime ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the port open and fed until cancelled; reports started after
        the first open attempt, successful or not."""
        started = False
        try:
            while True:
                try:
                    port = self.open_port(self.path, name=self.name)
                except PortUnavailable as exc:
                    self._set_problem(f"waiting for the printer: {exc.reason}")
                    if not started:
                        task_status.started()
                        started = True
                    await trio.sleep(self.reopen_interval_s)
                    continue
                self.port = port
                self.opened_count += 1
                if not started:
                    task_status.started()
                    started = True
                try:
                    self.status = port.status()
                    log.info(
                        "%s: opened %s (%s, %d bytes queued)",
                        self.name,
                        port.path,
                        self.status.describe(),
                        len(self._queue),
                    )
                    self._set_problem(None)
                    self.port_up.set()
                    await self._feed(port)
                except PortUnavailable as exc:
                    self._set_problem(f"printer gone: {exc.reason}")
                finally:
                    self.port = None
                    self.port_up = trio.Event()
                    port.close()
                await trio.sleep(self.reopen_interval_s)
        finally:
            if len(self._queue):
                log.warning("%s: stopping with %d bytes that never reached the printer", self.name, len(self._queue))

    async def _feed(self, port: PrinterPort) -> None:
        """Write the queue to the port until it vanishes (PortUnavailable)."""
        stalled_since: float | None = None
        while True:
            while not len(self._queue):
                stalled_since = None
                with trio.move_on_after(self.status_interval_s):
                    await self._lot.park()
                if not len(self._queue):
                    # idle: keep the inventory's description true, and say when the
                    # printer runs out of paper or goes offline before anyone prints
                    if self._refresh_status(port):
                        self._set_problem(self.status.problem)
            try:
                with self._queue.peek() as view:  # released before any await
                    n = port.write_nowait(view)
            except PrinterNotReady as exc:
                if exc.status is not None:
                    self.status = exc.status
                self._set_problem(exc.reason)
                await trio.sleep(self.status_interval_s)
                continue
            if n:
                if self.problem is not None:  # it took data again: say so, with fresh status
                    self._refresh_status(port)
                    self._set_problem(None)
                self._queue.consume(n)  # no await since the peek: nothing moved under us
                self.written_bytes += n
                stalled_since = None
                continue
            # Nothing taken (EAGAIN: busy, or a FIFO reader that is slow).  A
            # printer that stays stuck is named from its status lines.
            now = trio.current_time()
            if stalled_since is None:
                stalled_since = now
            elif now - stalled_since >= self.status_interval_s:
                stalled_since = now
                self._refresh_status(port)
                if self.status.problem is not None:
                    self._set_problem(self.status.problem)
            await port.wait_writable()

    def _refresh_status(self, port: PrinterPort) -> bool:
        """Read the status lines again; whether the port has any."""
        if port.status_known:
            self.status = port.status()
            return True
        return False

    def _set_problem(self, problem: str | None) -> None:
        """Record the printer's state; one log line per change."""
        if problem == self.problem:
            return
        old, self.problem = self.problem, problem
        queued = len(self._queue)
        who = self.session.peer if self.session is not None else self._last_peer
        if problem is None:
            if old is not None:
                sending = f"; sending {queued} queued bytes" if queued else ""
                log.info("%s: printer ready again (%s)%s", self.name, self.status.describe(), sending)
        elif queued:
            log.warning("%s: %s; holding %d queued bytes from %s until it is back", self.name, problem, queued, who)
        else:
            log.warning("%s: %s", self.name, problem)

    # -- consumers ---------------------------------------------------------

    def _put(self, data: bytes | bytearray | memoryview, peer: str) -> int:
        view = memoryview(data)
        room = self._queue.free
        take = min(room, len(view))
        if take:
            self._queue.write(view[:take])
            self._lot.unpark_all()
        dropped = len(view) - take
        if dropped:
            self.discarded_bytes += dropped
            self._log_discard(peer)
        return dropped

    def _log_discard(self, peer: str) -> None:
        # Once at the first discard, then each time the total doubles.
        total = self.discarded_bytes
        if total >= 2 * self._logged_discard:
            why = self.problem or "the printer is slower than the sender"
            log.warning(
                "%s: the %d-byte queue is full (%s): discarded bytes from %s rather than stall the VM (%d so far)",
                self.name,
                self._queue.capacity,
                why,
                peer,
                total,
            )
            self._logged_discard = max(total, 1)

    @contextlib.asynccontextmanager
    async def attach(self, peer: str) -> AsyncIterator[Session]:
        """Attach a consumer; PortBusy when another one holds the port."""
        if self.session is not None:
            raise PortBusy(self.name, f"already in use by {self.session.peer}")
        session = Session(self, peer)
        self.session = session
        self._last_peer = peer
        state = self.problem or self.status.describe()
        log.info("%s: consumer %s attached (%s, %d bytes queued)", self.name, peer, state, len(self._queue))
        try:
            yield session
        finally:
            if self.session is session:
                self.session = None
            log.info(
                "%s: consumer %s left after %d bytes (%d discarded); %d bytes still queued for the printer",
                self.name,
                peer,
                session.received_bytes,
                session.discarded_bytes,
                len(self._queue),
            )
