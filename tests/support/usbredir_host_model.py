"""A guest and a device around `HostState`, for the property tests and the fuzz target.

`HostModel` owns one `HostState` and plays both sides of it:

- the guest: a real `UsbredirConnection` in the guest role frames each
  request, and a real one in the host role parses it (so the state sees what
  the parser hands the engine: payloads are views of its buffer) and checks
  that every message the state sends would pass the guest's parser;
- the adapter: it keeps the transfers, streams and the operation the state
  asked for, and completes them when told, with any status.

The model feeds the state as the engine does (`HostState.submit_request`,
`transfer_reply` and `stream_message` first, `handle` when they decline)
and feeds a twin state the same events through `handle` alone: both must
ask for the same actions, so the fast paths change nothing.

Every step checks the state's promises (see proto/usbredir/host.py) and
`finish()` checks the one that needs an end: once every transfer and
operation came back, every request the guest sent that must be answered was
answered exactly once.  `run_script(data)` drives a model from bytes (each
byte picks the next step), for hypothesis and for the fuzzer alike.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from redirgate.proto.usbredir import NEED_DATA, Cap, EndpointType, LocalProtocolError, Role, Status, UsbredirConnection
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
    StreamPacket,
    StreamRestarted,
    StreamStalled,
    SubmitTransfer,
    TransferDone,
)

__all__ = ["HOST_CAPS", "STICK", "HostModel", "ModelError", "describe", "run_script"]

#: what the client's engine offers
HOST_CAPS = Cap.all_known()

#: endpoint address -> (type, interface, alt it exists in (None: every alt), max packet size)
_ENDPOINTS = {
    0x81: (EndpointType.BULK, 0, None, 512),
    0x02: (EndpointType.BULK, 0, None, 512),
    0x83: (EndpointType.INTERRUPT, 1, None, 8),
    0x04: (EndpointType.INTERRUPT, 1, None, 8),
    0x85: (EndpointType.ISO, 2, 1, 192),
    0x06: (EndpointType.ISO, 2, 1, 192),
}
#: configuration -> its interfaces (number, class)
_CONFIGS = {1: ((0, 8), (1, 3), (2, 1)), 2: ((0, 8),)}
STICK = (0x1209, 0x0001)


def describe(configuration: int, alts: dict[int, int], ids: tuple[int, int] = STICK) -> DeviceDescription:
    """The test device at these settings: configuration 1 has a bulk pair
    (interface 0), an interrupt pair (1) and an iso pair in alt 1 of 2;
    configuration 2 only the bulk pair."""
    interfaces = _CONFIGS.get(configuration, ())
    numbers = [n for n, _ in interfaces]
    pad = 32 - len(numbers)
    info = m.InterfaceInfo(
        len(numbers),
        tuple(numbers) + (0,) * pad,
        tuple(c for _, c in interfaces) + (0,) * pad,
        (0,) * 32,
        (0,) * 32,
    )
    types = [int(EndpointType.INVALID)] * 32
    types[0] = types[16] = int(EndpointType.CONTROL)
    iface, size = [0] * 32, [0] * 32
    size[0] = size[16] = 64
    for address, (kind, number, alt, packet) in _ENDPOINTS.items():
        if number in numbers and (alt is None or alts.get(number, 0) == alt):
            slot = ((address & 0x80) >> 3) | (address & 0x0F)
            types[slot], iface[slot], size[slot] = int(kind), number, packet
    endpoints = m.EpInfo(tuple(types), (1,) * 32, tuple(iface), tuple(size), (0,) * 32)
    connect = m.DeviceConnect(2, 0, 0, 0, ids[0], ids[1], 0x0100)
    return DeviceDescription(connect, configuration, info, endpoints)


class ModelError(AssertionError):
    """The state broke one of its promises."""


#: request type -> the reply types that answer it
_ANSWERS: dict[type[m.Message], tuple[type[m.Message], ...]] = {
    m.ControlPacket: (m.ControlPacket,),
    m.BulkPacket: (m.BulkPacket,),
    m.InterruptPacket: (m.InterruptPacket,),
    m.IsoPacket: (m.IsoStreamStatus,),
    m.SetConfiguration: (m.ConfigurationStatus,),
    m.GetConfiguration: (m.ConfigurationStatus,),
    m.SetAltSetting: (m.AltSettingStatus,),
    m.GetAltSetting: (m.AltSettingStatus,),
    m.StartIsoStream: (m.IsoStreamStatus,),
    m.StopIsoStream: (m.IsoStreamStatus,),
    m.StartInterruptReceiving: (m.InterruptReceivingStatus,),
    m.StopInterruptReceiving: (m.InterruptReceivingStatus,),
    m.StartBulkReceiving: (m.BulkReceivingStatus,),
    m.StopBulkReceiving: (m.BulkReceivingStatus,),
    m.AllocBulkStreams: (m.BulkStreamsStatus,),
    m.FreeBulkStreams: (m.BulkStreamsStatus,),
}
#: requests answered at most once (not always): iso OUT packets (only on
#: error), stream stops (not while no device is announced)
_MAYBE_ANSWERED = (m.IsoPacket, m.StopIsoStream, m.StopInterruptReceiving, m.StopBulkReceiving)
_STREAM_DATA = (m.IsoPacket, m.BufferedBulkPacket)
_STREAM_STATUS = (m.IsoStreamStatus, m.InterruptReceivingStatus, m.BulkReceivingStatus)


@dataclass
class _Device:
    ids: tuple[int, int]
    configuration: int = 1
    alts: dict[int, int] = field(default_factory=dict)


class HostModel:
    """The guest and the adapter around one `HostState` (module docstring)."""

    def __init__(self, guest_caps: Cap = Cap.all_known()) -> None:
        self.state = HostState(HOST_CAPS)
        #: fed the same events through `handle` only (see `_feed`)
        self.twin = HostState(HOST_CAPS)
        self.guest = UsbredirConnection(Role.GUEST, guest_caps, "model guest")
        self.wire = UsbredirConnection(Role.HOST, HOST_CAPS, "model host")
        self.wire.receive_data(self.guest.hello_bytes())
        self.guest.receive_data(self.wire.hello_bytes())
        assert isinstance(self.guest.next_event(), m.Hello)
        self.hello_delivered = False
        self.next_id = 1
        #: guest id -> the request
        self.requests: dict[int, m.Message] = {}
        self.answers: Counter[int] = Counter()
        #: guest id -> the payload it sent
        self.payloads: dict[int, bytes] = {}
        self.sent: list[m.Message] = []
        #: the adapter: transfer -> (request, cancelled), streams, the operation out
        self.transfers: dict[int, tuple[m.DataMessage, bool]] = {}
        self.streams: dict[int, StartStream] = {}
        self.operation: Action | None = None
        #: bulk endpoint -> streams the device has (what the adapter's allocs and frees left)
        self.bulk_streams: dict[int, int] = {}
        self.device: _Device | None = None
        self.released: list[ReleaseDevice] = []
        #: what the guest was told: a device is attached; an ack is owed
        self.attached = False
        self.ack_owed = False
        self.crossing = False
        self.disconnects = 0

    # ------------------------------------------------------------ the guest
    def deliver_hello(self) -> None:
        if not self.hello_delivered:
            self.hello_delivered = True
            event = self.wire.next_event()
            assert isinstance(event, m.Hello)
            self._apply(self._feed(event))

    def send(self, message: m.Message, *, fresh_id: bool = True) -> int | None:
        """The guest sends `message` (with a new id unless told otherwise);
        None if the guest's own connection refuses to send it."""
        self.deliver_hello()
        if fresh_id:
            message = _with_id(message, self.next_id)
            self.next_id += 1
        if isinstance(message, m.DataMessage) and message.data:
            # a pattern of its own, so a payload read from a reused buffer shows
            message = dataclasses.replace(
                message, data=bytes((message.id + i) & 0xFF for i in range(len(message.data)))
            )
        if isinstance(message, m.DataMessage):
            self.payloads[message.id] = bytes(message.data)
        try:
            self.wire.receive_data(self.guest.send(message))
        except LocalProtocolError:
            return None
        event = self.wire.next_event()
        assert isinstance(event, m.Message), event
        if type(event) in _ANSWERS and self._answerable(event):
            self.requests[event.id] = event
        if isinstance(event, m.DeviceDisconnectAck):
            self.ack_owed = False
        elif isinstance(event, m.FilterReject) and self.attached:
            # the guest detached the device itself; a disconnect the state
            # sends before it reads this crosses it on the wire
            self.attached = False
            self.crossing = True
        self._apply(self._feed(event))
        if self.wire.next_event() is not NEED_DATA:
            raise ModelError("one message sent, more parsed")
        return message.id

    def _answerable(self, request: m.Message) -> bool:
        """The guest offered the cap the answer to `request` needs."""
        shared = self.wire.shared_caps
        if isinstance(request, (m.StartBulkReceiving, m.StopBulkReceiving)):
            return Cap.BULK_RECEIVING in shared
        if isinstance(request, (m.AllocBulkStreams, m.FreeBulkStreams)):
            return Cap.BULK_STREAMS in shared
        return True

    # ------------------------------------------------------------ the device
    def plug(self, ids: tuple[int, int] = STICK, *, reset_done: bool = False) -> bool:
        if self.device is not None or self.state.rejected:
            return False
        self.device = _Device(ids)
        self._apply(self._feed(DeviceReady(describe(1, {}, ids), reset_done)))
        return True

    def unplug(self, reason: str = "unplugged") -> None:
        self._apply(self._feed(DeviceGone(reason)))

    def complete(self, transfer: int, status: int = Status.SUCCESS, data: bytes = b"", *, gone: bool = False) -> None:
        msg, _ = self.transfers.pop(transfer)
        inbound = msg.requesttype & 0x80 if isinstance(msg, m.ControlPacket) else msg.endpoint_address & 0x80
        if inbound:
            data = data[: msg.transfer_length]
        self._apply(self._feed(TransferDone(transfer, status, data if inbound else b"", None, gone)))

    def finish_operation(self, status: int = Status.SUCCESS, *, gone: bool = False) -> None:
        operation = self.operation
        assert operation is not None
        self.operation = None
        description = None
        if self.device is not None and status == Status.SUCCESS and not gone:
            if isinstance(operation, AllocStreams):
                for endpoint in operation.endpoints:
                    self.bulk_streams[endpoint] = operation.streams
            elif isinstance(operation, FreeStreams):
                for endpoint in operation.endpoints:
                    self.bulk_streams.pop(endpoint, None)
            elif isinstance(operation, ChangeConfiguration):
                self.device.configuration = operation.configuration
                self.device.alts = {}
            elif isinstance(operation, ChangeAltSetting):
                self.device.alts[operation.interface] = operation.alt
        if self.device is not None and isinstance(operation, (ChangeConfiguration, ChangeAltSetting)):
            description = describe(self.device.configuration, self.device.alts, self.device.ids)
        handle = operation.operation  # type: ignore[union-attr]  # every operation action has one
        self._apply(self._feed(OperationDone(handle, status, description, gone)))

    def stream_packet(self, handle: int, status: int = Status.SUCCESS, data: bytes = b"x") -> None:
        self._apply(self._feed(StreamPacket(handle, status, data)))

    def stream_restarted(self, handle: int) -> None:
        self._apply(self._feed(StreamRestarted(handle)))

    def stream_stalled(self, handle: int) -> None:
        self.streams.pop(handle, None)
        self._apply(self._feed(StreamStalled(handle)))

    # ------------------------------------------------------------ checks
    def _feed(self, event: HostEvent) -> list[Action]:
        """The state's actions for `event`, taken as the engine takes them,
        checked against the twin's."""
        actions: list[Action]
        if isinstance(event, TransferDone):
            reply = self.state.transfer_reply(event)
            actions = [Send(reply)] if reply is not None else self.state.handle(event)
        elif isinstance(event, StreamPacket):
            packet = self.state.stream_message(event.stream, event.status, event.data)
            actions = [Send(packet)] if packet is not None else []
        elif isinstance(event, m.IsoPacket) and (stream := self.state.iso_out_stream(event)):
            actions = [IsoOut(stream, event.data)]
        else:
            handle = self.state.submit_request(event) if isinstance(event, m.Message) else 0
            if handle:
                assert isinstance(event, m.DataMessage)
                actions = [SubmitTransfer(handle, event)]
            else:
                actions = self.state.handle(event)
        expected = self.twin.handle(event)
        if actions != expected:
            raise ModelError(f"{event!r}: the fast path asked for {actions!r}, handle() for {expected!r}")
        return actions

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._on_send(action.message)
            elif isinstance(action, SubmitTransfer):
                if action.transfer in self.transfers or self.device is None:
                    raise ModelError(f"transfer {action.transfer} submitted twice, or without a device")
                if bytes(action.message.data) != self.payloads.get(action.message.id):
                    raise ModelError(f"transfer {action.transfer} carries other data than the guest sent")
                msg = action.message
                if isinstance(msg, m.BulkPacket) and msg.stream_id > self.bulk_streams.get(msg.endpoint, 0):
                    raise ModelError(f"transfer {action.transfer} on stream {msg.stream_id}, which the device lacks")
                self.transfers[action.transfer] = (action.message, False)
            elif isinstance(action, CancelTransfer):
                if action.transfer not in self.transfers:
                    raise ModelError(f"cancel of transfer {action.transfer}, which is not out")
                self.transfers[action.transfer] = (self.transfers[action.transfer][0], True)
            elif isinstance(
                action, (ClearHalt, ChangeConfiguration, ChangeAltSetting, ResetDevice, AllocStreams, FreeStreams)
            ):
                if self.operation is not None or self.device is None:
                    raise ModelError(f"{action} while {self.operation} is out, or without a device")
                if isinstance(action, FreeStreams) and not all(self.bulk_streams.get(e) for e in action.endpoints):
                    raise ModelError(f"{action} frees streams the device does not have")
                if isinstance(action, (ResetDevice, ChangeConfiguration)):
                    self.bulk_streams.clear()  # the kernel frees them with the interfaces
                elif isinstance(action, ChangeAltSetting):
                    for endpoint, (_, number, _, _) in _ENDPOINTS.items():
                        if number == action.interface:
                            self.bulk_streams.pop(endpoint, None)
                if not isinstance(action, ClearHalt) and any(c for _, c in self.transfers.values()):
                    raise ModelError(f"{action} issued while cancelled transfers are still out")
                if isinstance(action, ResetDevice) and self.device.ids in NO_RESET_IDS:
                    raise ModelError("reset of a device that must not be reset")
                self.operation = action
            elif isinstance(action, StartStream):
                if any(s.endpoint == action.endpoint for s in self.streams.values()):
                    raise ModelError(f"second stream on {action.endpoint:#x}")
                self.streams[action.stream] = action
            elif isinstance(action, StopStream):
                if self.streams.pop(action.stream, None) is None:
                    raise ModelError(f"stop of stream {action.stream}, which is not running")
            elif isinstance(action, IsoOut):
                stream = self.streams.get(action.stream)
                if stream is None or stream.kind != EndpointType.ISO or stream.endpoint & 0x80:
                    raise ModelError(f"iso OUT data for {action.stream}, which is no iso OUT stream")
            elif isinstance(action, ReleaseDevice):
                if self.device is None:
                    raise ModelError("release without a device")
                self.released.append(action)
                self.device = None
                self.bulk_streams.clear()
                self.transfers.clear()
                self.streams.clear()
                self.operation = None
            else:
                raise ModelError(f"unknown action {action!r}")

    def _on_send(self, msg: m.Message) -> None:
        try:
            self.wire.send(msg)  # what the guest's parser would refuse, QEMU aborts on
        except LocalProtocolError as exc:
            raise ModelError(f"the state sent a message the guest's parser refuses: {msg!r}: {exc}") from exc
        self.sent.append(msg)
        kind = type(msg)
        if isinstance(msg, m.DeviceConnect):
            if self.attached or self.ack_owed:
                raise ModelError("device_connect while attached or before the disconnect ack")
            self.attached = True
        elif isinstance(msg, m.DeviceDisconnect):
            if not self.attached and not self.crossing:
                raise ModelError("device_disconnect without an attached device")
            self.attached = self.crossing = False
            self.disconnects += 1
            self.ack_owed = Cap.DEVICE_DISCONNECT_ACK in self.wire.shared_caps
        elif isinstance(msg, _STREAM_DATA) or (isinstance(msg, m.InterruptPacket) and msg.endpoint & 0x80):
            if not any(s.endpoint == msg.endpoint_address for s in self.streams.values()):
                raise ModelError(f"stream data for {msg.endpoint_address:#x}, which has no stream")
        elif isinstance(msg, _STREAM_STATUS) and msg.id == 0:
            if msg.status != Status.STALL:  # type: ignore[attr-defined]  # every stream status has one
                raise ModelError(f"unsolicited stream status {msg!r}")
        elif any(kind in answers for answers in _ANSWERS.values()):
            request = self.requests.get(msg.id)
            if request is None or kind not in _ANSWERS[type(request)]:
                raise ModelError(f"{msg!r} answers no request of the guest")
            self.answers[msg.id] += 1
            if self.answers[msg.id] > 1:
                raise ModelError(f"request {msg.id} ({type(request).__name__}) answered twice")

    def finish(self) -> None:
        """Give back every transfer and operation, then check every request
        that must be answered was answered once."""
        for _ in range(1000):
            if self.operation is not None:
                self.finish_operation()
            elif self.transfers:
                self.complete(next(iter(self.transfers)))
            else:
                break
        if self.state.busy or self.transfers:
            raise ModelError("the state still waits with nothing out")
        for msg_id, request in self.requests.items():
            if self.answers[msg_id] == 0 and not isinstance(request, _MAYBE_ANSWERED):
                raise ModelError(f"request {msg_id} ({request!r}) never answered")
        if self.disconnects > len(self.released):
            raise ModelError("more device_disconnects than devices")


