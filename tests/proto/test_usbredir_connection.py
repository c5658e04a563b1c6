"""UsbredirConnection against itself: framing, negotiation, limits, buffers.

The reference parser is the peer in test_conformance_reference.py; here our
two roles talk to each other so every branch can be driven byte by byte.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redirgate.proto.usbredir import (
    CLOSED,
    MAX_PACKET_SIZE,
    NEED_DATA,
    Cap,
    LocalProtocolError,
    MsgType,
    RemoteProtocolError,
    Role,
    UsbredirConnection,
    errors,
)
from redirgate.proto.usbredir import (
    messages as m,
)
from tests.support.usbredir_messages import guest_messages, host_messages

ALL = Cap(0xFF)


def pair(host_caps: int = 0xFF, guest_caps: int = 0xFF) -> tuple[UsbredirConnection, UsbredirConnection]:
    host = UsbredirConnection(Role.HOST, Cap(host_caps), "test host")
    guest = UsbredirConnection(Role.GUEST, Cap(guest_caps), "test guest")
    guest.receive_data(host.hello_bytes())
    host.receive_data(guest.hello_bytes())
    assert isinstance(guest.next_event(), m.Hello)
    assert isinstance(host.next_event(), m.Hello)
    return host, guest


def drain(conn: UsbredirConnection) -> list[m.Message]:
    out = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA or ev is CLOSED:
            return out
        out.append(ev)


def feed_chunks(conn: UsbredirConnection, data: bytes, cuts: list[int]) -> list[m.Message]:
    """Feed `data` split at `cuts`, collecting events after each chunk and
    copying payloads (they are only valid until the next receive_data)."""
    events: list[m.Message] = []
    pos = 0
    for cut in [*sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]:
        conn.receive_data(data[pos:cut])
        pos = cut
        for ev in drain(conn):
            if isinstance(ev, m.DataMessage):
                ev = type(ev)(**{**_fields(ev), "data": bytes(ev.data)})
            events.append(ev)
    return events


def _fields(msg: m.Message) -> dict:
    return msg.as_dict()


def expected_after_wire(msg: m.Message, shared: Cap) -> dict:
    """What the receiver must see: fields absent from the negotiated layout
    read as zero, ids are truncated to 32 bits without 64-bit ids."""
    fields = _fields(msg)
    if Cap.IDS_64BIT not in shared:
        fields["id"] &= 0xFFFFFFFF
    if isinstance(msg, m.DeviceConnect) and Cap.CONNECT_DEVICE_VERSION not in shared:
        fields["device_version_bcd"] = 0
    if isinstance(msg, m.EpInfo):
        if Cap.EP_INFO_MAX_PACKET_SIZE not in shared:
            fields["max_packet_size"] = (0,) * 32
        if Cap.BULK_STREAMS not in shared:
            fields["max_streams"] = (0,) * 32
    if "data" in fields:
        fields["data"] = bytes(fields["data"])
    return fields


def sendable(msg: m.Message, shared: Cap) -> bool:
    if isinstance(msg, m.BulkPacket) and Cap.BULK_LENGTH_32BIT not in shared:
        return msg.length <= 0xFFFF
    return True


caps_words = st.integers(0, 0xFF)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    host_caps=caps_words,
    guest_caps=caps_words,
    msgs=st.lists(guest_messages(), max_size=8),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_guest_to_host_roundtrip_any_split(host_caps, guest_caps, msgs, cuts):
    host, guest = pair(host_caps | Cap.FILTER | Cap.DEVICE_DISCONNECT_ACK | Cap.BULK_RECEIVING, guest_caps)
    shared = host.shared_caps
    assert shared == guest.shared_caps
    msgs = [x for x in msgs if sendable(x, shared)]
    # gated messages need the cap on the receiver, which we forced on the host
    wire = b"".join(guest.send(x) for x in msgs)
    got = feed_chunks(host, wire, cuts)
    assert [_fields(e) for e in got] == [expected_after_wire(x, shared) for x in msgs]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    host_caps=caps_words,
    guest_caps=caps_words,
    msgs=st.lists(host_messages(), max_size=8),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_host_to_guest_roundtrip_any_split(host_caps, guest_caps, msgs, cuts):
    host, guest = pair(host_caps, guest_caps | Cap.FILTER | Cap.BULK_RECEIVING)
    shared = host.shared_caps
    msgs = [x for x in msgs if sendable(x, shared)]
    wire = b"".join(host.send(x) for x in msgs)
    got = feed_chunks(guest, wire, cuts)
    assert [_fields(e) for e in got] == [expected_after_wire(x, shared) for x in msgs]


def test_one_byte_at_a_time_and_all_in_one_chunk():
    host, guest = pair()
    msgs = [m.BulkPacket(0x02, 0, 5, 0, id=i, data=b"hello") for i in range(50)]
    wire = b"".join(guest.send(x) for x in msgs)
    one_by_one = feed_chunks(host, wire, list(range(len(wire))))
    host2, guest2 = pair()
    whole = feed_chunks(host2, b"".join(guest2.send(x) for x in msgs), [])
    assert (
        [_fields(e) for e in one_by_one]
        == [_fields(e) for e in whole]
        == [expected_after_wire(x, host.shared_caps) for x in msgs]
    )


def test_header_is_12_bytes_until_both_have_64bit_ids():
    host = UsbredirConnection(Role.HOST, ALL)
    guest = UsbredirConnection(Role.GUEST, ALL & ~Cap.IDS_64BIT)
    assert len(host.hello_bytes()) == 12 + 64 + 4
    host.receive_data(guest.hello_bytes())
    host.next_event()
    assert host.header_size == 12
    frame = host.send(m.DeviceDisconnect(id=0x1_0000_0005))
    assert frame == struct.pack("<III", MsgType.DEVICE_DISCONNECT, 0, 5)


def test_documented_frames():
    """The byte examples of the protocol reference (section 3.5)."""
    _host, guest = pair()
    assert guest.send(m.SetAltSetting(1, 2, id=0x1122334455667788)) == bytes.fromhex(
        "09000000 02000000 8877665544332211 0102"
    )
    assert guest.send(m.BulkPacket(0x02, 0, 0, 0, id=0x10)) == bytes.fromhex(
        "65000000 0a000000 1000000000000000 02 00 0000 00000000 0000"
    )
    _host32, guest32 = pair(0xFF & ~Cap.IDS_64BIT, 0xFF)
    assert guest32.send(m.SetAltSetting(1, 2, id=0x1122334455667788)) == bytes.fromhex(
        "09000000 02000000 88776655 0102"
    )


def test_layouts_follow_shared_caps():
    full, _ = pair(0xFF, 0xFF)
    bare, _ = pair(0xFF, Cap.IDS_64BIT)
    assert m.EpInfo.header_size(full.shared_caps) == 288
    assert m.EpInfo.header_size(bare.shared_caps) == 96
    mps_only, _ = pair(0xFF & ~Cap.BULK_STREAMS, 0xFF)
    assert m.EpInfo.header_size(mps_only.shared_caps) == 160
    assert m.DeviceConnect.header_size(full.shared_caps) == 10
    assert m.DeviceConnect.header_size(bare.shared_caps) == 8
    assert m.BulkPacket.header_size(full.shared_caps) == 10
    assert m.BulkPacket.header_size(bare.shared_caps) == 8


def test_bulk_streams_without_max_packet_size_is_stripped():
    conn = UsbredirConnection(Role.HOST, Cap.BULK_STREAMS | Cap.IDS_64BIT)
    assert Cap.BULK_STREAMS not in conn.our_caps
    guest = UsbredirConnection(Role.GUEST, Cap(0))
    assert Cap.DEVICE_DISCONNECT_ACK in guest.our_caps  # like usbredirparser_init


def raw(msg_type: int, length: int, msg_id: int = 0, body: bytes = b"") -> bytes:
    return struct.pack("<IIQ", msg_type, length, msg_id) + body


@pytest.mark.parametrize(
    ("frame", "error", "skip_ok"),
    [
        (raw(77, 3, body=b"abc"), errors.UnknownTypeError, True),
        (raw(MsgType.DEVICE_CONNECT, 10, body=bytes(10)), errors.WrongDirectionError, True),
        (raw(MsgType.SET_CONFIGURATION, 0), errors.HeaderSizeError, True),
        (raw(MsgType.SET_CONFIGURATION, 2, body=b"\x01\x02"), errors.UnexpectedDataError, True),
        (raw(MsgType.BULK_PACKET, MAX_PACKET_SIZE + 1), errors.LengthLimitError, False),
        (raw(MsgType.BULK_PACKET, 10, body=bytes([0x81]) + bytes(9)), None, True),
        (raw(MsgType.BULK_PACKET, 12, body=bytes([0x02, 0, 3, 0]) + bytes(6) + b"ab"), errors.DataLengthError, True),
        (raw(MsgType.BULK_PACKET, 11, body=bytes([0x81, 0, 1, 0]) + bytes(6) + b"x"), errors.UnexpectedDataError, True),
        (raw(MsgType.BULK_PACKET, 10, body=bytes([0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0x08])), errors.LengthLimitError, True),
        (raw(MsgType.START_INTERRUPT_RECEIVING, 1, body=b"\x01"), errors.InvalidFieldError, True),
        (raw(MsgType.INTERRUPT_PACKET, 4, body=bytes([0x81, 0, 0, 0])), errors.InvalidFieldError, True),
        (raw(MsgType.FILTER_FILTER, 0), errors.InvalidFieldError, True),
        (raw(MsgType.FILTER_FILTER, 3, body=b"abc"), errors.InvalidFieldError, True),
    ],
)
def test_host_rejects_malformed_and_continues(frame, error, skip_ok):
    host, guest = pair()
    follow = guest.send(m.GetConfiguration(id=9))
    host.receive_data(frame)
    if error is None:
        ev = host.next_event()
        assert isinstance(ev, m.BulkPacket)
    else:
        with pytest.raises(error) as info:
            host.next_event()
        assert info.value.offset == 80  # after the guest's 80-byte hello
        assert info.value.msg_type is not None
        assert str(info.value)
    if skip_ok:
        host.receive_data(follow)
        assert host.next_event() == m.GetConfiguration(id=9)


def test_capability_gated_messages_need_the_receivers_cap():
    host, guest = pair(0xFF & ~Cap.FILTER, 0xFF)
    host.receive_data(raw(MsgType.FILTER_REJECT, 0))
    with pytest.raises(errors.CapabilityError):
        host.next_event()
    with pytest.raises(LocalProtocolError):
        guest.send(m.FilterReject())  # the host lacks the cap


def test_interface_count_over_32_is_rejected():
    _host, guest = pair()
    body = struct.pack("<I", 33) + bytes(128)
    guest.receive_data(raw(MsgType.INTERFACE_INFO, 132, body=body))
    with pytest.raises(errors.InvalidFieldError):
        guest.next_event()


def test_huge_length_is_skipped_without_buffering():
    host, guest = pair()
    bogus = raw(MsgType.SET_CONFIGURATION, 100_000_000)
    host.receive_data(bogus)
    with pytest.raises(errors.UnexpectedDataError):
        host.next_event()
    sent = 0
    chunk = bytes(1 << 20)
    while sent < 100_000_000 - len(chunk):
        host.receive_data(chunk)
        sent += len(chunk)
        assert host.next_event() is NEED_DATA
    assert len(host._buf) <= 1 << 21  # nothing grew for the skipped body
    host.receive_data(bytes(100_000_000 - sent) + guest.send(m.GetConfiguration(id=3)))
    assert host.next_event() == m.GetConfiguration(id=3)


def test_second_hello_is_ignored_and_counted():
    host, guest = pair()
    again = UsbredirConnection(Role.GUEST, Cap(0))
    hello = again.hello_bytes()
    # re-frame it with the 16-byte header in force now
    body = hello[12:]
    host.receive_data(struct.pack("<IIQ", 0, len(body), 0) + body + guest.send(m.Reset()))
    assert host.next_event() == m.Reset()
    assert host.duplicate_hellos == 1
    assert Cap.IDS_64BIT in host.shared_caps


def test_eof_at_boundary_and_mid_message():
    host, _guest = pair()
    host.receive_data(b"")
    assert host.next_event() is CLOSED
    host2, guest2 = pair()
    host2.receive_data(guest2.send(m.GetConfiguration())[:5])
    host2.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        host2.next_event()
    assert host2.next_event() is CLOSED


def test_payload_views_survive_buffer_growth():
    host, guest = pair()
    first = guest.send(m.BulkPacket(0x02, 0, 4, 0, id=1, data=b"abcd"))
    host.receive_data(first)
    ev = host.next_event()
    assert isinstance(ev, m.BulkPacket)
    # a message bigger than the buffer forces a new buffer; the old view
    # still reads what it read (the old buffer stays alive with it)
    big = bytes(range(256)) * 1024
    host.receive_data(guest.send(m.BulkPacket(0x02, 0, len(big), 0, id=2, data=big)))
    assert bytes(ev.data) == b"abcd"
    ev2 = host.next_event()
    assert bytes(ev2.data) == big


def test_recv_into_path():
    host, guest = pair()
    wire = b"".join(guest.send(m.BulkPacket(0x02, 0, 3, 0, id=i, data=b"xyz")) for i in range(100))
    pos = 0
    got = []
    while pos < len(wire):
        buf = host.get_receive_buffer(7)
        n = min(len(buf), 7, len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        host.commit_received(n)
        pos += n
        got += [e.id for e in drain(host)]
    assert got == list(range(100))


def test_send_checks_protect_the_peer():
    host, guest = pair()
    with pytest.raises(LocalProtocolError):
        host.send(m.Reset())  # guest-only type
    with pytest.raises(LocalProtocolError):
        guest.send(m.DeviceConnect())  # host-only type
    with pytest.raises(LocalProtocolError):
        host.send(m.ControlPacket(0x80, 6, 0x80, 0, 0x100, 0, 18, data=b"short"))
    with pytest.raises(LocalProtocolError):
        host.send(m.BulkPacket(0x02, 0, 3, 0, data=b"abc"))  # OUT reply carries no data
    with pytest.raises(LocalProtocolError):
        host.send(m.IsoPacket(0x02, 0, 0))  # iso OUT only travels to the host
    with pytest.raises(LocalProtocolError):
        m.SetConfiguration(256)
    with pytest.raises(LocalProtocolError):
        m.BulkPacket(0x81, 0, 2**27 + 1, 0)
    fresh = UsbredirConnection(Role.HOST)
    with pytest.raises(LocalProtocolError):
        fresh.send(m.DeviceDisconnect())  # hello first
    h16, _ = pair(0xFF & ~Cap.BULK_LENGTH_32BIT, 0xFF)
    with pytest.raises(LocalProtocolError):
        h16.send(m.BulkPacket(0x81, 0, 70000, 0, data=bytes(70000)))


def test_send_parts_and_write_header_into_do_not_copy_payload():
    host, guest = pair()
    payload = memoryview(bytearray(b"z" * 1000))
    msg = m.BulkPacket(0x81, 0, 1000, 0, id=4, data=payload)
    header, body = host.send_parts(msg)
    assert body is payload
    buf = bytearray(64)
    n = host.write_header_into(buf, 3, msg)
    assert buf[3 : 3 + n] == header
    guest.receive_data(header + bytes(body))
    assert bytes(guest.next_event().data) == b"z" * 1000
