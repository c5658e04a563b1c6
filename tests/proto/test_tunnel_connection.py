"""TunnelConnection: both roles talking to each other, byte streams, limits, states.

The peer is always a real `TunnelConnection` in the other role (or, for bytes
a correct peer would never produce, msgpack itself).
"""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redirgate.proto.tunnel import (
    CLOSED,
    NEED_DATA,
    ChannelFailed,
    ChannelOpened,
    ChannelState,
    ClientHello,
    CloseChannel,
    DecodeError,
    DeviceEntry,
    Error,
    ErrorCode,
    FrameTooLargeError,
    GatewayHello,
    Heartbeat,
    HeartbeatAck,
    Inventory,
    InventoryUpdate,
    LocalProtocolError,
    OpenChannel,
    RemoteProtocolError,
    StreamDrops,
    TruncatedError,
    TunnelConnection,
    TunnelProtocolError,
    UnexpectedMessageError,
    VersionMismatchError,
)
from tests.support import tunnel_cases as cases

TOKEN = bytes(range(16))
STICK = DeviceEntry("usb:1209:0001:ABC", "usb", 0x1209, 0x0001, "ABC", "1-2", "stick")
KEYBOARD = DeviceEntry("usb-port:1-3", "usb", 0x046D, 0xC31C, None, "1-3", "keyboard")


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def pair() -> tuple[TunnelConnection, TunnelConnection]:
    """A client and a gateway that have exchanged hellos."""
    client, gateway = TunnelConnection("client"), TunnelConnection("gateway")
    gateway.receive_data(client.send(ClientHello(software="test client", capabilities={"a", "b"})))
    client.receive_data(gateway.send(GatewayHello(software="test gateway", capabilities={"b", "c"})))
    assert isinstance(gateway.next_event(), ClientHello)
    assert isinstance(client.next_event(), GatewayHello)
    return client, gateway


def drain(conn: TunnelConnection) -> list:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if event is CLOSED:
            break
    return events


def deliver(sender: TunnelConnection, receiver: TunnelConnection, *messages) -> list:
    receiver.receive_data(b"".join(sender.send(m) for m in messages))
    return drain(receiver)


# ------------------------------------------------------------- streams


def session() -> tuple[list, list]:
    """A whole conversation: (client -> gateway messages, gateway -> client messages)."""
    up = [
        ClientHello(software="c", capabilities={"x"}),
        Inventory([STICK]),
        InventoryUpdate(added=[KEYBOARD]),
        Heartbeat(0),
        HeartbeatAck(0),
        ChannelOpened(1),
        ChannelFailed(2, "device busy"),
        CloseChannel(1, "unplugged"),
        InventoryUpdate(removed=[STICK.id]),
        Error(ErrorCode.SHUTDOWN, "bye"),
    ]
    down = [
        GatewayHello(heartbeat_interval_s=1, heartbeat_timeout_s=3),
        Heartbeat(0),
        OpenChannel(1, STICK.id, TOKEN, "usbredir"),
        OpenChannel(2, "usb-port:1-3", TOKEN, "raw", {"baud": 9600}),
        HeartbeatAck(0),
        CloseChannel(1),
    ]
    return up, down


def receive_in_pieces(role: str, data: bytes, sizes: list[int]) -> list:
    """A fresh `role` connection that first sends what its side of the
    session sends before it needs the peer's messages, then receives `data`."""
    conn = TunnelConnection(role)
    up, down = session()
    for message in (down if role == "gateway" else up)[:4]:
        conn.send(message)
    events = []
    for piece in cases.chunked(data, sizes):
        conn.receive_data(piece)
        events += drain(conn)
    conn.receive_data(b"")
    events += drain(conn)
    return events


