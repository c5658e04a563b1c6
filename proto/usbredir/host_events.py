"""What goes into and comes out of the usbredir host state (`host.py`).

Events in (besides the guest's parsed messages, which go in as they are):
the device the adapter opened (`DeviceReady`) and lost (`DeviceGone`), the
completion of a transfer it was told to submit (`TransferDone`), data a
stream read (`StreamPacket`), a stream that stalled for good
(`StreamStalled`), and the result of a blocking operation (`OperationDone`).

Actions out: messages for the guest (`Send`), transfers to submit and to
cancel, streams to start and stop, iso OUT packets for a stream, blocking
operations for a worker thread (`ClearHalt`, `ChangeConfiguration`,
`ChangeAltSetting`, `ResetDevice`, `AllocStreams`, `FreeStreams`), and the device to let go of
(`ReleaseDevice`).  Transfers, streams and operations are named by handles
the state hands out (increasing ints, never reused), not by the guest's ids:
a guest may reuse an id once it was cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.constants import EndpointType
from redirgate.proto.usbredir.errors import LocalProtocolError

__all__ = [
    "Action",
    "AdapterEvent",
    "AllocStreams",
    "CancelTransfer",
    "ChangeAltSetting",
    "ChangeConfiguration",
    "ClearHalt",
    "DeviceDescription",
    "DeviceGone",
    "DeviceReady",
    "FreeStreams",
    "IsoOut",
    "OperationDone",
    "ReleaseDevice",
    "ResetDevice",
    "Send",
    "StartStream",
    "StopStream",
    "StreamPacket",
    "StreamRestarted",
    "StreamStalled",
    "SubmitTransfer",
    "TransferDone",
    "reply_for",
]


@dataclass(frozen=True, slots=True)
class DeviceDescription:
    """What the guest is told about the device at its current settings: the
    announcement itself, the active configuration (0: unconfigured) and the
    interface and endpoint tables (max packet sizes already for the speed)."""

    connect: m.DeviceConnect
    configuration: int
    interfaces: m.InterfaceInfo
    endpoints: m.EpInfo


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


# ---------------------------------------------------------------- events in
@dataclass(slots=True)
class DeviceReady:
    """The adapter opened and claimed a device.  `reset_done`: it reset the
    device already (so the guest's first reset is a no-op, as in usbredirhost)."""

    description: DeviceDescription
    reset_done: bool = False


@dataclass(slots=True)
class DeviceGone:
    """The device is gone (unplugged), or the application lets go of it."""

    reason: str


@dataclass(slots=True)
class TransferDone:
    """A submitted transfer came back.  `status` is a usbredir `Status`;
    `data` what an IN transfer read (ignored for OUT); `length` the bytes moved
    (default: ``len(data)``).  `gone`: it failed because the device is gone."""

    transfer: int
    status: int
    data: m.Buffer = b""
    length: int | None = None
    gone: bool = False


@dataclass(slots=True)
class StreamPacket:
    """One packet an IN stream read (an iso packet, one interrupt or bulk
    receiving transfer); the state gives it the stream's next id."""

    stream: int
    status: int
    data: m.Buffer = b""


@dataclass(slots=True)
class StreamRestarted:
    """The adapter cleared a halt on an IN stream and goes on reading: its
    packet ids start again at 0, as usbredirhost's re-allocated stream does."""

    stream: int


@dataclass(slots=True)
class StreamStalled:
    """A stream stopped on a halt the adapter could not clear."""

    stream: int


@dataclass(slots=True)
class OperationDone:
    """A blocking operation finished with this usbredir `Status`.  A changed
    configuration or alt setting comes with the device's new description;
    `gone`: it failed because the device is gone."""

    operation: int
    status: int
    description: DeviceDescription | None = None
    gone: bool = False


AdapterEvent = DeviceReady | DeviceGone | TransferDone | StreamPacket | StreamRestarted | StreamStalled | OperationDone


# -------------------------------------------------------------- actions out
@dataclass(slots=True)
class Send:
    """A message for the guest, in this order with the others."""

    message: m.Message


@dataclass(slots=True)
class SubmitTransfer:
    """Submit the guest's control, bulk or interrupt OUT request `message`
    as transfer `transfer`; answer with exactly one `TransferDone`.  Its data
    may be a view of the parser's buffer: copy it before the next receive."""

    transfer: int
    message: m.DataMessage


@dataclass(slots=True)
class CancelTransfer:
    """Cancel a submitted transfer (the guest was answered already); its
    `TransferDone` is still expected, and sends nothing."""

    transfer: int


@dataclass(slots=True)
class StartStream:
    """Start reading (IN) or writing (iso OUT) a stream of `transfers`
    transfers of `packets` packets of `packet_size` bytes each."""

    stream: int
    kind: EndpointType
    endpoint: int
    packet_size: int
    packets: int
    transfers: int


@dataclass(slots=True)
class StopStream:
    """Stop a stream; what it reads afterwards is dropped."""

    stream: int


@dataclass(slots=True)
class IsoOut:
    """An iso OUT packet for a running stream (copy `data`: it may be a view
    of the parser's buffer)."""

    stream: int
    data: m.Buffer = field(repr=False)


@dataclass(slots=True)
class ClearHalt:
    """Clear the halt of `endpoint` through the host stack; answer with
    `OperationDone`."""

    operation: int
    endpoint: int


@dataclass(slots=True)
class ChangeConfiguration:
    """Release the interfaces, set `configuration`, claim its interfaces;
    answer with `OperationDone` carrying the new description."""

    operation: int
    configuration: int


@dataclass(slots=True)
class ChangeAltSetting:
    """Set alt setting `alt` of `interface`; answer with `OperationDone`
    carrying the new description."""

    operation: int
    interface: int
    alt: int


@dataclass(slots=True)
class ResetDevice:
    """Reset the device, keeping its configuration and alt settings; answer
    with `OperationDone` (a failure drops the device)."""

    operation: int


@dataclass(slots=True)
class AllocStreams:
    """Allocate `streams` bulk streams (ids 1..`streams`) on each of
    `endpoints` (libusb_alloc_streams); answer with `OperationDone`, whose
    status is not SUCCESS when fewer were allocated (usbredirhost: ioerror)."""

    operation: int
    endpoints: tuple[int, ...]
    streams: int


@dataclass(slots=True)
class FreeStreams:
    """Free the bulk streams of `endpoints` (libusb_free_streams); answer
    with `OperationDone`."""

    operation: int
    endpoints: tuple[int, ...]


@dataclass(slots=True)
class ReleaseDevice:
    """Let go of the device (once per `DeviceReady`); transfers still out are
    forgotten.  `rejected`: the guest refused it, do not offer it again."""

    reason: str
    rejected: bool = False


Action = (
    Send
    | SubmitTransfer
    | CancelTransfer
    | StartStream
    | StopStream
    | IsoOut
    | ClearHalt
    | ChangeConfiguration
    | ChangeAltSetting
    | ResetDevice
    | AllocStreams
    | FreeStreams
    | ReleaseDevice
)
