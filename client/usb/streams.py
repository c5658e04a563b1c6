"""Endpoint streams: iso IN/OUT, interrupt receiving and bulk receiving.

A stream is a task per endpoint that keeps reading (or writing) until the
guest stops it, the device goes, or a stall cannot be cleared.  IN streams
push their packets through `Outbox.offer_stream`, which drops them the way
usbredirhost does when the guest reads too slowly; a dropped packet still
consumes its id, so the guest sees the gap.  Ids restart at 0 whenever the
stream (re)starts, including after a stall recovery (protocol reference §4.6).

Iso OUT packets the guest sends faster than the device takes them are
dropped (the reference's half-full hysteresis); the engine counts every drop
per endpoint, logs them at most once per interval and whatever is left when
the stream ends, with one line on what the guest sent and what became of it
(`HostEngine.stream_drops`, the client's metrics).  A real device on
libusb's asynchronous API (client/usb/aio.py; `ASYNC_STREAMS`, on unless
REDIRGATE_USB_ASYNC_STREAMS=0) runs iso OUT in client/usb/iso_out.py (each
packet copied into its libusb transfer as it is parsed, up to the guest's
no_urbs transfers of pkts_per_urb packets, as usbredirhost does) and
interrupt/bulk receiving in `_AsyncReceiver`; otherwise, as described next,
in worker threads (iso OUT one packet per transfer, `Stream.queue_out`).

pyusb transfers are synchronous, so a stream has one transfer in flight at a
time.  Interrupt and bulk receiving read one transfer per worker-thread call,
in slices so a stop takes effect within `SLICE_MS`.  Iso IN reads a batch of
packets per transfer, about 4 ms of the endpoint's schedule (32 at 125 µs, 4
at 1 ms; at most the guest's pkts_per_urb x no_urbs), through
client/usb/iso.py, which keeps every packet's own length and status (pyusb's
read returns only their sum), and the transfers run back to back in one
worker thread for the life of the stream (`UsbDevice.stream_iso_in`): each
batch is handed to the event loop, where its packets are offered one by one,
each with its own id, while the thread already reads the next one.  A frame
during which no transfer runs is lost, and going back to trio between two
transfers (return from the thread, offer 32 packets, start a thread call)
cost a high-speed stream a fifth of its microframes.  The reader stops
between two transfers when the stream task is cancelled (a stop, a reset,
an unplug, the connection closing), and the task waits for it, so no thread
reads for a stream that is gone; a stop is therefore seen at most one batch
late.  A whole-transfer error ends the reader; the task handles it (timeout,
stall, device gone, too many errors) and starts a new one.  A batch read by a
stream that was stopped meanwhile is dropped, as a single packet was.
On an emulated device with inline transfers (client/usb/device.py) an
interrupt or bulk-receiving read that the device answers at once runs on the
event loop, and the stream passes a checkpoint before its next read, so a
device that always has data cannot hold the loop and a stop never loses a
packet already read; iso reads always go to a thread (the emulation keeps
the (micro)frame schedule by sleeping).
A read already running when an interrupt or bulk-receiving stream is
stopped (by the guest, a reset or a configuration change) may still return
data, where libusb would have cancelled the transfer at once; that data is
kept and sent first when a stream is started on the endpoint again (which
waits for the old read to end), so a keyboard does not lose a key press.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
import usb.backend.libusb1 as libusb1
import usb.core

from redirgate.client.usb import aio
from redirgate.client.usb.errors import USB_CALL_ERRORS, status_for
from redirgate.client.usb.iso import IsoPacketResult, iso_batch_packets
from redirgate.client.usb.iso_out import ISO_TIMEOUT_MS, IsoOutWriter
from redirgate.client.usb.transfers import in_buffer
from redirgate.proto.usbredir import EndpointType, Status
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.host import stream_status
from redirgate.proto.usbredir.host_events import StreamRestarted

if TYPE_CHECKING:
    from redirgate.client.usb.device import UsbDevice
    from redirgate.client.usb.engine import HostEngine

__all__ = ["ISO_TIMEOUT_MS", "Stream", "stream_status"]

log = logging.getLogger(__name__)

#: Streams on libusb's asynchronous API (`_AsyncReceiver`, client/usb/iso_out.py) for
#: devices whose transfers take it (REDIRGATE_USB_ASYNC_STREAMS=0: the worker-thread path).
ASYNC_STREAMS = os.environ.get("REDIRGATE_USB_ASYNC_STREAMS", "1") == "1"

SLICE_MS = 500
#: iso OUT packets dropped in this process (the device behind the guest): the client's metrics read it
dropped_totals: dict[str, int] = {"iso_out": 0}
#: a stream that fails this many times in a row is stopped with a stall status
MAX_CONSECUTIVE_ERRORS = 20
#: pause after a failed transfer, times the run of failures (no busy loop)
ERROR_BACKOFF_S = 0.005


@dataclass
class Stream:
    """One running stream; `scope` cancels its task."""

    kind: EndpointType
    endpoint: int
    packet_size: int
    pkts_per_transfer: int
    transfers: int
    scope: trio.CancelScope
    #: iso OUT: packets from the guest waiting to be written
    out_queue: deque[bytes] | None = None
    out_ready: trio.Event | None = None
    started: bool = False
    drop_counter: int = 0
    #: the host state's name for it (`StartStream.stream`)
    handle: int = 0
    #: iso OUT: packets the guest sent, the device took, the device failed, and dropped (the device behind)
    received: int = 0
    written: int = 0
    failed: int = 0
    dropped: int = 0
    #: iso OUT on libusb's asynchronous API: takes each packet as it is parsed (client/usb/iso_out.py)
    writer: IsoOutWriter | None = None

    @property
    def capacity(self) -> int:
        return self.pkts_per_transfer * self.transfers

    def queue_out(self, data: m.Buffer) -> bool:
        """Accept an iso OUT packet from the guest (a view into the parser's buffer, copied here);
        False if it was dropped (the guest is ahead of the device: fall back to half full)."""
        if self.writer is not None:
            return self.writer.put(data)
        assert self.out_queue is not None and self.out_ready is not None
        self.received += 1
        if self.drop_counter:
            self.drop_counter -= 1
            self.dropped += 1
            return False
        if len(self.out_queue) >= self.capacity:
            self.drop_counter = self.capacity // 2
            self.dropped += 1
            return False
        self.out_queue.append(bytes(data))
        if self.started or len(self.out_queue) >= max(1, self.capacity // 2):
            self.started = True
            self.out_ready.set()
        return True


async def run_in_stream(engine: HostEngine, stream: Stream) -> None:
    """Read an IN endpoint until cancelled and forward what arrives."""
    device = engine.device
    if device is None:
        return
    reader = _InStream(engine, stream, device)
    for data in engine.late_stream_data.pop(stream.endpoint, []):
        reader.offer(Status.SUCCESS, data)
    if stream.kind == EndpointType.ISO:
        await reader.run_iso()
    elif device.aio is not None and ASYNC_STREAMS:
        await _AsyncReceiver(reader).run()
    else:
        await reader.run_receiving()


class _InStream:
    """The state of one IN stream's task: the run of failed transfers (the
    packet ids are the host state's, `HostState.stream_message`)."""

    def __init__(self, engine: HostEngine, stream: Stream, device: UsbDevice) -> None:
        self.engine = engine
        self.stream = stream
        self.device = device
        self.iso = stream.kind == EndpointType.ISO
        self.iso_ref = stream.capacity * stream.packet_size if self.iso else 0
        self.failures = 0

    def offer(self, status: int, data: m.Buffer) -> None:
        """One packet to the guest, with the stream's next id from the host
        state (a dropped one uses it up too)."""
        stream = self.stream
        message = self.engine.host.stream_message(stream.handle, status, data)
        if message is not None:  # else stopped meanwhile
            self.engine.offer_stream(stream, message, self.iso_ref)

    def current(self) -> bool:
        """Whether the stream still owns its endpoint (not stopped meanwhile)."""
        return self.engine.streams.get(self.stream.endpoint) is self.stream

    async def run_iso(self) -> None:
        """Iso IN: batches back to back in one worker thread
        (`UsbDevice.stream_iso_in`), restarted after an error it survives."""
        stream = self.stream
        batch = _iso_batch(self.engine, stream)
        while True:
            try:
                await self.device.stream_iso_in(
                    stream.endpoint, batch, stream.packet_size, ISO_TIMEOUT_MS, self._deliver
                )
            except USB_CALL_ERRORS as exc:
                if await self._failed(exc):
                    continue
            return  # stopped, or (``_deliver`` said no) stopped meanwhile

    def _deliver(self, packets: list[IsoPacketResult]) -> bool:
        """One batch from the reading thread, on the event loop thread."""
        if not self.current():
            # stopped while this batch was read (the thread is not
            # interruptible): dropped, like the transfers libusb cancels
            return False
        self.failures = 0
        for status, data in packets:  # each its own id, status and length
            self.offer(status, data)
        return True

    async def run_receiving(self) -> None:
        """Interrupt or bulk receiving: one transfer at a time."""
        device = self.device
        dev = device.dev
        endpoint = self.stream.endpoint
        size = self.stream.packet_size
        inline = device.inline_transfers
        yielded = True
        while True:
            if not yielded:
                await trio.lowlevel.checkpoint()  # before the read: a stop here loses nothing
            yielded = True
            buf = in_buffer(size)
            n = -1
            try:
                if inline:
                    try:
                        n = device.try_read(endpoint, buf, SLICE_MS)
                        yielded = False
                    except BlockingIOError:
                        pass  # the device NAKs: wait in a thread
                if n < 0:
                    n = await device.call(dev.read, endpoint, buf, SLICE_MS)
            except USB_CALL_ERRORS as exc:
                if await self._failed(exc):
                    continue
                return
            self.failures = 0
            if not self.current():
                # stopped while this read ran: kept for the next stream
                if n:
                    self.engine.late_stream_data.setdefault(endpoint, []).append(bytes(buf[:n]))
                return
            self.offer(Status.SUCCESS, memoryview(buf)[:n])

    async def _failed(self, exc: BaseException) -> bool:
        """A transfer (or an iso batch) failed: report it as usbredirhost
        does; False when the stream has ended (it was told so)."""
        engine = self.engine
        stream = self.stream
        status, gone = status_for(exc)
        if gone:
            engine.device_lost(f"stream on {stream.endpoint:#04x}: {exc}")
            return False
        if status == Status.TIMEOUT:
            if self.iso:
                # an iso transfer that timed out is reported like one
                # that failed: one packet with the status, no data
                self.offer(status, b"")
            return True
        if status == Status.STALL:
            try:
                await self.device.call(self.device.dev.clear_halt, stream.endpoint)
            except USB_CALL_ERRORS as clear_exc:
                log.info("%s: stall on %#04x not cleared: %s", engine.peer, stream.endpoint, clear_exc)
                engine.stream_stalled(stream)
                return False
            self.engine.feed_nowait(StreamRestarted(stream.handle))  # its ids start again
            return True
        self.offer(status, b"")
        self.failures += 1
        if self.failures >= MAX_CONSECUTIVE_ERRORS:
            # a persistent error: stop instead of flooding the guest
            log.warning(
                "%s: stream on %#04x stopped after %d errors: %s", engine.peer, stream.endpoint, self.failures, exc
            )
            engine.stream_stalled(stream)
            return False
        await trio.sleep(ERROR_BACKOFF_S * self.failures)
        return True


def _iso_batch(engine: HostEngine, stream: Stream) -> int:
    """Packets per iso IN transfer for this stream: about 4 ms of its
    endpoint's schedule (client/usb/iso.py), never more than the guest
    buffers (pkts_per_urb x no_urbs), so one batch alone cannot reach the
    outbox's drop threshold."""
    entry = engine.endpoints.get(stream.endpoint)
    if entry is None or engine.device is None:
        return 1
    return iso_batch_packets(entry[0].interval, engine.device.snapshot.speed, stream.capacity)


async def run_iso_out_stream(engine: HostEngine, stream: Stream) -> None:
    """Write the guest's iso OUT packets once half the slots are filled."""
    device = engine.device
    assert stream.out_queue is not None and stream.out_ready is not None
    if device is None:
        return
    if stream.writer is not None:
        # the engine hands each packet to the writer as it is parsed; this task only marks the stream's life
        try:
            await trio.sleep_forever()
        finally:
            stream.writer.close()
    dev = device.dev
    reported = False
    while True:
        if not stream.out_queue:
            stream.started = False  # under-run: fill half again, then start
            stream.out_ready = trio.Event()
            await stream.out_ready.wait()
            continue
        data = stream.out_queue.popleft()
        try:
            await device.call(dev.write, stream.endpoint, data, ISO_TIMEOUT_MS)
            stream.written += 1
            reported = False
        except USB_CALL_ERRORS as exc:
            stream.failed += 1
            status, gone = status_for(exc)
            if gone:
                engine.device_lost(f"iso OUT on {stream.endpoint:#04x}: {exc}")
                return
            if not reported:  # at most one status per failing run
                reported = True
                await engine.send(m.IsoStreamStatus(status, stream.endpoint))


#: a failed libusb transfer's status as the errno `status_for` reads (pyusb's own table turns a stall into EIO)
_TRANSFER_ERRNO = {
    libusb1.LIBUSB_TRANSFER_STALL: errno.EPIPE,
    libusb1.LIBUSB_TRANSFER_TIMED_OUT: errno.ETIMEDOUT,
    libusb1.LIBUSB_TRANSFER_OVERFLOW: errno.EOVERFLOW,
}


class _AsyncReceiver:
    """Interrupt or bulk receiving on libusb's asynchronous API: the stream's
    no_transfers (interrupt: `proto.usbredir.host.INTERRUPT_TRANSFERS`) reads in flight at once,
    each resubmitted as soon as its data is offered, in order, as
    usbredirhost does.  On a stop the reads are cancelled; what one brought
    before is kept for the next stream on the endpoint, like the thread
    path's late read."""

    def __init__(self, reader: _InStream) -> None:
        self.reader = reader
        self.inflight: deque[aio.Transfer] = deque()
        self.kind = aio.INTERRUPT if reader.stream.kind == EndpointType.INTERRUPT else aio.BULK

    def _submit(self) -> None:
        stream = self.reader.stream
        device = self.reader.device
        buf = bytearray(stream.packet_size)
        self.inflight.append(device.submit(self.kind, stream.endpoint, buf, len(buf), 0))

    async def run(self) -> None:
        reader = self.reader
        stream = reader.stream
        try:
            while True:
                try:
                    while len(self.inflight) < max(1, stream.transfers):
                        self._submit()
                except USB_CALL_ERRORS as exc:
                    if not self.inflight:
                        if await reader._failed(exc):
                            continue
                        return
                transfer = self.inflight[0]
                await transfer.done.wait()
                self.inflight.popleft()
                status = transfer.status
                if status == libusb1.LIBUSB_TRANSFER_COMPLETED:
                    reader.failures = 0
                    reader.offer(Status.SUCCESS, transfer.data())
                    continue
                if status == libusb1.LIBUSB_TRANSFER_NO_DEVICE:
                    reader.engine.device_lost(f"stream on {stream.endpoint:#04x}: no device")
                    return
                # a stall or an error: the reads behind it go too, then as the thread path does
                await self._cancel_inflight()
                error = usb.core.USBError(
                    libusb1._str_transfer_error.get(status, "Transfer failed"),
                    None,
                    _TRANSFER_ERRNO.get(status, errno.EIO),
                )
                if not await reader._failed(error):
                    return
        finally:
            with trio.CancelScope(shield=True):
                await self._cancel_inflight()

    async def _cancel_inflight(self) -> None:
        """Cancel the reads in flight, wait for them (bounded), keep what they brought."""
        pending = list(self.inflight)
        self.inflight.clear()
        for transfer in pending:
            transfer.cancel()
        with trio.move_on_after(aio.CANCEL_GRACE_S):
            for transfer in pending:
                await transfer.done.wait()
        late = [bytes(t.data()) for t in pending if t.finished and t.actual_length]
        if late:
            self.reader.engine.late_stream_data.setdefault(self.reader.stream.endpoint, []).extend(late)
