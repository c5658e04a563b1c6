"""What a gateway hands its successor at a restart (issue 16 step 3): the document, the replay, the guard.

Sans-IO: the document survives msgpack as it was and refuses what is not
one; a resumable channel rebuilt from its export resumes exactly as the
original would; a usbredir guard rebuilt from its export, at any point of a
stream (mid-hello, mid-header, mid-payload), walks the rest as one guard
walking the whole stream does.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redirgate.proto import tunnel as t
from redirgate.proto.usbredir import Cap, LocalProtocolError, RemoteProtocolError, Role, UsbredirConnection
from redirgate.proto.usbredir import messages as m
from redirgate.proto.usbredir.walker import HostStreamGuard
from tests.support.usbredir_messages import host_messages


def handed(channel: t.ResumableChannel, **fields: object) -> t.HandedChannel:
    values: dict[str, object] = {
        "route": "loop",
        "channel_id": channel.channel_id,
        "client": "thin-01",
        "device": "usb-1-2",
        "hypervisor": "127.0.0.1:40000",
        "protocol": "usbredir",
        "fd": 1,
        "grace_s": 60.0,
        "secret": b"s" * 32,
        "generation": 3,
        "resume": channel.export(),
        "to_client": b"not yet sent",
        "guard": {"offset": 7},
        "bytes_to_device": 10,
        "bytes_to_hypervisor": 20,
        "started_at": 1.5e9,
        "resumes": 2,
    }
    values.update(fields)
    return t.HandedChannel(**values)  # type: ignore[arg-type]


def test_the_document_survives_msgpack_as_it_was() -> None:
    channel = t.ResumableChannel(5, replay_limit=1000, ack_every=100)
    channel.sent(b"abc" * 50)
    channel.acked(t.ChannelAck(5, 30))
    channel.received(250)
    state = t.HandoverState(4242, [t.HandedListener("tunnel", 0)], [handed(channel)], {"thin-01": 6})
    decoded = t.HandoverState.decode(state.encode(), 2)
    assert decoded == state
    again = decoded.channels[0].channel()
    assert (again.outgoing.sent_total, again.outgoing.acked, again.incoming.received) == (150, 30, 250)
    assert again.outgoing.unacknowledged() == (b"abc" * 50)[30:]
    assert again.ack_now() == t.ChannelAck(5, 250)  # the count is repeated: acks may have been lost


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda s: setattr(s, "version", 2), "version"),
        (lambda s: s.listeners.append(t.HandedListener("metrics", 1)), "named twice"),
        (lambda s: setattr(s.channels[0], "fd", 9), "fd"),
        (lambda s: setattr(s.channels[0], "secret", b"short"), "secret"),
        (lambda s: setattr(s.channels[0], "protocol", ""), "protocol"),
    ],
)
def test_a_document_that_does_not_hold_together_is_refused(mangle, words) -> None:
    state = t.HandoverState(4242, [t.HandedListener("tunnel", 0)], [handed(t.ResumableChannel(5))])
    mangle(state)
    with pytest.raises(t.HandoverError, match=words):
        t.HandoverState.decode(state.encode(), 2)


def test_descriptors_the_document_does_not_name_are_refused() -> None:
    state = t.HandoverState(4242, [t.HandedListener("tunnel", 0)])
    with pytest.raises(t.HandoverError, match="names 1"):
        t.HandoverState.decode(state.encode(), 2)
    with pytest.raises(t.HandoverError, match="not msgpack"):
        t.HandoverState.decode(b"\xc1", 0)


def test_a_replay_whose_counts_disagree_is_refused() -> None:
    channel = t.ResumableChannel(5)
    channel.sent(b"abcdef")
    export = channel.export()
    export["replay"] = b"abc"  # three bytes short of sent - acked
    with pytest.raises(t.HandoverError, match="does not fit"):
        handed(channel, resume=export).channel()


def test_a_rebuilt_channel_resumes_as_the_original_would() -> None:
    original = t.ResumableChannel(9, replay_limit=64)
    for piece in (b"0123456789", b"abcdefghij", b"KLMNOPQRST"):
        original.sent(piece)
    original.acked(t.ChannelAck(9, 4))
    original.received(17)
    rebuilt = t.ResumableChannel.restored(original.export())
    assert rebuilt.room() == original.room()
    assert rebuilt.resume(12) == original.resume(12)
    rebuilt.sent(b"more")
    assert rebuilt.outgoing.sent_total == 34


def _stream(host_caps: int, guest_caps: int, msgs: list[object]) -> tuple[bytes, bytes]:
    host = UsbredirConnection(Role.HOST, Cap(host_caps))
    guest = UsbredirConnection(Role.GUEST, Cap(guest_caps))
    host_hello, guest_hello = host.hello_bytes(), guest.hello_bytes()
    host.receive_data(guest_hello)
    host.next_event()
    body = bytearray(host_hello)
    for msg in msgs:
        try:
            body += host.send(msg)
        except LocalProtocolError:
            continue
    return guest_hello, bytes(body)


def _walk(guard: HostStreamGuard, data: bytes) -> tuple[int, type | None, int | None]:
    try:
        guard.feed(data)
    except RemoteProtocolError as exc:
        return guard.messages, type(exc), exc.offset
    return guard.messages, None, None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    caps=st.integers(0, 0xFF),
    msgs=st.lists(host_messages(), max_size=5),
    tail=st.binary(max_size=24),
    where=st.floats(0.0, 1.0),
    guest_cut=st.integers(0, 80),
)
def test_a_guard_taken_over_anywhere_walks_on_as_one_guard(caps, msgs, tail, where, guest_cut) -> None:
    guest_hello, stream = _stream(caps, caps | Cap.FILTER | Cap.BULK_RECEIVING, msgs)
    stream += tail
    cut = int(where * len(stream))
    whole = HostStreamGuard()
    whole.observe_guest_bytes(guest_hello)
    expected = _walk(whole, stream)

    first = HostStreamGuard()
    first.observe_guest_bytes(guest_hello[:guest_cut])
    try:
        first.feed(stream[:cut])
    except RemoteProtocolError:
        return  # the channel ended before the restart: nothing to hand over
    second = HostStreamGuard.restored(first.export())
    second.observe_guest_bytes(guest_hello[guest_cut:])
    assert _walk(second, stream[cut:]) == expected


def test_a_guard_taken_over_at_every_offset_of_a_stream_with_payloads() -> None:
    """Every cut: in the hello, in a main or type header, in a payload."""
    packets = [
        m.BulkPacket(0x81, 0, 40, 0, id=1, data=bytes(range(40))),
        m.DeviceDisconnect(),
        m.InterruptPacket(0x83, 0, 8, id=2, data=b"\x01" * 8),
        m.BulkPacket(0x81, 0, 3, 0, id=3, data=b"end"),
    ]
    guest_hello, stream = _stream(0xFF, 0xFF, packets)
    whole = HostStreamGuard()
    whole.observe_guest_bytes(guest_hello)
    expected = _walk(whole, stream)
    assert expected[1] is None and expected[0] >= 5
    for cut in range(len(stream) + 1):
        first = HostStreamGuard()
        first.observe_guest_bytes(guest_hello)
        first.feed(stream[:cut])
        assert _walk(HostStreamGuard.restored(first.export()), stream[cut:]) == expected, cut


def test_a_guard_state_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="bytes"):
        HostStreamGuard.restored({"guest_hello": "text"})
    with pytest.raises(ValueError, match="does not pass"):
        HostStreamGuard.restored({"guest_hello": b"\xff" * 80, "host_hello": b"", "pending": b""})
