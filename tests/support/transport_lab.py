"""Shared helpers for the transport tests (no tests here).

Builds a real PKI with redirgate.gateway.pki in a temporary directory and
real TLS connections over loopback TCP between ZeroCopyTLSStreams.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from pathlib import Path

import trio

from redirgate.gateway import pki
from redirgate.transport import (
    ClientContext,
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


async def tls_pair(server_ctx: ssl.SSLContext, client: ClientContext) -> tuple[ZeroCopyTLSStream, ZeroCopyTLSStream]:
    """Handshaken (client, server) ZeroCopyTLSStreams over loopback TCP."""
    csock, ssock = tcp_socketpair()
    c = ZeroCopyTLSStream(csock, client.ssl_context, server_side=False, server_hostname=client.server_name)
    s = ZeroCopyTLSStream(ssock, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.do_handshake)
        nursery.start_soon(s.do_handshake)
    return c, s
