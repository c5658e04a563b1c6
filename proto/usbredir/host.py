"""The usbredir host role as a state machine, sans-IO (like h11).

`HostState.handle(event)` takes one event - a message the guest sent (parsed
by `UsbredirConnection`) or something the adapter saw happen to the device
(`host_events`) - and returns the actions it calls for, in order: messages to
send, transfers to submit or cancel, streams to start or stop, blocking
operations to run in a worker thread.  It never touches a device, a socket or
a clock; the adapter (client/usb/engine.py) carries the actions out and
feeds back what came of them.  Every decision is usbredirhost's
(usbredirhost.c, docs/usbredir-protocol.md §4), with these rules kept by
construction and checked by the property tests:

- Every control, bulk and interrupt OUT packet the guest sends is answered
  exactly once, with its own id and type: by its transfer's completion, or
  `cancelled` at once when the guest cancels it (the completion that comes
  later sends nothing), `cancelled` when a reset or a configuration change
  cancels it, `ioerror` when the device goes or the guest rejects it, or
  `ioerror`/`inval` without a transfer when there is no device or the
  endpoint is wrong.  A `cancel_data_packet` for an id that has been answered
  (or was never a transfer, as QEMU sends for control requests) does nothing.
- Every set/get configuration, set/get alt setting, stream start and bulk
  streams request is answered exactly once; stream stops are answered while
  a device is announced and ignored otherwise, as usbredirhost does.  The
  exception: a request whose answer needs a cap the guest did not offer
  (bulk receiving, bulk streams) is not answered, as usbredirparser does.
- At most one blocking operation is out at a time.  Guest messages that
  arrive meanwhile wait (their payloads copied) and are handled in order
  once it is done, as if the operation had run in the read path as in the
  reference.  A reset, configuration or alt setting change that cancelled
  transfers is issued only once every cancelled transfer has come back, so
  nothing of the old setting is in flight when it runs.
- `device_disconnect` is sent at most once per announced device; with the
  `device_disconnect_ack` cap the next device is announced only after the
  ack.  A device is announced (interface_info, ep_info, device_connect)
  only after the guest's hello, and only if the guest's filter allows it.

The state is one class in four modules: this one (events in and out,
device life, transfers, the guest's hello, filter and cancels),
`host_streams` (iso, interrupt and bulk receiving streams),
`host_settings` (configuration, alt setting, reset and the blocking
operations) and `host_bulk_streams` (USB 3 bulk streams: alloc, free, the
streams each endpoint has); `HostState` inherits the other parts' handlers.

Adapter contract: every `SubmitTransfer` gets one `TransferDone` (a cancelled
one too) until the device is released - completions for a released device's
transfers, and for stopped streams, are ignored; every operation gets one
`OperationDone`; a transfer or operation that finds the device gone says so
(`gone=True`), and the state answers with `ReleaseDevice`, which is the only
place the adapter lets go of a device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from redirgate.proto.usbredir import filter as usbfilter
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.connection import verified_caps
from redirgate.proto.usbredir.constants import Cap, EndpointType, Status, slot_endpoint
from redirgate.proto.usbredir.errors import LocalProtocolError
from redirgate.proto.usbredir.host_bulk_streams import BulkStreamsPart
from redirgate.proto.usbredir.host_events import (
    Action,
    AdapterEvent,
    CancelTransfer,
    DeviceDescription,
    DeviceGone,
    DeviceReady,
    OperationDone,
    ReleaseDevice,
    Send,
    StreamPacket,
    StreamRestarted,
    StreamStalled,
    SubmitTransfer,
    TransferDone,
    reply_for,
)
from redirgate.proto.usbredir.host_settings import NO_RESET_IDS, Operation, OpKind, SettingsPart
from redirgate.proto.usbredir.host_streams import INTERRUPT_TRANSFERS, Endpoint, StreamEntry, StreamsPart, stream_status

__all__ = ["INTERRUPT_TRANSFERS", "NO_RESET_IDS", "HostEvent", "HostState", "reply_for", "stream_status"]

#: a data check's verdict: CLEAR_FEATURE(ENDPOINT_HALT), run as an operation (no usbredir status)
_CLEAR_HALT = -1

#: What `HostState.handle` takes: a message the guest sent, or news from the adapter.
HostEvent = m.Message | AdapterEvent


class HostState(StreamsPart, SettingsPart, BulkStreamsPart):
    """The host side of one usbredir connection (see the module docstring).

    `caps` are the capabilities our hello offers.  One device at a time: a
    `DeviceReady` is accepted only after the previous device's
    `ReleaseDevice`."""

    def __init__(self, caps: Cap) -> None:
        self.caps = caps
        #: ours & the guest's, once its hello is in
        self.shared_caps = Cap(0)
        self.have_peer_hello = False
        self.device: DeviceDescription | None = None
        #: True while no device is announced to the guest
        self.disconnected = True
        #: a device is ready but waits for the guest's hello or a disconnect ack
        self.connect_pending = False
        #: device_disconnect sent, the guest's ack expected
        self.wait_ack = False
        #: the device was reset and nothing used it since (a reset is a no-op)
        self.reset_done = False
        #: the guest refused the device: it is not offered again
        self.rejected = False
        self.guest_rules: tuple[usbfilter.FilterRule, ...] | None = None
        #: interface -> alt setting chosen by the guest (0 when not named)
        self.alts: dict[int, int] = {}
        self._endpoints: dict[int, Endpoint] = {}
        self._interfaces: frozenset[int] = frozenset()
        #: transfer handle -> transfer, until its TransferDone or the release
        self._transfers: dict[int, m.DataMessage] = {}
        #: those of `_transfers` whose guest has its reply already (from a
        #: cancel, a reset, an unplug...); a set, so a transfer is one dict entry
        self._answered: set[int] = set()
        #: endpoint -> stream, and handle -> stream
        self._streams: dict[int, StreamEntry] = {}
        self._stream_handles: dict[int, StreamEntry] = {}
        #: bulk endpoint -> USB 3 bulk streams allocated on it (host_bulk_streams)
        self._bulk_streams: dict[int, int] = {}
        self._operation: Operation | None = None
        #: guest messages that arrived while an operation was out
        self._deferred: list[m.Message] = []
        self._next_handle = 1
        self._out: list[Action] = []

    # ---------------------------------------------------------- public
    @property
    def busy(self) -> bool:
        """A blocking operation is out: guest messages wait until it is done
        (an adapter may stop reading meanwhile)."""
        return self._operation is not None

    @property
    def outstanding_transfers(self) -> int:
        """Transfers submitted to the device and not given back yet."""
        return len(self._transfers)

    def handle(self, event: HostEvent) -> list[Action]:
        """Take one event; return the actions it calls for, in order."""
        # a dict lookup or two per event: every transfer passes here twice
        kind = type(event)
        handler = _HANDLERS.get(kind)
        if handler is not None:
            if self.busy:
                self._deferred.append(_owned(event))  # type: ignore[arg-type]  # a message
            else:
                handler(self, event)
        else:
            handler = _ADAPTER_HANDLERS.get(kind)
            if handler is not None:
                handler(self, event)
            elif not isinstance(event, m.Message):  # else one the host role ignores
                raise LocalProtocolError(f"not an event of the host state: {event!r}")
        if self._deferred:
            self._run_deferred()
        out = self._out
        self._out = []
        return out

    # Fast paths: what `handle` does for the two events of every transfer in
    # the common case, without the action objects and lists (an adapter
    # calls them first and `handle` when they decline; the property tests
    # check both ways give the same actions).
    def submit_request(self, msg: m.Message) -> int:
        """`handle(msg)` when its only action is `SubmitTransfer(handle, msg)`:
        that transfer's handle.  0 (nothing done) for anything else: a message
        that is no data request, or one refused, held or turned into an
        operation; give it to `handle`."""
        check = _DATA_CHECKS.get(type(msg))
        if check is None or self._operation is not None or check(self, msg) is not None:
            return 0
        self.reset_done = False
        handle = self._next_handle
        self._next_handle = handle + 1
        self._transfers[handle] = msg  # type: ignore[assignment]  # a data request (its check is)
        return handle

    def transfer_reply(self, event: TransferDone) -> m.DataMessage | None:
        """`handle(event)` when its only action is sending the transfer's
        reply: that reply.  None (nothing done) when more follows or nothing
        is sent (the device is gone, the guest was answered already, an
        operation waits); give it to `handle`."""
        if event.gone or self._operation is not None:
            return None
        msg = self._transfers.get(event.transfer)
        if msg is None or event.transfer in self._answered:
            return None
        del self._transfers[event.transfer]
        length = len(event.data) if event.length is None else event.length
        inbound = msg.requesttype & 0x80 if type(msg) is m.ControlPacket else msg.endpoint_address & 0x80
        return reply_for(msg, event.status, length, event.data if inbound else b"")

    # ---------------------------------------------------------- helpers
    def _handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _send(self, message: m.Message) -> None:
        self._out.append(Send(message))

    def _run_deferred(self) -> None:
        while self._deferred and self._operation is None:
            self._on_message(self._deferred.pop(0))

    def _describe(self, description: DeviceDescription) -> None:
        """Take the device's tables (after it came, or a configuration or alt change)."""
        self.device = description
        info = description.endpoints
        table: dict[int, Endpoint] = {}
        for slot in range(32):
            table[slot_endpoint(slot)] = Endpoint(info.type[slot], info.interface[slot], info.max_packet_size[slot])
        self._endpoints = table
        interfaces = description.interfaces
        self._interfaces = frozenset(interfaces.interface[: interfaces.interface_count])

    def _announce_tables(self) -> None:
        assert self.device is not None
        self._send(self.device.interfaces)
        self._send(self.device.endpoints)

    # ---------------------------------------------------------- device life
    def _on_device_ready(self, event: DeviceReady) -> None:
        if self.device is not None:
            raise LocalProtocolError("DeviceReady while a device is held (ReleaseDevice it first)")
        if self.rejected:
            raise LocalProtocolError("DeviceReady after the guest rejected the device")
        self.alts = {}
        self._describe(event.description)
        self.reset_done = event.reset_done
        self.connect_pending = True
        self._maybe_announce()

    def _maybe_announce(self) -> None:
        """interface_info, ep_info, device_connect - once the guest's hello is
        in and no disconnect ack is awaited (usbredirhost connect_pending)."""
        if not self.connect_pending or self.device is None or not self.have_peer_hello or self.wait_ack:
            return
        if self._filtered_out():
            return
        self.connect_pending = False
        self._announce_tables()
        self._send(self.device.connect)
        self.disconnected = False

    def _filtered_out(self) -> bool:
        """A device the guest's own filter rejects is dropped (and not offered again)."""
        if self.guest_rules is None or self.device is None:
            return False
        connect = self.device.connect
        info = self.device.interfaces
        n = info.interface_count
        verdict = usbfilter.check(
            self.guest_rules,
            connect.device_class,
            connect.device_subclass,
            connect.device_protocol,
            zip(info.interface_class[:n], info.interface_subclass[:n], info.interface_protocol[:n], strict=True),
            connect.vendor_id,
            connect.product_id,
            connect.device_version_bcd,
            usbfilter.FilterFlag.DEFAULT_ALLOW,
        )
        if verdict.allowed:
            return False
        self.rejected = True
        self._lose_device(f"the guest's filter rejects it ({verdict.name.lower()})", rejected=True)
        return True

    def _lose_device(self, reason: str, *, rejected: bool = False, notify: bool = True) -> None:
        """The device is gone or refused: answer what is open, tell the guest
        once (unless `notify` is off: it detached the device itself), release."""
        if self.device is None:
            return
        self.connect_pending = False
        self._answer_transfers(Status.IOERROR)
        for stream in list(self._streams.values()):
            self._stop_stream(stream)
        if not self.disconnected:
            self.disconnected = True
            if notify:
                self._send(m.DeviceDisconnect())
                if Cap.DEVICE_DISCONNECT_ACK in self.shared_caps:
                    self.wait_ack = True
        operation = self._operation
        if operation is not None:
            self._operation = None
            self._answer_operation(operation, Status.IOERROR)
        self._transfers.clear()  # the adapter forgets them with the device
        self._answered.clear()
        self._bulk_streams.clear()
        self.device = None
        self._endpoints = {}
        self._interfaces = frozenset()
        self.alts = {}
        self.reset_done = False
        self._out.append(ReleaseDevice(reason, rejected))

    # ---------------------------------------------------------- transfers
    def _answer_transfers(self, status: Status, endpoints: frozenset[int] | None = None) -> None:
        """Answer every unanswered transfer (of `endpoints`, else all) with
        `status` and cancel it on the device."""
        answered = self._answered
        for handle, msg in self._transfers.items():
            if handle in answered:
                continue
            if endpoints is not None and _endpoint_key(msg) not in endpoints:
                continue
            answered.add(handle)
            self._send(reply_for(msg, status))
            self._out.append(CancelTransfer(handle))

    # Data requests: one check per packet type, in usbredirhost's order;
    # None: submit it (`_on_data`, and `submit_request` without the actions).
    def _check_control(self, msg: m.ControlPacket) -> int | None:
        if self.disconnected:
            return Status.IOERROR
        entry = self._endpoints.get(msg.endpoint)
        if entry is None or entry.type != EndpointType.CONTROL:
            return Status.INVAL
        if msg.requesttype == 0x02 and msg.request == 0x01 and msg.value == 0 and not msg.data:
            # CLEAR_FEATURE(ENDPOINT_HALT) through the host stack, so it
            # learns the halt is cleared (usbredirhost.c)
            return _CLEAR_HALT
        return None

    def _check_bulk(self, msg: m.BulkPacket) -> int | None:
        if self.disconnected:
            return Status.IOERROR
        entry = self._endpoints.get(msg.endpoint)
        if entry is None or entry.type != EndpointType.BULK:
            return Status.INVAL
        if msg.stream_id and msg.stream_id > self._bulk_streams.get(msg.endpoint, 0):
            return Status.INVAL  # a stream the endpoint does not have (none without the cap)
        return None

    def _check_interrupt(self, msg: m.InterruptPacket) -> int | None:
        if self.disconnected:
            return Status.IOERROR
        entry = self._endpoints.get(msg.endpoint)
        if entry is None or entry.type != EndpointType.INTERRUPT or len(msg.data) > entry.max_packet_size:
            return Status.INVAL
        return None

    def _on_data(self, msg: m.DataMessage) -> None:
        verdict = _DATA_CHECKS[type(msg)](self, msg)
        if verdict is None:
            self._submit(msg)
        elif verdict == _CLEAR_HALT:
            self._start_operation(OpKind.CLEAR_HALT, msg)
        else:
            self._out.append(Send(reply_for(msg, verdict)))

    def _submit(self, msg: m.DataMessage) -> None:
        self.reset_done = False
        handle = self._next_handle
        self._next_handle = handle + 1
        self._transfers[handle] = msg
        self._out.append(SubmitTransfer(handle, msg))

    def _on_cancel(self, msg: m.CancelDataPacket) -> None:
        # the oldest unanswered transfer with that id (a guest reuses an id
        # only once it was cancelled); none: answered already, or no transfer
        for handle, transfer in self._transfers.items():
            if transfer.id == msg.id and handle not in self._answered:
                self._answered.add(handle)
                self._send(reply_for(transfer, Status.CANCELLED))
                self._out.append(CancelTransfer(handle))
                return

    def _on_transfer_done(self, event: TransferDone) -> None:
        msg = self._transfers.pop(event.transfer, None)
        if msg is None:
            return  # its device was released
        if event.transfer in self._answered:
            self._answered.discard(event.transfer)
        else:
            if event.gone:
                self._send(reply_for(msg, Status.IOERROR))
            else:
                length = len(event.data) if event.length is None else event.length
                inbound = msg.requesttype & 0x80 if type(msg) is m.ControlPacket else msg.endpoint_address & 0x80
                self._out.append(Send(reply_for(msg, event.status, length, event.data if inbound else b"")))
        if event.gone:
            self._lose_device("a transfer found the device gone")
        if self._operation is not None:
            self._maybe_issue()

    # ---------------------------------------------------------- guest messages
    def _on_message(self, msg: m.Message) -> None:
        handler = _HANDLERS.get(type(msg))
        if handler is not None:  # else one the host role ignores
            handler(self, msg)

    def _on_hello(self, msg: m.Hello) -> None:
        if self.have_peer_hello:
            return
        self.have_peer_hello = True
        # as the connection keeps them (bulk streams need ep_info_max_packet_size)
        self.shared_caps = self.caps & verified_caps(msg.caps)
        self._maybe_announce()

    def _on_filter_reject(self, msg: m.FilterReject) -> None:
        if self.disconnected:
            return
        self.rejected = True
        self._lose_device("the guest rejected it", rejected=True, notify=False)

    def _on_filter_filter(self, msg: m.FilterFilter) -> None:
        try:
            self.guest_rules = usbfilter.parse_rules(msg.filter_string)
        except usbfilter.FilterError:
            return  # usbredirhost ignores a filter it cannot parse
        if not self.disconnected:
            self._filtered_out()

    def _on_disconnect_ack(self, msg: m.DeviceDisconnectAck) -> None:
        if not self.wait_ack:
            return  # usbredirhost logs it and goes on
        self.wait_ack = False
        self._maybe_announce()

    # ---------------------------------------------------------- device gone
    def _on_device_gone(self, event: DeviceGone) -> None:
        self._lose_device(event.reason)


