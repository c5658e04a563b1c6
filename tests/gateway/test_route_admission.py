"""Who may take a route: only a hypervisor that passed its checks, never a stranger or a silent socket.

In-process lab (`tests.support.tunnel_lab`: a Gateway and a real client
exporting an emulated keyboard) on real sockets.  The real hypervisor is a
usbredir guest (`vmside.probe_stream`), over TLS with a certificate from
`pki issue-hypervisor` on TLS routes.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import GATEWAY_NAME, LabRoute
from redirgate.gateway import pki
from redirgate.transport import TlsRefused, ZeroCopyTLSStream, client_context
from redirgate.vmside.guest import GuestError
from redirgate.vmside.probe import probe, probe_stream
from tests.support.tunnel_lab import Lab, running_lab

ROUTE_LOG = "redirgate.gateway.route_server"
KBD = (0x1209, 0x0002)
TLS_KBD = LabRoute("kbd", "usb:1209:0002", tls=True, hypervisors=["kvm-01"])
PLAIN_KBD = LabRoute("kbd", "usb:1209:0002")


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def route_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ROUTE_LOG and r.levelno >= logging.WARNING]


async def tls_hypervisor(lab: Lab, name: str) -> ZeroCopyTLSStream:
    """TLS to the route as hypervisor `name` (its `pki issue-hypervisor` files)."""
    base = pki.hypervisor_dir(lab.directory / "pki", name)
    cert, key = base / "client-cert.pem", base / "client-key.pem"
    context = client_context(cert, key, lab.directory / "pki" / "ca-cert.pem", GATEWAY_NAME)
    sock = socket.create_connection(("127.0.0.1", lab.route_port("kbd")))
    stream = ZeroCopyTLSStream(sock, context.ssl_context, server_side=False, server_hostname=context.server_name)
    try:
        await stream.do_handshake(10.0)
    except BaseException:
        await stream.aclose()
        raise
    return stream


async def probe_tls(lab: Lab, name: str) -> tuple[int, int]:
    """Probe the TLS route as hypervisor `name`: (vendor, product)."""
    stream = await tls_hypervisor(lab, name)
    try:
        result = await probe_stream(stream, peer=name)
    finally:
        await stream.aclose()
    return result.vendor_id, result.product_id


async def open_and_silent(port: int) -> trio.SocketStream:
    """A TCP connection from an allowed address that never sends a byte."""
    return await trio.open_tcp_stream("127.0.0.1", port)


async def is_open(tcp: trio.SocketStream) -> bool:
    """True if the gateway has not closed `tcp` (nothing to read, no EOF)."""
    with trio.move_on_after(0.05):
        try:
            return bool(await tcp.receive_some(1))  # EOF: b"" -> closed
        except trio.BrokenResourceError:
            return False
    return True


async def test_a_stranger_on_a_tls_route_does_not_delay_the_real_hypervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_lab(tmp_path, [TLS_KBD], virtual=["virtual:keyboard"], hypervisors=["kvm-01"]) as lab:
        async with await open_and_silent(lab.route_port("kbd")) as stranger:  # no TLS: its handshake never ends
            assert await probe_tls(lab, "kvm-01") == KBD
            # served while the stranger's handshake was still pending (handshake_timeout_s = 10)
            assert await is_open(stranger)
        assert not [line for line in route_lines(caplog) if "in use" in line]


async def test_a_hypervisor_certificate_not_in_the_route_list_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_lab(tmp_path, [TLS_KBD], virtual=["virtual:keyboard"], hypervisors=["kvm-01", "kvm-02"]) as lab:
        # a real hypervisor certificate of our CA, but not one this route names
        with pytest.raises((TlsRefused, GuestError, trio.BrokenResourceError, OSError, ExceptionGroup)):
            await probe_tls(lab, "kvm-02")
        lines = route_lines(caplog)
        assert len(lines) == 1 and "certificate 'kvm-02' is not allowed here (hypervisors = kvm-01)" in lines[0], lines
        route = lab.gateway.snapshot()["routes"][0]
        assert route["state"] == "idle" and route["refusals"] == 1 and route["channels_served"] == 0
        # the one it names is served
        assert await probe_tls(lab, "kvm-01") == KBD


async def test_a_silent_socket_on_a_usb_route_is_dropped_and_the_device_goes_to_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_lab(tmp_path, [PLAIN_KBD], virtual=["virtual:keyboard"], usb_hello_timeout_s=1.0) as lab:
        port = lab.route_port("kbd")
        async with await open_and_silent(port) as silent:
            # the next connection is served while the silent one is still there ...
            result = await probe("127.0.0.1", port, timeout_s=60)
            assert (result.vendor_id, result.product_id) == KBD
            # ... and the silent one is dropped after usb_hello_timeout_s
            assert await silent.receive_some(1) == b""  # not never (the runner's safety net)
        lines = route_lines(caplog)
        assert len(lines) == 1 and "no usbredir hello within 1 s" in lines[0], lines
        result = await probe("127.0.0.1", port, timeout_s=60)
        assert (result.vendor_id, result.product_id) == KBD
