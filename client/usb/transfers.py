"""Ordinary transfers (control, bulk, interrupt OUT): one FIFO per endpoint.

Requests to one endpoint must reach the device in the order the guest sent
them (a mass-storage CBW before its data), so each endpoint gets a queue and
one task that runs its requests one at a time in a worker thread; different
endpoints run in parallel.  Every request reports exactly once
(a `TransferDone` for the host state, `HostEngine.transfer_done`), a
cancelled one too: the state has answered the guest already (`cancelled`, at
once, as usbredirhost does) and sends nothing more for it.

Transfers go through `UsbDevice`: in a worker thread, or for an emulated
device that completes them at once, on the event loop (client/usb/device.py).
For such a device `submit` goes one step further: a request whose endpoint
queue is idle runs right there, in the reader's task, and its reply is
queued before the next message is parsed, which saves the wake-up of the
queue's task (a pass through trio's scheduler) per transfer.  Only a request
the device makes wait goes to the queue's task, which runs it as usual (an
OUT transfer the device took part of continues from there).  The order on
an endpoint is unchanged: the fast path is taken only while the endpoint's
task is idle and its queue empty.

A real device whose libusb offers the asynchronous API (client/usb/aio.py)
takes neither: `submit` hands each request to libusb at once, on the loop
thread, in the guest's order, so the guest's consecutive requests on an
endpoint are in flight together; the endpoint's task answers them in order
as they complete.  Bulk and interrupt transfers then have no timeout, IN or
OUT, as usbredirhost gives them none (a guest's cancel cancels the libusb
transfer, and whatever it brought is dropped, as usbredirhost does: the
guest was told it was cancelled).

On the worker-thread path, IN transfers run in slices of `SLICE_MS`: a slice that times out is retried
unless the request was cancelled, which is how a cancelled read gives its
thread back without abandoning it.  A slice already running when its request
is cancelled may still return data (libusb would have unlinked the URB at
once); that data is kept for the next IN request on the endpoint instead of
being lost.
"""

from __future__ import annotations

import array
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
import usb.backend.libusb1 as libusb1
import usb.core

from redirgate.client.usb import aio
from redirgate.client.usb.aio import control_setup, packet_status
from redirgate.client.usb.errors import USB_CALL_ERRORS, is_timeout, status_for
from redirgate.proto.usbredir import Status
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.host_events import TransferDone

if TYPE_CHECKING:
    from redirgate.client.usb.aio import Transfer
    from redirgate.client.usb.device import UsbDevice
    from redirgate.client.usb.engine import HostEngine

__all__ = ["CONTROL_TIMEOUT_MS", "SLICE_MS", "EndpointQueues", "Request"]

log = logging.getLogger(__name__)

#: Set by the client's metrics when they are on (client/metrics.py): called
#: with each data request's seconds from submission to its reply.  None (the
#: default) costs one test per request and one per reply.
transfer_observer: Callable[[float], None] | None = None

#: usbredirhost.c CTRL_TIMEOUT
CONTROL_TIMEOUT_MS = 5000
#: IN transfers wait in slices this long, so cancellation takes effect
SLICE_MS = 500
#: OUT transfers in a worker thread: one attempt; the reference waits forever, we report a timeout
OUT_TIMEOUT_MS = 30_000


_ZERO = array.array("B", b"\0")


def in_buffer(size: int) -> array.array[int]:
    """A `size`-byte array for pyusb to read into (repeating one zero byte
    is several times cheaper than ``array("B", bytes(size))``)."""
    return _ZERO * size


def out_data(data: m.Buffer) -> array.array[int]:
    """OUT data copied out of the parser's buffer (it is reused) straight
    into the array pyusb hands to libusb: one copy, where bytes() and then
    pyusb's own conversion to an array made two."""
    buf = array.array("B")
    buf.frombytes(data)
    return buf


@dataclass(eq=False, slots=True)
class Request:
    msg: m.DataMessage
    #: OUT data copied out of the parser's buffer (see `out_data`)
    data: bytes | array.array[int] = b""
    cancelled: bool = False
    finished: bool = False
    #: OUT bytes the device accepted in an attempt that then had to wait
    done: int = 0
    #: time.perf_counter() at submission, when a transfer_observer is set
    submitted: float = 0.0
    #: the libusb transfer carrying it (asynchronous path)
    transfer: Transfer | None = None
    #: the host state's name for it (`SubmitTransfer.transfer`)
    handle: int = 0
    id: int = field(init=False)

    def __post_init__(self) -> None:
        self.id = self.msg.id