def _sent_streams() -> tuple[bytes, bytes]:
    up, down = session()
    client, gateway = TunnelConnection("client"), TunnelConnection("gateway")
    # interleave as a real conversation would, so every send is legal
    wire_up = client.send(up[0]) + client.send(up[1]) + client.send(up[2])
    wire_down = gateway.send(down[0])
    gateway.receive_data(wire_up)
    client.receive_data(wire_down)
    drain(gateway), drain(client)
    more_down = b"".join(gateway.send(m) for m in down[1:4])
    client.receive_data(more_down)
    drain(client)
    more_up = b"".join(client.send(m) for m in up[3:7])
    gateway.receive_data(more_up)
    drain(gateway)
    last_down = b"".join(gateway.send(m) for m in down[4:])
    last_up = b"".join(client.send(m) for m in up[7:])
    return wire_up + more_up + last_up, wire_down + more_down + last_down


UP_STREAM, DOWN_STREAM = _sent_streams()


@pytest.mark.parametrize("role, stream, expected", [("gateway", UP_STREAM, 0), ("client", DOWN_STREAM, 1)])
def test_a_whole_session_parses_whole_and_byte_at_a_time(role, stream, expected):
    messages = session()[expected]
    whole = receive_in_pieces(role, stream, [])
    assert whole == [*messages, CLOSED]
    assert receive_in_pieces(role, stream, [1]) == whole


@settings(max_examples=60)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), st.sampled_from(["up", "down"]))
def test_any_fragmentation_gives_the_same_events(sizes, direction):
    role, stream = ("gateway", UP_STREAM) if direction == "up" else ("client", DOWN_STREAM)
    assert receive_in_pieces(role, stream, sizes) == receive_in_pieces(role, stream, [])


@given(st.lists(cases.inventory_updates(), max_size=4), st.lists(st.integers(1, 64), min_size=1, max_size=4))
def test_random_inventory_traffic_round_trips_in_any_pieces(updates, sizes):
    client, gateway = pair()
    messages = [Inventory([STICK]), *updates]
    data = b"".join(client.send(m) for m in messages)
    events = []
    for piece in cases.chunked(data, sizes):
        gateway.receive_data(memoryview(bytearray(piece)))
        events += drain(gateway)
    assert events == messages


def test_closed_is_sticky_and_eof_mid_frame_is_an_error():
    conn = TunnelConnection("gateway")
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")
    for cut in (2, 4, 6):
        conn = TunnelConnection("gateway")
        conn.receive_data(UP_STREAM[:cut])
        assert conn.next_event() is NEED_DATA
        conn.receive_data(b"")
        with pytest.raises(TruncatedError, match="stream ended inside"):
            conn.next_event()


# ------------------------------------------------------------- limits


def test_a_huge_length_is_refused_on_the_prefix_alone():
    conn = TunnelConnection("gateway")
    conn.receive_data(struct.pack(">I", 1 << 30))  # 1 GiB announced, 4 bytes sent
    with pytest.raises(FrameTooLargeError) as info:
        conn.next_event()
    assert info.value.length == 1 << 30 and info.value.limit == conn.max_message_size
    assert "1073741824" in str(info.value)
    # receiving is over: further bytes are dropped, never buffered
    conn.receive_data(b"\0" * 100_000)
    assert conn._decoder.buffered == 4
    with pytest.raises(RemoteProtocolError, match="already failed"):
        conn.next_event()


@pytest.mark.parametrize("length", [0, 65, 0xFFFFFFFF])
def test_lengths_outside_the_limit_are_refused(length):
    conn = TunnelConnection("gateway", max_message_size=64)
    conn.receive_data(struct.pack(">I", length) + b"\x80")
    with pytest.raises(FrameTooLargeError):
        conn.next_event()


def test_exactly_the_limit_is_accepted():
    hello = ClientHello(software="x" * 20)
    data = TunnelConnection("client").send(hello)
    conn = TunnelConnection("gateway", max_message_size=len(data) - 4)
    conn.receive_data(data)
    assert conn.next_event() == hello


