"""The settings part of the usbredir host state (`host.py`): the guest's
set/get configuration, set/get alt setting and reset, and the blocking
operations they (and CLEAR_FEATURE(ENDPOINT_HALT)) turn into - one at a
time, issued only once every transfer they cancelled has come back, and
answered exactly once, also when the device goes meanwhile.

`SettingsPart` is a base of `HostState`; it uses the state's tables,
flags, output and device-life helpers (declared below).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.constants import Status
from redirgate.proto.usbredir.errors import LocalProtocolError
from redirgate.proto.usbredir.host_events import (
    Action,
    ChangeAltSetting,
    ChangeConfiguration,
    ClearHalt,
    DeviceDescription,
    OperationDone,
    ResetDevice,
    reply_for,
)
from redirgate.proto.usbredir.host_streams import Endpoint, StreamEntry, stream_status

__all__ = ["NO_RESET_IDS", "OpKind", "Operation", "SettingsPart"]

#: usbredirhost.c: devices that must not be reset (VID, PID)
NO_RESET_IDS = frozenset({(0x1210, 0x001C), (0x2798, 0x0001)})


class OpKind(Enum):
    """The blocking operations, by what the guest asked for."""

    CLEAR_HALT = "clear halt"
    CONFIGURATION = "set configuration"
    ALT_SETTING = "set alt setting"
    RESET = "reset"
    ALLOC_STREAMS = "alloc bulk streams"
    FREE_STREAMS = "free bulk streams"


@dataclass(slots=True)
class Operation:
    """The one blocking operation out (or waiting for cancelled transfers)."""

    handle: int
    kind: OpKind
    msg: m.Message
    #: issued to the adapter (else: waiting for cancelled transfers to come back)
    issued: bool = False


class SettingsPart:
    """The configuration, alt setting, reset and operation handlers of
    `HostState` (see the module docstring)."""

    # what it uses of HostState
    device: DeviceDescription | None
    disconnected: bool
    reset_done: bool
    alts: dict[int, int]
    _endpoints: dict[int, Endpoint]
    _interfaces: frozenset[int]
    _transfers: dict[int, m.DataMessage]
    _answered: set[int]
    _streams: dict[int, StreamEntry]
    _operation: Operation | None
    _out: list[Action]

    if TYPE_CHECKING:

        def _streams_action(self, operation: Operation) -> Action: ...

        def _streams_done(self, msg: m.Message, status: int) -> None: ...

        def _forget_bulk_streams(self, endpoints: frozenset[int] | None = None) -> None: ...

        def _handle(self) -> int: ...

        def _send(self, message: m.Message) -> None: ...

        def _answer_transfers(self, status: Status, endpoints: frozenset[int] | None = None) -> None: ...

        def _stop_stream(self, stream: StreamEntry) -> None: ...

        def _lose_device(self, reason: str, *, rejected: bool = False, notify: bool = True) -> None: ...

        def _describe(self, description: DeviceDescription) -> None: ...

        def _announce_tables(self) -> None: ...

        def _filtered_out(self) -> bool: ...

    def _start_operation(self, kind: OpKind, msg: m.Message) -> None:
        self._operation = Operation(self._handle(), kind, msg)
        self._maybe_issue()

    def _maybe_issue(self) -> None:
        """Issue the waiting operation once no cancelled transfer is out."""
        operation = self._operation
        if operation is None or operation.issued:
            return
        if operation.kind is not OpKind.CLEAR_HALT and self._cancelled_out():
            return
        operation.issued = True
        msg = operation.msg
        if isinstance(msg, m.ControlPacket):
            self._out.append(ClearHalt(operation.handle, msg.index & 0xFF))
        elif isinstance(msg, m.SetConfiguration):
            self._out.append(ChangeConfiguration(operation.handle, msg.configuration))
        elif isinstance(msg, m.SetAltSetting):
            self._out.append(ChangeAltSetting(operation.handle, msg.interface, msg.alt))
        elif isinstance(msg, m.Reset):
            self._out.append(ResetDevice(operation.handle))
        else:
            self._out.append(self._streams_action(operation))

    def _cancelled_out(self) -> bool:
        """A transfer the guest was answered for is still on the device."""
        return bool(self._answered)

    def _answer_operation(self, operation: Operation, status: int) -> None:
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
        elif isinstance(msg, m.AllocBulkStreams):
            self._send(m.BulkStreamsStatus(msg.endpoints, msg.no_streams, status, id=msg.id))
        elif isinstance(msg, m.FreeBulkStreams):
            self._send(m.BulkStreamsStatus(msg.endpoints, 0, status, id=msg.id))

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
        if operation.kind is OpKind.CLEAR_HALT:
            self._answer_operation(operation, event.status)
        elif operation.kind in (OpKind.ALLOC_STREAMS, OpKind.FREE_STREAMS):
            self._streams_done(msg, event.status)
        elif operation.kind is OpKind.RESET:
            if event.status != Status.SUCCESS:
                self._lose_device("reset failed")
                return
            self.reset_done = True
        elif operation.kind is OpKind.CONFIGURATION:
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
        self._forget_bulk_streams()  # released interfaces free their endpoints' streams
        self._start_operation(OpKind.CONFIGURATION, msg)

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
        self._forget_bulk_streams(mine)
        self._start_operation(OpKind.ALT_SETTING, msg)

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
        self._forget_bulk_streams()  # a reset frees every stream (the guest allocates them again)
        self._start_operation(OpKind.RESET, msg)
