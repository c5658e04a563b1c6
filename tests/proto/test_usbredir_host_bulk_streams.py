"""HostState's USB 3 bulk streams (proto/usbredir/host_bulk_streams.py): alloc and free as operations
answered exactly once, transfers on stream ids, and what a reset, a settings change, an unplug and a
guest without the cap do to them.  The property tests of test_usbredir_host.py drive them too."""

from __future__ import annotations

import pytest

from redirgate.proto.usbredir import Cap, Status, UsbredirConnection
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.connection import Role
from redirgate.proto.usbredir.host import HostState
from redirgate.proto.usbredir.host_bulk_streams import mask_endpoints
from redirgate.proto.usbredir.host_events import (
    Action,
    AllocStreams,
    ChangeAltSetting,
    ChangeConfiguration,
    DeviceGone,
    DeviceReady,
    FreeStreams,
    OperationDone,
    ReleaseDevice,
    ResetDevice,
    Send,
    SubmitTransfer,
    TransferDone,
)
from tests.support.usbredir_host_model import describe

ALL = Cap.all_known()
#: the test device's bulk pair (describe(): interface 0), as an alloc/free bitmask: slots 2 and 17
BULK_PAIR = (1 << 2) | (1 << 17)


def sent(actions: list[Action]) -> list[m.Message]:
    return [a.message for a in actions if isinstance(a, Send)]


def only(actions: list[Action]) -> m.Message:
    (message,) = sent(actions)
    return message


def host(guest_caps: Cap = ALL, *, reset_done: bool = False) -> HostState:
    """A state offering every cap that announced the test device to a guest with `guest_caps`."""
    state = HostState(ALL)
    state.handle(m.Hello("guest", guest_caps))
    state.handle(DeviceReady(describe(1, {}), reset_done))
    return state


def allocated(state: HostState, streams: int = 16, msg_id: int = 1) -> None:
    """Allocate `streams` streams on the bulk pair, the device granting them."""
    (alloc,) = state.handle(m.AllocBulkStreams(BULK_PAIR, streams, id=msg_id))
    assert isinstance(alloc, AllocStreams)
    reply = only(state.handle(OperationDone(alloc.operation, Status.SUCCESS)))
    assert reply == m.BulkStreamsStatus(BULK_PAIR, streams, Status.SUCCESS, id=msg_id)


def test_mask_endpoints_follows_the_slot_order() -> None:
    assert mask_endpoints(BULK_PAIR) == (0x02, 0x81)
    assert mask_endpoints(0) == () and mask_endpoints(1 << 31) == (0x8F,)


def test_alloc_is_an_operation_that_holds_later_messages_and_is_answered_once() -> None:
    state = host()
    (alloc,) = state.handle(m.AllocBulkStreams(BULK_PAIR, 16, id=7))
    assert alloc == AllocStreams(alloc.operation, (0x02, 0x81), 16)  # type: ignore[union-attr]
    assert state.busy
    # the guest's next request waits, as in usbredirhost's read path
    assert state.handle(m.BulkPacket(0x81, 0, 512, 1, id=8)) == []
    actions = state.handle(OperationDone(alloc.operation, Status.SUCCESS))  # type: ignore[union-attr]
    assert sent(actions) == [m.BulkStreamsStatus(BULK_PAIR, 16, Status.SUCCESS, id=7)]
    (submitted,) = [a for a in actions if isinstance(a, SubmitTransfer)]
    assert submitted.message.stream_id == 1  # type: ignore[union-attr]
    assert state.handle(OperationDone(alloc.operation, Status.SUCCESS)) == []  # given back twice: nothing


def test_a_failed_alloc_is_reported_and_leaves_no_streams() -> None:
    state = host()
    (alloc,) = state.handle(m.AllocBulkStreams(BULK_PAIR, 16, id=1))
    actions = state.handle(OperationDone(alloc.operation, Status.IOERROR))  # type: ignore[union-attr]
    assert sent(actions) == [m.BulkStreamsStatus(BULK_PAIR, 16, Status.IOERROR, id=1)]
    assert only(state.handle(m.BulkPacket(0x81, 0, 512, 1, id=2))).status == Status.INVAL  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("mask", "streams"),
    [
        (1 << 19, 16),  # 0x83: an interrupt endpoint
        (1 << 7, 16),  # 0x07: no such endpoint
        (BULK_PAIR | 1, 16),  # with the control endpoint
        (0, 16),  # no endpoint
        (BULK_PAIR, 0),  # no stream
    ],
)
def test_impossible_allocs_are_refused_without_the_device(mask: int, streams: int) -> None:
    reply = only(host().handle(m.AllocBulkStreams(mask, streams, id=3)))
    assert reply == m.BulkStreamsStatus(mask, streams, Status.INVAL, id=3)


