"""Shared helpers for the transport tests (no tests here).

Builds a real PKI with redirgate.gateway.pki in a temporary directory,
real TLS connections over loopback TCP between ZeroCopyTLSStreams, and the
relay tests' channel (a plain hypervisor end, a TLS client end, the two
relay ends between) with seeded random data whose digest both sides compare.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import trio

from redirgate.gateway import pki
from redirgate.transport import (
    ClientContext,
    PlainSocketStream,
    RelayStats,
    ZeroCopyTLSStream,
    client_context,
    server_context,
)

GATEWAY = "gw.test"


@dataclasses.dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.server_cert, self.server_key, self.ca)

    def client_context(self, name: str | None = None) -> ClientContext:
        if name is None:
            return client_context(self.client_cert, self.client_key, self.ca, GATEWAY)
        base = pki.client_dir(self.directory, name)
        return client_context(base / "client-cert.pem", base / "client-key.pem", self.ca, GATEWAY)


def make_pki(directory: Path, client: str = "alice") -> Pki:
    pki.init_ca(directory)
    gw = pki.issue_gateway(directory, GATEWAY, ips=["127.0.0.1"])
    cl = pki.issue_client(directory, client)
    return Pki(directory, directory / "ca-cert.pem", gw.cert, gw.key, cl.cert, cl.key)


def tcp_socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client, server) of plain stdlib sockets."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    client.settimeout(None)
    return client, server


async def tls_pair(
    server_ctx: ssl.SSLContext, client: ClientContext, *, unix: bool = False
) -> tuple[ZeroCopyTLSStream, ZeroCopyTLSStream]:
    """Handshaken (client, server) ZeroCopyTLSStreams over loopback TCP (or an
    AF_UNIX socketpair: its buffers fill and drain only by the two ends'
    calls, with nothing in flight that the kernel moves on later)."""
    csock, ssock = socket.socketpair() if unix else tcp_socketpair()
    c = ZeroCopyTLSStream(csock, client.ssl_context, server_side=False, server_hostname=client.server_name)
    s = ZeroCopyTLSStream(ssock, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.do_handshake)
        nursery.start_soon(s.do_handshake)
    return c, s


async def plain_pair() -> tuple[PlainSocketStream, PlainSocketStream]:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    return PlainSocketStream(trio.SocketStream(client)), PlainSocketStream(trio.SocketStream(server))


class Channel:
    """hypervisor end (plain) <-> [relay] <-> client end (TLS)."""

    def __init__(
        self, hv: PlainSocketStream, relay_plain: PlainSocketStream, relay_tls: ZeroCopyTLSStream, cl: ZeroCopyTLSStream
    ) -> None:
        self.hv, self.relay_plain, self.relay_tls, self.cl = hv, relay_plain, relay_tls, cl
        self.stats = RelayStats()


async def make_channel(env: Pki) -> Channel:
    hv, relay_plain = await plain_pair()
    cl, relay_tls = await tls_pair(env.server_context(), env.client_context())
    return Channel(hv, relay_plain, relay_tls, cl)


def _random_chunks(size: int, seed: int) -> Iterator[bytes]:
    """`size` seeded random bytes in chunks of mixed sizes (1 byte to 300 KB)."""
    rng = random.Random(seed)
    made = 0
    while made < size:
        chunk = rng.randbytes(min(size - made, rng.choice([1, 7, 1000, 16384, 65536, 300000])))
        made += len(chunk)
        yield chunk


async def send_random(stream: trio.abc.SendStream, size: int, seed: int) -> str:
    """Send `size` seeded random bytes; their sha256."""
    digest = hashlib.sha256()
    for chunk in _random_chunks(size, seed):
        digest.update(chunk)
        await stream.send_all(chunk)
    return digest.hexdigest()


def random_digest(size: int, seed: int, prefix: bytes = b"") -> str:
    """The sha256 of `prefix` and then what send_random(size, seed) sends."""
    digest = hashlib.sha256(prefix)
    for chunk in _random_chunks(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


async def slow_reader(stream: trio.abc.ReceiveStream, size: int) -> str:
    """Read `size` bytes, slowly over the first 512 KiB; their sha256."""
    digest = hashlib.sha256()
    got = 0
    while got < size:
        chunk = await stream.receive_some(8192)
        assert chunk, f"EOF after {got} of {size} bytes"
        digest.update(chunk)
        got += len(chunk)
        if got < 512 * 1024:
            await trio.sleep(0.001)  # a slow consumer: the relay must wait, not buffer
    return digest.hexdigest()


async def small_messages_back(channel: Channel, count: int) -> bytes:
    """`count` small messages from the client end to the hypervisor end, checked to
    arrive in order; what was sent."""
    for i in range(count):
        await channel.cl.send_all(b"%d;" % i)
    expect = b"".join(b"%d;" % i for i in range(count))
    got = b""
    while len(got) < len(expect):
        chunk = await channel.hv.receive_some(65536)
        assert chunk, f"EOF after {len(got)} of {len(expect)} bytes"
        got += chunk
    assert got == expect
    return expect


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> str:
    digest = hashlib.sha256()
    got = 0
    while got < size:
        chunk = await stream.receive_some(min(65536, size - got))
        assert chunk, f"EOF after {got} of {size} bytes"
        digest.update(chunk)
        got += len(chunk)
    return digest.hexdigest()
