"""Isochronous IN: a batch of packets in one transfer, each with its own length and status.

A usbredir iso_packet carries one packet's own status and length, but
pyusb's ``Device.read`` on an iso endpoint submits one libusb transfer of N
packets and returns only the sum of their actual lengths (usb/backend/
libusb1.py ``_IsoTransferHandler``), so the host engine could only read one
packet per call - a worker-thread round trip (~100 µs) per packet, against
a 125 µs high-speed microframe.  `read_iso_packets` reads up to N packets in
one call and returns one ``(Status, bytes)`` per packet:

1. a backend that offers ``iso_read_packets(dev_handle, ep, intf, count,
   packet_size, timeout)`` (client/virtual's ``VirtualBackend``) does it
   itself and returns (libusb transfer status, payload) per packet;
2. pyusb's libusb1 backend: one libusb iso transfer through pyusb's own
   ctypes bindings (`_Libusb1IsoIn`, modelled on ``_IsoTransferHandler``),
   then every packet descriptor's ``status`` and ``actual_length``; if the
   transfer cannot be set up (pyusb internals changed), 3.;
3. anything else: one ``dev.read`` per packet, all in this one call (a
   failed packet then shows only as an error of its read; see
   `_read_one_by_one`).

Per-packet libusb statuses map to usbredir ones as usbredirhost.c's
``libusb_status_or_error_to_redir_status`` does (`packet_status`); the
mapping in client/usb/errors.py does not fit, it works on exceptions, where
pyusb has already turned a STALL or CANCELLED transfer into EIO / EAGAIN.
A failed packet has no data.  An error of the whole transfer is raised as
pyusb raises it (``usb.core.USBError``), so callers handle it as before.

Packet i of a libusb transfer sits at offset i * packet_size of the buffer
whatever the lengths of the packets before it (libusb's layout).

Everything here blocks: call it in a worker thread (`UsbDevice.read_iso`).
"""

from __future__ import annotations

import logging
from ctypes import POINTER, c_ubyte, cast
from typing import Any

import usb.backend.libusb1 as libusb1
import usb.core

from redirgate.client.usb.aio import packet_status
from redirgate.client.usb.errors import USB_CALL_ERRORS
from redirgate.client.usb.transfers import in_buffer
from redirgate.proto.usbredir import Speed, Status

__all__ = [
    "BATCH_SCHEDULE_US",
    "MAX_BATCH_PACKETS",
    "IsoPacketResult",
    "iso_batch_packets",
    "iso_period_us",
    "packet_status",
    "read_iso_packets",
]

log = logging.getLogger(__name__)

IsoPacketResult = tuple[Status, bytes]

#: a batch covers about this much of the endpoint's schedule
BATCH_SCHEDULE_US = 4000
#: QEMU's usb-redir asks for at most 32 packets per URB
MAX_BATCH_PACKETS = 32

_fallback_logged = False
#: libusb transfers whose event handling failed before their callback: kept
#: alive (buffer, callback) since libusb may still complete them
_IN_FLIGHT: list[_Libusb1IsoIn] = []


def iso_period_us(interval: int, speed: Speed) -> int:
    """µs between an iso endpoint's packets: 2**(bInterval-1) microframes
    (125 µs) at high speed or faster, frames (1 ms) below (USB 2.0 9.6.6)."""
    unit = 125 if speed in (Speed.HIGH, Speed.SUPER) else 1000
    return unit << (min(max(interval, 1), 16) - 1)


