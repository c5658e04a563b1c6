"""The usbredir host engine: serve one connection for one (replugable) device.

`HostEngine.run()` owns a connection from hello to close: it reads protocol
events from the guest, answers each request exactly once with the status the
reference host (usbredirhost.c) would give, and reports the device the
`DeviceSource` hands it — again after every unplug/replug, without a restart.

Task layout (one nursery per connection):
    reader   parses the guest's bytes and dispatches; configuration, alt
             setting and reset requests are awaited in place (like the
             reference, which handles them in its read callback)
    writer   drains the Outbox to the stream in order
    device   acquires the device, announces it, waits until it is lost or
             rejected, releases it; then again
and, inside a per-device nursery that is cancelled when the device goes,
one task per busy endpoint queue (transfers.py) and per stream (streams.py).

Bytes from the guest are read straight into the parser's buffer where the
stream can (`try_receive_into`: PlainSocketStream, ZeroCopyTLSStream,
PrefixedStream), instead of a new `bytes` per read copied in afterwards.

Shutdown: when the guest closes or sends something malformed, the reader
returns, the connection nursery is cancelled, and the device is released in
a shielded scope so its kernel drivers come back.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from redirgate.client.usb import streams as st
from redirgate.client.usb.descriptors import EndpointDesc
from redirgate.client.usb.device import UsbDevice
from redirgate.client.usb.errors import USB_CALL_ERRORS, status_for
from redirgate.client.usb.outbox import Outbox
from redirgate.client.usb.transfers import EndpointQueues, Request, out_data, reply_for
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
from redirgate.proto.usbredir import filter as usbfilter
from redirgate.proto.usbredir import (
    messages as m,
)
from redirgate.proto.usbredir.host import INTERRUPT_TRANSFERS, NO_RESET_IDS
from redirgate.transport import NonBlockingStream, nonblocking

__all__ = ["HOST_CAPS", "NO_RESET_IDS", "DeviceSource", "HostEngine"]

log = logging.getLogger(__name__)

#: Everything but bulk streams, which pyusb cannot drive (protocol ref §2.2).
HOST_CAPS = Cap.all_known() & ~Cap.BULK_STREAMS
RECEIVE_BYTES = 256 * 1024
#: how often an announced device is looked for on the bus: an idle device's
#: unplug fails no transfer (usbredirect learns it from libusb hotplug)
PRESENCE_INTERVAL_S = 0.5
#: iso OUT drops are logged at most this often (each line says how many since the last)
DROP_LOG_INTERVAL_S = 10.0


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
        self.outbox = Outbox(peer=peer)
        self.device: UsbDevice | None = None
        self.alts: dict[int, int] = {}
        self.endpoints: dict[int, tuple[EndpointDesc, int]] = {}
        #: True while no device is announced to the guest ("disconnected")
        self.disconnected = True
        self.connect_pending = False
        self.wait_ack = False
        self.reset_done = False
        self.rejected = False
        self.guest_rules: tuple[usbfilter.FilterRule, ...] | None = None
        self.streams: dict[int, st.Stream] = {}
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
        self.close_reason: str | None = None
        self._connection_scope = trio.CancelScope()

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
        while True:
            try:
                await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.close_reason = f"receive failed: {exc}"
                return
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
                handler = _HANDLERS.get(type(event))
                if handler is None:
                    log.debug("%s: ignoring %s", self.peer, type(event).__name__)
                    continue
                await handler(self, event)

    async def send(self, message: m.Message) -> None:
        """Queue a message that must reach the guest (waits if the queue is full)."""
        header, payload = self.conn.send_parts(message)
        await self.outbox.put(header, payload)

    def send_nowait(self, message: m.Message) -> None:
        header, payload = self.conn.send_parts(message)
        self.outbox.put_nowait(header, payload)

    def offer_stream(self, stream: st.Stream, message: m.Message, iso_ref: int = 0) -> None:
        if self.streams.get(stream.endpoint) is not stream or self.disconnected:
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
        self.alts = {}
        self._rebuild_endpoints()
        snap = device.snapshot
        if (snap.vendor_id, snap.product_id) not in NO_RESET_IDS:
            # guests start with a reset; doing it now makes theirs a no-op
            try:
                await device.call(device.reset_blocking, dict(self.alts))
                self.reset_done = True
            except USB_CALL_ERRORS as exc:
                _, gone = status_for(exc)
                if gone:
                    self.device_lost("gone during the initial reset")
                    return
                log.debug("%s: initial reset of %s failed: %s", self.peer, device.name, exc)
        log.info("%s: offering %s", self.peer, device.name)
        self.connect_pending = True
        self._maybe_announce()

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

    def _rebuild_endpoints(self) -> None:
        assert self.device is not None
        self.endpoints = self.device.snapshot.endpoints(self.alts)

    def _maybe_announce(self) -> None:
        """interface_info, ep_info, device_connect - once the guest's hello is
        in and no disconnect ack is awaited (usbredirhost connect_pending)."""
        if not self.connect_pending or self.device is None:
            return
        if not self.conn.have_peer_hello or self.wait_ack:
            return
        if self._filtered_out():
            return
        snap = self.device.snapshot
        self.connect_pending = False
        self.send_nowait(snap.interface_info(self.alts))
        self.send_nowait(snap.ep_info(self.alts))
        self.send_nowait(
            m.DeviceConnect(
                int(snap.speed),
                snap.device_class,
                snap.device_subclass,
                snap.device_protocol,
                snap.vendor_id,
                snap.product_id,
                snap.bcd_device,
            )
        )
        self.disconnected = False

    def _filtered_out(self) -> bool:
        """A device the guest's own filter rejects is not offered to it."""
        if self.guest_rules is None or self.device is None:
            return False
        snap = self.device.snapshot
        verdict = usbfilter.check(
            self.guest_rules,
            snap.device_class,
            snap.device_subclass,
            snap.device_protocol,
            snap.interface_classes(self.alts),
            snap.vendor_id,
            snap.product_id,
            snap.bcd_device,
            usbfilter.FilterFlag.DEFAULT_ALLOW,
        )
        if verdict.allowed:
            return False
        log.warning("%s: the guest's filter rejects %s (%s)", self.peer, self.device.name, verdict.name.lower())
        self._reject_device()
        return True

    def device_lost(self, reason: str) -> None:
        """The device is gone (unplugged, failed reset): tell the guest once."""
        if self.device is not None:
            log.warning("%s: lost %s: %s", self.peer, self.device.name, reason)
        self._disconnect_guest()
        self._device_done.set()

    def _disconnect_guest(self) -> None:
        self.connect_pending = False
        if self.disconnected:
            return
        self.disconnected = True
        self._fail_inflight(Status.IOERROR)
        self.streams.clear()
        self.send_nowait(m.DeviceDisconnect())
        if Cap.DEVICE_DISCONNECT_ACK in self.conn.shared_caps:
            self.wait_ack = True

    def _reject_device(self) -> None:
        self.rejected = True
        self._disconnect_guest()
        self._device_done.set()

    def _fail_inflight(self, status: int) -> None:
        if self.queues is None:
            return
        for request in self.queues.cancel_all():
            self.send_nowait(reply_for(request.msg, status))

    def forget_stream(self, stream: st.Stream) -> None:
        if self.streams.get(stream.endpoint) is stream:
            del self.streams[stream.endpoint]

    # ------------------------------------------------------------ dispatch
    # `_reader` calls the handler of each message type from `_HANDLERS`.

    async def _on_hello(self, msg: m.Hello) -> None:
        log.info("%s: guest %r, caps %#x", self.peer, msg.version, int(msg.caps))
        self._maybe_announce()

    # Data requests: one handler per packet type (each transfer passes here,
    # so no isinstance chain), the checks in usbredirhost's order.
    async def _on_control(self, msg: m.ControlPacket) -> None:
        queues = self.queues
        if self.disconnected or queues is None:
            await self.send(reply_for(msg, Status.IOERROR))
            return
        if msg.requesttype == 0x02 and msg.request == 0x01 and msg.value == 0 and not msg.data:
            await self._clear_halt(msg)
            return
        await queues.submit(self._request(msg))

    async def _on_bulk(self, msg: m.BulkPacket) -> None:
        queues = self.queues
        if self.disconnected or queues is None:
            await self.send(reply_for(msg, Status.IOERROR))
            return
        if self._endpoint_type(msg.endpoint) != EndpointType.BULK or msg.stream_id:
            # the wrong type, or a bulk stream (pyusb has none)
            await self.send(reply_for(msg, Status.INVAL))
            return
        await queues.submit(self._request(msg))

    async def _on_interrupt(self, msg: m.InterruptPacket) -> None:
        queues = self.queues
        if self.disconnected or queues is None:
            await self.send(reply_for(msg, Status.IOERROR))
            return
        if self._endpoint_type(msg.endpoint) != EndpointType.INTERRUPT:
            await self.send(reply_for(msg, Status.INVAL))
            return
        ep_desc = self.endpoints[msg.endpoint][0]
        assert self.device is not None
        if len(msg.data) > ep_desc.max_packet_size(self.device.snapshot.speed):
            await self.send(reply_for(msg, Status.INVAL))
            return
        await queues.submit(self._request(msg))

    def _endpoint_type(self, address: int) -> EndpointType:
        """The transfer type of an endpoint of the current settings
        (`EndpointType.INVALID` if there is none)."""
        entry = self.endpoints.get(address)
        return entry[0].transfer_type if entry is not None else EndpointType.INVALID

    def _request(self, msg: m.DataMessage) -> Request:
        """The request that goes to the device (OUT data copied out of the
        parser's buffer); a transfer means the device is no longer fresh
        from a reset."""
        self.reset_done = False
        return Request(msg, out_data(msg.data) if msg.data else b"")

    async def _clear_halt(self, msg: m.ControlPacket) -> None:
        """CLEAR_FEATURE(ENDPOINT_HALT) goes through libusb so the host stack
        learns the halt is cleared (usbredirhost.c)."""
        assert self.device is not None
        status = Status.SUCCESS
        try:
            await self.device.call(self.device.dev.clear_halt, msg.index & 0xFF)
        except USB_CALL_ERRORS as exc:
            status, gone = status_for(exc)
            if gone:
                self.device_lost("clear halt failed")
        await self.send(reply_for(msg, status))

    async def _on_cancel(self, msg: m.CancelDataPacket) -> None:
        if self.queues is None:
            return
        request = self.queues.cancel(msg.id)
        if request is not None:
            await self.send(reply_for(request.msg, Status.CANCELLED))

    async def _on_set_configuration(self, msg: m.SetConfiguration) -> None:
        device = self.device
        if self.disconnected or device is None:
            active = device.snapshot.active_config if device else 0
            await self.send(m.ConfigurationStatus(Status.IOERROR, active, id=msg.id))
            return
        if msg.configuration == device.snapshot.active_config:
            await self.send(m.ConfigurationStatus(Status.SUCCESS, msg.configuration, id=msg.id))
            return
        self.reset_done = False
        await self._stop_all_streams(notify=False)
        self._fail_inflight(Status.CANCELLED)
        await device.drain()  # no transfer of the old configuration stays in flight
        status = Status.SUCCESS
        try:
            await device.call(device.set_configuration_blocking, msg.configuration)
        except USB_CALL_ERRORS as exc:
            status, gone = status_for(exc)
            if gone:
                self.device_lost("set configuration failed")
                await self.send(m.ConfigurationStatus(Status.IOERROR, 0, id=msg.id))
                return
            status = Status.IOERROR
        self.alts = {}
        self._rebuild_endpoints()
        snap = device.snapshot
        await self.send(snap.interface_info(self.alts))
        await self.send(snap.ep_info(self.alts))
        await self.send(m.ConfigurationStatus(status, snap.active_config, id=msg.id))
        self._filtered_out()

    async def _on_get_configuration(self, msg: m.GetConfiguration) -> None:
        device = self.device
        status = Status.IOERROR if self.disconnected or device is None else Status.SUCCESS
        await self.send(m.ConfigurationStatus(status, device.snapshot.active_config if device else 0, id=msg.id))

    def _known_interface(self, number: int) -> bool:
        assert self.device is not None
        config = self.device.snapshot.configs.get(self.device.snapshot.active_config)
        return config is not None and number in config.interfaces

    async def _on_set_alt(self, msg: m.SetAltSetting) -> None:
        device = self.device
        if self.disconnected or device is None:
            await self.send(m.AltSettingStatus(Status.IOERROR, msg.interface, 0xFF, id=msg.id))
            return
        if not self._known_interface(msg.interface):
            await self.send(m.AltSettingStatus(Status.INVAL, msg.interface, 0xFF, id=msg.id))
            return
        self.reset_done = False
        for address, (_, number) in list(self.endpoints.items()):
            if number == msg.interface and address in self.streams:
                self._stop_stream(self.streams[address])
        try:
            await device.call(device.dev.set_interface_altsetting, msg.interface, msg.alt)
        except USB_CALL_ERRORS as exc:
            status, gone = status_for(exc)
            if gone:
                self.device_lost("set alt setting failed")
            await self.send(m.AltSettingStatus(status, msg.interface, self.alts.get(msg.interface, 0), id=msg.id))
            return
        self.alts[msg.interface] = msg.alt
        self._rebuild_endpoints()
        await self.send(device.snapshot.interface_info(self.alts))
        await self.send(device.snapshot.ep_info(self.alts))
        await self.send(m.AltSettingStatus(Status.SUCCESS, msg.interface, msg.alt, id=msg.id))

    async def _on_get_alt(self, msg: m.GetAltSetting) -> None:
        if self.disconnected or self.device is None:
            await self.send(m.AltSettingStatus(Status.IOERROR, msg.interface, 0xFF, id=msg.id))
        elif not self._known_interface(msg.interface):
            await self.send(m.AltSettingStatus(Status.INVAL, msg.interface, 0xFF, id=msg.id))
        else:
            await self.send(
                m.AltSettingStatus(Status.SUCCESS, msg.interface, self.alts.get(msg.interface, 0), id=msg.id)
            )

    async def _on_reset(self, msg: m.Reset) -> None:
        device = self.device
        if self.disconnected or device is None or self.reset_done:
            return
        await self._stop_all_streams(notify=True)
        self._fail_inflight(Status.CANCELLED)
        await device.drain()  # usbredirhost cancels every transfer before a reset too
        snap = device.snapshot
        if (snap.vendor_id, snap.product_id) not in NO_RESET_IDS:
            try:
                await device.call(device.reset_blocking, dict(self.alts))
            except USB_CALL_ERRORS as exc:
                log.info("%s: reset of %s failed: %s", self.peer, device.name, exc)
                self.device_lost("reset failed")
                return
        self.reset_done = True

    # -------------------------------------------------------------- streams
    async def _start_stream(
        self, kind: EndpointType, endpoint: int, request_id: int, pkts: int, transfers: int, size: int | None
    ) -> None:
        def status(code: int) -> m.Message:
            return st.stream_status(kind, endpoint, code, request_id)

        if self.disconnected or self.device is None or self._device_nursery is None:
            await self.send(status(Status.STALL))
            return
        entry = self.endpoints.get(endpoint)
        if entry is None or entry[0].transfer_type != kind:
            await self.send(status(Status.STALL))
            return
        max_packet = entry[0].max_packet_size(self.device.snapshot.speed)
        packet = size if size is not None else max_packet
        if not (1 <= pkts <= 32 and 1 <= transfers <= 16) or max_packet == 0 or packet % max_packet:
            await self.send(status(Status.STALL))
            return
        if endpoint in self.streams:
            await self.send(status(Status.INVAL))
            return
        scope = trio.CancelScope()
        stream = st.Stream(kind, endpoint, packet, pkts, transfers, scope)
        self.streams[endpoint] = stream
        self.reset_done = False
        if kind == EndpointType.ISO and not endpoint & 0x80:
            stream.out_queue = deque()
            stream.out_ready = trio.Event()
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

        await self.send(status(Status.SUCCESS))
        self._device_nursery.start_soon(run_stream)

    def _stop_stream(self, stream: st.Stream) -> None:
        stream.scope.cancel()
        self.forget_stream(stream)

    async def _stop_all_streams(self, *, notify: bool) -> None:
        for stream in list(self.streams.values()):
            if notify:
                await self.send(stream.status_message(Status.STALL))
            self._stop_stream(stream)

    async def _stop_request(self, kind: EndpointType, endpoint: int, request_id: int) -> None:
        if self.disconnected:
            return  # the reference sends nothing while disconnected
        stream = self.streams.get(endpoint)
        if stream is not None:
            self._stop_stream(stream)
        await self.send(st.stream_status(kind, endpoint, Status.SUCCESS, request_id))

    async def _on_start_iso(self, msg: m.StartIsoStream) -> None:
        await self._start_stream(EndpointType.ISO, msg.endpoint, msg.id, msg.pkts_per_urb, msg.no_urbs, None)

    async def _on_stop_iso(self, msg: m.StopIsoStream) -> None:
        await self._stop_request(EndpointType.ISO, msg.endpoint, msg.id)

    async def _on_start_interrupt(self, msg: m.StartInterruptReceiving) -> None:
        await self._start_stream(EndpointType.INTERRUPT, msg.endpoint, msg.id, 1, INTERRUPT_TRANSFERS, None)

    async def _on_stop_interrupt(self, msg: m.StopInterruptReceiving) -> None:
        await self._stop_request(EndpointType.INTERRUPT, msg.endpoint, msg.id)

    # A guest may send a request whose answer needs a cap it did not offer
    # (its parser checks only ours); its parser would refuse the answer, so
    # usbredirparser sends none and neither do we (send_parts would raise).
    async def _on_start_bulk_receiving(self, msg: m.StartBulkReceiving) -> None:
        if Cap.BULK_RECEIVING not in self.conn.shared_caps:
            return
        await self._start_stream(EndpointType.BULK, msg.endpoint, msg.id, 1, msg.no_transfers, msg.bytes_per_transfer)

    async def _on_stop_bulk_receiving(self, msg: m.StopBulkReceiving) -> None:
        if Cap.BULK_RECEIVING not in self.conn.shared_caps:
            return
        await self._stop_request(EndpointType.BULK, msg.endpoint, msg.id)

    async def _on_iso_packet(self, msg: m.IsoPacket) -> None:
        stream = self.streams.get(msg.endpoint)
        if self.disconnected:
            await self.send(m.IsoStreamStatus(Status.IOERROR, msg.endpoint, id=msg.id))
            return
        if (
            stream is None
            or stream.kind != EndpointType.ISO
            or stream.out_queue is None
            or len(msg.data) > stream.packet_size
        ):
            await self.send(m.IsoStreamStatus(Status.INVAL, msg.endpoint, id=msg.id))
            return
        if not stream.queue_out(bytes(msg.data)):
            self._count_iso_out_drop(stream.endpoint)

    def _count_iso_out_drop(self, endpoint: int) -> None:
        """An iso OUT packet the device could not take in time: counted (see
        `iso_out_dropped`) and logged at most once per `DROP_LOG_INTERVAL_S`."""
        self.iso_out_dropped[endpoint] = self.iso_out_dropped.get(endpoint, 0) + 1
        self._drops_unlogged += 1
        now = trio.current_time()
        if now - self._drops_logged_at >= DROP_LOG_INTERVAL_S:
            log.warning(
                "%s: dropped %d iso OUT packets since the last report (the device falls behind the guest); in all %s",
                self.peer,
                self._drops_unlogged,
                ", ".join(f"{ep:#04x}: {n}" for ep, n in sorted(self.iso_out_dropped.items())),
            )
            self._drops_logged_at = now
            self._drops_unlogged = 0

    def stream_drops(self) -> dict[str, dict[int, int]]:
        """Packets dropped so far on this connection, per endpoint, for status and metrics:
        ``iso_out`` (the guest's iso OUT packets the device could not take in time) and
        ``to_guest`` (stream packets not sent because the guest read too slowly)."""
        return {"iso_out": dict(self.iso_out_dropped), "to_guest": dict(self.outbox.dropped)}

    async def _on_alloc_streams(self, msg: m.AllocBulkStreams) -> None:
        # pyusb has no bulk-stream API; we do not advertise the cap either
        # (so without it shared there is no answer, see _on_start_bulk_receiving)
        if Cap.BULK_STREAMS not in self.conn.shared_caps:
            return
        await self.send(m.BulkStreamsStatus(msg.endpoints, msg.no_streams, Status.IOERROR, id=msg.id))

    async def _on_free_streams(self, msg: m.FreeBulkStreams) -> None:
        if Cap.BULK_STREAMS not in self.conn.shared_caps:
            return
        await self.send(m.BulkStreamsStatus(msg.endpoints, 0, Status.IOERROR, id=msg.id))

    # ------------------------------------------------------------- filters
    async def _on_filter_reject(self, msg: m.FilterReject) -> None:
        if self.disconnected:
            return
        log.warning("%s: the guest rejected %s", self.peer, self.device.name if self.device else "the device")
        self.disconnected = True  # the guest already detached it; no disconnect
        self._fail_inflight(Status.IOERROR)
        self.rejected = True
        self._device_done.set()

    async def _on_filter_filter(self, msg: m.FilterFilter) -> None:
        try:
            self.guest_rules = usbfilter.parse_rules(msg.filter_string)
        except usbfilter.FilterError as exc:
            log.warning("%s: ignoring the guest's filter %r: %s", self.peer, msg.filter_string, exc)
            return
        if not self.disconnected:
            self._filtered_out()

    async def _on_disconnect_ack(self, msg: m.DeviceDisconnectAck) -> None:
        if not self.wait_ack:
            log.debug("%s: unexpected device_disconnect_ack", self.peer)
            return
        self.wait_ack = False
        self._maybe_announce()


