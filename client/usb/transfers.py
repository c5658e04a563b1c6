"""Ordinary transfers (control, bulk, interrupt OUT): one FIFO per endpoint.

Requests to one endpoint must reach the device in the order the guest sent
them (a mass-storage CBW before its data), so each endpoint gets a queue and
one task that runs its requests one at a time in a worker thread; different
endpoints run in parallel.  A request gets exactly one reply: its completion,
or `cancelled` at once when the guest cancels it (a completion that arrives
later is dropped, as usbredirhost does).

IN transfers run in slices of `SLICE_MS`: a slice that times out is retried
unless the request was cancelled, which is how a cancelled read gives its
thread back without abandoning it.  A slice already running when its request
is cancelled may still return data (libusb would have unlinked the URB at
once); that data is kept for the next IN request on the endpoint instead of
being lost.
"""

from __future__ import annotations

import array
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
import usb.core

from redirgate.client.usb.errors import USB_CALL_ERRORS, is_timeout, status_for
from redirgate.proto.usbredir import Status, messages as m

if TYPE_CHECKING:
    from redirgate.client.usb.engine import HostEngine

__all__ = ["Request", "EndpointQueues", "CONTROL_TIMEOUT_MS", "SLICE_MS"]

log = logging.getLogger(__name__)

#: usbredirhost.c CTRL_TIMEOUT
CONTROL_TIMEOUT_MS = 5000
#: IN transfers wait in slices this long, so cancellation takes effect
SLICE_MS = 500
#: OUT transfers: one attempt; the reference waits forever, we report a timeout
OUT_TIMEOUT_MS = 30_000


@dataclass(eq=False)
class Request:
    msg: m.DataMessage
    #: OUT data copied out of the parser's buffer (it is reused)
    data: bytes = b""
    cancelled: bool = False
    finished: bool = False
    id: int = field(init=False)

    def __post_init__(self) -> None:
        self.id = self.msg.id


def reply_for(msg: m.DataMessage, status: int, length: int = 0, data: m.Buffer = b"") -> m.DataMessage:
    """The reply to a data request: same fields, new status/length (and data)."""
    if isinstance(msg, m.ControlPacket):
        return m.ControlPacket(
            msg.endpoint, msg.request, msg.requesttype, status, msg.value, msg.index, length, id=msg.id, data=data
        )
    if isinstance(msg, m.BulkPacket):
        return m.BulkPacket(msg.endpoint, status, length, msg.stream_id, id=msg.id, data=data)
    assert isinstance(msg, m.InterruptPacket)
    return m.InterruptPacket(msg.endpoint, status, length, id=msg.id, data=data)


class EndpointQueues:
    """Per-endpoint FIFOs of requests and the tasks that run them."""

    def __init__(self, engine: "HostEngine", nursery: trio.Nursery) -> None:
        self._engine = engine
        self._nursery = nursery
        self._queues: dict[int, deque[Request]] = {}
        self._wakeups: dict[int, trio.Event] = {}
        self.inflight: dict[int, Request] = {}
        #: bulk/interrupt IN endpoint -> data read for a request cancelled meanwhile
        self._late: dict[int, bytes] = {}

    def submit(self, request: Request) -> None:
        key = request.msg.endpoint_address if not isinstance(request.msg, m.ControlPacket) else 0
        self.inflight[request.id] = request
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._wakeups[key] = trio.Event()
            self._nursery.start_soon(self._run_queue, key)
        queue.append(request)
        self._wakeups[key].set()

    def cancel(self, request_id: int) -> Request | None:
        """Mark the not-yet-answered request with this id cancelled."""
        request = self.inflight.pop(request_id, None)
        if request is None or request.finished:
            return None
        request.cancelled = True
        return request

    def cancel_all(self) -> list[Request]:
        pending = [r for r in self.inflight.values() if not r.finished]
        self.inflight.clear()
        for request in pending:
            request.cancelled = True
        return pending

    async def _run_queue(self, key: int) -> None:
        queue = self._queues[key]
        while True:
            if not queue:
                self._wakeups[key] = trio.Event()
                await self._wakeups[key].wait()
                continue
            request = queue.popleft()
            if request.cancelled:
                continue
            reply = await self._execute(request)
            request.finished = True
            if self.inflight.get(request.id) is request:
                del self.inflight[request.id]
            if reply is not None and not request.cancelled:
                await self._engine.send(reply)
            elif reply is not None and key and reply.endpoint_address & 0x80 and reply.data:
                self._late[key] = self._late.get(key, b"") + bytes(reply.data)

    async def _execute(self, request: Request) -> m.DataMessage | None:
        engine = self._engine
        device = engine.device
        msg = request.msg
        if device is None:
            return reply_for(msg, Status.IOERROR)
        dev = device.dev
        try:
            if isinstance(msg, m.ControlPacket):
                if msg.requesttype & 0x80:
                    buf = array.array("B", bytes(msg.length))
                    n = await device.call(
                        dev.ctrl_transfer, msg.requesttype, msg.request, msg.value, msg.index, buf, CONTROL_TIMEOUT_MS
                    )
                    return reply_for(msg, Status.SUCCESS, n, memoryview(buf)[:n])
                n = await device.call(
                    dev.ctrl_transfer, msg.requesttype, msg.request, msg.value, msg.index, request.data, CONTROL_TIMEOUT_MS
                )
                return reply_for(msg, Status.SUCCESS, n)
            if msg.endpoint & 0x80:
                late = self._late.pop(msg.endpoint, b"")
                if late:
                    if len(late) > msg.length:
                        self._late[msg.endpoint] = late[msg.length :]
                    return reply_for(msg, Status.SUCCESS, min(len(late), msg.length), late[: msg.length])
                buf = array.array("B", bytes(msg.length))
                while True:
                    try:
                        n = await device.call(dev.read, msg.endpoint, buf, SLICE_MS)
                        break
                    except usb.core.USBError as exc:
                        if not is_timeout(exc) or request.cancelled:
                            raise
                return reply_for(msg, Status.SUCCESS, n, memoryview(buf)[:n])
            n = await device.call(dev.write, msg.endpoint, request.data, OUT_TIMEOUT_MS)
            return reply_for(msg, Status.SUCCESS, n)
        except USB_CALL_ERRORS as exc:
            status, gone = status_for(exc)
            if request.cancelled:
                return None
            if gone:
                engine.device_lost(f"transfer failed: {exc}")
            else:
                log.debug("%s: request %#x on %#04x failed: %s", engine.peer, msg.id, msg.endpoint_address, exc)
            return reply_for(msg, status)