def test_sending_over_the_limit_is_refused_and_changes_nothing():
    client = TunnelConnection("client", max_message_size=100)
    client.send(ClientHello())
    with pytest.raises(LocalProtocolError, match="exceeds the limit of 100"):
        client.send(Inventory([STICK, KEYBOARD]))
    with pytest.raises(LocalProtocolError, match="before any 'inventory'"):
        client.send(InventoryUpdate(removed=[STICK.id]))


# ------------------------------------------------------------- malformed msgpack

HELLO_BODY = msgpack.packb({"kind": "client_hello"})
MALFORMED = [
    (b"\xc1", "never-used byte"),
    (b"\x81\xa4kind", "truncated map"),
    (HELLO_BODY + b"\x00", "extra data"),
    (b"\x91" * 3000, "deep nesting"),
    (b"\xd4\x05\x00", "ext type"),
    (b"\x81\xa4kind\xd6\xff\x00\x00\x00\x01", "timestamp"),
    (b"\x81\xc4\x04kind\xa5error", "bytes key"),
    (b"\x81\x01\x02", "int key"),
    (b"\x81\xc0\x02", "nil key"),
    (b"\x82\xa4kind\xa5error\xa4kind\xa5error", "duplicate key"),
    (b"\x92\x01\x02", "array at the top"),
    (b"\x05", "int at the top"),
    (b"\xa2\xff\xfe", "invalid utf-8"),
    (b"\x81\xa4kind\xa2\xc3\x28", "invalid utf-8 value"),
    (b"\xdd\xff\xff\xff\xff", "array claiming 4 G items"),
    (b"\xdf\xff\xff\xff\xff", "map claiming 4 G items"),
    (b"\xdb\xff\xff\xff\xff", "str claiming 4 GiB"),
    (b"\xc6\xff\xff\xff\xff", "bin claiming 4 GiB"),
    (b"\xc9\xff\xff\xff\xff\x01", "ext claiming 4 GiB"),
    (b"\x81\xa4kind\xcf\xff\xff\xff\xff\xff\xff\xff\xff", "u64 kind"),
    (b"\x81\xa4kind\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", "nan kind"),
    (b"\x81\xa4kind\xa4nope", "unknown kind"),
    (msgpack.packb({"kind": "heartbeat", "seq": 2**64 - 1}), "seq out of range"),
]


@pytest.mark.parametrize("data, what", MALFORMED, ids=[w for _, w in MALFORMED])
def test_malformed_bodies_raise_only_remote_protocol_errors(data, what):
    conn = TunnelConnection("gateway")
    conn.receive_data(frame(data))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reason
    assert conn.failure is info.value


@given(st.binary(min_size=1, max_size=200))
def test_random_bodies_raise_only_tunnel_errors(data):
    conn = TunnelConnection("gateway")
    conn.receive_data(frame(data))
    try:
        conn.next_event()
    except TunnelProtocolError:
        pass


def test_msgpack_errors_are_chained_not_leaked():
    conn = TunnelConnection("gateway")
    conn.receive_data(frame(b"\x91" * 3000))
    with pytest.raises(DecodeError) as info:
        conn.next_event()
    assert isinstance(info.value.__cause__, Exception)
    assert not isinstance(info.value, ValueError)


# ------------------------------------------------------------- roles and states


@pytest.mark.parametrize(
    "role, message, mentions",
    [
        ("gateway", ClientHello(), "a gateway may not send"),
        ("gateway", Inventory([]), "a gateway may not send"),
        ("gateway", ChannelOpened(1), "a gateway may not send"),
        ("client", GatewayHello(), "a client may not send"),
        ("client", OpenChannel(1, STICK.id, TOKEN), "a client may not send"),
    ],
)
def test_wrong_role_messages(role, message, mentions):
    conn = TunnelConnection(role)
    with pytest.raises(LocalProtocolError, match=mentions):
        conn.send(message)
    # the same message arriving from a peer in that role
    peer = TunnelConnection("client" if role == "gateway" else "gateway")
    from redirgate.proto.tunnel import encode_message

    peer.receive_data(encode_message(message, 1 << 20))
    with pytest.raises(UnexpectedMessageError, match=mentions):
        peer.next_event()


