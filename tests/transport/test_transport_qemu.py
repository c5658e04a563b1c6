"""The hypervisor-facing TLS port against a real QEMU (GnuTLS) using `pki issue-hypervisor` files.

QEMU dials in exactly as a VM would, ``-object tls-creds-x509,endpoint=client,
dir=hypervisors/NAME`` + ``-chardev socket,...,tls-creds=``, with its
monitor on that chardev so the TLS channel carries real bytes both ways
(the monitor banner in, ``quit`` out).  No guest is booted (``-M none``).
Every QEMU started here is killed by PID in a finally.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest
import trio

from redirgate.gateway import pki
from redirgate.transport import (
    PeerKind,
    Refusal,
    TlsRefused,
    accept_tls,
    hypervisor_server_context,
    verify_peer,
)
from tests.support.system import require_system


@pytest.fixture
def hv_pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue_gateway(directory, "gw.test", ips=["127.0.0.1"])
    pki.issue_hypervisor(directory, "hv1")
    return directory


def start_qemu(qemu: str, port: int, creds: Path, log: Path) -> subprocess.Popen[bytes]:
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    argv = [
        qemu, "-M", "none", "-display", "none", "-nodefaults", "-S",
        "-object", f"tls-creds-x509,id=tls0,endpoint=client,dir={creds}",
        "-chardev", f"socket,id=mon0,host=127.0.0.1,port={port},tls-creds=tls0",
        "-mon", "chardev=mon0,mode=readline",
    ]
    # fmt: on
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


async def serve_one(hv_pki: Path, qemu: str, log: Path) -> tuple[str | TlsRefused, bytes, int | None]:
    """Accept QEMU's connection; return (identity or refusal, what QEMU said, QEMU's exit code)."""
    gw = pki.gateway_dir(hv_pki, "gw.test")
    context = hypervisor_server_context(gw / "server-cert.pem", gw / "server-key.pem", hv_pki / "ca-cert.pem")
    revocation = pki.RevocationList.for_directory(hv_pki)
    accepted: trio.MemorySendChannel[trio.SocketStream]
    accepted, incoming = trio.open_memory_channel[trio.SocketStream](1)

    async def handler(tcp: trio.SocketStream) -> None:
        await accepted.send(tcp)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        proc = start_qemu(qemu, port, pki.hypervisor_dir(hv_pki, "hv1"), log)
        try:
            tcp = await incoming.receive()
            try:
                stream = await accept_tls(tcp, context, handshake_timeout_s=10)
            except TlsRefused as refused:
                nursery.cancel_scope.cancel()
                return refused, b"", None
            try:
                identity = verify_peer(
                    stream.getpeercert(), peer=stream.peer, kind=PeerKind.HYPERVISOR, revocation=revocation
                )
            except TlsRefused as refused:
                await stream.aclose()
                nursery.cancel_scope.cancel()
                return refused, b"", None
            banner = b""
            while b"(qemu)" not in banner:
                chunk = await stream.receive_some(4096)
                assert chunk, banner
                banner += chunk
            version = stream.version()
            print("banner", banner)
            # One byte per TLS record: QEMU's readline monitor takes one
            # byte per read, and the rest of a record stays inside GnuTLS
            # where no fd readiness wakes QEMU up for it again.
            for byte in b"quit\n":
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.05)
            echoed = b""
            with trio.move_on_after(10):
                while proc.poll() is None:
                    with trio.move_on_after(0.5):
                        echoed += await stream.receive_some(4096)
            print("echoed", echoed)
            await stream.aclose()
            nursery.cancel_scope.cancel()
            return f"{identity} {version}", banner, proc.poll()
        finally:
            stop(proc)


async def test_qemu_connects_with_issue_hypervisor_credentials(hv_pki: Path, tmp_path: Path) -> None:
    qemu = require_system("qemu-system-x86_64")
    outcome, banner, code = await serve_one(hv_pki, qemu, tmp_path / "qemu.log")
    assert not isinstance(outcome, TlsRefused), (outcome, (tmp_path / "qemu.log").read_text())
    identity, version = outcome.split()
    assert identity == "hv1"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert b"QEMU" in banner and b"monitor" in banner
    assert code == 0  # QEMU obeyed `quit` sent through the TLS channel


async def test_revoked_hypervisor_is_refused(hv_pki: Path, tmp_path: Path) -> None:
    qemu = require_system("qemu-system-x86_64")
    pki.revoke(hv_pki, "hv1", kind=PeerKind.HYPERVISOR)
    outcome, _, _ = await serve_one(hv_pki, qemu, tmp_path / "qemu.log")
    assert isinstance(outcome, TlsRefused) and outcome.refusal is Refusal.REVOKED, outcome