def test_transfers_on_stream_ids() -> None:
    state = host()
    allocated(state, 16)
    # the fast path and handle() agree: a transfer carrying its stream id
    handle = state.submit_request(m.BulkPacket(0x81, 0, 512, 16, id=2))
    assert handle
    (out,) = state.handle(m.BulkPacket(0x02, 0, 4, 3, id=3, data=b"abcd"))
    assert isinstance(out, SubmitTransfer) and out.message.stream_id == 3  # type: ignore[union-attr]
    reply = state.transfer_reply(TransferDone(handle, Status.SUCCESS, b"x" * 13))
    assert reply == m.BulkPacket(0x81, Status.SUCCESS, 13, 16, id=2, data=b"x" * 13)
    reply = only(state.handle(TransferDone(out.transfer, Status.SUCCESS, length=4)))
    assert reply == m.BulkPacket(0x02, Status.SUCCESS, 4, 3, id=3)
    # a stream the endpoint does not have
    refused = only(state.handle(m.BulkPacket(0x81, 0, 512, 17, id=4)))
    assert refused == m.BulkPacket(0x81, Status.INVAL, 0, 17, id=4)
    assert state.submit_request(m.BulkPacket(0x81, 0, 512, 17, id=4)) == 0
    # stream 0 is the endpoint's ordinary bulk pipe
    assert state.submit_request(m.BulkPacket(0x81, 0, 512, 0, id=5))


def test_free_releases_the_streams_on_the_device() -> None:
    state = host()
    allocated(state)
    (free,) = state.handle(m.FreeBulkStreams(BULK_PAIR, id=2))
    assert free == FreeStreams(free.operation, (0x02, 0x81))  # type: ignore[union-attr]
    reply = only(state.handle(OperationDone(free.operation, Status.SUCCESS)))  # type: ignore[union-attr]
    assert reply == m.BulkStreamsStatus(BULK_PAIR, 0, Status.SUCCESS, id=2)
    assert only(state.handle(m.BulkPacket(0x81, 0, 512, 1, id=3))).status == Status.INVAL  # type: ignore[attr-defined]


def test_free_asks_the_device_only_for_the_endpoints_that_have_streams() -> None:
    state = host()
    (alloc,) = state.handle(m.AllocBulkStreams(1 << 17, 4, id=1))
    state.handle(OperationDone(alloc.operation, Status.SUCCESS))  # type: ignore[union-attr]
    (free,) = state.handle(m.FreeBulkStreams(BULK_PAIR, id=2))
    assert free == FreeStreams(free.operation, (0x81,))  # type: ignore[union-attr]


def test_free_without_streams_is_answered_at_once() -> None:
    # QEMU's xHCI frees a slot's streams when the guest resets it: after our
    # reset freed them, a refusal would make QEMU drop the device
    assert only(host().handle(m.FreeBulkStreams(BULK_PAIR, id=1))) == m.BulkStreamsStatus(
        BULK_PAIR, 0, Status.SUCCESS, id=1
    )


def test_reset_with_streams_allocated_frees_them() -> None:
    state = host()
    allocated(state)
    (reset,) = state.handle(m.Reset())
    assert isinstance(reset, ResetDevice)
    assert state.handle(OperationDone(reset.operation, Status.SUCCESS)) == []
    assert only(state.handle(m.BulkPacket(0x81, 0, 512, 1, id=2))).status == Status.INVAL  # type: ignore[attr-defined]
    # the guest's xHCI frees them too: answered without the device
    assert only(state.handle(m.FreeBulkStreams(BULK_PAIR, id=3))).status == Status.SUCCESS  # type: ignore[attr-defined]
    allocated(state, 8, msg_id=4)  # and allocates them again
    assert state.submit_request(m.BulkPacket(0x81, 0, 512, 8, id=5))


def test_a_reset_that_is_a_no_op_keeps_them() -> None:
    state = host(reset_done=True)
    allocated(state)  # a stream alloc is no transfer: the device is still fresh from its reset
    assert state.handle(m.Reset()) == []
    assert state.submit_request(m.BulkPacket(0x81, 0, 512, 1, id=2))


def stream_refused(state: HostState, msg_id: int) -> bool:
    """Whether a read on stream 1 of 0x81 is refused (else it is submitted, and completed here)."""
    transfer = state.submit_request(m.BulkPacket(0x81, 0, 512, 1, id=msg_id))
    if transfer:
        state.handle(TransferDone(transfer, Status.SUCCESS, b"x"))
        return False
    return only(state.handle(m.BulkPacket(0x81, 0, 512, 1, id=msg_id))).status == Status.INVAL  # type: ignore[attr-defined]