def iso_batch_packets(interval: int, speed: Speed, limit: int = MAX_BATCH_PACKETS) -> int:
    """Packets per batch: about `BATCH_SCHEDULE_US` of schedule, at least 1,
    at most `MAX_BATCH_PACKETS` and `limit` (32 at 125 µs, 4 at 1 ms)."""
    return max(1, min(limit, MAX_BATCH_PACKETS, BATCH_SCHEDULE_US // iso_period_us(interval, speed)))


def read_iso_packets(
    dev: usb.core.Device, endpoint: int, count: int, packet_size: int, timeout_ms: int
) -> list[IsoPacketResult]:
    """Read up to `count` iso IN packets of at most `packet_size` bytes from
    `endpoint` in one transfer (see the module docstring); blocking."""
    ctx = getattr(dev, "_ctx", None)
    if ctx is None:
        return _read_one_by_one(dev, endpoint, count, packet_size, timeout_ms)
    # what Device.read does: find the endpoint in the active setting, claim
    # its interface (opens the handle), then call the backend with the handle
    intf, ep = ctx.setup_request(dev, endpoint)
    backend = ctx.backend
    handle = ctx.handle
    address = ep.bEndpointAddress
    own = getattr(backend, "iso_read_packets", None)
    if own is not None:
        packets = own(handle, address, intf.bInterfaceNumber, count, packet_size, timeout_ms)
        return [
            (Status.SUCCESS, bytes(data))
            if status == libusb1.LIBUSB_TRANSFER_COMPLETED
            else (packet_status(status), b"")
            for status, data in packets
        ]
    if isinstance(backend, libusb1._LibUSB):
        try:
            transfer = _Libusb1IsoIn(handle, address, count, packet_size, timeout_ms)
        except Exception as exc:  # pyusb internals not as expected: the slow way
            _log_fallback(exc)
        else:
            try:
                return transfer.run(backend.ctx)
            finally:
                transfer.close()
    return _read_one_by_one(dev, endpoint, count, packet_size, timeout_ms)


def _log_fallback(exc: BaseException) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        log.warning("iso IN through libusb cannot be batched (%r): reading one packet per transfer", exc)


def _read_one_by_one(dev: Any, endpoint: int, count: int, packet_size: int, timeout_ms: int) -> list[IsoPacketResult]:
    """`count` one-packet reads (each packet keeps its length; a failed
    packet is an error of its read).  An error on the first read is raised;
    after that the packets read so far are returned and the next call meets
    the error again."""
    results: list[IsoPacketResult] = []
    for _ in range(count):
        buf = in_buffer(packet_size)
        try:
            n = dev.read(endpoint, buf, timeout_ms)
        except USB_CALL_ERRORS:
            if not results:
                raise
            break
        results.append((Status.SUCCESS, memoryview(buf)[:n].tobytes()))
    return results


class _Libusb1IsoIn:
    """One iso IN transfer of `count` packets through pyusb's libusb1
    bindings, keeping every packet's status and length.

    Mirrors pyusb's ``_IsoTransferHandler`` (alloc, fill, set the packet
    lengths, submit, handle events until the callback ran), but sizes the
    packets by the caller's `packet_size` (usbredirhost uses the endpoint's
    max packet size, which the engine passes) and reads the descriptors."""

    def __init__(self, dev_handle: Any, ep: int, count: int, packet_size: int, timeout: int) -> None:
        lib = libusb1._lib
        if lib is None:
            raise RuntimeError("libusb is not loaded")
        self._lib = lib
        self._size = packet_size
        self._done = False
        self._submitted = False
        self._buffer = in_buffer(count * packet_size)
        address, length = self._buffer.buffer_info()
        # libusb calls this back from C: keep the ctypes object alive here
        # (pyusb relies on the transfer struct to hold it)
        self._callback = libusb1._libusb_transfer_cb_fn_p(self._complete)
        self.transfer = lib.libusb_alloc_transfer(count)
        if not self.transfer:
            raise MemoryError(f"libusb_alloc_transfer({count}) failed")
        try:
            lib.libusb_fill_iso_transfer(
                self.transfer,
                dev_handle.handle,
                ep,
                cast(address, POINTER(c_ubyte)),
                length,
                count,
                self._callback,
                None,
                timeout,
            )
            lib.libusb_set_iso_packet_lengths(self.transfer, packet_size)
        except BaseException:
            self.close()
            raise

    def _complete(self, transfer: Any) -> None:
        self._done = True

    def close(self) -> None:
        """Free the transfer, unless libusb may still hold it (submitted and
        never called back: event handling failed); that one is kept, with
        its buffer and callback, rather than freed under libusb's feet."""
        if self.transfer is None:
            return
        if self._submitted and not self._done:
            _IN_FLIGHT.append(self)
            return
        self._lib.libusb_free_transfer(self.transfer)
        self.transfer = None

    def run(self, ctx: Any) -> list[IsoPacketResult]:
        lib = self._lib
        libusb1._check(lib.libusb_submit_transfer(self.transfer))
        self._submitted = True
        while not self._done:
            libusb1._check(lib.libusb_handle_events(ctx))
        transfer = self.transfer.contents
        status = int(transfer.status)
        if status != libusb1.LIBUSB_TRANSFER_COMPLETED:
            # as pyusb's iso_read raises it, so callers see the same error
            raise usb.core.USBError(
                libusb1._str_transfer_error.get(status, "Transfer failed"),
                status,
                libusb1._transfer_errno.get(status),
            )
        view = memoryview(self._buffer)
        size = self._size
        results: list[IsoPacketResult] = []
        for i, packet in enumerate(libusb1._get_iso_packet_list(transfer)):
            if packet.status == libusb1.LIBUSB_TRANSFER_COMPLETED:
                start = i * size
                results.append((Status.SUCCESS, view[start : start + min(packet.actual_length, size)].tobytes()))
            else:
                results.append((packet_status(packet.status), b""))
        return results
