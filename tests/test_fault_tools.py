"""The fault-injection tools in tests/support do what they say on real sockets.

tests/support/fault_proxy.py: a reset reaches both ends as a connection
reset (not an orderly close); a paused proxy delivers nothing, then
everything in order once resumed; it keeps listening after a reset.
tests/support/netns.py: a veth pair between two namespaces carries TCP,
drops it under the nft rule (counted, nothing delivered), carries it again
once the rule is gone (TCP's retransmission delivers what was dropped).
"""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest
import trio
import trio.testing

from tests.support.fault_proxy import fault_proxy
from tests.support.netns import NetnsPair, netns_pair
from tests.support.system import require, require_system
from tests.support.waiting import until


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def readable(sock: socket.socket | trio.socket.SocketType) -> bool:
    """Whether anything (data, EOF, an error) waits on `sock` right now."""
    return bool(select.select([sock.fileno()], [], [], 0)[0])


async def connected(proxy_port: int, listener: trio.SocketListener) -> tuple[trio.SocketStream, trio.SocketStream]:
    client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    server = await listener.accept()
    assert isinstance(server, trio.SocketStream)
    return client, server


async def test_reset_reaches_both_ends_as_a_connection_reset() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener, fault_proxy(("127.0.0.1", listener.socket.getsockname()[1])) as proxy:
        client, server = await connected(proxy.port, listener)
        await client.send_all(b"ping")
        assert await receive_exactly(server, 4) == b"ping"
        assert proxy.reset() == 1
        for end in (client, server):
            with pytest.raises(trio.BrokenResourceError) as caught:  # an orderly close would be b"" here
                await end.receive_some(16)
            assert isinstance(caught.value.__cause__, ConnectionResetError)
            await end.aclose()
        client, server = await connected(proxy.port, listener)  # still listening: a peer can redial
        await server.send_all(b"pong")
        assert await receive_exactly(client, 4) == b"pong"
        assert proxy.accepted == 2
        await client.aclose()
        await server.aclose()


async def test_a_reset_by_one_end_reaches_the_other_as_a_reset() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener, fault_proxy(("127.0.0.1", listener.socket.getsockname()[1])) as proxy:
        client, server = await connected(proxy.port, listener)
        await client.send_all(b"ping")
        assert await receive_exactly(server, 4) == b"ping"
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.aclose()  # an RST to the proxy
        with pytest.raises(trio.BrokenResourceError) as caught:
            await client.receive_some(16)
        assert isinstance(caught.value.__cause__, ConnectionResetError)
        await client.aclose()
        assert proxy.resets == 0  # passed on by the proxy, not ordered by the test


async def test_a_paused_proxy_delivers_nothing_then_everything_in_order() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener, fault_proxy(("127.0.0.1", listener.socket.getsockname()[1])) as proxy:
        client, server = await connected(proxy.port, listener)
        proxy.pause()
        up, down = bytes(range(256)) * 400, b"answer" * 1000
        await client.send_all(up)
        await server.send_all(down)
        await until(lambda: proxy.held > 0, "the proxy read what was sent")
        await trio.testing.wait_all_tasks_blocked()
        assert not readable(server.socket) and not readable(client.socket)
        proxy.resume()
        assert await receive_exactly(server, len(up)) == up
        assert await receive_exactly(client, len(down)) == down
        assert proxy.held == 0
        await client.aclose()
        await server.aclose()


async def until_dropped(pair: NetnsPair, count: int) -> None:
    """Poll the nft counter (a kernel counter: no event announces it; a subprocess each read, so not at
    `until`'s default pace)."""
    await until(lambda: pair.dropped() >= count, f"{count} packets dropped by nft", poll_s=0.05)


@pytest.mark.trio_timeout(120)
async def test_a_netns_pair_passes_drops_and_passes_again() -> None:
    require_system("ip")
    require_system("nft")
    require("root", os.geteuid() == 0, "creating network namespaces needs root")
    with netns_pair() as pair:
        listen = trio.socket.from_stdlib_socket(pair.socket("b"))
        await listen.bind((pair.address("b"), 0))
        listen.listen(1)
        port = listen.getsockname()[1]
        client = trio.SocketStream(trio.socket.from_stdlib_socket(pair.socket("a")))
        await client.socket.connect((pair.address("b"), port))
        accepted, _ = await listen.accept()
        server = trio.SocketStream(accepted)
        await client.send_all(b"before")
        assert await receive_exactly(server, 6) == b"before"

        pair.drop()
        await client.send_all(b"during")
        await until_dropped(pair, 1)
        assert not readable(server.socket)

        pair.undrop()
        assert pair.dropped() == 0
        assert await receive_exactly(server, 6) == b"during"  # retransmitted once the rule is gone
        await server.send_all(b"after")
        assert await receive_exactly(client, 5) == b"after"
        for s in (client, server):
            await s.aclose()
        listen.close()