class EndpointQueues:
    """Per-endpoint FIFOs of requests and the tasks that run them."""

    def __init__(self, engine: HostEngine, nursery: trio.Nursery) -> None:
        self._engine = engine
        self._nursery = nursery
        self._queues: dict[int, deque[Request]] = {}
        self._wakeups: dict[int, trio.Event] = {}
        self.inflight: dict[int, Request] = {}
        #: bulk/interrupt IN endpoint -> data read for a request cancelled meanwhile
        self._late: dict[int, bytes] = {}
        #: endpoints whose task waits for work (the fast path may run there)
        self._idle: set[int] = set()
        #: asynchronous path: per endpoint, the submitted requests in order
        #: (a request that could not be submitted carries its reply instead)
        self._pending: dict[int, deque[tuple[Request, TransferDone | None]]] = {}
        #: endpoints whose task is answering a request now (replies leave in order)
        self._answering: set[int] = set()

    async def submit(self, request: Request) -> None:
        """Run `request` now if its endpoint is idle and the device completes
        it without waiting (see the module docstring), else queue it."""
        key = _queue_key(request.msg)
        self.inflight[request.handle] = request
        if transfer_observer is not None:
            request.submitted = time.perf_counter()
        device = self._engine.device
        if device is not None and device.aio is not None:
            await self._submit_async(key, request, device)
            return
        queue = self._queues.get(key)
        if device is not None and device.inline_transfers and (queue is None or (not queue and key in self._idle)):
            try:
                reply = self._late_reply(request) if self._late else None
                if reply is None:
                    reply = self._transfer_now(device, request)
            except BlockingIOError:
                pass  # the device makes it wait: the queue's task runs it
            except USB_CALL_ERRORS as exc:
                await self._complete(key, request, self._failure(request, exc))
                return
            else:
                await self._complete(key, request, reply)
                return
        if queue is None:
            queue = self._queues[key] = deque()
            self._wakeups[key] = trio.Event()
            self._nursery.start_soon(self._run_queue, key)
        queue.append(request)
        self._wakeups[key].set()

    def cancel(self, handle: int) -> None:
        """Mark the request the state cancelled (and cancel its libusb
        transfer, which still calls back); it still reports, once."""
        request = self.inflight.get(handle)
        if request is None or request.finished:
            return
        request.cancelled = True
        if request.transfer is not None:
            request.transfer.cancel()

    # -- asynchronous path (libusb's asynchronous API, client/usb/aio.py) --
    # The reader's task submits each request at once, in the guest's order
    # (libusb and the kernel keep that order per endpoint), so consecutive
    # requests are in flight together; one task per endpoint answers them
    # in the same order as they complete.

    async def _submit_async(self, key: int, request: Request, device: UsbDevice) -> None:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = deque()
            self._wakeups[key] = trio.Event()
            self._nursery.start_soon(self._run_pending, key)
        if not pending and self._late:
            late = self._late_reply(request)
            if late is not None:
                await self._complete(key, request, late)
                return
        reply: TransferDone | None = None
        try:
            request.transfer = transfer = _submit(device, request)
        except USB_CALL_ERRORS as exc:
            reply = self._failure(request, exc)
        else:
            transfer.on_done = lambda: self._answer_done(key)
        pending.append((request, reply))
        if reply is not None:
            self._answer_done(key)  # not submitted: its reply is known now

    def _answer_done(self, key: int) -> None:
        """A transfer on `key` came back (loop thread, right after libusb's event handling):
        answer the finished requests at the head of the endpoint's queue now, in order, while the
        state only needs each reply sent (`HostState.transfer_reply`) and the Outbox has room - no
        wake-up of the endpoint's task, one scheduler pass less per transfer.  Anything else
        (a cancelled request, a device gone, an operation waiting, a full Outbox) stops here and
        is the task's."""
        if key in self._answering:
            return  # the task is answering an earlier one: it looks again when done
        pending = self._pending.get(key)
        engine = self._engine
        outbox = engine.outbox
        while pending:
            if not outbox.has_room:
                self._wakeups[key].set()  # the task waits for room
                return
            request, reply = pending[0]
            transfer = request.transfer
            if transfer is not None:
                if not transfer.finished:
                    return
                reply = self._async_reply(request, transfer)
            message = None if reply is None or request.cancelled else engine.host.transfer_reply(reply)
            if message is None:  # more than a reply to send (the state declined, nothing done)
                self._wakeups[key].set()
                return
            pending.popleft()
            request.finished = True
            if self.inflight.get(request.handle) is request:
                del self.inflight[request.handle]
            if transfer_observer is not None and request.submitted:
                transfer_observer(time.perf_counter() - request.submitted)
            header, payload = engine.conn.send_parts(message)
            outbox.put_nowait(header, payload)

    async def _run_pending(self, key: int) -> None:
        """Answer what `_answer_done` leaves: it wakes this task when the finished request at the
        head of the queue needs more than its reply sent (or the Outbox is full)."""
        pending = self._pending[key]
        try:
            while True:
                head = pending[0][0] if pending else None
                if head is None or (head.transfer is not None and not head.transfer.finished):
                    self._wakeups[key] = trio.Event()
                    await self._wakeups[key].wait()
                    continue
                request, reply = pending.popleft()
                if request.transfer is not None:
                    reply = self._async_reply(request, request.transfer)
                # while this one is being answered, no later one may overtake it (`_answer_done`)
                self._answering.add(key)
                try:
                    await self._complete(key, request, reply)
                finally:
                    self._answering.discard(key)
                self._answer_done(key)  # what came back meanwhile
        finally:
            # the device session ends: what is still in flight is cancelled
            # (UsbDevice.release waits until libusb gave it back)
            for request, _ in pending:
                if request.transfer is not None:
                    request.transfer.cancel()

    def _async_reply(self, request: Request, transfer: Transfer) -> TransferDone | None:
        """The reply to a request whose transfer called back."""
        msg = request.msg
        if request.cancelled:
            # answered already; libusb unlinked the URB, so unlike a thread's
            # late read nothing is kept: the data belongs to no request
            return None
        status = transfer.status
        if status == libusb1.LIBUSB_TRANSFER_NO_DEVICE:
            return TransferDone(request.handle, Status.IOERROR, gone=True)
        code = packet_status(status)
        if code not in (Status.SUCCESS, Status.CANCELLED):
            log.debug("%s: request %#x on %#04x: %s", self._engine.peer, msg.id, msg.endpoint_address, code.name)
        if isinstance(msg, m.ControlPacket):
            if msg.requesttype & 0x80:
                return _done(request, code, transfer.actual_length, transfer.data(8))
            return _done(request, code, transfer.actual_length)
        if msg.endpoint_address & 0x80:
            return _done(request, code, transfer.actual_length, transfer.data())
        return _done(request, code, transfer.actual_length)

    async def _run_queue(self, key: int) -> None:
        queue = self._queues[key]
        while True:
            if not queue:
                self._wakeups[key] = trio.Event()
                self._idle.add(key)
                try:
                    await self._wakeups[key].wait()
                finally:
                    self._idle.discard(key)
                continue
            request = queue.popleft()
            if request.cancelled:
                await self._complete(key, request, None)  # never started: it reports all the same
                continue
            reply = await self._execute(request)
            await self._complete(key, request, reply)

    async def _complete(self, key: int, request: Request, reply: TransferDone | None) -> None:
        """Report a finished request to the state; one that was cancelled
        meanwhile reports `cancelled` (its guest has its answer), and IN data
        it brought is kept for the next request."""
        request.finished = True
        if self.inflight.get(request.handle) is request:
            del self.inflight[request.handle]
        if reply is not None and not request.cancelled:
            if transfer_observer is not None and request.submitted:
                transfer_observer(time.perf_counter() - request.submitted)
            await self._engine.transfer_done(reply)
            return
        if reply is not None and key and key & 0x80 and reply.data and not reply.gone:
            self._late[key] = self._late.get(key, b"") + bytes(reply.data)
        await self._engine.feed(TransferDone(request.handle, Status.CANCELLED))

    def _late_reply(self, request: Request) -> TransferDone | None:
        """The reply from data a cancelled IN request left, if there is any."""
        msg = request.msg
        endpoint, length = msg.endpoint_address, msg.transfer_length
        if isinstance(msg, m.ControlPacket) or not endpoint & 0x80:
            return None
        late = self._late.pop(endpoint, b"")
        if not late:
            return None
        if len(late) > length:
            self._late[endpoint] = late[length:]
        return TransferDone(request.handle, Status.SUCCESS, late[:length], min(len(late), length))

    def _failure(self, request: Request, exc: BaseException) -> TransferDone | None:
        """What a transfer that raised `exc` reports (None if cancelled)."""
        msg = request.msg
        status, gone = status_for(exc)
        if request.cancelled:
            return None
        if not gone:
            log.debug("%s: request %#x on %#04x failed: %s", self._engine.peer, msg.id, msg.endpoint_address, exc)
        return TransferDone(request.handle, status, gone=gone)

    def _transfer_now(self, device: UsbDevice, request: Request) -> TransferDone:
        """The transfer on this thread (the device has `inline_transfers`);
        BlockingIOError where the device would make it wait, with a partly
        accepted OUT transfer's count kept in `request.done`."""
        msg = request.msg
        if isinstance(msg, m.ControlPacket):
            if msg.requesttype & 0x80:
                buf = in_buffer(msg.length)
                n = device.try_control(msg.requesttype, msg.request, msg.value, msg.index, buf, CONTROL_TIMEOUT_MS)
                return _done(request, Status.SUCCESS, n, memoryview(buf)[:n])
            n = device.try_control(msg.requesttype, msg.request, msg.value, msg.index, request.data, CONTROL_TIMEOUT_MS)
            return _done(request, Status.SUCCESS, n)
        endpoint = msg.endpoint_address
        if endpoint & 0x80:
            buf = in_buffer(msg.transfer_length)
            n = device.try_read(endpoint, buf, SLICE_MS)
            return _done(request, Status.SUCCESS, n, memoryview(buf)[:n])
        try:
            n = device.try_write(endpoint, request.data, OUT_TIMEOUT_MS)
        except BlockingIOError as exc:
            request.done = exc.characters_written
            raise
        return _done(request, Status.SUCCESS, n)

    async def _execute(self, request: Request) -> TransferDone | None:
        device = self._engine.device
        msg = request.msg
        if device is None:
            return _done(request, Status.IOERROR)
        late = self._late_reply(request) if self._late else None
        if late is not None:
            return late
        try:
            if isinstance(msg, m.ControlPacket):
                if msg.requesttype & 0x80:
                    buf = in_buffer(msg.length)
                    n = await device.control(
                        msg.requesttype, msg.request, msg.value, msg.index, buf, CONTROL_TIMEOUT_MS
                    )
                    return _done(request, Status.SUCCESS, n, memoryview(buf)[:n])
                n = await device.control(
                    msg.requesttype, msg.request, msg.value, msg.index, request.data, CONTROL_TIMEOUT_MS
                )
                return _done(request, Status.SUCCESS, n)
            endpoint = msg.endpoint_address
            if endpoint & 0x80:
                buf = in_buffer(msg.transfer_length)
                while True:
                    try:
                        n = await device.read(endpoint, buf, SLICE_MS)
                        break
                    except usb.core.USBError as exc:
                        if not is_timeout(exc) or request.cancelled:
                            raise
                return _done(request, Status.SUCCESS, n, memoryview(buf)[:n])
            n = await device.write(endpoint, request.data, OUT_TIMEOUT_MS, done=request.done)
            return _done(request, Status.SUCCESS, n)
        except USB_CALL_ERRORS as exc:
            return self._failure(request, exc)


