"""The streams part of the usbredir host state (`host.py`): iso streams,
interrupt receiving and bulk receiving - usbredirhost's checks when the
guest starts one, the stop requests, the guest's iso OUT packets, and the
packets an IN stream read, numbered per stream as they go to the guest.

`StreamsPart` is a base of `HostState`; it keeps the stream tables and
uses the state's endpoint table, flags and output (declared below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.constants import Cap, EndpointType, Status
from redirgate.proto.usbredir.host_events import (
    Action,
    IsoOut,
    StartStream,
    StopStream,
    StreamPacket,
    StreamRestarted,
    StreamStalled,
)

__all__ = ["INTERRUPT_TRANSFERS", "Endpoint", "StreamEntry", "StreamsPart", "stream_status"]

#: usbredirhost.c: interrupt receiving keeps this many transfers in flight
INTERRUPT_TRANSFERS = 5
_MAX_PACKETS = 32
_MAX_TRANSFERS = 16


def stream_status(kind: EndpointType, endpoint: int, status: int, msg_id: int = 0) -> m.Message:
    """The status message of a stream of this kind."""
    if kind == EndpointType.ISO:
        return m.IsoStreamStatus(status, endpoint, id=msg_id)
    if kind == EndpointType.INTERRUPT:
        return m.InterruptReceivingStatus(status, endpoint, id=msg_id)
    return m.BulkReceivingStatus(0, endpoint, status, id=msg_id)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of the current settings: its type, interface and max packet size."""

    type: int
    interface: int
    max_packet_size: int


@dataclass(slots=True)
class StreamEntry:
    """A stream the state started (its adapter-side handle and what it numbers)."""

    handle: int
    kind: EndpointType
    endpoint: int
    packet_size: int
    #: the id of the next packet sent to the guest
    next_id: int = 0


class StreamsPart:
    """The stream handlers of `HostState` (see the module docstring)."""

    # what it uses of HostState
    disconnected: bool
    reset_done: bool
    shared_caps: Cap
    _endpoints: dict[int, Endpoint]
    _out: list[Action]
    #: endpoint -> stream, and handle -> stream
    _streams: dict[int, StreamEntry]
    _stream_handles: dict[int, StreamEntry]
    _operation: object | None

    if TYPE_CHECKING:

        def _handle(self) -> int: ...

        def _send(self, message: m.Message) -> None: ...

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
        stream = StreamEntry(self._handle(), kind, endpoint, packet)
        self._streams[endpoint] = stream
        self._stream_handles[stream.handle] = stream
        self._send(stream_status(kind, endpoint, Status.SUCCESS, msg_id))
        self._out.append(StartStream(stream.handle, kind, endpoint, packet, packets, transfers))

    def _stop_stream(self, stream: StreamEntry) -> None:
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
            return  # no answer can be sent (see BulkStreamsPart._on_alloc_streams)
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

    def iso_out_stream(self, msg: m.IsoPacket) -> int:
        """`handle(msg)` for an iso OUT packet when its only action is
        `IsoOut(stream, msg.data)`: that stream's handle, without the action
        list (an adapter's path for every packet, a thousand a second).  0
        (nothing done) for anything else: give it to `handle`."""
        if self.disconnected or self._operation is not None:
            return 0
        stream = self._streams.get(msg.endpoint)
        if (
            stream is None
            or stream.kind is not EndpointType.ISO
            or msg.endpoint & 0x80
            or len(msg.data) > stream.packet_size
        ):
            return 0
        return stream.handle

    def stream_message(self, handle: int, status: int, data: m.Buffer = b"") -> m.Message | None:
        """What `handle(StreamPacket(handle, status, data))` sends, without
        the event and action objects (an adapter's path for every packet):
        the packet with the stream's next id, or None when the stream was
        stopped meanwhile (or is an OUT stream, which reads nothing)."""
        stream = self._stream_handles.get(handle)
        if stream is None or stream.endpoint & 0x80 == 0:
            return None
        msg_id = stream.next_id
        stream.next_id = msg_id + 1
        if status:  # not Status.SUCCESS (0): no data
            data = b""
        kind = stream.kind
        if kind is EndpointType.ISO:
            return m.IsoPacket(stream.endpoint, status, len(data), id=msg_id, data=data)
        if kind is EndpointType.INTERRUPT:
            return m.InterruptPacket(stream.endpoint, status, len(data), id=msg_id, data=data)
        return m.BufferedBulkPacket(
            stream_id=0, length=len(data), endpoint=stream.endpoint, status=status, id=msg_id, data=data
        )

    def _on_stream_packet(self, event: StreamPacket) -> None:
        message = self.stream_message(event.stream, event.status, event.data)
        if message is not None:
            self._send(message)

    def _on_stream_restarted(self, event: StreamRestarted) -> None:
        stream = self._stream_handles.get(event.stream)
        if stream is not None:
            stream.next_id = 0

    def _on_stream_stalled(self, event: StreamStalled) -> None:
        stream = self._stream_handles.pop(event.stream, None)
        if stream is None:
            return
        del self._streams[stream.endpoint]
        self._send(stream_status(stream.kind, stream.endpoint, Status.STALL))
