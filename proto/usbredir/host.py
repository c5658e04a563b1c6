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
from dataclasses import dataclass
from enum import Enum
from typing import Any

from redirgate.proto.usbredir import filter as usbfilter
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.constants import Cap, EndpointType, Status, slot_endpoint
from redirgate.proto.usbredir.errors import LocalProtocolError
from redirgate.proto.usbredir.host_events import (
    Action,
    AdapterEvent,
    CancelTransfer,
    ChangeAltSetting,
    ChangeConfiguration,
    ClearHalt,
    DeviceDescription,
    DeviceGone,
    DeviceReady,
    IsoOut,
    OperationDone,
    ReleaseDevice,
    ResetDevice,
    Send,
    StartStream,
    StopStream,
    StreamPacket,
    StreamStalled,
    SubmitTransfer,
    TransferDone,
)

__all__ = ["INTERRUPT_TRANSFERS", "NO_RESET_IDS", "HostEvent", "HostState", "reply_for", "stream_status"]

#: usbredirhost.c: devices that must not be reset (VID, PID)
NO_RESET_IDS = frozenset({(0x1210, 0x001C), (0x2798, 0x0001)})
#: usbredirhost.c: interrupt receiving keeps this many transfers in flight
INTERRUPT_TRANSFERS = 5
_MAX_PACKETS = 32
_MAX_TRANSFERS = 16
#: a data check's verdict: CLEAR_FEATURE(ENDPOINT_HALT), run as an operation (no usbredir status)
_CLEAR_HALT = -1

#: What `HostState.handle` takes: a message the guest sent, or news from the adapter.
HostEvent = m.Message | AdapterEvent


def reply_for(msg: m.DataMessage, status: int, length: int = 0, data: m.Buffer = b"") -> m.DataMessage:
    """The reply to a data request: same fields, new status/length (and data)."""
    if isinstance(msg, m.ControlPacket):
        return m.ControlPacket(
            msg.endpoint, msg.request, msg.requesttype, status, msg.value, msg.index, length, id=msg.id, data=data
        )
    if isinstance(msg, m.BulkPacket):
        return m.BulkPacket(msg.endpoint, status, length, msg.stream_id, id=msg.id, data=data)
    if isinstance(msg, m.InterruptPacket):
        return m.InterruptPacket(msg.endpoint, status, length, id=msg.id, data=data)
    raise LocalProtocolError(f"{type(msg).__name__} is not a request the host answers")


def stream_status(kind: EndpointType, endpoint: int, status: int, msg_id: int = 0) -> m.Message:
    """The status message of a stream of this kind."""
    if kind == EndpointType.ISO:
        return m.IsoStreamStatus(status, endpoint, id=msg_id)
    if kind == EndpointType.INTERRUPT:
        return m.InterruptReceivingStatus(status, endpoint, id=msg_id)
    return m.BulkReceivingStatus(0, endpoint, status, id=msg_id)


@dataclass(slots=True)
class _Transfer:
    msg: m.DataMessage
    #: the guest has its reply (from a cancel, a reset, an unplug...)
    answered: bool = False


@dataclass(slots=True)
class _Stream:
    handle: int
    kind: EndpointType
    endpoint: int
    packet_size: int
    #: the id of the next packet sent to the guest
    next_id: int = 0


class _OpKind(Enum):
    CLEAR_HALT = "clear halt"
    CONFIGURATION = "set configuration"
    ALT_SETTING = "set alt setting"
    RESET = "reset"


@dataclass(slots=True)
class _Operation:
    handle: int
    kind: _OpKind
    msg: m.Message
    #: issued to the adapter (else: waiting for cancelled transfers to come back)
    issued: bool = False


@dataclass(frozen=True, slots=True)
class _Endpoint:
    type: int
    interface: int
    max_packet_size: int


