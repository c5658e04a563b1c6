"""Every refusal reason, produced by a real TLS handshake against a real server on 127.0.0.1.

The server is what the gateway's tunnel listener does per connection:
``accept_tls`` with the tunnel context, then ``verify_peer`` with a
``RevocationList`` on the PKI's crl.pem.  Clients are real TLS clients
(ZeroCopyTLSStream with various contexts) or raw TCP for garbage/stalls.
"""

from __future__ import annotations

import datetime as dt
import functools
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from redirgate.gateway import pki
from redirgate.proto import tunnel as t
from redirgate.transport import (
    BusyTickets,
    PeerKind,
    Refusal,
    TlsRefused,
    ZeroCopyTLSStream,
    accept_tls,
    client_context,
    open_tls_connection,
    verify_peer,
)
from tests.support.transport_lab import GATEWAY, Pki, make_pki

HANDSHAKE_TIMEOUT_S = 0.5


class Server:
    """A tunnel-port stand-in: records (identity | TlsRefused) per connection."""

    def __init__(self, env: Pki, revocation: pki.RevocationList) -> None:
        self.context = env.server_context()  # built once: revocation must apply without rebuilding
        self.revocation = revocation
        self.port = 0
        self.outcomes: list[str | TlsRefused] = []
        self._arrived = trio.Condition()

    async def handle(self, tcp: trio.SocketStream) -> None:
        try:
            stream = await accept_tls(tcp, self.context, handshake_timeout_s=HANDSHAKE_TIMEOUT_S)
        except TlsRefused as refused:
            await self._record(refused)
            return
        try:
            identity = verify_peer(stream.getpeercert(), peer=stream.peer, revocation=self.revocation)
        except TlsRefused as refused:
            await self._record(refused)
        else:
            await self._record(identity)  # before the client can see the welcome
            await stream.send_all(b"welcome " + identity.encode())
        finally:
            await stream.aclose()

    async def _record(self, outcome: str | TlsRefused) -> None:
        async with self._arrived:
            self.outcomes.append(outcome)
            self._arrived.notify_all()

    async def next_outcome(self, count_before: int) -> str | TlsRefused:
        async with self._arrived:
            while len(self.outcomes) <= count_before:
                await self._arrived.wait()
        return self.outcomes[count_before]


@asynccontextmanager
async def running_server(env: Pki) -> AsyncIterator[Server]:
    server = Server(env, pki.RevocationList.for_directory(env.directory))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