def _done(request: Request, status: int, length: int = 0, data: m.Buffer = b"") -> TransferDone:
    """What a transfer reports: status, bytes moved and (IN) the data."""
    return TransferDone(request.handle, status, data, length)


def _submit(device: UsbDevice, request: Request) -> Transfer:
    """One request as a libusb transfer over its own buffer: IN data lands
    in the buffer the reply is sent from, OUT data goes from the request's
    copy of the guest's payload (no further copy)."""
    msg = request.msg
    if isinstance(msg, m.ControlPacket):
        buf = bytearray(8 + msg.length)
        control_setup(buf, msg.requesttype, msg.request, msg.value, msg.index, msg.length)
        if not msg.requesttype & 0x80 and request.data:
            n = min(len(request.data), msg.length)
            buf[8 : 8 + n] = memoryview(request.data).cast("B")[:n]
        return device.submit(aio.CONTROL, 0, buf, len(buf), CONTROL_TIMEOUT_MS)
    kind = aio.BULK if isinstance(msg, m.BulkPacket) else aio.INTERRUPT
    # a USB 3 bulk stream's id (client/usb/bulk_streams.py); 0: the plain pipe
    stream_id = msg.stream_id if isinstance(msg, m.BulkPacket) else 0
    endpoint = msg.endpoint_address
    if endpoint & 0x80:
        buf = bytearray(msg.transfer_length)
        return device.submit(kind, endpoint, buf, len(buf), 0, stream_id=stream_id)
    data = request.data if isinstance(request.data, array.array) else out_data(request.data)
    # no timeout, as usbredirhost gives bulk and interrupt transfers (the guest cancels what it
    # stops waiting for); a timeout also cost libusb two timerfd_settime calls per transfer
    return device.submit(kind, endpoint, data, len(data), 0, stream_id=stream_id)


def _queue_key(msg: m.DataMessage) -> int:
    """Requests are ordered per endpoint; all control requests share 0."""
    return 0 if isinstance(msg, m.ControlPacket) else msg.endpoint_address
