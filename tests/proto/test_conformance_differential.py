"""Differential test: our parser and libusbredirparser read the same bytes.

After a peer hello (usually; built raw: random version bytes, 0-3 capability words,
odd lengths), a stream of frames - well-formed messages of every type in
either direction, the same with their length or a byte mutated, random type
numbers with random bodies, plain garbage - is fed in random chunks to our
`UsbredirConnection` and to the reference in the same role with the same
caps.  The accepted messages (type, id, fields, data) and the number and
position of errors must be the same.

Known, deliberate differences (allowed for here, nowhere else):
- a filter_filter whose string the reference cannot parse: the reference
  drops it silently, we hand the text over as a FilterFilter;
- a bad message cut by the end of the stream: we reject it as soon as its
  type-specific header is in, the reference only once it is complete, so we
  may have one more error at the very end, for a message that is incomplete;
- our Hello event reports the caps word as sent; the verified caps (bulk_streams
  dropped without ep_info_max_packet_size) are compared via `peer_caps`.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from redirgate.proto.usbredir import Cap, Role, UsbredirConnection, messages
from redirgate.proto.usbredir.connection import verified_caps
from tests.support.refparser import RefParser
from tests.support.system import require_libusbredirparser
from tests.support.usbredir_cases import ERROR, chunks, feed_ours, feed_ref, field_strategy, u32

pytestmark = pytest.mark.system

ALL_TYPES = sorted(messages.MESSAGE_CLASSES)
ODD_TYPES = [28, 29, 99, 105, 200, 0xFFFF, 0x80000000, 0xFFFFFFFF]


@pytest.fixture(scope="module", autouse=True)
def _reference_library() -> None:
    require_libusbredirparser()


@st.composite
def peer_hello(draw: st.DrawFn) -> bytes:
    """A hello as a peer might send it, framed with the 12-byte header."""
    version = draw(
        st.one_of(
            st.binary(max_size=63).map(lambda b: b.ljust(64, b"\0")),
            st.binary(min_size=64, max_size=64),
        )
    )
    words = draw(st.lists(st.one_of(st.integers(0, 0xFF), u32), max_size=3))
    extra = draw(st.sampled_from([b"", b"", b"", b"\x01", b"\x01\x02\x03"]))
    body = version + b"".join(struct.pack("<I", w) for w in words) + extra
    return struct.pack("<III", 0, len(body), draw(u32)) + body


def _header(hsize: int, msg_type: int, length: int, msg_id: int) -> bytes:
    if hsize == 16:
        return struct.pack("<IIQ", msg_type, length, msg_id)
    return struct.pack("<III", msg_type, length, msg_id & 0xFFFFFFFF)


@st.composite
def message_frame(draw: st.DrawFn, shared: Cap, hsize: int, to_role: str | None = None) -> bytes:
    """A well-formed frame packed with the layout in force: of a type and
    direction meant for `to_role`, or (None) of any type either way, so that
    many are for the wrong role."""
    if to_role is None:
        msg_type = draw(st.sampled_from(ALL_TYPES))
        to_host = draw(st.booleans())
    else:
        msg_type = draw(st.sampled_from([t for t in ALL_TYPES if messages.MESSAGE_CLASSES[t].SENDER != to_role]))
        to_host = to_role == "host"
    msg_id = draw(st.integers(0, 2**64 - 1))
    if msg_type == 0:
        return draw(peer_hello()) if hsize == 12 else _reframe(draw(peer_hello()), hsize, msg_id)
    fields, payload = draw(field_strategy(msg_type, to_host, shared, max_data=48))
    cls = messages.MESSAGE_CLASSES[msg_type]
    if msg_type == 101 and Cap.BULK_LENGTH_32BIT not in shared and fields["length"] > 0xFFFF:
        fields["length"] &= 0xFFFF
    kwargs = {k: v for k, v in fields.items() if k != "rules"}
    msg = cls(**kwargs, id=msg_id, data=payload) if payload or msg_type >= 100 else cls(**kwargs, id=msg_id)
    thsize = cls.header_size(shared)
    body = bytearray(thsize)
    msg.pack_into(body, 0, shared)
    body += bytes(msg.payload)
    return _header(hsize, msg_type, len(body), msg_id) + bytes(body)


def _reframe(frame: bytes, hsize: int, msg_id: int) -> bytes:
    """A 12-byte-header frame re-headed for `hsize`."""
    msg_type, length, _ = struct.unpack_from("<III", frame)
    return _header(hsize, msg_type, length, msg_id) + frame[12:]


@st.composite
def mutated_frame(draw: st.DrawFn, shared: Cap, hsize: int) -> bytes:
    frame = bytearray(draw(message_frame(shared, hsize)))
    how = draw(st.sampled_from(["length", "byte", "truncate", "extend"]))
    if how == "length":
        length = struct.unpack_from("<I", frame, 4)[0]
        delta = draw(st.integers(-4, 4))
        struct.pack_into("<I", frame, 4, max(0, length + delta))
    elif how == "byte" and len(frame) > hsize:
        pos = draw(st.integers(hsize, len(frame) - 1))
        frame[pos] = draw(st.integers(0, 255))
    elif how == "truncate" and len(frame) > hsize:
        cut = draw(st.integers(hsize, len(frame) - 1))
        del frame[cut:]
        struct.pack_into("<I", frame, 4, cut - hsize)  # consistent main header
    else:
        frame += draw(st.binary(min_size=1, max_size=8))
        struct.pack_into("<I", frame, 4, len(frame) - hsize)
    return bytes(frame)


@st.composite
def raw_frame(draw: st.DrawFn, hsize: int) -> bytes:
    msg_type = draw(st.one_of(st.sampled_from(ALL_TYPES), st.sampled_from(ODD_TYPES)))
    body = draw(st.binary(max_size=300))
    huge = st.sampled_from([128 * 1024 * 1024 + 1024, 128 * 1024 * 1024 + 1025, 2**31 - 1, 2**31, 0xFFFFFFFF])
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 400), huge))
    return _header(hsize, msg_type, length, draw(st.integers(0, 2**64 - 1))) + body


@st.composite
def frames(draw: st.DrawFn, role: str, shared: Cap, hsize: int) -> bytes:
    kind = draw(st.sampled_from(["valid"] * 6 + ["any"] * 2 + ["mutated"] * 2 + ["raw", "garbage"]))
    if kind == "valid":
        return draw(message_frame(shared, hsize, role))
    if kind == "any":
        return draw(message_frame(shared, hsize))
    if kind == "mutated":
        return draw(mutated_frame(shared, hsize))
    if kind == "raw":
        return draw(raw_frame(hsize))
    return draw(st.binary(min_size=1, max_size=40))


def _align(ours: list[Any], ref: list[Any], stream: bytes, hsize: int) -> tuple[list[Any], list[Any], bool]:
    """Both event lists, less the deliberate differences (module docstring).
    The third item says whether the lists were cut (never, since the codec
    follows the reference for lengths of 2**31 and more too)."""
    kept = []
    for item in ours:
        if item[0] == 23 and item[2]["rules"] is None:
            continue  # unparsable filter: reference drops it silently
        kept.append(item)
    if len(kept) == len(ref) + 1 and kept[-1][0] == ERROR:
        exc = kept[-1][1]
        if exc.offset + hsize + _declared_length(stream, exc.offset) > len(stream):
            kept.pop()  # rejected early; the reference is still waiting for it
    return [ERROR if item[0] == ERROR else item for item in kept], ref, False


def _declared_length(stream: bytes, offset: int | None) -> int:
    """The main header `length` of the message at `offset`."""
    assert offset is not None
    if offset + 8 > len(stream):
        return 0
    return int(struct.unpack_from("<I", stream, offset + 4)[0])


def _run(role: str, caps: int, stream_parts: list[bytes], pieces: list[bytes], stats: bool = False) -> None:
    stream = b"".join(stream_parts)
    ours = UsbredirConnection(Role(role), caps=Cap(caps), version="ours")
    ref = RefParser(role, caps, "ref")
    try:
        got_ours = feed_ours(ours, pieces)
        got_ref = feed_ref(ref, pieces)
        hsize = ours.header_size
        aligned_ours, aligned_ref, cut = _align(got_ours, got_ref, stream, hsize)
        assert aligned_ours == aligned_ref
        if stats:
            accepted = sum(1 for item in aligned_ref if item != ERROR)
            event(f"accepted messages: {min(accepted, 5)}{'+' if accepted >= 5 else ''}")
            event(f"errors: {min(len(aligned_ref) - accepted, 3)}")
            if cut:
                event("cut at a length >= 2**31")
        if cut:
            return  # out of step from the cut on: the end states differ too
        assert ref.have_peer_caps == (ours.peer_caps is not None)
        if ours.peer_caps is not None:
            assert int(ours.peer_caps) == ref.peer_caps
            assert int(ours.shared_caps) == ref.our_caps & ref.peer_caps
    finally:
        ref.close()


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(role=st.sampled_from(["host", "guest"]), data=st.data())
def test_same_stream_same_events(role: str, data: st.DataObject) -> None:
    caps = data.draw(st.one_of(st.sampled_from([0, 0xFF, 0x20, 0xDF]), st.integers(0, 0xFF)), label="caps")
    # mostly a hello first; sometimes none, so messages before it are compared too
    hello = data.draw(st.one_of(peer_hello(), peer_hello(), peer_hello(), st.just(b"")), label="hello")
    # the caps in force after the hello, to lay out well-formed frames
    probe = UsbredirConnection(Role(role), caps=Cap(caps))
    if hello:
        probe.receive_data(hello)
        assert isinstance(probe.next_event(), messages.Hello)
    parts = [
        hello,
        *data.draw(
            st.lists(frames(role, probe.shared_caps, probe.header_size), min_size=3, max_size=12), label="frames"
        ),
    ]
    stream = b"".join(parts)
    _run(role, caps, parts, data.draw(chunks(stream), label="chunks"), stats=True)


@pytest.mark.parametrize("role", ["host", "guest"])
def test_bulk_streams_without_max_packet_size_is_dropped_from_peer_caps(role: str) -> None:
    """The known Hello difference, pinned: our Hello event reports the raw word,
    both keep the verified one as peer caps."""
    body = b"v".ljust(64, b"\0") + struct.pack("<I", int(Cap.BULK_STREAMS | Cap.FILTER))
    hello = struct.pack("<III", 0, len(body), 0) + body
    ours = UsbredirConnection(Role(role), caps=Cap(0xFF))
    ours.receive_data(hello)
    event = ours.next_event()
    assert isinstance(event, messages.Hello) and event.caps == Cap.BULK_STREAMS | Cap.FILTER
    assert ours.peer_caps == verified_caps(int(Cap.BULK_STREAMS | Cap.FILTER)) == Cap.FILTER
    _run(role, 0xFF, [hello], [hello])