def test_the_hello_comes_first_and_once():
    client = TunnelConnection("client")
    with pytest.raises(LocalProtocolError, match="before the client's hello"):
        client.send(Heartbeat(0))
    client.send(ClientHello())
    with pytest.raises(LocalProtocolError, match="a second"):
        client.send(ClientHello())

    gateway = TunnelConnection("gateway")
    gateway.receive_data(frame(msgpack.packb({"kind": "heartbeat", "seq": 0})))
    with pytest.raises(UnexpectedMessageError, match="before the client's hello"):
        gateway.next_event()


def test_a_peer_hello_twice_is_refused():
    client, _gateway = pair()
    client.receive_data(frame(msgpack.packb({"kind": "gateway_hello"})))
    with pytest.raises(UnexpectedMessageError, match="second 'gateway_hello'"):
        client.next_event()


def test_negotiation_and_capabilities():
    client, gateway = pair()
    assert client.negotiated_version == gateway.negotiated_version == (1, 0)
    assert client.shared_capabilities == gateway.shared_capabilities == frozenset({"b"})
    assert client.gateway_hello == gateway.gateway_hello
    assert client.gateway_hello.heartbeat_timeout_s == 45.0
    newer = TunnelConnection("client", protocol_version=(1, 7))
    gateway = TunnelConnection("gateway")
    gateway.receive_data(newer.send(ClientHello(protocol_version=(1, 7))))
    newer.receive_data(gateway.send(GatewayHello()))
    assert drain(gateway)[0].protocol_version == (1, 7)
    drain(newer)
    assert newer.negotiated_version == gateway.negotiated_version == (1, 0)


def test_a_major_version_we_do_not_speak_is_refused_clearly():
    future = TunnelConnection("client", protocol_version=(2, 0))
    gateway = TunnelConnection("gateway")
    gateway.receive_data(future.send(ClientHello(protocol_version=(2, 0))))
    with pytest.raises(VersionMismatchError) as info:
        gateway.next_event()
    assert info.value.ours == (1, 0) and info.value.theirs == (2, 0)
    assert "2.0 is not spoken here (major 1 only)" in str(info.value)
    # the gateway can still tell the client why, and the client hears it
    future.receive_data(gateway.send(Error(ErrorCode.VERSION, str(info.value))))
    reply = future.next_event()
    assert reply == Error("version", str(info.value))
    with pytest.raises(LocalProtocolError, match="after the gateway's error"):
        gateway.send(GatewayHello())


def test_our_hello_must_carry_our_version():
    with pytest.raises(LocalProtocolError, match="this connection speaks"):
        TunnelConnection("client").send(ClientHello(protocol_version=(1, 1)))


def test_nothing_follows_an_error():
    client, gateway = pair()
    deliver(client, gateway, Error("shutdown"))
    assert client.error_sent
    with pytest.raises(LocalProtocolError, match="after the client's error"):
        client.send(Heartbeat(1))
    gateway.receive_data(frame(msgpack.packb({"kind": "heartbeat", "seq": 5})))
    with pytest.raises(UnexpectedMessageError, match="after the client's error"):
        gateway.next_event()


def test_inventory_rules():
    client, gateway = pair()
    with pytest.raises(LocalProtocolError, match="before any 'inventory'"):
        client.send(InventoryUpdate(added=[STICK]))
    assert deliver(client, gateway, Inventory([]), InventoryUpdate(added=[STICK])) == [
        Inventory([]),
        InventoryUpdate(added=[STICK]),
    ]


