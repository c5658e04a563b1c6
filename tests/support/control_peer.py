"""A control session (`redirgate.transport.ControlSession`, gateway role) and a hand-driven
client peer on an in-memory stream pair, for the control-session and timer tests."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from redirgate.proto import tunnel as t
from redirgate.transport import ControlSession

__all__ = ["INTERVAL_S", "TIMEOUT_S", "Peer", "connected_pair", "gateway_after_hellos"]

INTERVAL_S, TIMEOUT_S = 10.0, 30.0


class Peer:
    """The other end, driven by hand: a TunnelConnection on a stream."""

    def __init__(self, stream: trio.abc.Stream, role: str) -> None:
        self.stream = stream
        self.conn = t.TunnelConnection(role)

    async def send(self, message: t.TunnelMessage) -> None:
        await self.stream.send_all(self.conn.send(message))

    async def next(self) -> Any:
        while (event := self.conn.next_event()) is t.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        return event


async def gateway_after_hellos(stream: trio.abc.Stream) -> ControlSession:
    """A gateway-role session whose client peer said hello (and was answered)."""
    session = ControlSession(stream, "gateway", peer="client-under-test")
    hello = await session.receive()
    assert isinstance(hello, t.ClientHello)
    await session.send(t.GatewayHello(heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S))
    return session


async def connected_pair() -> tuple[ControlSession, Peer]:
    ours, theirs = trio.testing.memory_stream_pair()
    peer = Peer(theirs, "client")
    await peer.send(t.ClientHello(software="test peer"))
    session = await gateway_after_hellos(ours)
    assert isinstance(await peer.next(), t.GatewayHello)
    return session, peer