async def connect_tls(server: Server, context: ssl.SSLContext) -> str:
    """Connect, handshake as a client, read to the end; say what the client saw."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    stream = ZeroCopyTLSStream(sock, context, server_side=False, server_hostname=GATEWAY)
    try:
        await stream.do_handshake(5)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
        return received.decode()
    except (TlsRefused, trio.BrokenResourceError) as exc:
        return f"client saw {type(exc).__name__}"
    finally:
        await stream.aclose()


async def expect_refusal(server: Server, context: ssl.SSLContext, refusal: Refusal) -> TlsRefused:
    before = len(server.outcomes)
    client_view = await connect_tls(server, context)
    outcome = await server.next_outcome(before)
    assert isinstance(outcome, TlsRefused), (outcome, client_view)
    assert outcome.refusal is refusal, outcome
    assert not client_view.startswith("welcome")
    assert outcome.peer.startswith("127.0.0.1:")
    return outcome


@pytest.fixture
def env(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def _client_ctx(env: Pki, name: str) -> ssl.SSLContext:
    base = pki.client_dir(env.directory, name)
    return client_context(base / "client-cert.pem", base / "client-key.pem", env.ca, GATEWAY).ssl_context


async def test_good_client_is_welcomed_with_its_identity(env: Pki) -> None:
    async with running_server(env) as server:
        assert await connect_tls(server, env.client_context().ssl_context) == "welcome alice"
        assert server.outcomes == ["alice"]


async def test_no_client_certificate(env: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(env.ca))
    async with running_server(env) as server:
        refused = await expect_refusal(server, ctx, Refusal.NO_CLIENT_CERT)
        assert "no client certificate" in str(refused)


async def test_certificate_from_another_ca(env: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", client="mallory")
    # trusts our gateway, but presents a certificate from the other CA
    ctx = client_context(other.client_cert, other.client_key, env.ca, GATEWAY).ssl_context
    async with running_server(env) as server:
        refused = await expect_refusal(server, ctx, Refusal.UNKNOWN_CA)
        assert "certificate not signed by our CA" in str(refused)


async def test_revocation_applies_without_restart(env: Pki) -> None:
    pki.issue_client(env.directory, "bob")
    ctx = _client_ctx(env, "bob")
    async with running_server(env) as server:
        context_before = server.context
        assert await connect_tls(server, ctx) == "welcome bob"
        reloads = server.revocation.reloads
        entry = pki.revoke(env.directory, "bob")
        refused = await expect_refusal(server, ctx, Refusal.REVOKED)
        assert f"{entry.serial:x}" in str(refused)
        assert server.revocation.reloads == reloads + 1  # crl.pem was reloaded ...
        assert server.context is context_before  # ... by the same, never rebuilt, server
        # others are unaffected
        assert await connect_tls(server, env.client_context().ssl_context) == "welcome alice"


async def test_expired_certificate(env: Pki) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issued = pki.issue_client(env.directory, "old", now=long_ago, valid_days=1)
    assert issued.not_valid_after < dt.datetime.now(dt.UTC)
    async with running_server(env) as server:
        refused = await expect_refusal(server, _client_ctx(env, "old"), Refusal.EXPIRED)
        assert "certificate expired" in str(refused)


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", b"\x00\x01\x02\x03garbage" * 8, b"SSH-2.0-OpenSSH_9.2\r\n"],
    ids=["http", "binary", "ssh"],
)
async def test_garbage_bytes(env: Pki, garbage: bytes) -> None:
    async with running_server(env) as server:
        before = len(server.outcomes)
        tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with tcp:
            await tcp.send_all(garbage)
            outcome = await server.next_outcome(before)
        assert isinstance(outcome, TlsRefused) and outcome.refusal is Refusal.NOT_TLS, outcome
        assert "not TLS (garbage)" in str(outcome)


async def test_a_peer_gone_before_the_server_took_it_is_a_refusal(env: Pki) -> None:
    """A client that sent its bytes and reset the connection while it waited in the backlog (a dial
    abandoned at a loaded gateway): ssl's wrap_socket fails before any handshake, and that is a
    `closed` refusal, not an internal error with a traceback."""
    async with running_server(env) as server:
        before = len(server.outcomes)
        sock = socket.create_connection(("127.0.0.1", server.port))  # no await: the server cannot accept yet
        sock.sendall(b"\x16\x03\x01 a ClientHello that never finishes")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, with the bytes still unread on the server's side
        outcome = await server.next_outcome(before)
        assert isinstance(outcome, TlsRefused) and outcome.refusal is Refusal.CLOSED, outcome


async def test_stalled_handshake_times_out(env: Pki) -> None:
    async with running_server(env) as server:
        before = len(server.outcomes)
        tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with tcp:
            start = trio.current_time()
            outcome = await server.next_outcome(before)
            elapsed = trio.current_time() - start
            assert await tcp.receive_some(10) == b""  # the server hung up
        assert isinstance(outcome, TlsRefused) and outcome.refusal is Refusal.HANDSHAKE_TIMEOUT, outcome
        assert "handshake timed out" in str(outcome)
        # the server's own timer ended it, not before it ran out (how much later depends on the load)
        assert elapsed >= HANDSHAKE_TIMEOUT_S * 0.9


async def test_hypervisor_certificate_is_not_a_client_identity(env: Pki) -> None:
    issued = pki.issue_hypervisor(env.directory, "hv1")
    ctx = client_context(issued.cert, issued.key, env.ca, GATEWAY).ssl_context
    async with running_server(env) as server:
        await expect_refusal(server, ctx, Refusal.NO_IDENTITY)


async def test_tls12_client_is_refused_on_the_tunnel_port(env: Pki) -> None:
    ctx = env.client_context().ssl_context
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running_server(env) as server:
        await expect_refusal(server, ctx, Refusal.PROTOCOL_VERSION)


async def test_client_refuses_a_gateway_with_the_wrong_name(env: Pki) -> None:
    async with running_server(env) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        stream = ZeroCopyTLSStream(
            sock, env.client_context().ssl_context, server_side=False, server_hostname="other.test"
        )
        with pytest.raises(TlsRefused) as info:
            await stream.do_handshake(5)
        await stream.aclose()
        assert info.value.refusal is Refusal.NAME_MISMATCH


def test_verify_peer_checks_expiry_itself(env: Pki) -> None:
    """verify_peer does not rely on OpenSSL alone for validity (e.g. CERT_NONE contexts)."""
    client = x509.load_pem_x509_certificate(env.client_cert.read_bytes())
    raw = client.public_bytes(Encoding.DER)
    later = client.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(TlsRefused) as info:
        verify_peer(raw, peer="p", now=later)
    assert info.value.refusal is Refusal.EXPIRED
    assert verify_peer(raw, peer="p") == "alice"
    with pytest.raises(TlsRefused) as info:
        verify_peer(raw, peer="p", kind=PeerKind.HYPERVISOR)
    assert info.value.refusal is Refusal.NO_IDENTITY
    with pytest.raises(TlsRefused) as info:
        verify_peer(None, peer="p")
    assert info.value.refusal is Refusal.NO_CLIENT_CERT


@pytest.mark.parametrize("ticket", [None, b"0123456789abcdef0123456789ab"])
async def test_a_busy_line_openssl_read_first_is_still_a_busy_refusal(
    env: Pki, monkeypatch: pytest.MonkeyPatch, ticket: bytes | None
) -> None:
    """The busy line can come after the client looked for it and before OpenSSL's first read (the
    client preempted between its ClientHello and that read, which a herd on a busy machine does):
    OpenSSL takes the line's first 5 bytes for a record header and fails.  The client must still
    see the busy refusal with its hint and ticket, not a TLS error.  Here the look always comes
    too early."""
    monkeypatch.setattr(ZeroCopyTLSStream, "_busy_hint", lambda self: (False, None, None))

    async def busy_gateway(tcp: trio.SocketStream) -> None:
        async with tcp:
            await tcp.send_all(t.busy_line(2.5, ticket))
            await tcp.receive_some(4096)  # until the client gives up (its ClientHello, an alert, EOF)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, busy_gateway, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(TlsRefused) as refused:
            await open_tls_connection("127.0.0.1", port, env.client_context())
        nursery.cancel_scope.cancel()
    assert refused.value.refusal is Refusal.BUSY
    assert refused.value.retry_after_s == 2.5 and refused.value.ticket == ticket


async def test_a_busy_line_sent_at_once_then_closed_reaches_a_client_dialling_with_its_ticket(env: Pki) -> None:
    """A gateway with too many connections waiting sends its busy line at once and closes. A client
    that comes back with a ticket sends the ticket line first: it reaches a closed socket, and the
    reset is back before the client wraps its socket for TLS, whose check for that reads a byte of
    the line and closes.  The client must still get the busy refusal, its hint and the new ticket,
    every time (not a refusal that says the connection closed)."""
    ticket = b"0123456789abcdef0123456789ab"

    async def at_once_gateway(tcp: trio.SocketStream) -> None:
        async with tcp:
            await tcp.send_all(t.busy_line(2.5, ticket))

    tickets = BusyTickets()
    refusals: list[TlsRefused] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, at_once_gateway, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        for _ in range(20):
            with pytest.raises(TlsRefused) as refused:
                await open_tls_connection("127.0.0.1", port, env.client_context(), tickets=tickets)
            refusals.append(refused.value)
        nursery.cancel_scope.cancel()
    assert [(r.refusal, r.retry_after_s, r.ticket) for r in refusals] == [(Refusal.BUSY, 2.5, ticket)] * 20
    assert all(r.peer == f"127.0.0.1:{port}" for r in refusals), [r.peer for r in refusals]
