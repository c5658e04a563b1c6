"""An opened USB device: claimed interfaces, detached kernel drivers, worker threads.

Every pyusb call blocks, so each one runs in a worker thread through
`trio.to_thread.run_sync` with this device's `CapacityLimiter`; libusb gets a
finite timeout on every call, which is what lets a cancelled request give its
thread back (a thread is never abandoned).  Kernel drivers detached on open
are re-attached on release, so a stick goes back to the thin client when the
VM lets go: on every way out (the VM leaves, SIGTERM's cancellation, an
exception) since `release()` is shielded and every owner calls it in a
`finally`, and also when `open()` itself fails or is cancelled half-way
(some drivers detached, a later claim failed).  A driver that cannot be
detached refuses the device (`DriverNotDetachedError`, naming the interface
and the driver) instead of leaving it half-claimed.

By default (`DEFAULT_TRANSFERS`; REDIRGATE_USB_TRANSFERS=threads turns it
off) a real device's transfers do not go to threads at all: where pyusb's
libusb1 backend is in use,
`aio` is its context's `LibusbAsync` and `submit` hands a transfer to
libusb's asynchronous API on the trio loop (client/usb/aio.py); the engine
runs the context's event pump and `release` first waits for every transfer
to come back.  Which path a device takes is logged when it is opened
(``transfers: async`` / ``inline`` / ``threads``).

The worker-thread `control`, `read` and `write` have an exception, for
emulated devices only: a backend that offers ``inline_device(dev)`` /
``call_nowait(fn, ...)`` (client/virtual's does; pyusb's libusb1 backend
does not) promises its transfers never block except where the device NAKs,
and reports that case as ``BlockingIOError`` before waiting.  Such a
transfer is first attempted on the event loop thread, which saves the two
thread hand-offs (~50-100 µs of CPU and latency each round trip) of a
transfer the device completes at once; one that would wait goes to a worker
thread like any other call.  Real libusb calls never run on the loop.

Iso IN (`stream_iso_in`) is the other exception, in the other direction:
one worker thread reads batch after batch of packets (each packet with its
own status and length, client/usb/iso.py) for as long as the stream runs,
and hands each batch to the event loop without waiting for it, so the next
transfer starts as soon as the previous one returns.  Iso is scheduled: a
(micro)frame during which no transfer runs is lost, and the round trip back
to a worker thread per batch cost a high-speed stream a fifth of its
microframes.
"""

from __future__ import annotations

import array
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio
import usb.core
import usb.util

from redirgate.client.usb import aio, bulk_streams
from redirgate.client.usb.descriptors import DeviceSnapshot, snapshot
from redirgate.client.usb.errors import DriverNotDetachedError, is_timeout
from redirgate.client.usb.iso import IsoPacketResult, read_iso_packets
from redirgate.client.usb.libusb import is_libusb_backend, libusb_backend
from redirgate.client.usb.safety import interface_driver

