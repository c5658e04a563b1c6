"""Shared pieces of the usbredir conformance tests against libusbredirparser.

Owns: hypothesis strategies for every message type's fields (valid for a given
direction and set of shared caps), the "what is on the wire" projection of a
message (fields a layout does not carry read as 0), the comparison keys of our
events and the reference's, chunked feeding of both parsers, and the hello
handshake between a `UsbredirConnection` and a `RefParser` in the opposite
role.  The peer is always the real C library; nothing here fakes replies.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from hypothesis import strategies as st

from redirgate.proto.usbredir import (
    MAX_BULK_TRANSFER_SIZE,
    NEED_DATA,
    Cap,
    RemoteProtocolError,
    Role,
    UsbredirConnection,
    messages,
)
from redirgate.proto.usbredir.connection import verified_caps
from tests.support.refparser import ParseError, RefEvent, RefParser, reference_filter_rules

__all__ = [
    "ERROR",
    "GATES",
    "ID_CALLBACK_TYPES",
    "build_message",
    "caps_pair",
    "chunks",
    "expected_key",
    "feed_ours",
    "feed_ref",
    "field_strategy",
    "handshake",
    "ours_key",
    "ref_key",
    "sender_roles",
    "wire_fields",
]

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
in_ep = st.integers(0, 0x7F).map(lambda e: e | 0x80)
out_ep = st.integers(0, 0x7F)


def arr(elem: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(*([elem] * 32))


#: Types whose reference callback receives the main header's id.
ID_CALLBACK_TYPES = frozenset(
    {6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 25, 26, 27, 100, 101, 102, 103, 104}
)

#: Cap-gated types: the receiver must have the cap, the sender checks the peer has it.
GATES: dict[int, Cap] = {
    22: Cap.FILTER,
    23: Cap.FILTER,
    24: Cap.DEVICE_DISCONNECT_ACK,
    25: Cap.BULK_RECEIVING,
    26: Cap.BULK_RECEIVING,
    27: Cap.BULK_RECEIVING,
    104: Cap.BULK_RECEIVING,
}

#: Marker for a parse error in a comparison list.
ERROR = ("error",)


def sender_roles(msg_type: int) -> list[str]:
    sender = messages.MESSAGE_CLASSES[msg_type].SENDER
    return ["host", "guest"] if sender == "both" else [sender]


_SIMPLE: dict[int, dict[str, st.SearchStrategy[Any]]] = {
    2: {},
    3: {},
    4: {
        "interface_count": st.integers(0, 32),
        "interface": arr(u8),
        "interface_class": arr(u8),
        "interface_subclass": arr(u8),
        "interface_protocol": arr(u8),
    },
    5: {
        "type": arr(u8),
        "interval": arr(u8),
        "interface": arr(u8),
        "max_packet_size": arr(u16),
        "max_streams": arr(u32),
    },
    6: {"configuration": u8},
    7: {},
    8: {"status": u8, "configuration": u8},
    9: {"interface": u8, "alt": u8},
    10: {"interface": u8},
    11: {"status": u8, "interface": u8, "alt": u8},
    12: {"endpoint": u8, "pkts_per_urb": u8, "no_urbs": u8},
    13: {"endpoint": u8},
    14: {"status": u8, "endpoint": u8},
    15: {"endpoint": in_ep},
    16: {"endpoint": in_ep},
    17: {"status": u8, "endpoint": in_ep},
    18: {"endpoints": u32, "no_streams": u32},
    19: {"endpoints": u32},
    20: {"endpoints": u32, "no_streams": u32, "status": u8},
    21: {},
    22: {},
    24: {},
    25: {
        "stream_id": u32,
        "bytes_per_transfer": st.integers(0, MAX_BULK_TRANSFER_SIZE),
        "endpoint": in_ep,
        "no_transfers": u8,
    },
    26: {"stream_id": u32, "endpoint": in_ep},
    27: {"stream_id": u32, "endpoint": in_ep, "status": u8},
}

_rule = st.tuples(
    st.integers(-1, 255),
    st.integers(-1, 0xFFFF),
    st.integers(-1, 0xFFFF),
    st.integers(-1, 0xFFFF),
    st.integers(0, 1),
)


def _rule_text(rule: tuple[int, ...], hexa: bool) -> str:
    return ",".join(f"{v:#x}" if hexa and v >= 0 else str(v) for v in rule)


@st.composite
def _device_connect(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    return draw(
        st.fixed_dictionaries(
            {
                "speed": u8,
                "device_class": u8,
                "device_subclass": u8,
                "device_protocol": u8,
                "vendor_id": u16,
                "product_id": u16,
                "device_version_bcd": u16,
            }
        )
    ), b""


@st.composite
def _filter(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    rules = draw(st.lists(_rule, min_size=1, max_size=5))
    hexa = draw(st.booleans())
    return {"rules": rules, "filter_string": "|".join(_rule_text(r, hexa) for r in rules)}, b""


def _payload(max_data: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_data)


@st.composite
def _data_packet(
    draw: st.DrawFn, msg_type: int, to_host: bool, shared: Cap, max_data: int
) -> tuple[dict[str, Any], bytes]:
    """Fields and data of a data packet the reference accepts in this direction.

    Data flows with the endpoint: OUT data towards the host, IN data towards
    the guest; the other way the packet is a request/status with no data."""
    length_max = 0xFFFF
    if msg_type == 101 and Cap.BULK_LENGTH_32BIT in shared:
        length_max = MAX_BULK_TRANSFER_SIZE
    if msg_type == 104:
        length_max = MAX_BULK_TRANSFER_SIZE
    if msg_type == 102:  # iso: only with the data direction
        with_data = True
    elif msg_type == 104:  # buffered bulk: host -> guest, IN, with data
        with_data = True
    elif msg_type == 103 and to_host:  # interrupt IN never goes to the host
        with_data = True
    else:
        with_data = draw(st.booleans())
    data_ep_in = not to_host  # endpoint direction that carries data this way
    if with_data:
        endpoint = draw(in_ep if data_ep_in else out_ep)
        data = draw(_payload(max_data))
        length = len(data)
    else:
        endpoint = draw(out_ep if data_ep_in else in_ep)
        data = b""
        length = draw(st.integers(0, length_max))
    if msg_type == 100:
        fields = {
            "endpoint": endpoint,
            "request": draw(u8),
            "requesttype": draw(u8),
            "status": draw(u8),
            "value": draw(u16),
            "index": draw(u16),
            "length": length,
        }
    elif msg_type == 101:
        fields = {"endpoint": endpoint, "status": draw(u8), "length": length, "stream_id": draw(u32)}
    elif msg_type in (102, 103):
        fields = {"endpoint": endpoint, "status": draw(u8), "length": length}
    else:
        fields = {"stream_id": draw(u32), "length": length, "endpoint": endpoint, "status": draw(u8)}
    return fields, data


def field_strategy(
    msg_type: int, to_host: bool, shared: Cap, max_data: int = 64
) -> st.SearchStrategy[tuple[dict[str, Any], bytes]]:
    """(fields, data) of a `msg_type` message valid towards the host
    (`to_host`) or the guest, for the caps both sides share."""
    if msg_type == 1:
        return _device_connect()
    if msg_type == 23:
        return _filter()
    if msg_type >= 100:
        return _data_packet(msg_type, to_host, shared, max_data)
    return st.fixed_dictionaries(_SIMPLE[msg_type]).map(lambda f: (f, b""))


@st.composite
def caps_pair(draw: st.DrawFn, need: Cap = Cap(0)) -> tuple[int, int]:
    """Two raw capability words (ours, the reference's), each with `need`.

    Whole random bytes cover every layout combination, symmetric or not;
    the edge cases (none, all, each layout cap alone) are drawn often."""
    interesting = st.sampled_from(
        [
            0,
            0xFF,
            int(Cap.IDS_64BIT),
            int(Cap.CONNECT_DEVICE_VERSION),
            int(Cap.EP_INFO_MAX_PACKET_SIZE),
            int(Cap.BULK_STREAMS),
            int(Cap.BULK_STREAMS | Cap.EP_INFO_MAX_PACKET_SIZE),
            int(Cap.BULK_LENGTH_32BIT),
            0xFF & ~int(Cap.IDS_64BIT),
        ]
    )
    word = st.one_of(interesting, st.integers(0, 0xFF))
    return draw(word) | int(need), draw(word) | int(need)


def build_message(msg_type: int, msg_id: int, fields: dict[str, Any], data: bytes) -> messages.Message:
    cls = messages.MESSAGE_CLASSES[msg_type]
    kwargs = {k: v for k, v in fields.items() if k != "rules"}
    if issubclass(cls, messages.DataMessage):
        return cls(**kwargs, id=msg_id, data=data)
    return cls(**kwargs, id=msg_id)


def wire_fields(msg_type: int, fields: dict[str, Any], shared: Cap) -> dict[str, Any]:
    """`fields` as they reach the peer: what the layout does not carry is 0."""
    out = {k: v for k, v in fields.items() if k != "filter_string"}
    if msg_type == 1 and Cap.CONNECT_DEVICE_VERSION not in shared:
        out["device_version_bcd"] = 0
    if msg_type == 5:
        if Cap.BULK_STREAMS not in shared:
            out["max_streams"] = (0,) * 32
            if Cap.EP_INFO_MAX_PACKET_SIZE not in shared:
                out["max_packet_size"] = (0,) * 32
    return out


def _id_of(msg_type: int, msg_id: int) -> int | None:
    return msg_id if msg_type in ID_CALLBACK_TYPES else None


def ours_key(msg: messages.Message) -> tuple[Any, ...]:
    """Comparison key of one of our events (payload copied out)."""
    msg_type = int(type(msg).TYPE)
    if isinstance(msg, messages.Hello):
        fields: dict[str, Any] = {"version": msg.version}
    elif isinstance(msg, messages.FilterFilter):
        fields = {"rules": reference_filter_rules(msg.filter_string.encode("latin-1"))}
    else:
        fields = {
            f.name: (
                tuple(getattr(msg, f.name)) if isinstance(getattr(msg, f.name), tuple) else int(getattr(msg, f.name))
            )
            for f in dataclasses.fields(msg)
            if f.name not in ("id", "data")
        }
    data = bytes(msg.data) if isinstance(msg, messages.DataMessage) else b""
    return (msg_type, _id_of(msg_type, msg.id), fields, data)


def ref_key(event: RefEvent | ParseError) -> tuple[Any, ...]:
    if isinstance(event, ParseError):
        return ERROR
    return (event.type, _id_of(event.type, event.id), dict(event.fields), event.data)


def expected_key(msg_type: int, msg_id: int, fields: dict[str, Any], data: bytes, shared: Cap) -> tuple[Any, ...]:
    """The key the receiving side must report for a message sent with these
    fields, given the caps in force (ids are 32 bits without 64bits_ids)."""
    if Cap.IDS_64BIT not in shared:
        msg_id &= 0xFFFFFFFF
    return (msg_type, _id_of(msg_type, msg_id), wire_fields(msg_type, fields, shared), data)


@st.composite
def chunks(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` split for feeding: whole, one byte at a time, or random cuts."""
    size = len(stream)
    modes = ["whole", "cuts"] + (["bytes"] if size <= 4096 else [])
    mode = draw(st.sampled_from(modes))
    if mode == "whole" or size < 2:
        return [stream]
    if mode == "bytes":
        return [stream[i : i + 1] for i in range(size)]
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=min(20, size - 1))))
    bounds = [0, *cuts, size]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def feed_ours(conn: UsbredirConnection, pieces: list[bytes]) -> list[Any]:
    """Feed pieces one by one, draining events after each; errors are
    recorded as `(ERROR, exc)` and parsing continues, as the API promises."""
    out: list[Any] = []
    for piece in pieces:
        if not piece:
            continue  # b"" would mean EOF
        conn.receive_data(piece)
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                out.append((ERROR, exc))
                continue
            if event is NEED_DATA:
                break
            out.append(ours_key(event))  # copies payload views at once
    return out