def _endpoint_key(msg: m.DataMessage) -> int:
    return 0 if isinstance(msg, m.ControlPacket) else msg.endpoint_address


def _owned(msg: m.Message) -> m.Message:
    """`msg` with a payload of its own (a parsed payload is a view of the
    parser's buffer, which the next receive overwrites)."""
    if isinstance(msg, m.DataMessage) and isinstance(msg.data, memoryview):
        return dataclasses.replace(msg, data=bytes(msg.data))
    return msg


#: The checks of the data requests the host submits as transfers.
_DATA_CHECKS: dict[type, Callable[[HostState, Any], int | None]] = {
    m.ControlPacket: HostState._check_control,
    m.BulkPacket: HostState._check_bulk,
    m.InterruptPacket: HostState._check_interrupt,
}
#: What `handle` calls for each adapter event.
_ADAPTER_HANDLERS: dict[type, Callable[[HostState, Any], None]] = {
    TransferDone: HostState._on_transfer_done,
    StreamPacket: HostState._on_stream_packet,
    StreamStalled: HostState._on_stream_stalled,
    StreamRestarted: HostState._on_stream_restarted,
    OperationDone: HostState._on_operation_done,
    DeviceReady: HostState._on_device_ready,
    DeviceGone: HostState._on_device_gone,
}
#: What `_on_message` calls for each message type the host role handles.
_HANDLERS: dict[type, Callable[[HostState, Any], None]] = {
    m.ControlPacket: HostState._on_data,
    m.BulkPacket: HostState._on_data,
    m.InterruptPacket: HostState._on_data,
    m.IsoPacket: HostState._on_iso_packet,
    m.Hello: HostState._on_hello,
    m.CancelDataPacket: HostState._on_cancel,
    m.SetConfiguration: HostState._on_set_configuration,
    m.GetConfiguration: HostState._on_get_configuration,
    m.SetAltSetting: HostState._on_set_alt,
    m.GetAltSetting: HostState._on_get_alt,
    m.Reset: HostState._on_reset,
    m.StartIsoStream: HostState._on_start_iso,
    m.StopIsoStream: HostState._on_stop_iso,
    m.StartInterruptReceiving: HostState._on_start_interrupt,
    m.StopInterruptReceiving: HostState._on_stop_interrupt,
    m.StartBulkReceiving: HostState._on_start_bulk_receiving,
    m.StopBulkReceiving: HostState._on_stop_bulk_receiving,
    m.AllocBulkStreams: HostState._on_alloc_streams,
    m.FreeBulkStreams: HostState._on_free_streams,
    m.FilterReject: HostState._on_filter_reject,
    m.FilterFilter: HostState._on_filter_filter,
    m.DeviceDisconnectAck: HostState._on_disconnect_ack,
}
