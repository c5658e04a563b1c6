"""AttachConnection: the data connection's preamble between a real client and gateway end."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from redirgate.proto.tunnel import (
    ATTACH_MAX_MESSAGE_SIZE,
    CLOSED,
    NEED_DATA,
    Attach,
    AttachConnection,
    AttachResult,
    FrameTooLargeError,
    InvalidMessageError,
    LocalProtocolError,
    RemoteProtocolError,
    TruncatedError,
    TunnelProtocolError,
    UnexpectedMessageError,
)
from tests.support import tunnel_cases as cases

TOKEN = bytes(range(32))


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@given(st.lists(st.integers(1, 20), max_size=5), st.binary(max_size=64), st.binary(max_size=64))
def test_preamble_then_raw_bytes_both_ways_in_any_pieces(sizes, raw_up, raw_down):
    client, gateway = AttachConnection("client"), AttachConnection("gateway")
    up = client.send(Attach(7, TOKEN)) + raw_up  # a client may start before the answer
    events = []
    for piece in cases.chunked(up, sizes):
        if not events:
            gateway.receive_data(piece)
            event = gateway.next_event()
            if event is not NEED_DATA:
                events.append(event)
                trailing, eof = gateway.trailing_data()
        else:
            trailing += piece
    assert events == [Attach(7, TOKEN)] and trailing == raw_up and not eof
    assert events[0].token_matches(TOKEN) and not events[0].token_matches(bytes(32))
    down = gateway.send(AttachResult(True)) + raw_down
    client.receive_data(down)
    client.receive_data(b"")
    assert client.next_event() == AttachResult(True)
    assert client.done and gateway.done
    assert client.trailing_data() == (raw_down, True)


def test_the_preamble_is_over_after_the_frame():
    client, gateway = AttachConnection("client"), AttachConnection("gateway")
    gateway.receive_data(client.send(Attach(1, TOKEN)))
    gateway.next_event()
    with pytest.raises(LocalProtocolError, match="already returned"):
        gateway.next_event()
    gateway.trailing_data()
    with pytest.raises(LocalProtocolError, match="already taken"):
        gateway.trailing_data()
    with pytest.raises(LocalProtocolError, match="belong to the channel"):
        gateway.receive_data(b"raw")


def test_a_refusal_reaches_the_client():
    client, gateway = AttachConnection("client"), AttachConnection("gateway")
    gateway.receive_data(client.send(Attach(3, bytes(16))))
    attach = gateway.next_event()
    assert not attach.token_matches(TOKEN[:16])
    client.receive_data(gateway.send(AttachResult(False, "wrong attach token")))
    assert client.next_event() == AttachResult(False, "wrong attach token")


def test_order_and_roles():
    client, gateway = AttachConnection("client"), AttachConnection("gateway")
    with pytest.raises(LocalProtocolError, match="only after the client's attach"):
        gateway.send(AttachResult(True))
    with pytest.raises(LocalProtocolError, match="sends only 'attach'"):
        client.send(AttachResult(True))
    client.send(Attach(1, TOKEN))
    with pytest.raises(LocalProtocolError, match="already sent"):
        client.send(Attach(2, TOKEN))
    # a client that did not attach yet may not hear a result
    early = AttachConnection("client")
    early.receive_data(frame(msgpack.packb({"kind": "attach_result", "ok": True})))
    with pytest.raises(UnexpectedMessageError, match="before our attach"):
        early.next_event()
    # a gateway hearing a result, a client hearing an attach
    for role, kind in (
        ("gateway", {"kind": "attach_result", "ok": True}),
        ("client", {"kind": "attach", "channel_id": 1, "token": TOKEN}),
    ):
        conn = AttachConnection(role)
        if role == "client":
            conn.send(Attach(1, TOKEN))
        conn.receive_data(frame(msgpack.packb(kind)))
        with pytest.raises(UnexpectedMessageError, match="may not send it"):
            conn.next_event()


@pytest.mark.parametrize(
    "data, error",
    [
        (struct.pack(">I", 1 << 30), FrameTooLargeError),
        (struct.pack(">I", ATTACH_MAX_MESSAGE_SIZE + 1), FrameTooLargeError),
        (frame(msgpack.packb({"kind": "client_hello"})), InvalidMessageError),
        (frame(msgpack.packb({"kind": "attach", "channel_id": 1, "token": "0" * 16})), InvalidMessageError),
        (frame(msgpack.packb({"kind": "attach", "channel_id": 0, "token": TOKEN})), InvalidMessageError),
        (frame(msgpack.packb({"kind": "attach", "channel_id": 1, "token": TOKEN[:15]})), InvalidMessageError),
        (frame(b"\xc1"), RemoteProtocolError),
    ],
)
def test_bad_preambles(data, error):
    gateway = AttachConnection("gateway")
    gateway.receive_data(data)
    with pytest.raises(error):
        gateway.next_event()
    gateway.receive_data(b"more")
    with pytest.raises(RemoteProtocolError, match="already failed"):
        gateway.next_event()


def test_eof():
    gateway = AttachConnection("gateway")
    gateway.receive_data(b"")
    assert gateway.next_event() is CLOSED
    gateway = AttachConnection("gateway")
    gateway.receive_data(b"\0\0\0\x10abc")
    gateway.receive_data(b"")
    with pytest.raises(TruncatedError):
        gateway.next_event()


@given(st.binary(max_size=300))
def test_random_input_raises_only_tunnel_errors(data):
    gateway = AttachConnection("gateway")
    gateway.receive_data(data)
    gateway.receive_data(b"")
    try:
        gateway.next_event()
    except TunnelProtocolError:
        pass
