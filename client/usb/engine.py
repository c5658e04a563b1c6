"""The usbredir host engine: serve one connection for one (replugable) device.

The protocol decisions are `HostState`'s (proto/usbredir/host.py, sans-IO):
which request gets which answer, when, and exactly once; what a reset, a
configuration change or an unplug does to the transfers and streams in
flight; when a device is announced.  This engine is its trio adapter: it
feeds it the guest's parsed messages and what happens to the device, and
carries out the actions it returns - messages to the Outbox, transfers to
the per-endpoint queues (transfers.py), streams to their tasks (streams.py),
blocking operations (clear halt, set configuration, set alt setting, reset,
USB 3 bulk stream alloc/free through bulk_streams.py) in worker threads.

Task layout (one nursery per connection):
    reader   parses the guest's bytes and feeds them to the state; while
             the state has an operation out, it runs it (in a worker thread)
             and reads nothing more (like the reference, which handles them
             in its read callback)
    writer   drains the Outbox to the stream in order
    device   acquires the device, announces it, waits until it is released,
             releases it; then again
and, inside a per-device nursery that is cancelled when the device goes,
one task per busy endpoint queue (transfers.py) and per stream (streams.py).
Everything runs on the trio thread; the state is touched only there.

Bytes from the guest are read straight into the parser's buffer where the
stream can (`try_receive_into`: PlainSocketStream, ZeroCopyTLSStream,
PrefixedStream), instead of a new `bytes` per read copied in afterwards.

Shutdown: when the guest closes or sends something malformed, the reader
returns, the connection nursery is cancelled, and the device is released in
a shielded scope so its kernel drivers come back.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Protocol

import trio

from redirgate.client.usb import bulk_streams
from redirgate.client.usb import streams as st
from redirgate.client.usb.descriptors import EndpointDesc
from redirgate.client.usb.device import UsbDevice
from redirgate.client.usb.errors import USB_CALL_ERRORS, status_for
from redirgate.client.usb.iso_out import IsoOutWriter
from redirgate.client.usb.outbox import Outbox
from redirgate.client.usb.transfers import EndpointQueues, Request, out_data
from redirgate.proto.usbredir import (
    CLOSED,
    NEED_DATA,
    Cap,
    EndpointType,
    RemoteProtocolError,
    Role,
    Status,
    UsbredirConnection,
)
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.host import NO_RESET_IDS, HostEvent, HostState
from redirgate.proto.usbredir.host_events import (
    Action,
    AllocStreams,
    CancelTransfer,
    ChangeAltSetting,
    ChangeConfiguration,
    ClearHalt,
    DeviceDescription,
    DeviceGone,
    DeviceReady,
    FreeStreams,
    IsoOut,
    OperationDone,
    ReleaseDevice,
    ResetDevice,
    Send,
    StartStream,
    StopStream,
    StreamStalled,
    SubmitTransfer,
    TransferDone,
)
from redirgate.transport import NonBlockingStream, nonblocking

__all__ = ["HOST_CAPS", "NO_RESET_IDS", "DeviceSource", "HostEngine"]

log = logging.getLogger(__name__)

#: Every capability, bulk streams included (driven through libusb, bulk_streams.py),
#: as usbredirhost offers them on a libusb that has streams.
HOST_CAPS = Cap.all_known()
RECEIVE_BYTES = 256 * 1024
#: The reader yields to the loop's other tasks once one of its steps has run this long (ns of
#: the loop's time) handling requests that complete at once.  One 256 KiB read can carry four
#: 64 KiB bulk IN requests that an emulated device answers inline (about 0.25 ms each: fill and
#: send 64 KiB); taken in one step they held a keyboard's control request on the same client
#: for over 1 ms (CPU time per trio task step, measured with a trio Instrument).
STEP_BUDGET_NS = 200_000
#: how often an announced device is looked for on the bus: an idle device's
#: unplug fails no transfer (usbredirect learns it from libusb hotplug)
PRESENCE_INTERVAL_S = 0.5
#: iso OUT drops are logged at most this often (each line says how many since the last)
DROP_LOG_INTERVAL_S = 10.0

Operation = ClearHalt | ChangeConfiguration | ChangeAltSetting | ResetDevice | AllocStreams | FreeStreams
_OPERATIONS = (ClearHalt, ChangeConfiguration, ChangeAltSetting, ResetDevice, AllocStreams, FreeStreams)


class DeviceSource(Protocol):
    """Where the engine gets its device: waits until it is present, opens it."""

    def describe(self) -> str: ...

    async def acquire(self) -> UsbDevice: ...


class HostEngine:
    def __init__(
        self,
        stream: trio.abc.Stream,
        source: DeviceSource,
        *,
        peer: str,
        caps: Cap = HOST_CAPS,
        version: str = "redirgate usbredir host",
    ) -> None:
        self.stream = stream
        #: `stream` where `_receive` reads into the parser's buffer, else None
        #: (checked once: slow isinstance)
        self._fast_stream: NonBlockingStream | None = stream if nonblocking(stream) else None
        #: the last read took less than it could: the socket is empty
        self._drained = False
        self.source = source
        self.peer = peer
        self.conn = UsbredirConnection(Role.HOST, caps, version)
        self.host = HostState(caps)
        self.outbox = Outbox(peer=peer)
        self.device: UsbDevice | None = None
        #: endpoint address -> (descriptor, interface) at the current settings
        self.endpoints: dict[int, tuple[EndpointDesc, int]] = {}
        self.rejected = False
        #: running streams by endpoint, and the state's handles
        self.streams: dict[int, st.Stream] = {}
        self._stream_handles: dict[int, st.Stream] = {}
        #: IN data a stream read after it was stopped, for its next start
        self.late_stream_data: dict[int, list[bytes]] = {}
        #: iso OUT endpoint -> packets dropped since the connection started (never reset)
        self.iso_out_dropped: dict[int, int] = {}
        self._drops_unlogged = 0
        self._drops_logged_at = -DROP_LOG_INTERVAL_S
        #: endpoint -> set when the last stream task on it has finished
        self._stream_done: dict[int, trio.Event] = {}
        self.queues: EndpointQueues | None = None
        self._device_nursery: trio.Nursery | None = None
        self._device_done = trio.Event()
        #: the operation the state asked for, for the reader to run
        self._operation: Operation | None = None
        self._operation_ready = trio.Event()
        self.close_reason: str | None = None
        self._connection_scope = trio.CancelScope()

    @property
    def disconnected(self) -> bool:
        """No device is announced to the guest."""
        return self.host.disconnected

    @property
    def wait_ack(self) -> bool:
        return self.host.wait_ack

    # ------------------------------------------------------------ running
    async def run(self) -> None:
        """Serve the connection until the guest goes away."""
        try:
            async with trio.open_nursery() as nursery:
                self._connection_scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                self.outbox.put_nowait(self.conn.hello_bytes())
                nursery.start_soon(self._device_loop)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self.outbox.close()
            if self.device is not None:
                await self.device.release()
                self.device = None
            log.info("usbredir connection from %s closed: %s", self.peer, self.close_reason or "done")

    async def _writer(self) -> None:
        try:
            await self.outbox.drain(self.stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close_reason = f"send failed: {exc}"
            self._connection_scope.cancel()

    async def _receive(self) -> None:
        """Read what the guest sent into the parser (at least one byte, or EOF)."""
        conn = self.conn
        stream = self._fast_stream
        if stream is None:
            conn.receive_data(await self.stream.receive_some(RECEIVE_BYTES))
            return
        try_receive_into = stream.try_receive_into
        waited = False
        if self._drained:
            # the last read emptied the socket: wait first instead of a read
            # that would fail (readiness is level-triggered, nothing is missed)
            await stream.wait_receivable()
            waited = True
        while True:
            buffer = conn.get_receive_buffer(RECEIVE_BYTES)
            n = try_receive_into(buffer)
            if n is not None:
                break
            await stream.wait_receivable()
            waited = True
        self._drained = 0 < n < len(buffer)
        conn.commit_received(n)
        if not waited:
            # every receive is a checkpoint, as receive_some is: a guest that
            # keeps sending cannot keep the loop from the other tasks
            await trio.lowlevel.checkpoint()

    async def _reader(self) -> None:
        conn = self.conn
        # the state's fast path for data requests (HostState.submit_request),
        # else `feed`: no action list per transfer
        submit_request = self.host.submit_request
        iso_out_stream = self.host.iso_out_stream
        stream_handles = self._stream_handles
        iso_packet = m.IsoPacket
        clock = time.perf_counter_ns
        while True:
            try:
                await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.close_reason = f"receive failed: {exc}"
                return
            step_started = clock()
            while True:
                try:
                    event = conn.next_event()
                except RemoteProtocolError as exc:
                    # usbredirect and usbredirserver close on any parse error
                    self.close_reason = f"malformed usbredir message from the guest: {exc}"
                    log.warning("%s: %s", self.peer, self.close_reason)
                    return
                if event is NEED_DATA:
                    break
                if event is CLOSED:
                    self.close_reason = "guest closed the connection"
                    return
                if type(event) is iso_packet:
                    # iso OUT, a packet per (micro)frame: straight to its stream (`HostState.iso_out_stream`)
                    handle = iso_out_stream(event)
                    if handle:
                        stream = stream_handles.get(handle)
                        if stream is not None and not stream.queue_out(event.data):
                            self._count_iso_out_drop(stream.endpoint)
                        continue
                handle = submit_request(event)
                if handle:
                    await self._submit(handle, event)  # type: ignore[arg-type]  # a data request
                    if clock() - step_started > STEP_BUDGET_NS:
                        await trio.lowlevel.checkpoint()  # STEP_BUDGET_NS: the other devices' turn
                        step_started = clock()
                    continue
                if isinstance(event, m.Hello):
                    log.info("%s: guest %r, caps %#x", self.peer, event.version, int(event.caps))
                await self.feed(event)
                if self.host.busy:
                    await self._run_operations()

    # ------------------------------------------------------- the state
    async def feed(self, event: HostEvent) -> None:
        """Hand `event` to the state and carry out what it asks for, inline.
        A transfer's request and completion usually skip it: the state's
        fast paths (`_reader`, `transfer_done`) hand back just the handle or
        the reply."""
        for action in self.host.handle(event):
            kind = type(action)
            if kind is Send:
                header, payload = self.conn.send_parts(action.message)  # type: ignore[union-attr]  # a Send
                await self.outbox.put(header, payload)
            elif kind is SubmitTransfer:
                await self._submit(action.transfer, action.message)  # type: ignore[union-attr,arg-type]  # a SubmitTransfer
            else:
                self._do_now(action)
        if self._operation is not None or not self.host.busy:
            self._operation_ready.set()  # the reader may be waiting (`_run_operations`)

    def feed_nowait(self, event: HostEvent) -> None:
        """`feed` where nothing may wait: for events whose actions never
        block (a device gone, a stream stalled)."""
        for action in self.host.handle(event):
            if isinstance(action, Send):
                self.send_nowait(action.message)
            elif isinstance(action, SubmitTransfer):
                raise AssertionError(f"{event!r} asked for a transfer")
            else:
                self._do_now(action)
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._operation is not None or not self.host.busy:
            self._operation_ready.set()

    def _do_now(self, action: Action) -> None:
        if isinstance(action, CancelTransfer):
            if self.queues is not None:
                self.queues.cancel(action.transfer)
        elif isinstance(action, StartStream):
            self._start_stream(action)
        elif isinstance(action, StopStream):
            stream = self._stream_handles.get(action.stream)
            if stream is not None:
                self._stop_stream(stream)
        elif isinstance(action, IsoOut):
            stream = self._stream_handles.get(action.stream)
            if stream is not None and not stream.queue_out(action.data):
                self._count_iso_out_drop(stream.endpoint)
        elif isinstance(action, ReleaseDevice):
            self._release(action)
        elif isinstance(action, _OPERATIONS):
            self._operation = action  # for the reader (`_run_operations`)
        else:
            raise AssertionError(f"unknown action {action!r}")

    async def send(self, message: m.Message) -> None:
        """Queue a message that must reach the guest (waits if the queue is full)."""
        header, payload = self.conn.send_parts(message)
        await self.outbox.put(header, payload)

    def send_nowait(self, message: m.Message) -> None:
        header, payload = self.conn.send_parts(message)
        self.outbox.put_nowait(header, payload)

    def offer_stream(self, stream: st.Stream, message: m.Message, iso_ref: int = 0) -> None:
        if self.streams.get(stream.endpoint) is not stream or self.host.disconnected:
            return  # stopped (maybe restarted: a new stream owns the endpoint)
        header, payload = self.conn.send_parts(message)
        self.outbox.offer_stream(stream.endpoint, header, payload, iso_ref=iso_ref)

    # ------------------------------------------------------- device life
    async def _device_loop(self) -> None:
        while True:
            device = await self.source.acquire()
            self._device_done = trio.Event()
            try:
                async with trio.open_nursery() as device_nursery:
                    self._device_nursery = device_nursery
                    self.queues = EndpointQueues(self, device_nursery)
                    if device.aio is not None:
                        # libusb's events on this loop, for this device's transfers
                        device_nursery.start_soon(device.aio.pump)
                    await self._attach(device)
                    device_nursery.start_soon(self._watch_presence, device)
                    await self._device_done.wait()
                    device_nursery.cancel_scope.cancel()
            finally:
                self._device_nursery = None
                self.queues = None
                self.streams.clear()
                self._stream_handles.clear()
                self.late_stream_data.clear()
                self._stream_done.clear()
                self.device = None
                await device.release()
            if self.rejected:
                log.info(
                    "%s: %s was rejected by the guest; not offering it again on this connection", self.peer, device.name
                )
                await trio.sleep_forever()

    async def _attach(self, device: UsbDevice) -> None:
        self.device = device
        self.endpoints = device.snapshot.endpoints({})
        snap = device.snapshot
        reset_done = False
        if (snap.vendor_id, snap.product_id) not in NO_RESET_IDS:
            # guests start with a reset; doing it now makes theirs a no-op
            try:
                await device.call(device.reset_blocking, {})
                reset_done = True
            except USB_CALL_ERRORS as exc:
                _, gone = status_for(exc)
                if gone:
                    log.warning("%s: lost %s: gone during the initial reset", self.peer, device.name)
                    self._device_done.set()
                    return
                log.debug("%s: initial reset of %s failed: %s", self.peer, device.name, exc)
        log.info("%s: offering %s", self.peer, device.name)
        await self.feed(DeviceReady(self._description(device, {}), reset_done))

    @staticmethod
    def _description(device: UsbDevice, alts: dict[int, int]) -> DeviceDescription:
        """The device at these alt settings, for the state."""
        snap = device.snapshot
        connect = m.DeviceConnect(
            int(snap.speed),
            snap.device_class,
            snap.device_subclass,
            snap.device_protocol,
            snap.vendor_id,
            snap.product_id,
            snap.bcd_device,
        )
        endpoints = bulk_streams.ep_info(device, snap.ep_info(alts))
        return DeviceDescription(connect, snap.active_config, snap.interface_info(alts), endpoints)

    async def _watch_presence(self, device: UsbDevice) -> None:
        while True:
            await trio.sleep(PRESENCE_INTERVAL_S)
            try:
                present = await trio.to_thread.run_sync(device.present_blocking)
            except USB_CALL_ERRORS as exc:
                log.debug("%s: cannot enumerate devices: %s", self.peer, exc)
                continue
            if not present:
                self.device_lost("unplugged")
                return

    def device_lost(self, reason: str) -> None:
        """The device is gone (unplugged, a stream found it gone): the state
        tells the guest once and asks for the release."""
        self.feed_nowait(DeviceGone(reason))
        if self.host.device is None:
            self._device_done.set()  # also when it was never announced

    def _release(self, action: ReleaseDevice) -> None:
        name = self.device.name if self.device is not None else "the device"
        if action.rejected:
            log.warning("%s: %s: %s", self.peer, name, action.reason)
            self.rejected = True
        else:
            log.warning("%s: lost %s: %s", self.peer, name, action.reason)
        for stream in list(self.streams.values()):
            self._stop_stream(stream)
        self._device_done.set()

    # ------------------------------------------------------- transfers
    async def _submit(self, handle: int, msg: m.DataMessage) -> None:
        """Submit the state's transfer `handle` for the guest's request `msg`."""
        if self.queues is None:
            await self.feed(TransferDone(handle, Status.IOERROR, gone=True))
            return
        # OUT data copied out of the parser's buffer (see transfers.out_data)
        await self.queues.submit(Request(msg, out_data(msg.data) if msg.data else b"", handle=handle))

    async def transfer_done(self, done: TransferDone) -> None:
        """A transfer came back: its reply straight to the Outbox when that
        is all the state does with it (`HostState.transfer_reply`), else `feed`."""
        reply = self.host.transfer_reply(done)
        if reply is None:
            await self.feed(done)
            return
        header, payload = self.conn.send_parts(reply)
        await self.outbox.put(header, payload)

    # ------------------------------------------------------- operations
    async def _run_operations(self) -> None:
        """Run what the state asks for while it is busy (reading nothing else)."""
        while self.host.busy:
            operation = self._operation
            if operation is None:
                # it waits for cancelled transfers to come back
                self._operation_ready = trio.Event()
                self._wake_reader()
                await self._operation_ready.wait()
                continue
            self._operation = None
            status, gone, description = await self._operate(operation)
            await self.feed(OperationDone(operation.operation, status, description, gone))
            if self.device is not None:
                self.endpoints = self.device.snapshot.endpoints(self.host.alts)

    async def _operate(self, operation: Operation) -> tuple[int, bool, DeviceDescription | None]:
        """Run one blocking operation: (usbredir status, device gone, new description)."""
        device = self.device
        if device is None:
            return Status.IOERROR, True, None
        alts = dict(self.host.alts)
        try:
            if isinstance(operation, ClearHalt):
                # through libusb, so the host stack learns the halt is cleared (usbredirhost.c)
                await device.call(device.dev.clear_halt, operation.endpoint)
            elif isinstance(operation, ChangeConfiguration):
                await device.drain()  # no transfer of the old configuration stays in flight
                alts = {}
                try:
                    await device.call(device.set_configuration_blocking, operation.configuration)
                except USB_CALL_ERRORS as exc:
                    status, gone = status_for(exc)
                    return Status.IOERROR, gone, None if gone else self._description(device, alts)
            elif isinstance(operation, ChangeAltSetting):
                await device.call(device.dev.set_interface_altsetting, operation.interface, operation.alt)
                alts[operation.interface] = operation.alt
            elif isinstance(operation, (AllocStreams, FreeStreams)):
                return await self._bulk_streams(device, operation), False, None
            else:
                await device.drain()  # usbredirhost cancels every transfer before a reset too
                await device.call(device.reset_blocking, alts)
        except USB_CALL_ERRORS as exc:
            status, gone = status_for(exc)
            log.info("%s: %s on %s failed: %s", self.peer, type(operation).__name__, device.name, exc)
            return status, gone, None
        described = isinstance(operation, (ChangeConfiguration, ChangeAltSetting))
        return Status.SUCCESS, False, self._description(device, alts) if described else None

    async def _bulk_streams(self, device: UsbDevice, operation: AllocStreams | FreeStreams) -> Status:
        """Allocate or free USB 3 bulk streams (usbredirhost_alloc/free_bulk_streams): the
        guest's status.  Errors other than a gone device raise (`_operate` maps them)."""
        endpoints = ", ".join(f"{ep:#04x}" for ep in operation.endpoints)
        if isinstance(operation, FreeStreams):
            await device.call(bulk_streams.free_blocking, device, operation.endpoints)
            log.info("%s: freed the bulk streams of %s on %s", self.peer, endpoints, device.name)
            return Status.SUCCESS
        if not bulk_streams.usable(device):
            # its ep_info showed no streams; a guest that asks anyway is refused
            log.info("%s: %s cannot drive bulk streams here", self.peer, device.name)
            return Status.INVAL
        granted = await device.call(bulk_streams.alloc_blocking, device, operation.streams, operation.endpoints)
        if granted < operation.streams:
            log.warning(
                "%s: asked for %d bulk streams on %s of %s, got %d",
                self.peer,
                operation.streams,
                endpoints,
                device.name,
                granted,
            )
            return Status.IOERROR  # as usbredirhost
        log.info("%s: allocated %d bulk streams on %s of %s", self.peer, granted, endpoints, device.name)
        return Status.SUCCESS

    # -------------------------------------------------------------- streams
    def _start_stream(self, action: StartStream) -> None:
        if self._device_nursery is None:
            return
        kind, endpoint = action.kind, action.endpoint
        scope = trio.CancelScope()
        stream = st.Stream(
            kind, endpoint, action.packet_size, action.packets, action.transfers, scope, handle=action.stream
        )
        self.streams[endpoint] = stream
        self._stream_handles[action.stream] = stream
        if kind == EndpointType.ISO and not endpoint & 0x80:
            stream.out_queue = deque()
            stream.out_ready = trio.Event()
            if self.device is not None and self.device.aio is not None and st.ASYNC_STREAMS:
                # packets go to libusb as they are parsed (client/usb/iso_out.py), from the first one on
                stream.writer = IsoOutWriter(self, stream, self.device)
            runner = st.run_iso_out_stream
        else:
            runner = st.run_in_stream

        # a stopped stream's last read may still be running in its thread:
        # the new stream starts after it, and after the data it kept
        previous = self._stream_done.get(endpoint)
        done = self._stream_done[endpoint] = trio.Event()

        async def run_stream() -> None:
            try:
                with scope:
                    if previous is not None:
                        await previous.wait()
                    await runner(self, stream)
            finally:
                if previous is not None and not previous.is_set():
                    with trio.CancelScope(shield=True):
                        await previous.wait()
                done.set()
                if stream.out_queue is not None:
                    self._iso_out_summary(stream)

        self._device_nursery.start_soon(run_stream)

    def _stop_stream(self, stream: st.Stream) -> None:
        stream.scope.cancel()
        self.forget_stream(stream)

    def forget_stream(self, stream: st.Stream) -> None:
        if self.streams.get(stream.endpoint) is stream:
            del self.streams[stream.endpoint]
        if self._stream_handles.get(stream.handle) is stream:
            del self._stream_handles[stream.handle]

    def stream_stalled(self, stream: st.Stream) -> None:
        """A stream ended on its own (a halt not cleared, errors in a row):
        the state tells the guest."""
        self.forget_stream(stream)
        self.feed_nowait(StreamStalled(stream.handle))

    def _count_iso_out_drop(self, endpoint: int) -> None:
        """An iso OUT packet the device could not take in time: counted (see
        `iso_out_dropped`) and logged at most once per `DROP_LOG_INTERVAL_S`."""
        self.iso_out_dropped[endpoint] = self.iso_out_dropped.get(endpoint, 0) + 1
        st.dropped_totals["iso_out"] += 1
        self._drops_unlogged += 1
        now = trio.current_time()
        if now - self._drops_logged_at >= DROP_LOG_INTERVAL_S:
            self._log_drops()
            self._drops_logged_at = now

    def _log_drops(self) -> None:
        log.warning(
            "%s: dropped %d iso OUT packets since the last report (the device falls behind the guest); in all %s",
            self.peer,
            self._drops_unlogged,
            ", ".join(f"{ep:#04x}: {n}" for ep, n in sorted(self.iso_out_dropped.items())),
        )
        self._drops_unlogged = 0

    def _iso_out_summary(self, stream: st.Stream) -> None:
        """When an iso OUT stream ends: the drops not logged yet (none stays silent, even the last
        interval's), and one line on what the guest sent and what became of it."""
        if self._drops_unlogged:
            self._log_drops()
        log.info(
            "%s: iso OUT stream on %#04x ended: %d packets from the guest, %d taken by the device, %d failed, "
            "%d dropped (the device behind)",
            self.peer,
            stream.endpoint,
            stream.received,
            stream.written,
            stream.failed,
            stream.dropped,
        )

    def drop_counts(self) -> tuple[int, int]:
        """(iso OUT, to the guest) packets dropped so far on this connection, all endpoints
        (what the client tells the gateway: `StreamDrops`)."""
        return sum(self.iso_out_dropped.values()), sum(self.outbox.dropped.values())

    def stream_drops(self) -> dict[str, dict[int, int]]:
        """Packets dropped so far on this connection, per endpoint, for status and metrics:
        ``iso_out`` (the guest's iso OUT packets the device could not take in time) and
        ``to_guest`` (stream packets not sent because the guest read too slowly)."""
        return {"iso_out": dict(self.iso_out_dropped), "to_guest": dict(self.outbox.dropped)}
