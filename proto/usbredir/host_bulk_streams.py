"""The bulk streams part of the usbredir host state (`host.py`): USB 3 bulk
streams (UAS), the guest's `alloc_bulk_streams` and `free_bulk_streams`.

usbredirhost hands both straight to libusb (libusb_alloc_streams /
libusb_free_streams) in its read path and answers with
`bulk_streams_status`; here each is a blocking operation (`AllocStreams`,
`FreeStreams`), held and answered exactly once like a configuration change.
A bulk packet with a non-zero `stream_id` is a transfer on that stream
(`SubmitTransfer`, the adapter reads the id off the message).

The state remembers how many streams each endpoint has, because the device
forgets them on its own: a reset, a configuration or alt setting change and
an unplug free them in the kernel (releasing an interface frees its
endpoints' streams).  QEMU's xHCI frees a slot's streams when the guest
resets the device, so a `free_bulk_streams` often arrives for streams our
reset already freed: that is answered `success` without asking the device
(QEMU drops a device whose streams it cannot free).  A bulk packet on a
stream the endpoint does not have is refused with `inval`, as it is
without the cap.

Without the `bulk_streams` cap on both sides nothing is answered (the
guest's parser would refuse the status, as with bulk receiving).

`BulkStreamsPart` is a base of `HostState`; it uses the state's endpoint
table, flags, output and operations (declared below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.constants import Cap, EndpointType, Status, slot_endpoint
from redirgate.proto.usbredir.host_events import Action, AllocStreams, FreeStreams
from redirgate.proto.usbredir.host_settings import Operation, OpKind
from redirgate.proto.usbredir.host_streams import Endpoint

__all__ = ["BulkStreamsPart", "mask_endpoints"]


def mask_endpoints(mask: int) -> tuple[int, ...]:
    """The endpoint addresses of a 32-slot bitmask, in slot order (usbredirhost_ep_mask_to_eps)."""
    return tuple(slot_endpoint(slot) for slot in range(32) if mask >> slot & 1)


class BulkStreamsPart:
    """The bulk streams handlers of `HostState` (see the module docstring)."""

    # what it uses of HostState
    disconnected: bool
    shared_caps: Cap
    _endpoints: dict[int, Endpoint]
    _out: list[Action]
    #: bulk endpoint -> streams allocated on it (ids 1..n), as the device has them
    _bulk_streams: dict[int, int]

    if TYPE_CHECKING:

        def _send(self, message: m.Message) -> None: ...

        def _start_operation(self, kind: OpKind, msg: m.Message) -> None: ...

    def _on_alloc_streams(self, msg: m.AllocBulkStreams) -> None:
        if Cap.BULK_STREAMS not in self.shared_caps:
            # a guest may send it without offering the cap (its parser checks
            # only ours), but would refuse the answer: usbredirparser sends
            # none, and neither do we
            return
        if self.disconnected:
            self._send(m.BulkStreamsStatus(msg.endpoints, msg.no_streams, Status.IOERROR, id=msg.id))
            return
        endpoints = mask_endpoints(msg.endpoints)
        if not endpoints or not msg.no_streams or any(not self._is_bulk(ep) for ep in endpoints):
            # libusb (the kernel) refuses these: EINVAL, usbredirhost's inval
            self._send(m.BulkStreamsStatus(msg.endpoints, msg.no_streams, Status.INVAL, id=msg.id))
            return
        self._start_operation(OpKind.ALLOC_STREAMS, msg)

    def _on_free_streams(self, msg: m.FreeBulkStreams) -> None:
        if Cap.BULK_STREAMS not in self.shared_caps:
            return
        if self.disconnected or not self._allocated(msg.endpoints):
            # nothing to free: a reset, a settings change or the unplug freed them
            self._send(m.BulkStreamsStatus(msg.endpoints, 0, Status.SUCCESS, id=msg.id))
            return
        self._start_operation(OpKind.FREE_STREAMS, msg)

    def _is_bulk(self, endpoint: int) -> bool:
        entry = self._endpoints.get(endpoint)
        return entry is not None and entry.type == EndpointType.BULK

    def _allocated(self, mask: int) -> tuple[int, ...]:
        """The endpoints of `mask` that have streams."""
        return tuple(ep for ep in mask_endpoints(mask) if self._bulk_streams.get(ep))

    def _streams_action(self, operation: Operation) -> Action:
        """What the adapter runs for an issued alloc or free."""
        msg = operation.msg
        if isinstance(msg, m.AllocBulkStreams):
            return AllocStreams(operation.handle, mask_endpoints(msg.endpoints), msg.no_streams)
        assert isinstance(msg, m.FreeBulkStreams)
        return FreeStreams(operation.handle, self._allocated(msg.endpoints))

    def _streams_done(self, msg: m.Message, status: int) -> None:
        """An alloc or free came back with `status`: the table, and the guest's answer."""
        if isinstance(msg, m.AllocBulkStreams):
            if status == Status.SUCCESS:
                for ep in mask_endpoints(msg.endpoints):
                    self._bulk_streams[ep] = msg.no_streams
            self._send(m.BulkStreamsStatus(msg.endpoints, msg.no_streams, status, id=msg.id))
        else:
            assert isinstance(msg, m.FreeBulkStreams)
            if status == Status.SUCCESS:
                for ep in mask_endpoints(msg.endpoints):
                    self._bulk_streams.pop(ep, None)
            self._send(m.BulkStreamsStatus(msg.endpoints, 0, status, id=msg.id))

    def _forget_bulk_streams(self, endpoints: frozenset[int] | None = None) -> None:
        """The device freed the streams of `endpoints` (all when None) on its own."""
        if endpoints is None:
            self._bulk_streams.clear()
        else:
            for ep in endpoints & self._bulk_streams.keys():
                del self._bulk_streams[ep]
