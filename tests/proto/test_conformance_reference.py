"""Our usbredir codec against the reference parser, libusbredirparser 0.13.

For every message type, in each direction its sender role allows:
(a) what `UsbredirConnection` serialises, the reference in the opposite role
    parses to the same fields;
(b) what the reference sends with its usbredirparser_send_* functions, our
    connection parses to the same fields.
Caps are drawn at random on both sides (symmetric or not), so every layout
switch is exercised: 64-bit ids, connect_device_version, ep_info_max_packet_size,
bulk_streams(+ep_info_max_packet_size), 32bits_bulk_length, and the gates of
filter / device_disconnect_ack / bulk_receiving.  Every test starts with the
hello exchange through the real bytes, and the stream is fed whole, one byte
at a time, or cut at random places.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from redirgate.proto.usbredir import Cap, LocalProtocolError, messages
from redirgate.proto.usbredir.connection import verified_caps
from tests.support.refparser import RefParser, RefSendError
from tests.support.system import require_libusbredirparser
from tests.support.usbredir_cases import (
    GATES,
    ID_CALLBACK_TYPES,
    build_message,
    caps_pair,
    chunks,
    expected_key,
    feed_ours,
    feed_ref,
    field_strategy,
    handshake,
    ref_key,
    sender_roles,
    u64,
)

pytestmark = pytest.mark.system

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: (type, role of the sender) for every type except hello (tested on its own)
CASES = [(t, role) for t in sorted(messages.MESSAGE_CLASSES) if t != 0 for role in sender_roles(t)]
CASE_IDS = [f"{messages.MESSAGE_CLASSES[t].__name__}-from-{role}" for t, role in CASES]


@pytest.fixture(scope="module", autouse=True)
def _reference_library() -> None:
    require_libusbredirparser()


def _other(role: str) -> str:
    return "guest" if role == "host" else "host"


@pytest.mark.parametrize(("msg_type", "role"), CASES, ids=CASE_IDS)
@SETTINGS
@given(data=st.data())
def test_ours_to_reference(msg_type: int, role: str, data: st.DataObject) -> None:
    """(a) our connection in `role` sends, the reference parses."""
    our_caps, ref_caps = data.draw(caps_pair(GATES.get(msg_type, Cap(0))), label="caps")
    ours, ref = handshake(role, our_caps, ref_caps)
    shared = ours.shared_caps
    stream = b""
    expected = []
    for _ in range(data.draw(st.integers(1, 3), label="count")):
        fields, payload = data.draw(field_strategy(msg_type, role == "guest", shared))
        msg_id = data.draw(u64, label="id")
        stream += ours.send(build_message(msg_type, msg_id, fields, payload))
        expected.append(expected_key(msg_type, msg_id, fields, payload, shared))
    assert feed_ref(ref, data.draw(chunks(stream), label="chunks")) == expected
    if msg_type == 2:
        # the guest reference acks each disconnect itself when we have the cap
        back = feed_ours(ours, [ref.output()])
        acks = [(24, None, {}, b"")] * len(expected)
        assert back == (acks if Cap.DEVICE_DISCONNECT_ACK in ours.our_caps else [])
    ref.close()


@pytest.mark.parametrize(("msg_type", "role"), CASES, ids=CASE_IDS)
@SETTINGS
@given(data=st.data())
def test_reference_to_ours(msg_type: int, role: str, data: st.DataObject) -> None:
    """(b) the reference in `role` sends, our connection parses."""
    our_caps, ref_caps = data.draw(caps_pair(GATES.get(msg_type, Cap(0))), label="caps")
    ours, ref = handshake(_other(role), our_caps, ref_caps)
    shared = ours.shared_caps
    expected = []
    for _ in range(data.draw(st.integers(1, 3), label="count")):
        fields, payload = data.draw(field_strategy(msg_type, role == "guest", shared))
        msg_id = data.draw(u64, label="id")
        if msg_type == 24:
            # device_disconnect_ack has no send function: a guest reference
            # queues it itself for each device_disconnect it gets
            got = ref.feed(ours.send(messages.DeviceDisconnect()))
            assert [ref_key(e) for e in got] == [(2, None, {}, b"")]
            msg_id = 0
        else:
            ref_fields = {"rules": fields["rules"]} if msg_type == 23 else fields
            ref.send(msg_type, msg_id, ref_fields, payload)
        if msg_type not in ID_CALLBACK_TYPES:
            msg_id = 0  # the reference sends id 0 with types that take no id
        expected.append(expected_key(msg_type, msg_id, fields, payload, shared))
    stream = ref.output()
    assert feed_ours(ours, data.draw(chunks(stream), label="chunks")) == expected
    ref.close()


_version = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=80)


@SETTINGS
@given(
    role=st.sampled_from(["host", "guest"]),
    caps=caps_pair(),
    our_version=_version,
    ref_version=_version,
)
@example(role="host", caps=(0xFF, 0xFF), our_version="x" * 64, ref_version="y" * 100)
def test_hello_both_ways(role: str, caps: tuple[int, int], our_version: str, ref_version: str) -> None:
    """Hellos cross through the real bytes: versions (cut to 63 bytes by both
    implementations) and caps (as each side verifies them) agree."""
    ours, ref = handshake(role, caps[0], caps[1], our_version, ref_version)
    expected_ours = int(verified_caps(caps[0]))
    if role == "guest":
        expected_ours |= int(Cap.DEVICE_DISCONNECT_ACK)
    assert int(ours.our_caps) == expected_ours == ref.peer_caps
    assert int(ours.peer_caps or 0) == ref.our_caps
    assert ours.peer_version == ref_version[:63]
    ref.close()


@pytest.mark.parametrize("role", ["host", "guest"])
@pytest.mark.parametrize(("ours_cap", "ref_cap"), [(True, True), (True, False), (False, True), (False, False)])
def test_large_bulk_needs_32bits_length_on_both_sides(role: str, ours_cap: bool, ref_cap: bool) -> None:
    """A 70000-byte bulk packet (length_high = 1) goes through in both
    directions exactly when both sides have 32bits_bulk_length; otherwise both
    senders refuse it."""
    base = int(Cap.all_known() & ~Cap.BULK_LENGTH_32BIT)
    our_caps = base | (int(Cap.BULK_LENGTH_32BIT) if ours_cap else 0)
    ref_caps = base | (int(Cap.BULK_LENGTH_32BIT) if ref_cap else 0)
    ours, ref = handshake(role, our_caps, ref_caps)
    payload = bytes(range(256)) * 273 + b"tail"  # 69892 bytes
    ep = 0x01 if role == "guest" else 0x81  # data travels with the endpoint
    fields = {"endpoint": ep, "status": 0, "length": len(payload), "stream_id": 5}
    both = ours_cap and ref_cap
    if not both:
        with pytest.raises(LocalProtocolError):
            ours.send(messages.BulkPacket(**fields, id=9, data=payload))
        with pytest.raises(RefSendError):
            ref.send(101, 9, fields, payload)
        return
    stream = ours.send(messages.BulkPacket(**fields, id=9, data=payload))
    got = feed_ref(ref, [stream[:5000], stream[5000:65600], stream[65600:]])
    assert got == [expected_key(101, 9, fields, payload, ours.shared_caps)]
    # and the reverse direction, reference to us
    ours2, ref2 = handshake(_other(role), our_caps, ref_caps)
    fields2 = dict(fields)  # ref2 is in `role`: same direction as ours above
    ref2.send(101, 10, fields2, payload)
    assert feed_ours(ours2, [ref2.output()]) == [expected_key(101, 10, fields2, payload, ours2.shared_caps)]


_GATED_SAMPLES: dict[int, tuple[dict[str, object], bytes]] = {
    22: ({}, b""),
    23: ({"rules": [(3, -1, -1, -1, 1)], "filter_string": "3,-1,-1,-1,1"}, b""),
    24: ({}, b""),
    25: ({"stream_id": 1, "bytes_per_transfer": 512, "endpoint": 0x82, "no_transfers": 4}, b""),
    26: ({"stream_id": 1, "endpoint": 0x82}, b""),
    27: ({"stream_id": 1, "endpoint": 0x82, "status": 0}, b""),
    104: ({"stream_id": 1, "length": 3, "endpoint": 0x82, "status": 0}, b"abc"),
}


@pytest.mark.parametrize(("msg_type", "role"), [(t, r) for t, r in CASES if t in GATES])
def test_gated_messages_refused_by_both_senders_without_peer_cap(msg_type: int, role: str) -> None:
    """Without the gate cap on the receiving side, neither our connection nor
    the reference sends a gated message.  (A guest always has
    device_disconnect_ack, so that gate is only tested towards a host.)"""
    gate = int(GATES[msg_type])
    ours, _ref = handshake(role, 0xFF, 0xFF & ~gate)
    fields, payload = _GATED_SAMPLES[msg_type]
    with pytest.raises(LocalProtocolError):
        ours.send(build_message(msg_type, 1, fields, payload))
    if msg_type == 24:
        return  # the reference has no send function for it
    _ours2, ref2 = handshake(_other(role), 0xFF & ~gate, 0xFF)
    ref_fields = {"rules": fields["rules"]} if msg_type == 23 else fields
    with pytest.raises(RefSendError):
        ref2.send(msg_type, 1, ref_fields, payload)


def test_refparser_survives_close_and_garbage() -> None:
    """The binding itself: garbage before a hello, close twice."""
    ref = RefParser("host", 0xFF)
    events = ref.feed(bytes(range(256)) * 4)
    assert events, "garbage must produce parse errors"
    ref.close()
    ref.close()
    with pytest.raises(RuntimeError):
        ref.feed(b"x")