def test_heartbeat_sequence_rules():
    client, gateway = pair()
    deliver(client, gateway, Heartbeat(3))
    with pytest.raises(LocalProtocolError, match="does not increase"):
        client.send(Heartbeat(3))
    with pytest.raises(LocalProtocolError, match="never sent"):
        client.send(HeartbeatAck(0))
    assert deliver(gateway, client, HeartbeatAck(3), HeartbeatAck(2)) == [HeartbeatAck(3), HeartbeatAck(2)]
    gateway.receive_data(frame(msgpack.packb({"kind": "heartbeat_ack", "seq": 4})))
    with pytest.raises(UnexpectedMessageError, match="never sent"):
        gateway.next_event()


def test_channel_lifecycle():
    client, gateway = pair()
    deliver(gateway, client, OpenChannel(5, STICK.id, TOKEN), OpenChannel(9, KEYBOARD.id, TOKEN))
    assert dict(client.channels) == {5: ChannelState.PENDING, 9: ChannelState.PENDING}
    with pytest.raises(LocalProtocolError, match="does not increase"):
        gateway.send(OpenChannel(9, STICK.id, TOKEN))
    deliver(client, gateway, ChannelOpened(5), ChannelFailed(9, "busy"))
    assert dict(gateway.channels) == dict(client.channels) == {5: ChannelState.OPEN}
    with pytest.raises(LocalProtocolError, match="already answered"):
        client.send(ChannelOpened(5))
    with pytest.raises(LocalProtocolError, match="never opened"):
        client.send(ChannelOpened(10))
    deliver(gateway, client, CloseChannel(5, "vm stopped"))
    assert not client.channels and not gateway.channels


def test_messages_crossing_a_close_are_tolerated():
    client, gateway = pair()
    deliver(gateway, client, OpenChannel(1, STICK.id, TOKEN))
    # both act at once: the gateway gives up, the client reports success
    close = gateway.send(CloseChannel(1, "timeout"))
    opened = client.send(ChannelOpened(1))
    gateway.receive_data(opened)
    client.receive_data(close)
    assert drain(gateway) == [ChannelOpened(1)]
    assert drain(client) == [CloseChannel(1, "timeout")]
    assert not client.channels and not gateway.channels
    # the client closes too, not knowing yet: harmless
    assert deliver(client, gateway, CloseChannel(1)) == [CloseChannel(1)]


def test_a_channel_never_opened_is_refused_from_the_peer():
    _client, gateway = pair()
    gateway.receive_data(frame(msgpack.packb({"kind": "channel_opened", "channel_id": 1})))
    with pytest.raises(UnexpectedMessageError, match="never opened"):
        gateway.next_event()


def test_live_channels_are_bounded():
    client, gateway = TunnelConnection("client", max_channels=2), TunnelConnection("gateway", max_channels=2)
    gateway.receive_data(client.send(ClientHello()))
    client.receive_data(gateway.send(GatewayHello()))
    drain(gateway), drain(client)
    deliver(gateway, client, OpenChannel(1, STICK.id, TOKEN), OpenChannel(2, STICK.id, TOKEN))
    with pytest.raises(LocalProtocolError, match="more than 2 live channels"):
        gateway.send(OpenChannel(3, STICK.id, TOKEN))
    unbounded = TunnelConnection("gateway", max_channels=3)
    unbounded.receive_data(TunnelConnection("client").send(ClientHello()))
    drain(unbounded)
    unbounded.send(GatewayHello())
    client.receive_data(unbounded.send(OpenChannel(3, STICK.id, TOKEN)))
    with pytest.raises(UnexpectedMessageError, match="more than 2 live channels"):
        client.next_event()


def test_misuse_of_the_api():
    with pytest.raises(LocalProtocolError, match="neither"):
        TunnelConnection("hypervisor")
    with pytest.raises(LocalProtocolError):
        TunnelConnection("client", max_message_size=0)
    with pytest.raises(LocalProtocolError):
        TunnelConnection("client", max_channels=0)
    from redirgate.proto.tunnel import Attach

    with pytest.raises(LocalProtocolError, match="not a control message"):
        TunnelConnection("client").send(Attach(1, TOKEN))  # type: ignore[arg-type]  # the wrong kind on purpose


