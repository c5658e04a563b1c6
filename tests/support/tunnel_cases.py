"""Hypothesis strategies for the tunnel's control and attach messages.

Every strategy builds objects through the real constructors, so anything it
draws is a message the codec must be able to send and parse back equal.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

from redirgate.proto.tunnel import (
    PROTOCOL_VERSION,
    Attach,
    AttachResult,
    ChannelAck,
    ChannelFailed,
    ChannelOpened,
    ChannelProtocol,
    ClientHello,
    CloseChannel,
    DeviceEntry,
    Error,
    GatewayHello,
    Heartbeat,
    HeartbeatAck,
    Inventory,
    InventoryUpdate,
    OpenChannel,
    Revocations,
    StreamDrops,
)

U32 = 0xFFFFFFFF
MAX_SEQ = 2**63 - 1

# printable text, including non-ASCII letters; no control characters
printable = st.text(
    alphabet=st.characters(categories=("L", "M", "N", "P", "S", "Zs"), exclude_characters="\u2028\u2029"),
    max_size=40,
).filter(str.isprintable)
word = st.from_regex(r"[a-z0-9][a-z0-9_.\-]{0,20}", fullmatch=True)
name_chars = string.ascii_letters + string.digits + "_.-/+@:"
serial_text = st.text(alphabet=string.ascii_letters + string.digits + "-_:.", min_size=1, max_size=30)
u16 = st.integers(0, 0xFFFF)
channel_ids = st.integers(1, U32)
tokens = st.binary(min_size=16, max_size=32)
versions = st.tuples(st.just(PROTOCOL_VERSION[0]), st.integers(0, 0xFFFF))
capabilities = st.frozensets(word, max_size=6)
usb_ports = st.builds(
    lambda bus, ports: f"{bus}-{'.'.join(map(str, ports))}",
    st.integers(1, 255),
    st.lists(st.integers(1, 255), min_size=1, max_size=7),
)


@st.composite
def device_entries(draw: st.DrawFn) -> DeviceEntry:
    kind = draw(st.sampled_from(["usb-ids", "usb-serial", "usb-port", "serial", "parallel"]))
    description = draw(printable)
    busy = draw(st.booleans())
    if kind.startswith("usb"):
        vid, pid = draw(u16), draw(u16)
        serial = draw(st.none() | serial_text)
        port = draw(usb_ports)
        if kind == "usb-port":
            device_id = f"usb-port:{port}"
        elif kind == "usb-serial" and serial is not None:
            device_id = f"usb:{vid:04x}:{pid:04x}:{serial}"
        else:
            device_id = f"usb:{vid:04x}:{pid:04x}"
        return DeviceEntry(device_id, "usb", vid, pid, serial, port, description, busy)
    name = draw(st.text(alphabet=name_chars, min_size=1, max_size=20))
    node = draw(st.none() | st.just(f"/dev/{name}"))
    ids = draw(st.none() | st.tuples(u16, u16))
    return DeviceEntry(f"{kind}:{name}", kind, ids and ids[0], ids and ids[1], None, node, description, busy)


def unique_entries(max_size: int = 6) -> st.SearchStrategy[list[DeviceEntry]]:
    return st.lists(device_entries(), max_size=max_size, unique_by=lambda e: e.id)


@st.composite
def inventory_updates(draw: st.DrawFn) -> InventoryUpdate:
    added = draw(unique_entries(4))
    removed = draw(st.lists(device_entries().map(lambda e: e.id), max_size=4, unique=True))
    taken = {e.id for e in added}
    return InventoryUpdate(added, [r for r in removed if r not in taken])


option_values = (
    st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | printable
)
selectors = device_entries().map(lambda e: e.id)

client_hellos = st.builds(ClientHello, versions, printable, capabilities)
gateway_hellos = st.builds(
    lambda v, s, c, interval, extra: GatewayHello(v, s, c, interval, interval + extra),
    versions,
    printable,
    capabilities,
    st.floats(0.001, 3600),
    st.floats(0.001, 10000),
)
inventories = st.builds(Inventory, unique_entries())
heartbeats = st.builds(Heartbeat, st.integers(0, MAX_SEQ))
heartbeat_acks = st.builds(HeartbeatAck, st.integers(0, MAX_SEQ))
open_channels = st.builds(
    OpenChannel,
    channel_ids,
    selectors,
    tokens,
    st.sampled_from(list(ChannelProtocol)),
    st.dictionaries(word, option_values, max_size=5),
)
channel_openeds = st.builds(ChannelOpened, channel_ids)
channel_faileds = st.builds(ChannelFailed, channel_ids, printable)
close_channels = st.builds(CloseChannel, channel_ids, printable)
errors = st.builds(Error, word, printable)
revocations = st.builds(Revocations, st.binary(min_size=1, max_size=64))
attaches = st.builds(Attach, channel_ids, tokens)
attach_results = st.builds(AttachResult, st.booleans(), printable, st.just(b"") | st.binary(min_size=32, max_size=32))
channel_acks = st.builds(ChannelAck, channel_ids, st.integers(0, 2**64 - 1))
stream_drops = st.builds(StreamDrops, channel_ids, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))

#: every control message kind
control_messages = st.one_of(
    client_hellos,
    gateway_hellos,
    inventories,
    inventory_updates(),
    heartbeats,
    heartbeat_acks,
    open_channels,
    channel_openeds,
    channel_faileds,
    close_channels,
    errors,
    channel_acks,
    revocations,
    stream_drops,
)


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into pieces of the given sizes, cycled (whole if no sizes)."""
    if not sizes:
        return [data]
    out, pos, i = [], 0, 0
    while pos < len(data):
        out.append(data[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return out