__all__ = ["DEFAULT_WORKER_THREADS", "UsbDevice"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How real devices' transfers run unless REDIRGATE_USB_TRANSFERS says otherwise:
#: "async" (libusb's asynchronous API on the trio loop, client/usb/aio.py) or
#: "threads" (a worker thread per pyusb call, one transfer per endpoint at a time).
#: Async is the default since its replies leave from the completion (transfers.py
#: `_answer_done`) and iso OUT goes to libusb as it is parsed (iso_out.py).  On the
#: real-device harness (16 MiB O_DIRECT dd of the gadget stick, host load 13-16, two
#: runs each, interleaved) read / write MB/s and server CPU ms per MiB: async
#: 1.13 / 0.73 / 619 and 1.11 / 0.73 / 669; threads 0.77 / 0.52 / 988 and
#: 0.37 / 0.80 / 1123; usbredirect 1.03 / 0.66 / 1004 and 0.46 / 0.80 / 1311.
#: Iso OUT (QEMU's usb-audio, a 4 s tone) through threads: 42 of 4,000 packets
#: reached the device; async about as many of those the VM side sent as usbredirect.
#: (Its first run, before those two changes: async read 0.2 MB/s at 2338 ms per MiB
#: against the threads' 0.6 at 1086.)
DEFAULT_TRANSFERS = "async"

#: Worker threads per device: enough for a control request, a bulk transfer
#: each way and a few endpoint streams to block at the same time.
DEFAULT_WORKER_THREADS = 8


class UsbDevice:
    """A pyusb device opened for redirection (create with `open()`)."""

    def __init__(self, dev: usb.core.Device, snap: DeviceSnapshot, *, threads: int) -> None:
        self.dev = dev
        self.snapshot = snap
        self.name = snap.describe()
        self.limiter = trio.CapacityLimiter(threads)
        self._claimed: set[int] = set()
        self._detached: set[int] = set()
        self._released = False
        #: called once, on the loop thread, when `release` has given the device back (the source that
        #: opened it counts the devices it has out: client/usb/source.py)
        self.on_release: Callable[[], None] | None = None
        #: the backend's no-wait runner when transfers may be tried inline
        self._nowait: Callable[..., Any] | None = None
        backend = getattr(dev, "backend", None)
        inline = getattr(backend, "inline_device", None)
        if backend is not None and inline is not None and inline(dev):
            self._nowait = backend.call_nowait
        #: libusb's asynchronous API on the trio loop (client/usb/aio.py), for
        #: real devices; None: transfers in worker threads (emulated devices,
        #: another backend, or REDIRGATE_USB_TRANSFERS=threads)
        self.aio: aio.LibusbAsync | None = None
        chosen = os.environ.get("REDIRGATE_USB_TRANSFERS")
        if (chosen or DEFAULT_TRANSFERS) == "async" or bulk_streams.wants_async(snap, chosen):
            self.aio = aio.libusb_async_for(dev)

    @property
    def transfer_path(self) -> str:
        """How transfers run, for the log: ``async`` (libusb's asynchronous API on the trio loop),
        ``inline`` (an emulated device on the loop) or ``threads``."""
        return "async" if self.aio is not None else "inline" if self._nowait is not None else "threads"

    def libusb_handle(self) -> Any:
        """The libusb device handle pyusb opened (opened now if a reset closed it)."""
        ctx = self.dev._ctx
        ctx.managed_open()
        return ctx.handle.handle

    def submit(
        self,
        kind: int,
        endpoint: int,
        buffer: Any,
        length: int,
        timeout_ms: int,
        *,
        iso_packets: int = 0,
        packet_size: int = 0,
        stream_id: int = 0,
    ) -> aio.Transfer:
        """Submit one asynchronous transfer over `buffer` (only with `aio`); wait with ``transfer.done``."""
        assert self.aio is not None
        transfer = aio.Transfer(
            self.aio,
            self.libusb_handle(),
            kind,
            endpoint,
            buffer,
            length,
            timeout_ms,
            iso_packets=iso_packets,
            packet_size=packet_size,
            owner=self,
            stream_id=stream_id,
        )
        transfer.submit()
        return transfer

    async def drain(self) -> None:
        """Cancel this device's asynchronous transfers and wait until libusb gave them all back."""
        if self.aio is not None:
            await aio.drain(self.aio, self)

    @property
    def inline_transfers(self) -> bool:
        """Whether transfers are attempted on the event loop first."""
        return self._nowait is not None

    @classmethod
    async def open(cls, dev: usb.core.Device, *, threads: int = DEFAULT_WORKER_THREADS) -> UsbDevice:
        snap = await trio.to_thread.run_sync(snapshot, dev)
        device = cls(dev, snap, threads=threads)
        log.info("%s: transfers: %s", device.name, device.transfer_path)
        try:
            await device.call(device._claim_active)
        except BaseException:
            # half-open (cancelled, or a later interface failed): give back
            # what was taken, so no kernel driver stays detached
            await device.release()
            raise
        return device

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking pyusb call in one of this device's worker threads."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- transfers: inline where the backend allows it, else in a thread ---
    # The try_* calls run on the caller's thread and exist only when
    # `inline_transfers`; each raises BlockingIOError where the device would
    # make it wait, having done nothing (OUT: ``characters_written`` bytes
    # were accepted, the rest was not).
    def try_control(
        self, requesttype: int, request: int, value: int, index: int, data_or_buffer: Any, timeout_ms: int
    ) -> int:
        """A control transfer now; IN fills `data_or_buffer` (an array) and
        returns the length, OUT returns the bytes written."""
        assert self._nowait is not None
        return int(self._nowait(self.dev.ctrl_transfer, requesttype, request, value, index, data_or_buffer, timeout_ms))

    def try_read(self, endpoint: int, buffer: array.array[int], timeout_ms: int) -> int:
        """A bulk or interrupt IN transfer into `buffer` now; returns the length."""
        assert self._nowait is not None
        return int(self._nowait(self.dev.read, endpoint, buffer, timeout_ms))

    def try_write(self, endpoint: int, data: Any, timeout_ms: int) -> int:
        """A bulk or interrupt OUT transfer now; returns the bytes accepted."""
        assert self._nowait is not None
        return int(self._nowait(self.dev.write, endpoint, data, timeout_ms))

    async def control(
        self, requesttype: int, request: int, value: int, index: int, data_or_buffer: Any, timeout_ms: int
    ) -> int:
        """`try_control` where possible, else in a worker thread."""
        args = (requesttype, request, value, index, data_or_buffer, timeout_ms)
        if self._nowait is not None:
            try:
                return self.try_control(*args)
            except BlockingIOError:
                pass  # nothing happened: do it the ordinary way
        return int(await self.call(self.dev.ctrl_transfer, *args))

    async def read(self, endpoint: int, buffer: array.array[int], timeout_ms: int) -> int:
        """`try_read` where possible, else (the device NAKs) in a worker thread."""
        if self._nowait is not None:
            try:
                return self.try_read(endpoint, buffer, timeout_ms)
            except BlockingIOError:
                pass
        return int(await self.call(self.dev.read, endpoint, buffer, timeout_ms))

    async def stream_iso_in(
        self,
        endpoint: int,
        count: int,
        packet_size: int,
        timeout_ms: int,
        deliver: Callable[[list[IsoPacketResult]], bool],
    ) -> None:
        """Iso IN transfers of up to `count` packets back to back, until the
        calling task is cancelled or `deliver` returns False.

        One worker thread runs the transfers (`read_iso_packets`) one after
        the other and passes each batch to `deliver` on the event loop
        thread (``TrioToken.run_sync_soon``: in order, and without waiting
        for it), so no frame is lost to the round trip through trio between
        two transfers.  `deliver` returns whether to go on; the thread stops
        before its next transfer once it said no, and a batch read meanwhile
        is not delivered.  An exception from `deliver` stops the thread too
        and is raised here.

        A whole-transfer error ends the thread and is raised here (as pyusb
        raises it), after every batch read before it was delivered: the
        caller handles it and calls again to go on.

        Cancellation is seen by the thread between two transfers
        (``trio.from_thread.check_cancelled``); the thread is never
        abandoned, so this returns - and nothing touches the device for the
        caller any more - at most one transfer (about 4 ms; `timeout_ms` if
        the device does not answer) after a cancel.

        The thread holds one of this device's worker threads (`limiter`)
        for as long as the stream runs, which is fine for iso streams: a
        device has a handful of iso endpoints at most, and the rest of the
        `DEFAULT_WORKER_THREADS` stay for control and bulk transfers.
        """
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        failed: list[BaseException] = []

        def hand_over(packets: list[IsoPacketResult]) -> None:
            # on the event loop thread, outside any task: must never raise
            if stop.is_set():
                return  # read after `deliver` said stop
            try:
                more = deliver(packets)
            except BaseException as exc:  # re-raised in the calling task
                failed.append(exc)
                more = False
            if not more:
                stop.set()

        def loop() -> None:
            while not stop.is_set():
                trio.from_thread.check_cancelled()
                packets = read_iso_packets(self.dev, endpoint, count, packet_size, timeout_ms)
                token.run_sync_soon(hand_over, packets)

        try:
            await trio.to_thread.run_sync(loop, limiter=self.limiter, abandon_on_cancel=False)
        finally:
            # the thread has ended, and every hand_over it queued has run:
            # run_sync_soon callbacks run in order, the report of the
            # thread's result (which wakes us) was queued after them
            stop.set()
            if failed:
                raise failed[0]  # a bug in `deliver` beats anything else

    async def write(self, endpoint: int, data: Any, timeout_ms: int, *, done: int = 0) -> int:
        """An OUT transfer of which `done` bytes (from `data`'s start) were
        already accepted by an earlier `try_write`: `try_write` where
        possible, else in a worker thread; returns all bytes accepted."""
        if done:
            data = bytes(memoryview(data).cast("B")[done:])
        elif self._nowait is not None:
            try:
                return self.try_write(endpoint, data, timeout_ms)
            except BlockingIOError as exc:
                done = exc.characters_written
                if done:
                    data = bytes(memoryview(data).cast("B")[done:])
        try:
            return done + int(await self.call(self.dev.write, endpoint, data, timeout_ms))
        except usb.core.USBError as exc:
            if done and is_timeout(exc):
                # what one transfer that timed out after a partial transfer
                # returns (pyusb's libusb1 backend: the count, no error)
                return done
            raise

    # -- blocking helpers (worker threads only) ---------------------------
    def _claim_active(self) -> None:
        config = self.snapshot.configs.get(self.snapshot.active_config)
        if config is None:
            return
        for number in config.interfaces:
            try:
                active = self.dev.is_kernel_driver_active(number)
            except (NotImplementedError, usb.core.USBError) as exc:
                log.debug("kernel driver check on %s interface %d: %s", self.name, number, exc)
                active = False
            if active:
                try:
                    self.dev.detach_kernel_driver(number)
                except (NotImplementedError, usb.core.USBError) as exc:
                    driver = interface_driver(self.snapshot.port_path, config.value, number)
                    raise DriverNotDetachedError(
                        self.name,
                        f"the kernel driver of interface {number} ({driver or 'unknown driver'}) cannot be detached: "
                        f"{exc}",
                    ) from exc
                self._detached.add(number)
            usb.util.claim_interface(self.dev, number)
            self._claimed.add(number)

    def _release_claimed(self) -> None:
        for number in sorted(self._claimed):
            try:
                usb.util.release_interface(self.dev, number)
            except usb.core.USBError as exc:
                log.debug("release %s interface %d: %s", self.name, number, exc)
        self._claimed.clear()

    def set_configuration_blocking(self, value: int) -> None:
        """Release, set, re-read, re-claim (usbredirhost_set_configuration)."""
        self._release_claimed()
        try:
            self.dev.set_configuration(value)
        finally:
            self.snapshot = dataclasses.replace(self.snapshot, active_config=self._active_value())
            self._claim_active()

    def present_blocking(self) -> bool:
        """Is the device still on the bus?  (pyusb has no hotplug events, and
        an idle device's unplug shows up in no transfer.)"""
        backend = self.dev.backend
        if is_libusb_backend(backend):
            # the current context: this device's own may never hear of an
            # unplug (client/usb/libusb.py); bus and address name it there
            backend = libusb_backend()
            found = usb.core.find(find_all=True, backend=backend) or []
            return any((d.bus, d.address) == (self.dev.bus, self.dev.address) for d in found)
        found = usb.core.find(find_all=True, backend=backend) or []
        return any(other == self.dev for other in found)

    def reset_blocking(self, alts: dict[int, int]) -> None:
        """Reset the device, then put pyusb's view back: pyusb's reset closes
        the handle, releasing every interface and forgetting the alt
        settings, which libusb and the OS keep across a reset (usbredirhost
        relies on that, protocol reference §4.8)."""
        self.dev.reset()
        for number in sorted(self._claimed):
            usb.util.claim_interface(self.dev, number)
            if alts.get(number, 0):
                self.dev.set_interface_altsetting(number, alts[number])

    def _active_value(self) -> int:
        try:
            return int(self.dev.get_active_configuration().bConfigurationValue)
        except usb.core.USBError:
            return 0

    def release_blocking(self) -> None:
        if self._released:
            return
        self._released = True
        self._release_claimed()
        for number in sorted(self._detached):
            try:
                self.dev.attach_kernel_driver(number)
            except (NotImplementedError, usb.core.USBError) as exc:
                log.info("could not re-attach the kernel driver of %s interface %d: %s", self.name, number, exc)
        self._detached.clear()
        usb.util.dispose_resources(self.dev)

    async def release(self) -> None:
        """Give the device back to the thin client (shielded: runs on cancel too), after its
        asynchronous transfers have come back from libusb."""
        with trio.CancelScope(shield=True):
            try:
                await self.drain()
                await trio.to_thread.run_sync(self.release_blocking)
            finally:
                released, self.on_release = self.on_release, None
                if released is not None:
                    released()