def _with_id(message: m.Message, msg_id: int) -> m.Message:
    return dataclasses.replace(message, id=msg_id)


# ------------------------------------------------------------------ scripts
class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def __bool__(self) -> bool:
        return self.pos < len(self.data)

    def take(self, n: int) -> int:
        """The next byte modulo `n` (0 when the bytes are used up)."""
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1] % n


_STATUSES = (Status.SUCCESS, Status.SUCCESS, Status.STALL, Status.TIMEOUT, Status.IOERROR, Status.BABBLE)
_ENDPOINT_CHOICES = (0x81, 0x02, 0x83, 0x04, 0x85, 0x06, 0x07, 0x88)


def run_script(data: bytes) -> HostModel:
    """Drive a model by `data` (byte 0: the guest's caps; then one step per
    byte or two) and check every promise, the final ones included."""
    source = _Bytes(data)
    model = HostModel(Cap(source.take(256)))
    while source:
        _step(model, source)
    model.finish()
    return model


def _pick(source: _Bytes, handles: list[int]) -> int | None:
    return handles[source.take(len(handles))] if handles else None


def _step(model: HostModel, source: _Bytes) -> None:
    step = source.take(30)
    ep = _ENDPOINT_CHOICES[source.take(len(_ENDPOINT_CHOICES))]
    if step == 0:
        model.deliver_hello()
    elif step == 1:
        ids = min(NO_RESET_IDS) if source.take(4) == 0 else STICK
        model.plug(ids, reset_done=bool(ep & 1))
    elif step == 2:
        if source.take(3) == 0:
            model.unplug()
    elif step == 3:
        inbound = source.take(2)
        if source.take(3) == 0:  # CLEAR_FEATURE(ENDPOINT_HALT)
            model.send(m.ControlPacket(0, 1, 0x02, 0, 0, ep, 0))
        else:
            length = source.take(64)
            data = b"" if inbound else bytes(length)
            model.send(
                m.ControlPacket(0x80 if inbound else 0, 6, 0x80 if inbound else 0x40, 0, 0x100, 0, length, data=data)
            )
    elif step == 4:
        length = source.take(600)
        data = b"" if ep & 0x80 else bytes(length)
        model.send(m.BulkPacket(ep, 0, length, source.take(8) // 3, data=data))
    elif step == 5:
        length = source.take(12)
        model.send(m.InterruptPacket(ep & 0x7F, 0, length, data=bytes(length)))
    elif step == 6:
        ids = [i for i in model.requests if isinstance(model.requests[i], m.DataMessage)] or [0]
        model.send(m.CancelDataPacket(id=ids[source.take(len(ids))]), fresh_id=False)
    elif step in (7, 8, 24, 25, 26):
        handle = _pick(source, list(model.transfers))
        if handle is not None:
            gone = step == 8 and source.take(4) == 0
            model.complete(handle, _STATUSES[source.take(len(_STATUSES))], bytes(source.take(80)), gone=gone)
    elif step in (9, 27, 28):
        if model.operation is not None:
            fail = source.take(4)
            model.finish_operation(Status.SUCCESS if fail else Status.STALL, gone=fail == 1 and ep & 1 == 1)
    elif step == 10:
        model.send(m.SetConfiguration(1 + source.take(2)))
    elif step == 11:
        model.send(m.GetConfiguration())
    elif step == 12:
        model.send(m.SetAltSetting(source.take(4), source.take(2)))
    elif step == 13:
        model.send(m.GetAltSetting(source.take(4)))
    elif step == 14:
        model.send(m.Reset())
    elif step == 15:
        kind = source.take(3)
        if kind == 0:
            model.send(m.StartIsoStream(ep, 1 + source.take(40), 1 + source.take(20)))
        elif kind == 1:
            model.send(m.StartInterruptReceiving(ep | 0x80))
        else:
            model.send(m.StartBulkReceiving(0, 512 * source.take(4), ep | 0x80, source.take(20)))
    elif step == 16:
        kind = source.take(3)
        if kind == 0:
            model.send(m.StopIsoStream(ep))
        elif kind == 1:
            model.send(m.StopInterruptReceiving(ep | 0x80))
        else:
            model.send(m.StopBulkReceiving(0, ep | 0x80))
    elif step in (17, 29):
        handle = _pick(source, list(model.streams))
        if handle is not None:
            choice = source.take(12)
            if choice == 0:
                model.stream_stalled(handle)
            elif choice == 1:
                model.stream_restarted(handle)
            else:
                model.stream_packet(handle, _STATUSES[source.take(len(_STATUSES))], bytes(source.take(64)))
    elif step == 18:
        length = source.take(200)
        model.send(m.IsoPacket(ep & 0x7F, 0, length, data=bytes(length)))
    elif step == 19:
        model.send(m.FilterFilter("-1,-1,-1,-1,1" if source.take(4) else "-1,-1,-1,-1,0"))
    elif step == 20:
        if source.take(4) == 0:
            model.send(m.FilterReject())
    elif step == 21:
        if model.ack_owed:  # a spurious ack may cross a disconnect: only a correct guest's here
            model.send(m.DeviceDisconnectAck())
    elif step == 22:
        # the bulk pair (slots 2 and 17), its IN endpoint, or the control endpoint and slot 1
        mask = (0x20004, 0x20000, 0x3)[source.take(3)]
        if source.take(2):
            model.send(m.AllocBulkStreams(mask, source.take(4)))
        else:
            model.send(m.FreeBulkStreams(mask))
    else:
        model.deliver_hello()
