"""The gateway's guard agrees with the guest-role parser, chunk by chunk.

For any host -> guest stream (valid, mutated or garbage) and any way of
splitting it, `HostStreamGuard` must accept exactly what a guest
`UsbredirConnection` with the same caps accepts, and reject at the same
message with the same error class.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redirgate.proto.usbredir import (
    NEED_DATA,
    Cap,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    UsbredirConnection,
)
from redirgate.proto.usbredir import (
    messages as m,
)
from redirgate.proto.usbredir.walker import HostStreamGuard
from tests.support.usbredir_messages import host_messages


def _hellos(host_caps: int, guest_caps: int) -> tuple[UsbredirConnection, bytes, bytes]:
    host = UsbredirConnection(Role.HOST, Cap(host_caps))
    guest = UsbredirConnection(Role.GUEST, Cap(guest_caps))
    host_hello, guest_hello = host.hello_bytes(), guest.hello_bytes()
    host.receive_data(guest_hello)
    host.next_event()
    return host, host_hello, guest_hello


def _guest_verdict(guest_caps: int, stream: bytes) -> tuple[int, type | None, int | None]:
    """(messages accepted before the first error, error class, error offset)."""
    guest = UsbredirConnection(Role.GUEST, Cap(guest_caps))
    guest.hello_bytes()
    guest.receive_data(stream)
    accepted = 0
    while True:
        try:
            event = guest.next_event()
        except RemoteProtocolError as exc:
            return accepted, type(exc), exc.offset
        if event is NEED_DATA:
            return accepted, None, None
        accepted += 1


def _guard_verdict(guest_hello: bytes, stream: bytes, cuts: list[int]) -> tuple[int, type | None, int | None]:
    guard = HostStreamGuard()
    guard.observe_guest_bytes(guest_hello[:7])
    guard.observe_guest_bytes(guest_hello[7:])
    pos = 0
    try:
        for cut in [*sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]:
            guard.feed(stream[pos:cut])
            pos = cut
    except RemoteProtocolError as exc:
        return guard.messages, type(exc), exc.offset
    return guard.messages, None, None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    host_caps=st.integers(0, 0xFF),
    guest_caps=st.integers(0, 0xFF),
    msgs=st.lists(host_messages(), max_size=6),
    mutation=st.one_of(st.none(), st.tuples(st.integers(0, 2000), st.integers(0, 255))),
    tail=st.binary(max_size=40),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
)
def test_guard_agrees_with_the_guest_parser(host_caps, guest_caps, msgs, mutation, tail, cuts):
    host, host_hello, guest_hello = _hellos(host_caps, guest_caps | Cap.FILTER | Cap.BULK_RECEIVING)
    body = bytearray()
    for msg in msgs:
        try:
            body += host.send(msg)
        except LocalProtocolError:  # not sendable with these caps: leave it out
            continue
    if mutation is not None and body:
        body[mutation[0] % len(body)] = mutation[1]
    stream = host_hello + bytes(body) + tail
    expected = _guest_verdict(guest_caps | Cap.FILTER | Cap.BULK_RECEIVING, stream)
    got = _guard_verdict(guest_hello, stream, cuts)
    if expected[1] is None:
        assert got[1] is None
        # the guard also counts a message whose header it has passed
        assert got[0] >= expected[0]
    else:
        assert got[1:] == expected[1:]


def test_bad_message_is_named_with_its_offset():
    host, host_hello, guest_hello = _hellos(0xFF, 0xFF)
    good = host.send(m.DeviceDisconnect())
    bad = struct.pack("<IIQ", 3, 0, 0)  # reset: guest-to-host only
    guard = HostStreamGuard()
    guard.observe_guest_bytes(guest_hello)
    guard.feed(host_hello + good)
    with pytest.raises(RemoteProtocolError) as info:
        guard.feed(bad)
    assert info.value.offset == len(host_hello) + len(good)
    assert "reset" in str(info.value)
    with pytest.raises(RemoteProtocolError):
        guard.feed(b"")  # refuses further use


def test_payloads_pass_without_being_buffered():
    host, host_hello, guest_hello = _hellos(0xFF, 0xFF)
    payload = bytes(10_000_000)
    frame = host.send(m.BulkPacket(0x81, 0, len(payload), 0, id=1, data=payload))
    guard = HostStreamGuard()
    guard.observe_guest_bytes(guest_hello)
    guard.feed(host_hello)
    for pos in range(0, len(frame), 65536):
        guard.feed(memoryview(frame)[pos : pos + 65536])
    assert len(guard._pending) == 0
    assert guard.messages == 2


def test_host_bytes_before_the_guest_hello_are_refused_not_guessed():
    host, host_hello, _guest_hello = _hellos(0xFF, 0xFF)
    guard = HostStreamGuard()
    guard.feed(host_hello)  # the hello itself is fine
    with pytest.raises(RemoteProtocolError):
        guard.feed(host.send(m.DeviceDisconnect()))


def test_stream_not_starting_with_hello_is_refused():
    guard = HostStreamGuard()
    with pytest.raises(RemoteProtocolError):
        guard.feed(b"GET / HTTP/1.1\r\n\r\n")


def _patched(frame: bytes, at: int, value: bytes) -> bytes:
    """`frame` with `value` written at type-header offset `at` (main header: 16 bytes, 64-bit ids)."""
    out = bytearray(frame)
    out[16 + at : 16 + at + len(value)] = value
    return bytes(out)


def _data_packet_cases() -> list[tuple[str, bytes]]:
    host, _, _ = _hellos(0xFF, 0xFF)
    ctrl = host.send(m.ControlPacket(0x80, 6, 0x80, 0, 0x100, 0, 18, id=1, data=bytes(18)))
    bulk = host.send(m.BulkPacket(0x81, 0, 512, 0, id=2, data=bytes(512)))
    iso = host.send(m.IsoPacket(0x82, 0, 192, id=3, data=bytes(192)))
    intr = host.send(m.InterruptPacket(0x83, 0, 8, id=4, data=bytes(8)))
    buffered = host.send(m.BufferedBulkPacket(0, 64, 0x84, 0, id=5, data=bytes(64)))
    u16 = struct.Struct("<H").pack
    return [
        ("control, valid", ctrl),
        ("control, stated length one short", _patched(ctrl, 8, u16(17))),
        ("control, OUT endpoint with data", _patched(ctrl, 0, b"\x00")),
        ("bulk, valid", bulk),
        ("bulk, stated length one long", _patched(bulk, 2, u16(513))),
        ("bulk, stated length over the 128 MiB limit", _patched(bulk, 8, u16(0xFFFF))),
        ("bulk, OUT endpoint with data", _patched(bulk, 0, b"\x01")),
        ("iso, valid", iso),
        ("iso, OUT endpoint with data", _patched(iso, 0, b"\x02")),
        (
            "iso, OUT endpoint, no data",
            _patched(iso, 0, b"\x02")[: 16 + 4].replace(struct.pack("<I", 4 + 192), struct.pack("<I", 4), 1),
        ),
        ("interrupt, valid", intr),
        (
            "interrupt, OUT endpoint, no data",
            _patched(intr, 0, b"\x03")[: 16 + 4].replace(struct.pack("<I", 4 + 8), struct.pack("<I", 4), 1),
        ),
        ("interrupt, stated length zero", _patched(intr, 2, u16(0))),
        ("buffered bulk, valid", buffered),
        ("buffered bulk, OUT endpoint", _patched(buffered, 8, b"\x04")),
        ("buffered bulk, stated length off", _patched(buffered, 4, struct.pack("<I", 65))),
        ("length beyond the packet limit", _patched(ctrl, -12, struct.pack("<I", 0x7FFFFFFF))),
    ]


@pytest.mark.parametrize("guest_caps", [0xFF, 0x00])
@pytest.mark.parametrize("case", _data_packet_cases(), ids=lambda c: c[0])
def test_data_packet_headers_get_the_guest_parsers_verdict(case, guest_caps):
    """The guard's one-step check of data packet headers accepts exactly what
    the guest's parser accepts and, where it does not, leaves the verdict to
    the full check (same error class, same offset)."""
    _, frame = case
    _, host_hello, guest_hello = _hellos(0xFF, guest_caps | Cap.FILTER)
    stream = host_hello + frame + frame
    expected = _guest_verdict(guest_caps | Cap.FILTER, stream)
    for cuts in ([], [len(host_hello) + 3], [len(host_hello) + len(frame) + 20]):
        got = _guard_verdict(guest_hello, stream, cuts)
        assert got[1:] == expected[1:]
        if expected[1] is None:
            assert got[0] == expected[0]