#: What `_reader` calls for each message type (each takes its own class).
_HANDLERS: dict[type[m.Message], Callable[[HostEngine, Any], Awaitable[None]]] = {
    m.Hello: HostEngine._on_hello,
    m.ControlPacket: HostEngine._on_control,
    m.BulkPacket: HostEngine._on_bulk,
    m.InterruptPacket: HostEngine._on_interrupt,
    m.IsoPacket: HostEngine._on_iso_packet,
    m.CancelDataPacket: HostEngine._on_cancel,
    m.SetConfiguration: HostEngine._on_set_configuration,
    m.GetConfiguration: HostEngine._on_get_configuration,
    m.SetAltSetting: HostEngine._on_set_alt,
    m.GetAltSetting: HostEngine._on_get_alt,
    m.Reset: HostEngine._on_reset,
    m.StartIsoStream: HostEngine._on_start_iso,
    m.StopIsoStream: HostEngine._on_stop_iso,
    m.StartInterruptReceiving: HostEngine._on_start_interrupt,
    m.StopInterruptReceiving: HostEngine._on_stop_interrupt,
    m.StartBulkReceiving: HostEngine._on_start_bulk_receiving,
    m.StopBulkReceiving: HostEngine._on_stop_bulk_receiving,
    m.AllocBulkStreams: HostEngine._on_alloc_streams,
    m.FreeBulkStreams: HostEngine._on_free_streams,
    m.FilterReject: HostEngine._on_filter_reject,
    m.FilterFilter: HostEngine._on_filter_filter,
    m.DeviceDisconnectAck: HostEngine._on_disconnect_ack,
}