def feed_ref(ref: RefParser, pieces: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for piece in pieces:
        out.extend(ref_key(e) for e in ref.feed(piece))
    return out


def handshake(
    our_role: str,
    our_caps: int,
    ref_caps: int,
    our_version: str = "redirgate-test",
    ref_version: str = "libusbredirparser-ref",
) -> tuple[UsbredirConnection, RefParser]:
    """Our connection and a reference parser in the opposite role, with both
    hellos exchanged through the real bytes and checked on both sides."""
    ours = UsbredirConnection(Role(our_role), caps=Cap(our_caps), version=our_version)
    ref = RefParser("guest" if our_role == "host" else "host", ref_caps, ref_version)
    got = ref.feed(ours.hello_bytes())
    assert [ref_key(e) for e in got] == [(0, None, {"version": our_version[:63]}, b"")]
    ref_hello = ref.output()
    assert len(ref_hello) == 12 + 64 + 4  # always framed with 32-bit ids
    events = feed_ours(ours, [ref_hello])
    assert events == [(0, None, {"version": ref_version[:63]}, b"")]
    # caps as both libraries keep them
    assert ref.peer_caps == int(verified_caps(int(ours.our_caps)))
    assert ours.peer_caps == Cap(ref.our_caps)
    shared = ours.shared_caps
    assert int(shared) == ref.our_caps & ref.peer_caps
    assert ours.header_size == (16 if Cap.IDS_64BIT in shared else 12)
    return ours, ref
