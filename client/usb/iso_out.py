"""Isochronous OUT on libusb's asynchronous API, inline on the reader's path, as usbredirhost does it.

The guest (QEMU's usb-redir) sends one iso packet per (micro)frame and
expects nothing back.  usbredirhost keeps the stream's `transfers`
(no_urbs) libusb transfers of `pkts_per_transfer` packets each: every
packet is copied into the transfer being filled the moment it is parsed,
a full transfer is submitted at once, and the device is fed from the
transfers in flight while the next one fills.  `IsoOutWriter` does the
same, with nothing between the parser and libusb's buffer:

* `put` (called by the engine for each parsed packet, on the loop thread,
  while the packet's bytes are still in the parser's buffer) copies the
  packet to its place in the transfer being filled (packet i at offset
  i x packet_size, libusb's layout) - the one copy on the way - and
  submits the transfer when it is full; no task switch, no queue of
  per-packet objects, no worker thread;
* the stream starts once half its transfers are filled (the reference's
  pre-fill), and starts over the same way after an under-run (nothing in
  flight, nothing full);
* the stream's transfers (buffer, libusb struct) are made once, as it
  first needs them, and reused for its life, as usbredirhost's are;
* completions come back through the transfer's ``on_done`` (on the loop
  thread, from the pump or `put`): each packet's status is counted, a
  failure is reported to the guest once per failing run
  (``iso_stream_status``), a device gone ends the device session;
* a packet is dropped only when every transfer is in flight or full
  (the device behind the guest) - after libusb was asked, without
  waiting, for what has completed meanwhile - and then, as the reference
  does, the next half of the buffer's packets too, so the stream falls
  back to half full instead of dropping every other packet.  Every drop
  is counted on the stream (`Stream.dropped`) and by the engine, which
  logs them (`HostEngine` counts and logs; `stream_drops`, metrics).

Threads: everything here runs on the trio loop thread (``Transfer.finish``
calls ``on_done`` there).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import usb.backend.libusb1 as libusb1

from redirgate.client.usb import aio
from redirgate.client.usb.errors import USB_CALL_ERRORS, status_for
from redirgate.proto.usbredir import Status
from redirgate.proto.usbredir import messages as m

if TYPE_CHECKING:
    from redirgate.client.usb.device import UsbDevice
    from redirgate.client.usb.engine import HostEngine
    from redirgate.client.usb.streams import Stream

__all__ = ["ISO_TIMEOUT_MS", "IsoOutWriter"]

log = logging.getLogger(__name__)

#: usbredirhost.c ISO_TIMEOUT
ISO_TIMEOUT_MS = 1000
_COMPLETED = libusb1.LIBUSB_TRANSFER_COMPLETED
_NO_DEVICE = libusb1.LIBUSB_TRANSFER_NO_DEVICE


class IsoOutWriter:
    """One iso OUT stream's transfers (see the module docstring).

    Its `slots` libusb transfers, each over its own buffer, are made as the
    stream first needs them and reused for the stream's life (filled,
    submitted, given back, filled again), as usbredirhost allocates its
    stream's transfers once: no buffer, libusb struct or ctypes view is made
    per batch of packets."""

    def __init__(self, engine: HostEngine, stream: Stream, device: UsbDevice) -> None:
        assert device.aio is not None
        self.engine = engine
        self.stream = stream
        self.device = device
        self.aio = device.aio
        self.size = stream.packet_size
        self.per_transfer = max(1, stream.pkts_per_transfer)
        #: transfers the stream may have in flight or filled at once (at least 2)
        self.slots = max(2, stream.transfers)
        #: every transfer made so far (at most `slots`), and those neither filling, full nor in flight
        self._made: list[aio.Transfer] = []
        self._idle: list[aio.Transfer] = []
        #: the transfer being filled, its buffer and its packets' lengths
        self._filling: aio.Transfer | None = None
        self._buf = bytearray()
        self._lengths: list[int] = []
        #: full transfers waiting for the stream to start (or for a free slot)
        self._full: deque[tuple[aio.Transfer, list[int]]] = deque()
        self.inflight: set[aio.Transfer] = set()
        self.started = False
        self.drop_counter = 0
        #: a failure was reported to the guest and nothing succeeded since
        self._reported = False
        self.closed = False

    # ------------------------------------------------------------ packets in
    def put(self, data: m.Buffer) -> bool:
        """Take one packet from the guest (copied now); False if it was dropped."""
        stream = self.stream
        stream.received += 1
        if self.drop_counter:
            self.drop_counter -= 1
            stream.dropped += 1
            return False
        if self._filling is None:
            if not self._idle and len(self._made) >= self.slots:
                # no transfer to fill: take back what the device finished meanwhile
                self.aio.handle_events()
                if not self._idle:
                    self.drop_counter = (self.slots * self.per_transfer) // 2
                    stream.dropped += 1
                    return False
            if not self._take():
                stream.dropped += 1
                return False
        lengths = self._lengths
        n = len(data)
        start = len(lengths) * self.size
        self._buf[start : start + n] = data
        lengths.append(n)
        if len(lengths) == self.per_transfer:
            assert self._filling is not None
            self._full.append((self._filling, lengths))
            self._filling = None
            self._lengths = []
            if self.started or len(self._full) >= self.slots // 2:
                self.started = True
                self._submit_full()
        return True

    def _take(self) -> bool:
        """Start filling an idle transfer, made now if the stream has fewer than `slots`."""
        if self._idle:
            transfer = self._idle.pop()
        else:
            buf = bytearray(self.per_transfer * self.size)
            try:
                transfer = aio.Transfer(
                    self.aio,
                    self.device.libusb_handle(),
                    aio.ISO,
                    self.stream.endpoint,
                    buf,
                    len(buf),
                    ISO_TIMEOUT_MS,
                    iso_packets=self.per_transfer,
                    packet_size=self.size,
                    owner=self.device,
                    keep=True,
                )
            except USB_CALL_ERRORS as exc:
                status, gone = status_for(exc)
                self._failed(status, gone, str(exc))
                return False
            transfer.on_done = lambda t=transfer: self._done(t)
            self._made.append(transfer)
        self._filling = transfer
        self._buf = transfer.buffer
        return True

    def _submit_full(self) -> None:
        while self._full and not self.closed:
            transfer, lengths = self._full.popleft()
            try:
                transfer.set_iso_lengths(lengths)
                transfer.submit()
            except USB_CALL_ERRORS as exc:
                status, gone = status_for(exc)
                self.stream.failed += len(lengths)
                self._idle.append(transfer)
                self._failed(status, gone, str(exc))
                continue
            self.inflight.add(transfer)

    # ----------------------------------------------------------- completions
    def _done(self, transfer: aio.Transfer) -> None:
        """libusb gave `transfer` back (loop thread)."""
        self.inflight.discard(transfer)
        if self.closed:
            transfer.close()
            return
        stream = self.stream
        status = transfer.status
        if status == _COMPLETED:
            for packet_status, _length in transfer.iso_results:
                if packet_status == _COMPLETED:
                    stream.written += 1
                else:
                    stream.failed += 1
            self._reported = False
        else:
            stream.failed += len(transfer.iso_results)
            self._failed(aio.packet_status(status), status == _NO_DEVICE, f"libusb status {status}")
            if self.closed:
                transfer.close()
                return
        self._idle.append(transfer)
        if self._full:
            self._submit_full()
        elif not self.inflight:
            self.started = False  # under-run: fill half the transfers again, then start

    def _failed(self, status: int, gone: bool, reason: str) -> None:
        stream = self.stream
        if gone:
            self.closed = True
            self.engine.device_lost(f"iso OUT on {stream.endpoint:#04x}: {reason}")
            return
        if status == Status.CANCELLED:
            return  # a stop, a reset: nobody to tell
        if not self._reported:  # at most one status per failing run
            self._reported = True
            self.engine.send_nowait(m.IsoStreamStatus(status, stream.endpoint))

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """The stream stops: cancel what is in flight (the device's drain waits for libusb's answers);
        every transfer's struct is freed now, or as libusb gives it back."""
        self.closed = True
        for transfer in list(self.inflight):
            transfer.cancel()
        for transfer in self._made:
            transfer.close()  # in flight: freed when it comes back
        self._made.clear()
        self._idle.clear()
        self._full.clear()
        self._filling = None
        self._lengths = []
