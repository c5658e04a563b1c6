"""ZeroCopyTLSStream and PlainSocketStream against trio's stream conformance checks.

Real TLS 1.3 over real loopback TCP, certificates from our own PKI.
"""

from __future__ import annotations

import select
import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from redirgate.transport import PlainSocketStream, ZeroCopyTLSStream
from tests.support.transport_lab import Pki, make_pki, plain_pair, tls_pair


@pytest.fixture(scope="module")
def tls_env(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _clog(stream: ZeroCopyTLSStream) -> None:
    """Fill the socket buffers with valid TLS records until a write would block.

    Writes through the SSLSocket directly: whole 1 KiB records while poll
    says there is ample room, then 1-byte records until OpenSSL reports
    SSLWantWriteError.  That leaves one 1-byte record inside OpenSSL which
    the stream's next send flushes in place of its first byte: the clogged
    checks only look at blocking and closing, never at the bytes.  On an
    AF_UNIX pair (tls_pair(unix=True)) the buffers stay full until the peer
    reads; over TCP the kernel may still move queued bytes on a moment later
    (later still on a loaded machine), and a send meant to block would not.
    """
    sslsock: ssl.SSLSocket = stream._ssl
    assert sslsock.family == socket.AF_UNIX
    chunk = b"c" * 1024
    while select.select([], [sslsock], [], 0)[1]:
        assert sslsock.send(chunk) == len(chunk)
    while True:
        try:
            sslsock.send(b"c")
        except ssl.SSLWantWriteError:
            return


async def test_tls_stream_two_way(tls_env: Pki) -> None:
    async def maker() -> tuple[ZeroCopyTLSStream, ZeroCopyTLSStream]:
        return await tls_pair(tls_env.server_context(), tls_env.client_context())

    async def clogged() -> tuple[ZeroCopyTLSStream, ZeroCopyTLSStream]:
        c, s = await tls_pair(tls_env.server_context(), tls_env.client_context(), unix=True)
        _clog(c)
        _clog(s)  # check_two_way_stream also uses it flipped
        return c, s

    await trio.testing.check_two_way_stream(maker, clogged)


async def test_tls_stream_reports_peer_and_version(tls_env: Pki) -> None:
    c, s = await tls_pair(tls_env.server_context(), tls_env.client_context())
    try:
        assert c.version() == "TLSv1.3" == s.version()
        cert = s.peer_certificate()
        assert cert is not None
        assert s.peer.startswith("127.0.0.1:")
    finally:
        await c.aclose()
        await s.aclose()


async def test_tls_receive_into_fills_one_buffer_from_many_records(tls_env: Pki) -> None:
    c, s = await tls_pair(tls_env.server_context(), tls_env.client_context())
    try:
        data = bytes(range(256)) * 1024  # 256 KiB = 16 records
        await c.send_all(data)
        buf = bytearray(len(data))
        got = 0
        calls = 0
        while got < len(data):
            got += await s.receive_into(memoryview(buf)[got:])
            calls += 1
        assert buf == data
        assert calls < 16  # more than one record per call
    finally:
        await c.aclose()
        await s.aclose()


async def _plain_pair() -> tuple[PlainSocketStream, PlainSocketStream]:
    a, b = trio.socket.socketpair()  # AF_UNIX; TCP is covered by the TLS tests
    return PlainSocketStream(trio.SocketStream(a)), PlainSocketStream(trio.SocketStream(b))


@pytest.mark.parametrize("maker", [_plain_pair, plain_pair], ids=["unix", "tcp"])
async def test_plain_stream_half_closeable(maker) -> None:  # type: ignore[no-untyped-def]  # maker: a parametrized factory
    await trio.testing.check_half_closeable_stream(maker, None)


async def test_plain_receive_into(tmp_path: Path) -> None:
    a, b = await plain_pair()
    async with a, b:
        await a.send_all(memoryview(b"hello world")[6:])
        buf = bytearray(16)
        assert await b.receive_into(buf) == 5
        assert buf[:5] == b"world"
        await a.send_eof()
        assert await b.receive_into(buf) == 0