class HostState:
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
        self._endpoints: dict[int, _Endpoint] = {}
        self._interfaces: frozenset[int] = frozenset()
        #: transfer handle -> transfer, until its TransferDone or the release
        self._transfers: dict[int, _Transfer] = {}
        #: endpoint -> stream, and handle -> stream
        self._streams: dict[int, _Stream] = {}
        self._stream_handles: dict[int, _Stream] = {}
        self._operation: _Operation | None = None
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
        self._transfers[handle] = _Transfer(msg)  # type: ignore[arg-type]  # a data request (its check is)
        return handle

    def transfer_reply(self, event: TransferDone) -> m.DataMessage | None:
        """`handle(event)` when its only action is sending the transfer's
        reply: that reply.  None (nothing done) when more follows or nothing
        is sent (the device is gone, the guest was answered already, an
        operation waits); give it to `handle`."""
        if event.gone or self._operation is not None:
            return None
        transfer = self._transfers.get(event.transfer)
        if transfer is None or transfer.answered:
            return None
        del self._transfers[event.transfer]
        msg = transfer.msg
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
        table: dict[int, _Endpoint] = {}
        for slot in range(32):
            table[slot_endpoint(slot)] = _Endpoint(info.type[slot], info.interface[slot], info.max_packet_size[slot])
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
        for handle, transfer in self._transfers.items():
            if transfer.answered:
                continue
            if endpoints is not None and _endpoint_key(transfer.msg) not in endpoints:
                continue
            transfer.answered = True
            self._send(reply_for(transfer.msg, status))
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
        if entry is None or entry.type != EndpointType.BULK or msg.stream_id:
            return Status.INVAL  # the wrong type, or a bulk stream (not offered)
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
            self._start_operation(_OpKind.CLEAR_HALT, msg)
        else:
            self._out.append(Send(reply_for(msg, verdict)))

    def _submit(self, msg: m.DataMessage) -> None:
        self.reset_done = False
        handle = self._next_handle
        self._next_handle = handle + 1
        self._transfers[handle] = _Transfer(msg)
        self._out.append(SubmitTransfer(handle, msg))

    def _on_cancel(self, msg: m.CancelDataPacket) -> None:
        # the oldest unanswered transfer with that id (a guest reuses an id
        # only once it was cancelled); none: answered already, or no transfer
        for handle, transfer in self._transfers.items():
            if not transfer.answered and transfer.msg.id == msg.id:
                transfer.answered = True
                self._send(reply_for(transfer.msg, Status.CANCELLED))
                self._out.append(CancelTransfer(handle))
                return

    def _on_transfer_done(self, event: TransferDone) -> None:
        transfer = self._transfers.pop(event.transfer, None)
        if transfer is None:
            return  # its device was released
        if not transfer.answered:
            transfer.answered = True
            msg = transfer.msg
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

    # ---------------------------------------------------------- operations
    def _start_operation(self, kind: _OpKind, msg: m.Message) -> None:
        self._operation = _Operation(self._handle(), kind, msg)
        self._maybe_issue()

    def _maybe_issue(self) -> None:
        """Issue the waiting operation once no cancelled transfer is out."""
        operation = self._operation
        if operation is None or operation.issued:
            return
        if operation.kind is not _OpKind.CLEAR_HALT and self._cancelled_out():
            return
        operation.issued = True
        msg = operation.msg
        if isinstance(msg, m.ControlPacket):
            self._out.append(ClearHalt(operation.handle, msg.index & 0xFF))
        elif isinstance(msg, m.SetConfiguration):
            self._out.append(ChangeConfiguration(operation.handle, msg.configuration))
        elif isinstance(msg, m.SetAltSetting):
            self._out.append(ChangeAltSetting(operation.handle, msg.interface, msg.alt))
        else:
            self._out.append(ResetDevice(operation.handle))

    def _cancelled_out(self) -> bool:
        """A transfer the guest was answered for is still on the device."""
        return any(t.answered for t in self._transfers.values())

    def _answer_operation(self, operation: _Operation, status: int) -> None:
        """The guest's reply to an operation that failed (or whose device went)."""
        msg = operation.msg
        if isinstance(msg, m.ControlPacket):
            self._send(reply_for(msg, status))
        elif isinstance(msg, m.SetConfiguration):
            active = self.device.configuration if self.device is not None else 0
            self._send(m.ConfigurationStatus(status, active, id=msg.id))
        elif isinstance(msg, m.SetAltSetting):
            alt = self.alts.get(msg.interface, 0) if self.device is not None else 0xFF
            self._send(m.AltSettingStatus(status, msg.interface, alt, id=msg.id))

    def _on_operation_done(self, event: OperationDone) -> None:
        operation = self._operation
        if operation is None or operation.handle != event.operation or not operation.issued:
            return  # its device was released (and the guest answered then)
        self._operation = None
        msg = operation.msg
        if event.gone:
            self._operation = operation  # answered by the release, once
            self._lose_device(f"{operation.kind.value} found the device gone")
            return
        if operation.kind is _OpKind.CLEAR_HALT:
            self._answer_operation(operation, event.status)
        elif operation.kind is _OpKind.RESET:
            if event.status != Status.SUCCESS:
                self._lose_device("reset failed")
                return
            self.reset_done = True
        elif operation.kind is _OpKind.CONFIGURATION:
            assert isinstance(msg, m.SetConfiguration)
            if event.description is None:
                raise LocalProtocolError("a configuration change must come with the new description")
            self.alts = {}
            self._describe(event.description)
            self._announce_tables()
            status = Status.SUCCESS if event.status == Status.SUCCESS else Status.IOERROR
            self._send(m.ConfigurationStatus(status, event.description.configuration, id=msg.id))
            self._filtered_out()
        else:
            assert isinstance(msg, m.SetAltSetting)
            if event.status != Status.SUCCESS:
                self._answer_operation(operation, event.status)
                return
            if event.description is None:
                raise LocalProtocolError("an alt setting change must come with the new description")
            self.alts[msg.interface] = msg.alt
            self._describe(event.description)
            self._announce_tables()
            self._send(m.AltSettingStatus(Status.SUCCESS, msg.interface, msg.alt, id=msg.id))

    # ---------------------------------------------------------- guest messages
    def _on_message(self, msg: m.Message) -> None:
        handler = _HANDLERS.get(type(msg))
        if handler is not None:  # else one the host role ignores
            handler(self, msg)

    def _on_hello(self, msg: m.Hello) -> None:
        if self.have_peer_hello:
            return
        self.have_peer_hello = True
        self.shared_caps = self.caps & msg.caps
        self._maybe_announce()

    def _on_set_configuration(self, msg: m.SetConfiguration) -> None:
        device = self.device
        if self.disconnected or device is None:
            self._send(m.ConfigurationStatus(Status.IOERROR, device.configuration if device else 0, id=msg.id))
            return
        if msg.configuration == device.configuration:
            self._send(m.ConfigurationStatus(Status.SUCCESS, msg.configuration, id=msg.id))
            return
        self.reset_done = False
        for stream in list(self._streams.values()):
            self._stop_stream(stream)
        self._answer_transfers(Status.CANCELLED)
        self._start_operation(_OpKind.CONFIGURATION, msg)

    def _on_get_configuration(self, msg: m.GetConfiguration) -> None:
        device = self.device
        status = Status.IOERROR if self.disconnected or device is None else Status.SUCCESS
        self._send(m.ConfigurationStatus(status, device.configuration if device else 0, id=msg.id))

    def _on_set_alt(self, msg: m.SetAltSetting) -> None:
        if self.disconnected:
            self._send(m.AltSettingStatus(Status.IOERROR, msg.interface, 0xFF, id=msg.id))
            return
        if msg.interface not in self._interfaces:
            self._send(m.AltSettingStatus(Status.INVAL, msg.interface, 0xFF, id=msg.id))
            return
        self.reset_done = False
        mine = frozenset(a for a, e in self._endpoints.items() if e.interface == msg.interface and a & 0x0F)
        for stream in list(self._streams.values()):
            if stream.endpoint in mine:
                self._stop_stream(stream)
        self._answer_transfers(Status.CANCELLED, mine)
        self._start_operation(_OpKind.ALT_SETTING, msg)

    def _on_get_alt(self, msg: m.GetAltSetting) -> None:
        if self.disconnected:
            self._send(m.AltSettingStatus(Status.IOERROR, msg.interface, 0xFF, id=msg.id))
        elif msg.interface not in self._interfaces:
            self._send(m.AltSettingStatus(Status.INVAL, msg.interface, 0xFF, id=msg.id))
        else:
            self._send(m.AltSettingStatus(Status.SUCCESS, msg.interface, self.alts.get(msg.interface, 0), id=msg.id))

    def _on_reset(self, msg: m.Reset) -> None:
        if self.disconnected or self.device is None or self.reset_done:
            return
        for stream in list(self._streams.values()):
            # the guest learns its streams are gone and restarts them
            self._send(stream_status(stream.kind, stream.endpoint, Status.STALL))
            self._stop_stream(stream)
        self._answer_transfers(Status.CANCELLED)
        connect = self.device.connect
        if (connect.vendor_id, connect.product_id) in NO_RESET_IDS:
            self.reset_done = True
            return
        self._start_operation(_OpKind.RESET, msg)

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

    # A guest may send a request whose answer needs a cap it did not offer
    # (its parser checks only ours); the guest's parser would refuse the
    # answer, so usbredirparser does not send it, and neither do we.
    def _on_alloc_streams(self, msg: m.AllocBulkStreams) -> None:
        # refused: pyusb has no bulk streams (`caps` should not offer them)
        if Cap.BULK_STREAMS in self.shared_caps:
            self._send(m.BulkStreamsStatus(msg.endpoints, msg.no_streams, Status.IOERROR, id=msg.id))

    def _on_free_streams(self, msg: m.FreeBulkStreams) -> None:
        if Cap.BULK_STREAMS in self.shared_caps:
            self._send(m.BulkStreamsStatus(msg.endpoints, 0, Status.IOERROR, id=msg.id))

    # ---------------------------------------------------------- streams
    def _start_stream(
        self, kind: EndpointType, endpoint: int, msg_id: int, packets: int, transfers: int, size: int | None
    ) -> None:
        """usbredirhost's checks, in its order, each failure a stream status
        (of the requested kind, not the endpoint's as the reference does)."""
        entry = self._endpoints.get(endpoint)
        if self.disconnected or entry is None or entry.type != kind:
            self._send(stream_status(kind, endpoint, Status.STALL, msg_id))
            return
        max_packet = entry.max_packet_size
        packet = size if size is not None else max_packet
        if (
            not (1 <= packets <= _MAX_PACKETS and 1 <= transfers <= _MAX_TRANSFERS)
            or not max_packet
            or packet % max_packet
        ):
            self._send(stream_status(kind, endpoint, Status.STALL, msg_id))
            return
        if endpoint in self._streams:
            self._send(stream_status(kind, endpoint, Status.INVAL, msg_id))
            return
        self.reset_done = False
        stream = _Stream(self._handle(), kind, endpoint, packet)
        self._streams[endpoint] = stream
        self._stream_handles[stream.handle] = stream
        self._send(stream_status(kind, endpoint, Status.SUCCESS, msg_id))
        self._out.append(StartStream(stream.handle, kind, endpoint, packet, packets, transfers))

    def _stop_stream(self, stream: _Stream) -> None:
        del self._streams[stream.endpoint]
        del self._stream_handles[stream.handle]
        self._out.append(StopStream(stream.handle))

    def _stop_request(self, kind: EndpointType, endpoint: int, msg_id: int) -> None:
        if self.disconnected:
            return  # usbredirhost sends nothing while disconnected
        stream = self._streams.get(endpoint)
        if stream is not None:
            self._stop_stream(stream)
        self._send(stream_status(kind, endpoint, Status.SUCCESS, msg_id))

    def _on_start_iso(self, msg: m.StartIsoStream) -> None:
        self._start_stream(EndpointType.ISO, msg.endpoint, msg.id, msg.pkts_per_urb, msg.no_urbs, None)

    def _on_stop_iso(self, msg: m.StopIsoStream) -> None:
        self._stop_request(EndpointType.ISO, msg.endpoint, msg.id)

    def _on_start_interrupt(self, msg: m.StartInterruptReceiving) -> None:
        self._start_stream(EndpointType.INTERRUPT, msg.endpoint, msg.id, 1, INTERRUPT_TRANSFERS, None)

    def _on_stop_interrupt(self, msg: m.StopInterruptReceiving) -> None:
        self._stop_request(EndpointType.INTERRUPT, msg.endpoint, msg.id)

    def _on_start_bulk_receiving(self, msg: m.StartBulkReceiving) -> None:
        if Cap.BULK_RECEIVING not in self.shared_caps:
            return  # no answer can be sent (see _on_alloc_streams)
        self._start_stream(EndpointType.BULK, msg.endpoint, msg.id, 1, msg.no_transfers, msg.bytes_per_transfer)

    def _on_stop_bulk_receiving(self, msg: m.StopBulkReceiving) -> None:
        if Cap.BULK_RECEIVING not in self.shared_caps:
            return
        self._stop_request(EndpointType.BULK, msg.endpoint, msg.id)

    def _on_iso_packet(self, msg: m.IsoPacket) -> None:
        if self.disconnected:
            self._send(m.IsoStreamStatus(Status.IOERROR, msg.endpoint, id=msg.id))
            return
        stream = self._streams.get(msg.endpoint)
        if (
            stream is None
            or stream.kind != EndpointType.ISO
            or msg.endpoint & 0x80
            or len(msg.data) > stream.packet_size
        ):
            self._send(m.IsoStreamStatus(Status.INVAL, msg.endpoint, id=msg.id))
            return
        self._out.append(IsoOut(stream.handle, msg.data))

    def _on_stream_packet(self, event: StreamPacket) -> None:
        stream = self._stream_handles.get(event.stream)
        if stream is None or stream.endpoint & 0x80 == 0:
            return  # stopped meanwhile (or an OUT stream, which reads nothing)
        msg_id = stream.next_id
        stream.next_id += 1
        data = event.data if event.status == Status.SUCCESS else b""
        if stream.kind == EndpointType.ISO:
            self._send(m.IsoPacket(stream.endpoint, event.status, len(data), id=msg_id, data=data))
        elif stream.kind == EndpointType.INTERRUPT:
            self._send(m.InterruptPacket(stream.endpoint, event.status, len(data), id=msg_id, data=data))
        else:
            self._send(
                m.BufferedBulkPacket(
                    stream_id=0, length=len(data), endpoint=stream.endpoint, status=event.status, id=msg_id, data=data
                )
            )

    def _on_device_gone(self, event: DeviceGone) -> None:
        self._lose_device(event.reason)

    def _on_stream_stalled(self, event: StreamStalled) -> None:
        stream = self._stream_handles.pop(event.stream, None)
        if stream is None:
            return
        del self._streams[stream.endpoint]
        self._send(stream_status(stream.kind, stream.endpoint, Status.STALL))


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
