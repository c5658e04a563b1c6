"""HostState (proto/usbredir/host.py): every message the host role handles, and the reply-exactly-once rules.

Table tests feed one situation each and compare the actions; the property
tests drive `HostModel` (tests/support/usbredir_host_model.py: a real guest
connection, a simulated adapter) with arbitrary interleavings of requests,
cancels, resets, configuration changes, completions and unplugs, and the
model checks every promise after every step.  The mutation tests break one
rule of the state at a time and show the property test notices.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redirgate.proto.usbredir import Cap, EndpointType, LocalProtocolError, Status
from redirgate.proto.usbredir import host as host_module
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.host import NO_RESET_IDS, HostState
from redirgate.proto.usbredir.host_events import (
    Action,
    CancelTransfer,
    ChangeAltSetting,
    ChangeConfiguration,
    ClearHalt,
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
    StreamRestarted,
    StreamStalled,
    SubmitTransfer,
    TransferDone,
)
from tests.support.usbredir_host_model import HOST_CAPS, HostModel, ModelError, describe, run_script

ALL = Cap.all_known()


def sent(actions: list[Action]) -> list[m.Message]:
    return [a.message for a in actions if isinstance(a, Send)]


def only(actions: list[Action]) -> m.Message:
    (message,) = sent(actions)
    return message


def host(guest_caps: Cap = ALL, *, ids: tuple[int, int] = (0x1209, 0x0001), reset_done: bool = True) -> HostState:
    """A state that announced the test device (describe()) to a guest with these caps."""
    state = HostState(HOST_CAPS)
    state.handle(m.Hello("guest", guest_caps))
    actions = state.handle(DeviceReady(describe(1, {}, ids), reset_done))
    assert [type(x) for x in sent(actions)] == [m.InterfaceInfo, m.EpInfo, m.DeviceConnect]
    return state


def submit(state: HostState, msg: m.DataMessage) -> int:
    (action,) = state.handle(msg)
    assert isinstance(action, SubmitTransfer) and action.message is msg
    return action.transfer


def control_in(msg_id: int, length: int = 18) -> m.ControlPacket:
    return m.ControlPacket(0x80, 6, 0x80, 0, 0x100, 0, length, id=msg_id)


# --------------------------------------------------------------- hello, announce
def test_device_is_announced_only_after_the_guests_hello() -> None:
    state = HostState(HOST_CAPS)
    assert state.handle(DeviceReady(describe(1, {}))) == []
    actions = state.handle(m.Hello("qemu", Cap.IDS_64BIT | Cap.BULK_STREAMS | Cap.DEVICE_DISCONNECT_ACK))
    assert [type(x) for x in sent(actions)] == [m.InterfaceInfo, m.EpInfo, m.DeviceConnect]
    # ours & theirs as the parser keeps them: bulk streams need ep_info_max_packet_size
    assert state.shared_caps == Cap.IDS_64BIT | Cap.DEVICE_DISCONNECT_ACK
    assert not state.disconnected
    assert state.handle(m.Hello("again", ALL)) == [] and state.shared_caps == Cap.IDS_64BIT | Cap.DEVICE_DISCONNECT_ACK


def test_a_second_device_ready_is_a_local_error() -> None:
    state = host()
    with pytest.raises(LocalProtocolError):
        state.handle(DeviceReady(describe(1, {})))


# --------------------------------------------------------------- data packets
@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (m.ControlPacket(0x81, 6, 0x80, 0, 0x100, 0, 8, id=5), Status.INVAL),  # not a control endpoint
        (m.BulkPacket(0x83, 0, 64, id=5), Status.INVAL),  # interrupt endpoint
        (m.BulkPacket(0x81, 0, 64, 3, id=5), Status.INVAL),  # a bulk stream the endpoint does not have
        (m.InterruptPacket(0x02, 0, 4, id=5, data=b"abcd"), Status.INVAL),  # bulk endpoint
        (m.InterruptPacket(0x04, 0, 9, id=5, data=bytes(9)), Status.INVAL),  # over max packet size 8
        (m.BulkPacket(0x07, 0, 4, id=5, data=b"abcd"), Status.INVAL),  # no such endpoint
    ],
)
def test_misdirected_requests_are_refused_without_a_transfer(request_: m.DataMessage, status: Status) -> None:
    reply = only(host().handle(request_))
    assert type(reply) is type(request_) and reply.id == 5 and reply.status == status  # type: ignore[attr-defined]
    assert reply.transfer_length == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "request_",
    [control_in(5), m.BulkPacket(0x81, 0, 64, id=5), m.InterruptPacket(0x04, 0, 2, id=5, data=b"hi")],
)
def test_requests_without_a_device_get_ioerror(request_: m.DataMessage) -> None:
    state = HostState(HOST_CAPS)
    state.handle(m.Hello("guest", ALL))
    reply = only(state.handle(request_))
    assert type(reply) is type(request_) and reply.status == Status.IOERROR and reply.id == 5  # type: ignore[attr-defined]


def test_transfers_are_submitted_and_answered_once_with_what_came_back() -> None:
    state = host()
    state.reset_done = True
    control = submit(state, control_in(1, 18))
    bulk_out = submit(state, m.BulkPacket(0x02, 0, 4, id=2, data=b"abcd"))
    bulk_in = submit(state, m.BulkPacket(0x81, 0, 512, id=3))
    interrupt = submit(state, m.InterruptPacket(0x04, 0, 2, id=4, data=b"hi"))
    assert not state.reset_done  # a transfer uses the device
    assert len({control, bulk_out, bulk_in, interrupt}) == 4 and state.outstanding_transfers == 4
    reply = only(state.handle(TransferDone(control, Status.SUCCESS, b"\x12\x01" + bytes(16))))
    assert isinstance(reply, m.ControlPacket) and (reply.id, reply.length, bytes(reply.data)) == (
        1,
        18,
        b"\x12\x01" + bytes(16),
    )
    reply = only(state.handle(TransferDone(bulk_out, Status.SUCCESS, length=4)))
    assert isinstance(reply, m.BulkPacket) and (reply.id, reply.length, bytes(reply.data)) == (2, 4, b"")
    reply = only(state.handle(TransferDone(bulk_in, Status.TIMEOUT, b"xy")))
    assert isinstance(reply, m.BulkPacket) and (reply.id, reply.status, bytes(reply.data)) == (3, Status.TIMEOUT, b"xy")
    reply = only(state.handle(TransferDone(interrupt, Status.STALL, length=0)))
    assert isinstance(reply, m.InterruptPacket) and (reply.id, reply.status) == (4, Status.STALL)
    assert state.outstanding_transfers == 0
    assert state.handle(TransferDone(control, Status.SUCCESS)) == []  # given back twice: nothing


def test_clear_halt_goes_through_the_host_stack_and_holds_later_messages() -> None:
    state = host()
    (action,) = state.handle(m.ControlPacket(0, 1, 0x02, 0, 0, 0x81, 0, id=7))
    assert isinstance(action, ClearHalt) and action.endpoint == 0x81 and state.busy
    assert state.handle(m.GetConfiguration(id=8)) == []  # waits behind the operation
    actions = state.handle(OperationDone(action.operation, Status.STALL))
    replies = sent(actions)
    assert isinstance(replies[0], m.ControlPacket) and (replies[0].id, replies[0].status) == (7, Status.STALL)
    assert isinstance(replies[1], m.ConfigurationStatus) and replies[1].id == 8
    assert state.handle(OperationDone(action.operation, Status.SUCCESS)) == []  # only once


def test_a_held_request_keeps_its_own_payload() -> None:
    state = host()
    (halt,) = state.handle(m.ControlPacket(0, 1, 0x02, 0, 0, 0x81, 0, id=7))
    buffer = bytearray(b"abcd")
    assert state.handle(m.BulkPacket(0x02, 0, 4, id=8, data=memoryview(buffer))) == []
    buffer[:] = b"XXXX"  # the parser reuses its buffer
    actions = state.handle(OperationDone(halt.operation, Status.SUCCESS))  # type: ignore[attr-defined]
    (submitted,) = [a for a in actions if isinstance(a, SubmitTransfer)]
    assert bytes(submitted.message.data) == b"abcd"


# --------------------------------------------------------------- cancel
def test_cancel_answers_at_once_and_the_late_completion_sends_nothing() -> None:
    state = host()
    transfer = submit(state, m.BulkPacket(0x81, 0, 512, id=9))
    actions = state.handle(m.CancelDataPacket(id=9))
    assert actions[1] == CancelTransfer(transfer)
    reply = only(actions)
    assert isinstance(reply, m.BulkPacket) and (reply.id, reply.status, reply.length) == (9, Status.CANCELLED, 0)
    assert state.handle(m.CancelDataPacket(id=9)) == []  # answered: nothing
    assert state.handle(TransferDone(transfer, Status.SUCCESS, b"late")) == []
    assert state.handle(m.CancelDataPacket(id=1234)) == []  # never a transfer (QEMU cancels control ids too)


def test_a_cancelled_id_may_be_reused() -> None:
    state = host()
    old = submit(state, m.BulkPacket(0x81, 0, 512, id=9))
    state.handle(m.CancelDataPacket(id=9))
    new = submit(state, m.BulkPacket(0x81, 0, 512, id=9))
    assert state.handle(TransferDone(old, Status.CANCELLED)) == []
    reply = only(state.handle(TransferDone(new, Status.SUCCESS, b"ok")))
    assert (reply.id, reply.status) == (9, Status.SUCCESS)  # type: ignore[attr-defined]


# --------------------------------------------------------------- configuration
def test_configuration_requests() -> None:
    state = host()
    assert only(state.handle(m.GetConfiguration(id=1))) == m.ConfigurationStatus(Status.SUCCESS, 1, id=1)
    assert state.handle(m.SetConfiguration(1, id=2)) == [Send(m.ConfigurationStatus(Status.SUCCESS, 1, id=2))]
    state.handle(DeviceGone("unplugged"))
    assert only(state.handle(m.GetConfiguration(id=3))) == m.ConfigurationStatus(Status.IOERROR, 0, id=3)
    assert only(state.handle(m.SetConfiguration(2, id=4))) == m.ConfigurationStatus(Status.IOERROR, 0, id=4)


def test_set_configuration_cancels_everything_and_waits_for_it_to_come_back() -> None:
    state = host()
    transfer = submit(state, m.BulkPacket(0x81, 0, 512, id=1))
    state.handle(m.StartInterruptReceiving(0x83, id=2))
    actions = state.handle(m.SetConfiguration(2, id=3))
    reply = only(actions)  # no stream status: the streams stop silently
    assert isinstance(reply, m.BulkPacket) and (reply.id, reply.status) == (1, Status.CANCELLED)
    assert any(isinstance(a, StopStream) for a in actions) and CancelTransfer(transfer) in actions
    assert not any(isinstance(a, ChangeConfiguration) for a in actions) and state.busy
    (change,) = state.handle(TransferDone(transfer, Status.CANCELLED))
    assert isinstance(change, ChangeConfiguration) and change.configuration == 2
    actions = state.handle(OperationDone(change.operation, Status.SUCCESS, describe(2, {})))
    assert [type(x) for x in sent(actions)] == [m.InterfaceInfo, m.EpInfo, m.ConfigurationStatus]
    assert sent(actions)[2] == m.ConfigurationStatus(Status.SUCCESS, 2, id=3)
    # configuration 2 has no interrupt endpoint
    assert only(state.handle(m.InterruptPacket(0x04, 0, 1, id=4, data=b"x"))).status == Status.INVAL  # type: ignore[attr-defined]


def test_a_failed_set_configuration_reports_ioerror_and_the_active_one() -> None:
    state = host()
    (change,) = state.handle(m.SetConfiguration(2, id=3))
    actions = state.handle(OperationDone(change.operation, Status.STALL, describe(1, {})))  # type: ignore[attr-defined]
    assert sent(actions)[-1] == m.ConfigurationStatus(Status.IOERROR, 1, id=3)


def test_a_device_gone_during_set_configuration_is_dropped_and_the_request_answered() -> None:
    state = host()
    (change,) = state.handle(m.SetConfiguration(2, id=3))
    actions = state.handle(OperationDone(change.operation, Status.IOERROR, gone=True))  # type: ignore[attr-defined]
    assert sent(actions) == [m.DeviceDisconnect(), m.ConfigurationStatus(Status.IOERROR, 1, id=3)]
    assert isinstance(actions[-1], ReleaseDevice) and not state.busy


# --------------------------------------------------------------- alt settings
def test_alt_setting_requests() -> None:
    state = host()
    assert only(state.handle(m.GetAltSetting(2, id=1))) == m.AltSettingStatus(Status.SUCCESS, 2, 0, id=1)
    assert only(state.handle(m.GetAltSetting(7, id=2))) == m.AltSettingStatus(Status.INVAL, 7, 0xFF, id=2)
    assert only(state.handle(m.SetAltSetting(7, 1, id=3))) == m.AltSettingStatus(Status.INVAL, 7, 0xFF, id=3)
    assert only(state.handle(m.StartIsoStream(0x85, 8, 4, id=4))).status == Status.STALL  # type: ignore[attr-defined]
    (change,) = state.handle(m.SetAltSetting(2, 1, id=5))
    assert change == ChangeAltSetting(change.operation, 2, 1)  # type: ignore[attr-defined]
    actions = state.handle(OperationDone(change.operation, Status.SUCCESS, describe(1, {2: 1})))  # type: ignore[attr-defined]
    assert [type(x) for x in sent(actions)] == [m.InterfaceInfo, m.EpInfo, m.AltSettingStatus]
    assert sent(actions)[2] == m.AltSettingStatus(Status.SUCCESS, 2, 1, id=5)
    assert only(state.handle(m.GetAltSetting(2, id=6))) == m.AltSettingStatus(Status.SUCCESS, 2, 1, id=6)
    assert only(state.handle(m.StartIsoStream(0x85, 8, 4, id=7))).status == Status.SUCCESS  # type: ignore[attr-defined]
    (change,) = state.handle(m.SetAltSetting(2, 3, id=8))[1:]  # the iso stream stops first
    actions = state.handle(OperationDone(change.operation, Status.STALL))  # type: ignore[attr-defined]
    assert sent(actions) == [m.AltSettingStatus(Status.STALL, 2, 1, id=8)]  # the alt it still has
    state.handle(DeviceGone("unplugged"))
    assert only(state.handle(m.GetAltSetting(2, id=9))) == m.AltSettingStatus(Status.IOERROR, 2, 0xFF, id=9)
    assert only(state.handle(m.SetAltSetting(2, 0, id=10))) == m.AltSettingStatus(Status.IOERROR, 2, 0xFF, id=10)


def test_set_alt_setting_cancels_only_its_interfaces_transfers() -> None:
    state = host()
    bulk = submit(state, m.BulkPacket(0x81, 0, 512, id=1))
    interrupt = submit(state, m.InterruptPacket(0x04, 0, 1, id=2, data=b"x"))
    actions = state.handle(m.SetAltSetting(1, 0, id=3))
    assert only(actions) == m.InterruptPacket(0x04, Status.CANCELLED, 0, id=2)
    assert CancelTransfer(interrupt) in actions and CancelTransfer(bulk) not in actions
    (change,) = state.handle(TransferDone(interrupt, Status.CANCELLED))
    assert isinstance(change, ChangeAltSetting)
    assert only(state.handle(TransferDone(bulk, Status.SUCCESS, b"d"))).id == 1


# --------------------------------------------------------------- reset
def test_reset_right_after_a_reset_is_a_no_op() -> None:
    state = host(reset_done=True)
    assert state.handle(m.Reset()) == []


def test_reset_stops_streams_with_a_stall_cancels_transfers_and_waits() -> None:
    state = host(reset_done=False)
    state.handle(m.StartInterruptReceiving(0x83, id=1))
    transfer = submit(state, control_in(2))
    actions = state.handle(m.Reset())
    assert sent(actions) == [
        m.InterruptReceivingStatus(Status.STALL, 0x83, id=0),
        m.ControlPacket(0x80, 6, 0x80, Status.CANCELLED, 0x100, 0, 0, id=2),
    ]
    assert not any(isinstance(a, ResetDevice) for a in actions)
    (reset,) = state.handle(TransferDone(transfer, Status.CANCELLED))
    assert isinstance(reset, ResetDevice)
    assert state.handle(OperationDone(reset.operation, Status.SUCCESS)) == []
    assert state.reset_done and state.handle(m.Reset()) == []


def test_a_failed_reset_drops_the_device() -> None:
    state = host(reset_done=False)
    (reset,) = state.handle(m.Reset())
    actions = state.handle(OperationDone(reset.operation, Status.IOERROR))  # type: ignore[attr-defined]
    assert sent(actions) == [m.DeviceDisconnect()] and isinstance(actions[-1], ReleaseDevice)


def test_a_device_that_must_not_be_reset_is_not() -> None:
    state = host(ids=min(NO_RESET_IDS), reset_done=False)
    assert state.handle(m.Reset()) == [] and state.reset_done


def test_no_reset_while_disconnected() -> None:
    state = host(reset_done=False)
    state.handle(DeviceGone("unplugged"))
    assert state.handle(m.Reset()) == []


# --------------------------------------------------------------- streams
STARTS = [
    (m.StartIsoStream(0x85, 8, 4, id=1), EndpointType.ISO, m.IsoStreamStatus, 0x85),
    (m.StartInterruptReceiving(0x83, id=1), EndpointType.INTERRUPT, m.InterruptReceivingStatus, 0x83),
    (m.StartBulkReceiving(0, 1024, 0x81, 4, id=1), EndpointType.BULK, m.BulkReceivingStatus, 0x81),
]


@pytest.mark.parametrize(("start", "kind", "status_type", "endpoint"), STARTS)
def test_streams_start_deliver_numbered_packets_and_stop(
    start: m.Message, kind: EndpointType, status_type: type[m.Message], endpoint: int
) -> None:
    state = host()
    if kind == EndpointType.ISO:
        (change,) = state.handle(m.SetAltSetting(2, 1, id=50))
        state.handle(OperationDone(change.operation, Status.SUCCESS, describe(1, {2: 1})))  # type: ignore[attr-defined]
    actions = state.handle(start)
    assert isinstance(sent(actions)[0], status_type) and sent(actions)[0].status == Status.SUCCESS  # type: ignore[attr-defined]
    (begin,) = [a for a in actions if isinstance(a, StartStream)]
    assert (begin.kind, begin.endpoint) == (kind, endpoint)
    assert only(state.handle(start)).status == Status.INVAL  # type: ignore[attr-defined]  # running already
    ids = [only(state.handle(StreamPacket(begin.stream, Status.SUCCESS, b"ab"))).id for _ in range(3)]
    assert ids == [0, 1, 2]
    failed = only(state.handle(StreamPacket(begin.stream, Status.BABBLE, b"junk")))
    assert (failed.id, failed.status, bytes(failed.data)) == (3, Status.BABBLE, b"")  # type: ignore[attr-defined]
    # a halt the adapter cleared: the ids start again, as usbredirhost's re-allocated stream's
    assert state.handle(StreamRestarted(begin.stream)) == []
    assert [only(state.handle(StreamPacket(begin.stream, Status.SUCCESS, b"c"))).id for _ in range(2)] == [0, 1]
    # the adapter's path for every packet gives the same, without the objects
    fast = state.stream_message(begin.stream, Status.SUCCESS, b"d")
    assert fast is not None and (fast.id, bytes(fast.data)) == (2, b"d")  # type: ignore[attr-defined]
    stop = {
        EndpointType.ISO: m.StopIsoStream(endpoint, id=9),
        EndpointType.INTERRUPT: m.StopInterruptReceiving(endpoint, id=9),
        EndpointType.BULK: m.StopBulkReceiving(0, endpoint, id=9),
    }[kind]
    actions = state.handle(stop)
    assert StopStream(begin.stream) in actions and only(actions).status == Status.SUCCESS  # type: ignore[attr-defined]
    assert state.handle(StreamPacket(begin.stream, Status.SUCCESS, b"late")) == []
    state.handle(DeviceGone("unplugged"))
    assert state.handle(stop) == []  # nothing while disconnected, as usbredirhost


@pytest.mark.parametrize(
    "start",
    [
        m.StartIsoStream(0x85, 8, 4, id=1),  # alt 0 has no iso endpoint
        m.StartInterruptReceiving(0x81, id=1),  # bulk endpoint
        m.StartBulkReceiving(0, 1000, 0x81, 4, id=1),  # not a multiple of 512
        m.StartBulkReceiving(0, 1024, 0x81, 17, id=1),  # over 16 transfers
        m.StartBulkReceiving(0, 1024, 0x81, 0, id=1),  # no transfers
    ],
)
def test_bad_stream_starts_stall(start: m.Message) -> None:
    reply = only(host().handle(start))
    assert reply.status == Status.STALL and reply.id == 1  # type: ignore[attr-defined]


def test_stream_start_without_a_device_stalls() -> None:
    state = HostState(HOST_CAPS)
    state.handle(m.Hello("guest", ALL))
    assert only(state.handle(m.StartInterruptReceiving(0x83, id=1))) == m.InterruptReceivingStatus(
        Status.STALL, 0x83, id=1
    )


def test_bulk_receiving_is_not_answered_without_the_guests_cap() -> None:
    state = host(ALL & ~Cap.BULK_RECEIVING)
    assert state.handle(m.StartBulkReceiving(0, 1024, 0x81, 4, id=1)) == []
    assert state.handle(m.StopBulkReceiving(0, 0x81, id=2)) == []


def test_a_stalled_stream_tells_the_guest() -> None:
    state = host()
    (begin,) = [a for a in state.handle(m.StartInterruptReceiving(0x83, id=1)) if isinstance(a, StartStream)]
    assert sent(state.handle(StreamStalled(begin.stream))) == [m.InterruptReceivingStatus(Status.STALL, 0x83, id=0)]
    assert only(state.handle(m.StartInterruptReceiving(0x83, id=2))).status == Status.SUCCESS  # type: ignore[attr-defined]


def test_iso_out_packets() -> None:
    state = host()
    assert only(state.handle(m.IsoPacket(0x06, 0, 4, id=1, data=b"abcd"))).status == Status.INVAL  # type: ignore[attr-defined]
    (change,) = state.handle(m.SetAltSetting(2, 1, id=2))
    state.handle(OperationDone(change.operation, Status.SUCCESS, describe(1, {2: 1})))  # type: ignore[attr-defined]
    actions = state.handle(m.StartIsoStream(0x06, 8, 4, id=3))
    (begin,) = [a for a in actions if isinstance(a, StartStream)]
    assert state.handle(m.IsoPacket(0x06, 0, 4, id=4, data=b"abcd")) == [IsoOut(begin.stream, b"abcd")]
    big = m.IsoPacket(0x06, 0, 193, id=5, data=bytes(193))  # over max packet size 192
    assert only(state.handle(big)) == m.IsoStreamStatus(Status.INVAL, 0x06, id=5)
    state.handle(DeviceGone("unplugged"))
    assert only(state.handle(m.IsoPacket(0x06, 0, 1, id=6, data=b"x"))) == m.IsoStreamStatus(Status.IOERROR, 0x06, id=6)


# --------------------------------------------------------------- unplug, filters, ack
def test_unplug_answers_every_transfer_with_ioerror_once() -> None:
    state = host()
    transfers = [submit(state, m.BulkPacket(0x81, 0, 512, id=i)) for i in (1, 2, 3)]
    state.handle(m.CancelDataPacket(id=2))
    actions = state.handle(DeviceGone("unplugged"))
    assert sent(actions) == [
        m.BulkPacket(0x81, Status.IOERROR, 0, id=1),
        m.BulkPacket(0x81, Status.IOERROR, 0, id=3),
        m.DeviceDisconnect(),
    ]
    assert actions[-1] == ReleaseDevice("unplugged", False)
    assert all(state.handle(TransferDone(t, Status.IOERROR, gone=True)) == [] for t in transfers)
    assert state.handle(DeviceGone("again")) == []


def test_a_transfer_that_finds_the_device_gone_drops_it() -> None:
    state = host()
    first = submit(state, m.BulkPacket(0x81, 0, 512, id=1))
    submit(state, m.BulkPacket(0x81, 0, 512, id=2))
    actions = state.handle(TransferDone(first, Status.IOERROR, gone=True))
    assert [(x.id, x.status) for x in sent(actions)[:2]] == [(1, Status.IOERROR), (2, Status.IOERROR)]  # type: ignore[attr-defined]
    assert sent(actions)[2] == m.DeviceDisconnect() and isinstance(actions[-1], ReleaseDevice)


def test_the_next_device_waits_for_the_disconnect_ack() -> None:
    state = host(ALL)
    state.handle(DeviceGone("unplugged"))
    assert state.handle(DeviceReady(describe(1, {}))) == []
    assert [type(x) for x in sent(state.handle(m.DeviceDisconnectAck()))] == [
        m.InterfaceInfo,
        m.EpInfo,
        m.DeviceConnect,
    ]
    assert state.handle(m.DeviceDisconnectAck()) == []  # not awaited: ignored


def test_without_the_ack_cap_the_next_device_is_announced_at_once() -> None:
    state = host(ALL & ~Cap.DEVICE_DISCONNECT_ACK)
    state.handle(DeviceGone("unplugged"))
    assert len(sent(state.handle(DeviceReady(describe(1, {}))))) == 3


def test_filter_reject_drops_the_device_without_a_disconnect() -> None:
    state = host()
    submit(state, m.BulkPacket(0x81, 0, 512, id=1))
    actions = state.handle(m.FilterReject())
    assert sent(actions) == [m.BulkPacket(0x81, Status.IOERROR, 0, id=1)]
    assert actions[-1] == ReleaseDevice("the guest rejected it", True) and state.rejected
    assert state.handle(m.FilterReject()) == []
    with pytest.raises(LocalProtocolError):
        state.handle(DeviceReady(describe(1, {})))


def test_the_guests_filter_rejects_a_device() -> None:
    state = HostState(HOST_CAPS)
    state.handle(m.Hello("guest", ALL))
    assert state.handle(m.FilterFilter("-1,-1,-1,-1,0")) == []  # deny all
    assert state.handle(m.FilterFilter("not a filter")) == []  # ignored, the last good one stays
    actions = state.handle(DeviceReady(describe(1, {})))
    assert sent(actions) == [] and isinstance(actions[-1], ReleaseDevice) and actions[-1].rejected
    announced = host()
    actions = announced.handle(m.FilterFilter("0x08,-1,-1,-1,0|-1,-1,-1,-1,1"))  # no mass storage
    assert sent(actions) == [m.DeviceDisconnect()] and isinstance(actions[-1], ReleaseDevice)


def test_not_an_event() -> None:
    with pytest.raises(LocalProtocolError):
        HostState(HOST_CAPS).handle("bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------- properties
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=500))
def test_every_request_is_answered_exactly_once_whatever_the_interleaving(script: bytes) -> None:
    run_script(script)


def test_seeded_long_sequences() -> None:
    rng = random.Random(13)
    for _ in range(150):
        run_script(rng.randbytes(rng.randrange(200, 1500)))


def test_scenario_unplug_with_everything_in_flight() -> None:
    model = HostModel()
    model.plug()
    model.send(m.StartInterruptReceiving(0x83))
    model.send(m.BulkPacket(0x02, 0, 3, data=b"abc"))
    model.send(m.BulkPacket(0x81, 0, 512))
    model.send(m.SetConfiguration(2))  # cancels both, waits for them
    model.send(m.GetConfiguration())  # held behind it
    model.unplug()
    model.finish()
    assert model.disconnects == 1 and len(model.released) == 1


def _break_cancel(state: HostState, msg: m.CancelDataPacket) -> None:
    for handle, transfer in state._transfers.items():
        if transfer.id == msg.id:  # forgets to mark it answered
            state._send(host_module.reply_for(transfer, Status.CANCELLED))
            state._out.append(CancelTransfer(handle))
            return


def _fast_submit_keeps_reset_done(mp: pytest.MonkeyPatch) -> None:
    submit_request = HostState.submit_request

    def broken(self: HostState, msg: m.Message) -> int:
        reset_done = self.reset_done
        handle = submit_request(self, msg)
        self.reset_done = reset_done  # forgets that a transfer ran since the reset
        return handle

    mp.setattr(HostState, "submit_request", broken)


def _fast_reply_for_answered(mp: pytest.MonkeyPatch) -> None:
    def broken(self: HostState, event: TransferDone) -> m.DataMessage | None:
        transfer = self._transfers.get(event.transfer)
        if event.gone or self._operation is not None or transfer is None:
            return None
        del self._transfers[event.transfer]  # replies also when the guest was answered already
        return host_module.reply_for(transfer, event.status, len(event.data))

    mp.setattr(HostState, "transfer_reply", broken)


MUTATIONS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "fast-submit-keeps-reset-done": _fast_submit_keeps_reset_done,
    "fast-reply-for-answered": _fast_reply_for_answered,
    "cancel-answers-twice": lambda mp: mp.setitem(host_module._HANDLERS, m.CancelDataPacket, _break_cancel),
    "unplug-forgets-transfers": lambda mp: mp.setattr(HostState, "_answer_transfers", lambda self, *a: None),
    "no-wait-for-cancelled": lambda mp: mp.setattr(HostState, "_cancelled_out", lambda self: False),
    "no-holding": lambda mp: mp.setattr(HostState, "busy", property(lambda self: False)),
    "payload-not-owned": lambda mp: mp.setattr(host_module, "_owned", lambda msg: msg),
    "reset-keeps-bulk-streams": lambda mp: mp.setattr(HostState, "_forget_bulk_streams", lambda self, *a: None),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_property_test_catches_a_broken_rule(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    MUTATIONS[name](monkeypatch)
    rng = random.Random(5)
    for _ in range(3000):
        try:
            run_script(rng.randbytes(rng.randrange(50, 600)))
        except ModelError:
            return
    pytest.fail(f"the model did not notice {name}")
