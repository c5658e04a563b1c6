"""The cluster's fields in the tunnel messages: OpenChannel.attach, GatewayHello.gateways (issue 18).

They travel only when set, so a peer without the cluster capability (whose
strict decoder refuses unknown fields) never sees them."""

from __future__ import annotations

import pytest

from redirgate.proto import tunnel as t

TOKEN = b"t" * 32


def test_attach_round_trips_and_is_absent_when_empty() -> None:
    plain = t.OpenChannel(1, "usb:1209:0001", TOKEN)
    assert "attach" not in plain.to_wire()
    moved = t.OpenChannel(1, "usb:1209:0001", TOKEN, attach="gw-a.example:7443")
    assert t.OpenChannel.from_wire(moved.to_wire()) == moved
    assert t.OpenChannel(1, "usb:1209:0001", TOKEN, attach="[::1]:7443").attach == "[::1]:7443"


def test_gateways_round_trip_and_are_absent_when_empty() -> None:
    assert "gateways" not in t.GatewayHello().to_wire()
    hello = t.GatewayHello(gateways=["gw-a:7443", "10.0.0.2:7443"])
    assert hello.gateways == ("gw-a:7443", "10.0.0.2:7443")
    assert t.GatewayHello.from_wire(hello.to_wire()) == hello


@pytest.mark.parametrize("address", ["gw-a", "gw-a:0", "gw-a:x", ":7443", "gw\n:1", "a" * 300 + ":1"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(t.LocalProtocolError):
        t.OpenChannel(1, "usb:1209:0001", TOKEN, attach=address)
    with pytest.raises(t.LocalProtocolError):
        t.GatewayHello(gateways=[address])


def test_at_most_max_gateways() -> None:
    from redirgate.proto.tunnel.messages import MAX_GATEWAYS

    with pytest.raises(t.LocalProtocolError):
        t.GatewayHello(gateways=[f"gw-{i}:1" for i in range(MAX_GATEWAYS + 1)])