# ------------------------------------------------------------- stream drops


def drops_pair(client_caps=("stream_drops",), gateway_caps=("stream_drops",)):
    """A client and a gateway after their hellos, channel 1 opened (and answered), 2 opened."""
    client, gateway = TunnelConnection("client"), TunnelConnection("gateway")
    gateway.receive_data(client.send(ClientHello(capabilities=set(client_caps))))
    client.receive_data(gateway.send(GatewayHello(capabilities=set(gateway_caps))))
    drain(gateway), drain(client)
    deliver(gateway, client, OpenChannel(1, STICK.id, TOKEN), OpenChannel(2, STICK.id, TOKEN))
    deliver(client, gateway, ChannelOpened(1))
    return client, gateway


#: (client caps, gateway caps, messages the client sends in order, the violation of the last one or None)
DROPS_CASES = [
    # both name it: any channel opened here, counts that stay or grow
    (("stream_drops",), ("stream_drops",), [StreamDrops(1, 3, 0), StreamDrops(1, 3, 0), StreamDrops(1, 9, 2)], None),
    (("stream_drops",), ("stream_drops",), [StreamDrops(2, 1, 1)], None),  # pending: opened, not answered yet
    # an old peer: never sent to it, never accepted from one that did not ask
    (("stream_drops",), (), [StreamDrops(1, 1, 0)], "without 'stream_drops' in both hellos"),
    ((), ("stream_drops",), [StreamDrops(1, 1, 0)], "without 'stream_drops' in both hellos"),
    (("stream_drops",), ("stream_drops",), [StreamDrops(3, 1, 0)], "channel 3, which was never opened"),
    # totals, never deltas: a live channel's counts do not go down
    (("stream_drops",), ("stream_drops",), [StreamDrops(1, 5, 1), StreamDrops(1, 4, 1)], "below the last"),
    (("stream_drops",), ("stream_drops",), [StreamDrops(1, 5, 1), StreamDrops(1, 5, 0)], "below the last"),
    # resumable: a channel of an earlier control connection may be named, as with acks
    (("stream_drops", "resume"), ("stream_drops", "resume"), [StreamDrops(77, 1, 0)], None),
    # the gateway never sends it
    (("stream_drops",), ("stream_drops",), ["gateway", StreamDrops(1, 1, 0)], "a gateway may not send"),
]


@pytest.mark.parametrize("client_caps, gateway_caps, messages, violation", DROPS_CASES)
def test_stream_drops_rules(client_caps, gateway_caps, messages, violation):
    client, gateway = drops_pair(client_caps, gateway_caps)
    sender, receiver = client, gateway
    if messages[0] == "gateway":
        sender, receiver, messages = gateway, client, messages[1:]
    *fine, last = messages
    if fine:
        assert deliver(sender, receiver, *fine) == fine
    if violation is None:
        assert deliver(sender, receiver, last) == [last]
        return
    with pytest.raises(LocalProtocolError, match=violation):
        sender.send(last)
    # the same message arriving from a peer that broke the rule
    from redirgate.proto.tunnel import encode_message

    receiver.receive_data(encode_message(last, 1 << 20))
    with pytest.raises(UnexpectedMessageError, match=violation):
        receiver.next_event()


def test_stream_drops_after_a_close_start_again():
    client, gateway = drops_pair()
    deliver(client, gateway, StreamDrops(1, 5, 5))
    # the channel ended; a report crossing the close is still fine, and its counts are not checked again
    deliver(gateway, client, CloseChannel(1, "vm stopped"))
    assert deliver(client, gateway, StreamDrops(1, 6, 5), StreamDrops(1, 0, 0)) == [
        StreamDrops(1, 6, 5),
        StreamDrops(1, 0, 0),
    ]
    assert not client._state.drops and not gateway._state.drops  # nothing kept for ended channels
