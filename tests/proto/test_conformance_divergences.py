"""Edge cases where our codec once disagreed with libusbredirparser 0.13.

Each divergence the differential test found is pinned here as the smallest
stream that shows it, next to the neighbouring case where both always agreed:
a rejected header with a length of 2**31 or more (the reference's C `int`
skip counter skips nothing), and unknown capability bits surviving the
bulk_streams strip.
"""

from __future__ import annotations

import struct

import pytest

from redirgate.proto.usbredir import Cap, Role, UsbredirConnection
from tests.support.refparser import RefParser
from tests.support.system import require_libusbredirparser
from tests.support.usbredir_cases import ERROR, feed_ours, feed_ref

pytestmark = pytest.mark.system


@pytest.fixture(scope="module", autouse=True)
def _reference_library() -> None:
    require_libusbredirparser()


def _hello(caps: int) -> bytes:
    body = b"peer".ljust(64, b"\0") + struct.pack("<I", caps)
    return struct.pack("<III", 0, len(body), 0) + body


def _both(role: str, caps: int, stream: bytes) -> tuple[list[object], list[object]]:
    ours = UsbredirConnection(Role(role), caps=Cap(caps))
    ref = RefParser(role, caps)
    try:
        got_ours = [ERROR if item[0] == ERROR else item for item in feed_ours(ours, [stream])]
        return got_ours, feed_ref(ref, [stream])
    finally:
        ref.close()


GET_CONFIGURATION_ID_5 = struct.pack("<III", 7, 0, 5)


@pytest.mark.parametrize("length", [2**31, 0xFFFFFFFF])
@pytest.mark.parametrize("bad_type", [0xFFFF, 8])  # unknown type; wrong direction for a host
def test_error_with_length_of_2_31_or_more_skips_nothing(bad_type: int, length: int) -> None:
    """The reference keeps `to_skip` in a C int: nothing is skipped."""
    stream = _hello(0) + struct.pack("<III", bad_type, length, 0) + GET_CONFIGURATION_ID_5
    ours, ref = _both("host", 0, stream)
    assert ref == [(0, None, {"version": "peer"}, b""), ERROR, (7, 5, {}, b"")]
    assert ours == ref


@pytest.mark.parametrize("length", [128 * 1024 * 1024 + 1025, 2**31 - 1])
def test_error_with_length_below_2_31_skips_the_body(length: int) -> None:
    """Agreement: below 2**31 both skip `length` bytes after a bad header
    (here the following message is swallowed by the skip)."""
    stream = _hello(0) + struct.pack("<III", 0xFFFF, length, 0) + GET_CONFIGURATION_ID_5
    ours, ref = _both("host", 0, stream)
    assert ref == [(0, None, {"version": "peer"}, b""), ERROR]
    assert ours == ref


@pytest.mark.parametrize("role", ["host", "guest"])
def test_peer_caps_keep_unknown_bits_when_bulk_streams_is_dropped(role: str) -> None:
    raw = 0x400 | int(Cap.BULK_STREAMS | Cap.BULK_LENGTH_32BIT)
    ours = UsbredirConnection(Role(role), caps=Cap(0xFF))
    ours.receive_data(_hello(raw))
    ours.next_event()
    ref = RefParser(role, 0xFF)
    try:
        ref.feed(_hello(raw))
        assert ref.peer_caps == raw & ~int(Cap.BULK_STREAMS)
        assert int(ours.peer_caps or 0) == ref.peer_caps
    finally:
        ref.close()


@pytest.mark.parametrize("role", ["host", "guest"])
def test_peer_caps_keep_unknown_bits(role: str) -> None:
    """Agreement: without the bulk_streams strip, unknown bits are kept by both."""
    raw = 0x400 | int(Cap.BULK_LENGTH_32BIT)
    ours = UsbredirConnection(Role(role), caps=Cap(0xFF))
    ours.receive_data(_hello(raw))
    ours.next_event()
    ref = RefParser(role, 0xFF)
    try:
        ref.feed(_hello(raw))
        assert int(ours.peer_caps or 0) == ref.peer_caps == raw
    finally:
        ref.close()