def test_settings_changes_forget_the_streams_of_their_endpoints() -> None:
    state = host()
    allocated(state)
    (change,) = state.handle(m.SetAltSetting(1, 0, id=2))  # interface 1: the interrupt pair
    assert isinstance(change, ChangeAltSetting)
    state.handle(OperationDone(change.operation, Status.SUCCESS, describe(1, {})))
    assert not stream_refused(state, 3)  # interface 0 keeps its streams
    (change,) = state.handle(m.SetAltSetting(0, 0, id=4))
    assert isinstance(change, ChangeAltSetting)
    state.handle(OperationDone(change.operation, Status.SUCCESS, describe(1, {})))
    assert stream_refused(state, 5)
    allocated(state, msg_id=6)
    (change,) = state.handle(m.SetConfiguration(2, id=7))
    assert isinstance(change, ChangeConfiguration)
    state.handle(OperationDone(change.operation, Status.SUCCESS, describe(2, {})))
    assert stream_refused(state, 8)


def test_unplug_with_streams_allocated_and_a_stream_transfer_out() -> None:
    state = host()
    allocated(state)
    transfer = state.submit_request(m.BulkPacket(0x81, 0, 512, 2, id=2))
    actions = state.handle(DeviceGone("unplugged"))
    assert sent(actions) == [m.BulkPacket(0x81, Status.IOERROR, 0, 2, id=2), m.DeviceDisconnect()]
    assert state.handle(TransferDone(transfer, Status.SUCCESS, b"late")) == []
    # while disconnected: an alloc fails, a free has nothing left to free
    assert only(state.handle(m.AllocBulkStreams(BULK_PAIR, 4, id=3))).status == Status.IOERROR  # type: ignore[attr-defined]
    assert only(state.handle(m.FreeBulkStreams(BULK_PAIR, id=4))).status == Status.SUCCESS  # type: ignore[attr-defined]
    # the next device starts without streams
    state.handle(m.DeviceDisconnectAck())
    state.handle(DeviceReady(describe(1, {})))
    assert only(state.handle(m.BulkPacket(0x81, 0, 512, 2, id=5))).status == Status.INVAL  # type: ignore[attr-defined]


@pytest.mark.parametrize("request_", [m.AllocBulkStreams(BULK_PAIR, 4, id=1), m.FreeBulkStreams(BULK_PAIR, id=1)])
def test_unplug_while_an_alloc_or_free_is_out_answers_it_once(request_: m.Message) -> None:
    state = host()
    if isinstance(request_, m.FreeBulkStreams):
        allocated(state, msg_id=9)
    (operation,) = state.handle(request_)
    actions = state.handle(DeviceGone("unplugged"))
    streams = request_.no_streams if isinstance(request_, m.AllocBulkStreams) else 0
    assert sent(actions) == [m.DeviceDisconnect(), m.BulkStreamsStatus(BULK_PAIR, streams, Status.IOERROR, id=1)]
    assert isinstance(actions[-1], ReleaseDevice) and not state.busy
    assert state.handle(OperationDone(operation.operation, Status.SUCCESS)) == []  # type: ignore[union-attr]


def test_an_alloc_that_finds_the_device_gone_drops_it() -> None:
    state = host()
    (alloc,) = state.handle(m.AllocBulkStreams(BULK_PAIR, 4, id=1))
    actions = state.handle(OperationDone(alloc.operation, Status.IOERROR, gone=True))  # type: ignore[union-attr]
    assert sent(actions) == [m.DeviceDisconnect(), m.BulkStreamsStatus(BULK_PAIR, 4, Status.IOERROR, id=1)]


def test_a_guest_without_the_cap() -> None:
    state = host(ALL & ~Cap.BULK_STREAMS)
    # no answer can be sent: its parser would refuse a bulk_streams_status
    assert state.handle(m.AllocBulkStreams(BULK_PAIR, 4, id=1)) == []
    assert state.handle(m.FreeBulkStreams(BULK_PAIR, id=2)) == []
    assert only(state.handle(m.BulkPacket(0x81, 0, 512, 1, id=3))).status == Status.INVAL  # type: ignore[attr-defined]
    assert not state.busy


def test_ep_info_carries_max_streams_only_with_the_cap() -> None:
    description = describe(1, {})
    streams = [0] * 32
    streams[17] = streams[2] = 16
    ep_info = m.EpInfo(
        description.endpoints.type,
        description.endpoints.interval,
        description.endpoints.interface,
        description.endpoints.max_packet_size,
        tuple(streams),
    )
    for guest_caps, expected in ((ALL, 16), (ALL & ~Cap.BULK_STREAMS, 0)):
        host_conn = UsbredirConnection(Role.HOST, ALL)
        guest = UsbredirConnection(Role.GUEST, guest_caps)
        host_conn.receive_data(guest.hello_bytes())
        guest.receive_data(host_conn.hello_bytes())
        assert isinstance(host_conn.next_event(), m.Hello) and isinstance(guest.next_event(), m.Hello)
        guest.receive_data(host_conn.send(ep_info))
        received = guest.next_event()
        assert isinstance(received, m.EpInfo) and received.max_streams[17] == expected
