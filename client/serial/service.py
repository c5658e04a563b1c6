"""One exported serial port: keeps it open, buffers, and hands it to one consumer at a time.

`PortService.run()` owns the port's lifetime: it opens the selected tty with
the configured settings, reads it all the time (into the RX ring: while
nobody is attached the ring overwrites its oldest bytes and counts them;
while a consumer is attached a full ring pauses reading, which back-pressures
the device through the tty), writes what consumers queued (TX buffer), and
when the device vanishes (USB-serial unplugged) closes it, tells the
attached consumer, and reopens it when it returns - re-applying the settings.

`attach(peer)` is the one-consumer rule: a second consumer gets `PortBusy`,
or with `takeover=True` the first one's session is cancelled (ser2net's
kickolduser) and the new one gets the port.  Settings a consumer changes
(RFC 2217) last for its session; the configured ones come back after it.

Cancellation: each session runs inside its own cancel scope, which takeover
cancels; `attach` waits for the old session to leave before it returns, so
two consumers never interleave bytes.  `run()` is cancelled by its nursery
at shutdown and closes the port (DTR/RTS on close) on its way out.

Buffers: the RX ring (`ring_bytes`) and the TX ring (`tx_bytes`) are the only
buffers; consumer bytes with nothing queued ahead of them go to the driver
at once and only what it does not take waits in the TX ring.  The pumps never hold a view of a ring across an `await` (they read
or write what the fd takes now, then wait for readiness), so a purge or a new
session can never make them consume bytes they did not move.  TX bytes left
when a consumer leaves still go to the device; `Session.drain` waits for them.

The direct RX path: a consumer served by `Session.forward_to` (a stream with
non-blocking moves, see `redirgate.transport.NonBlockingStream`) holds no
device bytes while it waits for the ring, so while the ring is empty the RX
pump offers what it reads straight to that stream's `try_send` and only what
the stream does not take goes into the ring - for the consumer task to send
when the stream has room.  An echoed byte then costs one trio scheduler pass
(the pump's wake-up) instead of three (pump, consumer, the send's
checkpoint).  Order is kept because the pump sends directly only when the
ring is empty and the consumer holds nothing; back-pressure is unchanged
(what the stream does not take fills the ring, and a full ring pauses
reading); an error of the stream is not the pump's: it is handed to the
consumer task, which raises it as if its own send had failed.

Lending the port to the relay reactor (the raw path of a gateway channel,
`client/serial/raw.py`): who owns the fd.  The trio loop owns it - the RX
and TX pumps read and write it - except between `begin_lend` and
`end_lend`, when the reactor thread alone reads and writes it and the pumps
park (the RX pump's wait is cancelled and it re-checks before it reads, so
it never takes a byte the reactor should have).  A lend starts only with
both rings empty, so nothing queued is overtaken; `end_lend` puts what the
reactor read and did not write back where the pumps take it (device bytes
in the RX ring, consumer bytes in the TX ring): no byte already accepted
is dropped.  Anything that is not plain data - line settings, modem lines,
BREAK, purge - first asks for the port back (`interrupt_lend`, which
cancels the lend: the raw path takes the sockets back from the reactor
and runs its trio tasks until it may lend again); the ioctl itself runs at
once, which the kernel's tty layer serialises against the reactor's
reads and writes (the fd stays open: closing it waits for the lend to
end, see `run`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final, NoReturn

import trio

from redirgate.client.ring import Ring
from redirgate.client.serial.errors import PortBusy, PortUnavailable, SelectorError, SettingError
from redirgate.client.serial.port import SerialPort
from redirgate.client.serial.selector import PortSelector
from redirgate.client.serial.settings import LineSettings
from redirgate.transport import Handover, NonBlockingStream, RelayStats

__all__ = ["DEFAULT_RING_BYTES", "DEFAULT_TX_BYTES", "PortService", "Session"]

log = logging.getLogger(__name__)

DEFAULT_RING_BYTES: Final = 64 * 1024
DEFAULT_TX_BYTES: Final = 64 * 1024
#: 12 bit times per character covers start + 8 data + parity + 2 stop bits.
_BITS_PER_CHAR: Final = 12


class Session:
    """A consumer's handle on the port, valid while it is attached."""

    def __init__(self, service: PortService, peer: str, on_port_state: Callable[[bool], None] | None) -> None:
        self.service = service
        self.peer = peer
        self.settings = service._session_settings
        self.cancel_scope = trio.CancelScope()
        self.left = trio.Event()
        self.kicked_by: str | None = None
        self.on_port_state = on_port_state
        #: Consumer bytes dropped because the device could not take them (discard mode).
        self.discarded_bytes = 0
        #: Modem lines and BREAK as this consumer asked for them (None = untouched);
        #: DTR/RTS are applied again when the port reopens.
        self.dtr: bool | None = None
        self.rts: bool | None = None
        self.break_on = False
        #: called (trio thread) when the service may have settled: the RX ring
        #: emptied while its consumer waits, the TX ring drained, the port reopened
        self.on_settle: Callable[[], None] | None = None

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Device bytes (the ring's backlog first); waits while there are none."""
        return await self.service._take_rx(max_bytes)

    async def forward_to(self, stream: NonBlockingStream, max_bytes: int = 65536) -> NoReturn:
        """Send device bytes (the ring's backlog first) to `stream` until it
        fails (its trio Broken/ClosedResourceError is raised) or the session
        is cancelled; `receive_some` + `send_all` without their scheduler
        passes (see "The direct RX path" in the module docstring).  This task
        must be the only sender on `stream` while it runs."""
        await self.service._forward_rx(stream, max_bytes)

    async def write(self, data: bytes | bytearray | memoryview, *, discard_when_full: bool = False) -> None:
        """Queue bytes for the device, waiting for room in the TX buffer (so a
        slow port back-pressures the consumer).  With `discard_when_full` a full
        TX buffer drops the excess (counted, logged) instead: a hypervisor leg
        that must never stall."""
        self.discarded_bytes += await self.service._put_tx(data, discard_when_full, self.peer)

    def apply(self, **changes: object) -> LineSettings:
        """Change line settings for this session; SettingError (naming the port)
        if invalid or refused, and then the previous settings stay in force.
        Returns the settings now in force."""
        try:
            new = self.settings.replace(**changes)
        except SettingError as exc:
            raise SettingError(self.service.name, exc.setting, exc.value, exc.reason.split(": ", 1)[-1]) from exc
        self.service.interrupt_lend()
        port = self.service.port
        if port is not None:
            try:
                port.apply(new)
            except SettingError:
                with contextlib.suppress(SettingError, PortUnavailable):
                    port.apply(self.settings)
                raise
        self.settings = self.service._session_settings = new
        return new

    def set_dtr(self, on: bool) -> None:
        """Raise or drop DTR (SettingError if the tty has no such line)."""
        self.dtr = on
        self.service.interrupt_lend()
        port = self.service.port
        if port is not None:
            port.set_dtr(on)

    def set_rts(self, on: bool) -> None:
        self.rts = on
        self.service.interrupt_lend()
        port = self.service.port
        if port is not None:
            port.set_rts(on)

    def set_break(self, on: bool) -> None:
        self.break_on = on
        self.service.interrupt_lend()
        port = self.service.port
        if port is not None:
            port.set_break(on)

    async def send_break(self, duration_s: float) -> None:
        self.service.interrupt_lend()
        port = self.service.port
        if port is not None:
            await port.send_break(duration_s)

    def purge(self, rx: bool, tx: bool) -> None:
        """Drop buffered device bytes (rx) and/or not yet written consumer bytes (tx)."""
        service = self.service
        service.interrupt_lend()
        if rx:
            service._rx.clear()
        if tx:
            service._tx.clear()
            service._purged_tx = True  # what a lend hands back for the device was queued before this
        service._wake()
        port = service.port
        if port is not None:
            port.purge(rx, tx)

    def modem_lines(self) -> int | None:
        """TIOCM_* bits now; None when the port is closed or has no modem lines."""
        port = self.service.port
        return None if port is None else port.modem_lines()

    def error_counters(self) -> tuple[int, int, int, int] | None:
        port = self.service.port
        return None if port is None else port.error_counters()

    @property
    def rx_pending(self) -> int:
        """Device bytes waiting for this consumer."""
        return len(self.service._rx)

    @property
    def tx_idle(self) -> bool:
        """Nothing left to send: the TX buffer and the driver's queue are empty."""
        port = self.service.port
        return not len(self.service._tx) and (port is None or port.output_pending() == 0)

    async def drain(self, extra_s: float = 2.0) -> bool:
        """Wait until the TX buffer reached the device, for at most the buffered
        bytes' transmit time at the current baud rate plus `extra_s` (or until
        the port is gone); True if it did, else logged."""
        service = self.service
        timeout_s = len(service._tx) * _BITS_PER_CHAR / self.settings.baud + extra_s
        with trio.move_on_after(timeout_s):
            while len(service._tx) and service.port is not None:
                await service._tx_lot.park()
        if len(service._tx):
            log.warning(
                "%s: %s left; %d of its bytes did not reach the device within %.1f s",
                service.name,
                self.peer,
                len(service._tx),
                timeout_s,
            )
            return False
        return True


class PortService:
    """One serial port exported to one consumer at a time (see the module docstring)."""

    def __init__(
        self,
        name: str,
        selector: PortSelector,
        settings: LineSettings,
        *,
        ring_bytes: int = DEFAULT_RING_BYTES,
        tx_bytes: int = DEFAULT_TX_BYTES,
        takeover: bool = False,
        reopen_interval_s: float = 0.5,
    ) -> None:
        self.name = name
        self.selector = selector
        self.settings = settings
        self.takeover = takeover
        self.reopen_interval_s = reopen_interval_s
        self.port: SerialPort | None = None
        self.session: Session | None = None
        self._session_settings = settings
        self._rx = Ring(ring_bytes)
        self._tx = Ring(tx_bytes)
        #: who waits on the RX ring (the consumer for bytes, the RX pump for
        #: room) and on the TX ring (the TX pump for bytes, consumers and
        #: drain for room): a byte moved wakes only its own side's waiters
        self._rx_lot = trio.lowlevel.ParkingLot()
        self._tx_lot = trio.lowlevel.ParkingLot()
        self._attach_lock = trio.Lock()
        #: the consumer stream the RX pump may send to directly: set only
        #: while `_forward_rx` waits on an empty ring holding no bytes
        self._direct: NonBlockingStream | None = None
        #: what the direct send raised, for `_forward_rx` to raise
        self._direct_error: Exception | None = None
        self.opened_count = 0
        self._logged_overflow = 0
        #: the fd is lent to the relay reactor (see the module docstring)
        self.lent = False
        #: the lend's cancel scope (interrupt_lend cancels it), and its end
        self.lend_scope: trio.CancelScope | None = None
        self._lend_over = trio.Event()
        self._purged_tx = False
        #: the RX pump's wait for the fd (a lend cancels it)
        self._rx_wait: trio.CancelScope | None = None
        #: lends so far; the current lend's counts (the reactor thread adds to them)
        self.lends = 0
        self.lend_stats: RelayStats | None = None
        self._lent_out = self._lent_in = 0
        #: Set while the port is open; cleared when it vanishes.
        self.port_up = trio.Event()

    # -- lifetime ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the port open (reopening after it vanishes) until cancelled.

        Reports started after the first open attempt, successful or not; a
        SettingError (the device refuses the configured settings) ends it.
        """
        started = False
        last_error = ""
        try:
            while True:
                try:
                    port = SerialPort.open(self.selector, self._session_settings, name=self.name)
                except (SelectorError, PortUnavailable) as exc:
                    if str(exc) != last_error:
                        log.warning("%s: waiting for the port: %s", self.name, exc)
                        last_error = str(exc)
                    if not started:
                        task_status.started()
                        started = True
                    await trio.sleep(self.reopen_interval_s)
                    continue
                last_error = ""
                self.port = port
                self.opened_count += 1
                self._restore_lines(port)
                log.info("%s: opened %s (%s)", self.name, port.path, port.settings.describe() if port.settings else "")
                self.port_up.set()
                self._notify_state(True)
                self._settle()
                if not started:
                    task_status.started()
                    started = True
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump_rx, port, nursery.cancel_scope)
                        nursery.start_soon(self._pump_tx, port, nursery.cancel_scope)
                finally:
                    await self._lend_returned()
                    self.port = None
                    self.port_up = trio.Event()
                    port.close()
                    self._wake()
                log.warning("%s: %s; reopening when it returns", self.name, port.gone_reason)
                self._notify_state(False)
                await trio.sleep(self.reopen_interval_s)
        finally:
            if self.port is not None:
                await self._lend_returned()
                self.port.close()
                self.port = None

    # -- lending the fd to the relay reactor ----------------------------------

    def lendable(self) -> bool:
        """Whether the raw path may lend the fd now: open, not lent, nothing
        queued either way, no consumer error pending."""
        port = self.port
        return (
            port is not None
            and not port.closed
            and not self.lent
            and not len(self._rx)
            and not len(self._tx)
            and self._direct_error is None
        )

    @property
    def lent_bytes_out(self) -> int:
        """Device bytes the relay reactor moved to consumers (all lends, the current one too)."""
        stats = self.lend_stats
        return self._lent_out + (stats.a_to_b if stats is not None else 0)

    @property
    def lent_bytes_in(self) -> int:
        """Consumer bytes the relay reactor moved to the device."""
        stats = self.lend_stats
        return self._lent_in + (stats.b_to_a if stats is not None else 0)

    @property
    def lend_read_bytes(self) -> int:
        """The most the reactor may read per read in a lend: what `end_lend` hands back then fits either ring."""
        return max(1, min(self._rx.capacity, self._tx.capacity) // 4)

    def begin_lend(self, stats: RelayStats) -> Handover:
        """The fd for the reactor (call only when `lendable`), which counts into
        `stats` (a = the port); the pumps park until `end_lend`."""
        port = self.port
        assert port is not None and self.lendable()
        self.lend_stats = stats
        self.lent = True
        self.lends += 1
        self._lend_over = trio.Event()
        self._purged_tx = False
        if self._rx_wait is not None:
            self._rx_wait.cancel()  # the RX pump must not read what is the reactor's now
        return Handover(None, port.fd)

    def end_lend(self, to_consumer: bytes, to_device: bytes) -> None:
        """The reactor gave the fd back with what it read and did not write:
        `to_consumer` (device bytes) heads the RX ring, `to_device` (consumer
        bytes, unless a TX purge came meanwhile) the TX ring; the pumps go on."""
        self.lent = False
        self.lend_scope = None
        stats, self.lend_stats = self.lend_stats, None
        if stats is not None:
            self._lent_out += stats.a_to_b
            self._lent_in += stats.b_to_a
        if to_consumer:
            self._rx.write(to_consumer)  # fits: the ring was empty and a read is at most a quarter of it
        if to_device and not self._purged_tx:
            self._tx.write(to_device)
        self._lend_over.set()
        self._wake()

    def interrupt_lend(self) -> None:
        """Ask for the fd back (trio thread): the lend's wait is cancelled and
        the raw path takes the sockets back from the reactor."""
        if self.lend_scope is not None:
            self.lend_scope.cancel()

    async def _lend_returned(self) -> None:
        """Before the fd is closed: a lend gives it back first (shielded: it is quick)."""
        if self.lent:
            self.interrupt_lend()
            with trio.CancelScope(shield=True):
                await self._lend_over.wait()

    def _settle(self) -> None:
        session = self.session
        if session is not None and session.on_settle is not None:
            session.on_settle()

    def _restore_lines(self, port: SerialPort) -> None:
        session = self.session
        if session is None:
            return
        for on, setter in ((session.dtr, port.set_dtr), (session.rts, port.set_rts)):
            if on is not None:
                try:
                    setter(on)
                except SettingError as exc:
                    log.debug("%s: restoring the session's modem lines: %s", self.name, exc)

    def _notify_state(self, up: bool) -> None:
        session = self.session
        if session is not None and session.on_port_state is not None:
            session.on_port_state(up)

    async def _pump_rx(self, port: SerialPort, scope: trio.CancelScope) -> None:
        try:
            while True:
                while self.lent or (self.session is not None and self._rx.free == 0):
                    await self._rx_lot.park()
                with trio.CancelScope() as self._rx_wait:
                    await port.wait_readable()
                self._rx_wait = None
                if self.lent:
                    continue  # lent meanwhile: the reactor reads it now
                # Size the read after waiting: a consumer may have attached meanwhile.
                size = self._rx.free if self.session is not None else self._rx.capacity
                data = port.read_nowait(min(size, 65536)) if size else b""
                if not data:
                    continue
                if self._direct is not None and not len(self._rx):
                    sent = self._send_direct(self._direct, data)
                    if sent == len(data):
                        continue  # all gone: the consumer task sleeps on
                    data = data[sent:]
                if self._rx.write(data):
                    self._log_overflow()
                self._rx_lot.unpark_all()
        except PortUnavailable as exc:
            port.gone_reason = port.gone_reason or exc.reason
            scope.cancel()

    async def _pump_tx(self, port: SerialPort, scope: trio.CancelScope) -> None:
        try:
            while True:
                while self.lent or not len(self._tx):
                    await self._tx_lot.park()
                n = port.write_nowait(self._tx.peek())
                if n:
                    self._tx.consume(n)  # no await since the peek: nothing moved under us
                    self._tx_lot.unpark_all()
                    if not len(self._tx):
                        self._settle()
                else:
                    await port.wait_writable()
        except PortUnavailable as exc:
            port.gone_reason = port.gone_reason or exc.reason
            scope.cancel()

    def _send_direct(self, stream: NonBlockingStream, data: bytes) -> int:
        """Offer `data` to the waiting consumer's stream; how much it took.
        An error is the consumer's, not the pump's: kept for `_forward_rx`,
        which is woken by the bytes that go into the ring instead."""
        try:
            return stream.try_send(memoryview(data)) or 0
        except Exception as exc:  # handed to the consumer task, raised there
            self._direct = None
            self._direct_error = exc
            self._rx_lot.unpark_all()
            return 0

    def _wake(self) -> None:
        """Everyone re-checks: the port, the session or a ring changed as a whole."""
        self._rx_lot.unpark_all()
        self._tx_lot.unpark_all()

    def _log_overflow(self) -> None:
        # Once at the first overflow, then each time the count doubles: a
        # console printing to nobody must not flood the log.
        total = self._rx.overflow_bytes
        if total >= 2 * self._logged_overflow:
            log.warning(
                "%s: no consumer and the %d-byte ring is full: dropped the oldest bytes (%d so far)",
                self.name,
                self._rx.capacity,
                total,
            )
            self._logged_overflow = max(total, 1)

    @property
    def rx_overflow_bytes(self) -> int:
        """Device bytes dropped (oldest first) because the ring was full."""
        return self._rx.overflow_bytes

    # -- consumers ---------------------------------------------------------

    async def _take_rx(self, max_bytes: int) -> bytes:
        while not len(self._rx):
            await self._rx_lot.park()
        view = self._rx.peek()[:max_bytes]
        data = bytes(view)
        view.release()
        self._rx.consume(len(data))
        self._rx_lot.unpark_all()
        return data

    async def _forward_rx(self, stream: NonBlockingStream, max_bytes: int) -> NoReturn:
        ring = self._rx
        try_send, wait_sendable = stream.try_send, stream.wait_sendable
        self._direct_error = None
        try:
            while True:
                if self._direct_error is not None:
                    raise self._direct_error  # the bytes it could not take stay in the ring
                if not len(ring):
                    self._direct = stream
                    self._settle()
                    try:
                        await self._rx_lot.park()
                    finally:
                        self._direct = None
                    continue
                # Bytes left in the ring go from here; with TLS a send that
                # would block is retried with the same bytes first (OpenSSL
                # needs that), which the ring's head still is.
                view = ring.peek()[:max_bytes]
                try:
                    sent = try_send(view)
                finally:
                    view.release()
                if sent is None:
                    await wait_sendable()
                    continue
                ring.consume(sent)  # no await since the peek: nothing moved under us
                self._rx_lot.unpark_all()
                # no checkpoint: the ring only refills while we wait, so this
                # loop reaches the park above within one ring's worth of bytes
        finally:
            self._direct = None

    async def _put_tx(self, data: bytes | bytearray | memoryview, discard: bool, peer: str) -> int:
        view = memoryview(data)
        dropped = 0
        port = self.port
        if view and port is not None and not len(self._tx):
            # nothing queued before these bytes: give the driver what it takes
            # now, without a hop through the TX pump (the rest is queued)
            try:
                view = view[port.write_nowait(view) :]
            except PortUnavailable:
                pass  # the RX/TX pumps see it too and reopen; the bytes wait in the ring
        while view:
            room = self._tx.free
            if room == 0:
                if discard:
                    dropped = len(view)
                    log.warning(
                        "%s: device not taking data (%s): discarded %d bytes from %s",
                        self.name,
                        "port gone" if self.port is None else "TX buffer full",
                        dropped,
                        peer,
                    )
                    break
                await self._tx_lot.park()
                continue
            self._tx.write(view[:room])
            view = view[room:]
            self._tx_lot.unpark_all()
        return dropped

    @contextlib.asynccontextmanager
    async def attach(self, peer: str, *, on_port_state: Callable[[bool], None] | None = None) -> AsyncIterator[Session]:
        """Attach a consumer; its work runs inside `session.cancel_scope`
        (cancelled by a takeover: the `async with` body then just ends).

        Raises PortBusy when another consumer holds the port and takeover is off.
        """
        async with self._attach_lock:
            old = self.session
            if old is not None:
                if not self.takeover:
                    raise PortBusy(self.name, f"already in use by {old.peer}")
                log.warning("%s: %s takes the port over from %s", self.name, peer, old.peer)
                old.kicked_by = peer
                old.cancel_scope.cancel()
                await old.left.wait()
            session = Session(self, peer, on_port_state)
            self.session = session
        log.info("%s: consumer %s attached (%d bytes waiting in the ring)", self.name, peer, len(self._rx))
        try:
            with session.cancel_scope:
                if self.settings.break_on_connect_s and self.port is not None:
                    with contextlib.suppress(SettingError, PortUnavailable):
                        await self.port.send_break(self.settings.break_on_connect_s)
                yield session
        finally:
            if self.session is session:
                self.session = None
            if session.break_on and self.port is not None:
                with contextlib.suppress(SettingError, PortUnavailable):
                    self.port.set_break(False)
            if self._session_settings != self.settings:
                self._session_settings = self.settings
                if self.port is not None:
                    try:
                        self.port.apply(self.settings)
                    except (SettingError, PortUnavailable) as exc:
                        log.warning("%s: restoring the configured settings: %s", self.name, exc)
            session.left.set()
            self._wake()
            log.info(
                "%s: consumer %s left%s",
                self.name,
                peer,
                f" (taken over by {session.kicked_by})" if session.kicked_by else "",
            )
