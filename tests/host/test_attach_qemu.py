"""`host attach/detach` against a real QEMU's QMP: a redirgate route, usb-host, and the ways they fail."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import pytest
import trio

from redirgate.cli import main
from redirgate.gateway import pki
from redirgate.host.qmp import open_qmp
from redirgate.transport.tls import hypervisor_server_context
from tests.support.bare_qemu import bare_qemu
from tests.support.system import require_system

pytestmark = pytest.mark.system

#: usbredirproto.h: usb_redir_hello = 0; header = type, length, id (u32 each; 64-bit id once negotiated)
_HELLO = 0
_SAFETY_S = 60.0


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["host", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _query(qmp: Path, command: str, arguments: dict | None = None):
    async def ask():
        async with open_qmp(str(qmp)) as client:
            return await client.execute(command, arguments)

    return trio.run(ask)


def _peripherals(qmp: Path) -> set[str]:
    return {p["name"] for p in _query(qmp, "qom-list", {"path": "/machine/peripheral"})}


def _chardevs(qmp: Path) -> set[str]:
    return {c["label"] for c in _query(qmp, "query-chardev")}


def _accept_hello(listener: socket.socket, tls: ssl.SSLContext | None = None) -> socket.socket:
    """The usb-redir chardev dials our listener (over TLS: a gateway's hypervisor port) and says hello first."""
    conn, _ = listener.accept()
    conn.settimeout(_SAFETY_S)
    if tls is not None:
        conn = tls.wrap_socket(conn, server_side=True)
    header = b""
    while len(header) < 12:
        chunk = conn.recv(12 - len(header))
        assert chunk, "usb-redir closed before its hello"
        header += chunk
    kind, length, _ = struct.unpack("<III", header)
    assert kind == _HELLO and length >= 64
    version = conn.recv(64)
    assert version.startswith(b"qemu usb-redir guest"), version
    return conn


def test_a_route_attaches_detaches_and_attaches_again(tmp_path: Path, capsys) -> None:
    with socket.socket() as listener, bare_qemu(tmp_path, ["-device", "qemu-xhci,id=xhci"], paused=False) as qmp:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(_SAFETY_S)
        port = listener.getsockname()[1]
        name = f"rg-redir-{port}"
        for _cycle in range(2):
            rc, out, err = _cli(capsys, "attach", "--qmp", str(qmp), "--route", f"127.0.0.1:{port}", "--bus", "xhci.0")
            assert rc == 0, err
            assert out.splitlines() == [
                f"chardev-add {name}-chardev: TCP client to 127.0.0.1:{port}, reconnecting",
                f"device_add usb-redir id={name} bus=xhci.0",
                f"attached route 127.0.0.1:{port} as {name} (detach: redirgate host detach ... --id {name})",
            ]
            with _accept_hello(listener) as conn:
                assert name in _peripherals(qmp) and f"{name}-chardev" in _chardevs(qmp)
                rc, out, err = _cli(capsys, "detach", "--qmp", str(qmp), "--id", name)
                assert rc == 0, err
                # usb-redir's teardown deleted the chardev itself: no chardev-remove line, and no error
                assert out.splitlines() == [f"device_del {name}: QEMU reports it deleted", f"detached {name}"]
                while conn.recv(65536):  # the route sees the VM hang up
                    pass
            assert name not in _peripherals(qmp) and f"{name}-chardev" not in _chardevs(qmp)


def test_a_tls_route_gets_qemu_s_credentials_and_loses_them_on_detach(tmp_path: Path, capsys) -> None:
    """QEMU dials a TLS port like a gateway's (transport.tls's hypervisor context, client certificate required)."""
    pki.init_ca(tmp_path / "pki")
    gateway = pki.issue_gateway(tmp_path / "pki", "gw.test", ips=["127.0.0.1"])
    creds = pki.issue_hypervisor(tmp_path / "pki", "hv1").cert.parent
    tls = hypervisor_server_context(gateway.cert, gateway.key, tmp_path / "pki" / "ca-cert.pem")
    with socket.socket() as listener, bare_qemu(tmp_path, ["-device", "qemu-xhci,id=xhci"], paused=False) as qmp:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(_SAFETY_S)
        port = listener.getsockname()[1]
        rc, out, err = _cli(
            capsys, "attach", "--qmp", str(qmp), "--route", f"127.0.0.1:{port}", "--tls-dir", str(creds), "--id", "gw"
        )
        assert rc == 0, err
        assert out.splitlines()[:2] == [
            f"object-add tls-creds-x509 gw-tls: {creds}",
            f"chardev-add gw-chardev: TLS client to 127.0.0.1:{port}, reconnecting",
        ]
        with _accept_hello(listener, tls) as conn:
            assert isinstance(conn, ssl.SSLSocket) and conn.getpeercert()["subject"]  # QEMU showed its certificate
            objects = {o["name"] for o in _query(qmp, "qom-list", {"path": "/objects"})}
            assert "gw-tls" in objects
            rc, out, err = _cli(capsys, "detach", "--qmp", str(qmp), "--id", "gw")
            assert rc == 0, err
            assert out.splitlines() == ["device_del gw: QEMU reports it deleted", "object-del gw-tls", "detached gw"]
        assert "gw-tls" not in {o["name"] for o in _query(qmp, "qom-list", {"path": "/objects"})}
        rc, _, err = _cli(capsys, "attach", "--qmp", str(qmp), "--route", "127.0.0.1:1", "--tls-dir", str(tmp_path))
        assert rc == 1 and "no ca-cert.pem there" in err


def test_usb_host_by_id_attaches_and_detaches(tmp_path: Path, capsys) -> None:
    with bare_qemu(tmp_path, ["-device", "qemu-xhci,id=xhci"]) as qmp:
        rc, out, err = _cli(capsys, "attach", "--qmp", str(qmp), "--device", "usb-host:046d:c52b")
        assert rc == 0, err
        assert out.splitlines()[0] == "device_add usb-host 046d:c52b id=rg-usb-046d-c52b"
        assert "rg-usb-046d-c52b" in _peripherals(qmp)
        value = _query(qmp, "qom-get", {"path": "/machine/peripheral/rg-usb-046d-c52b", "property": "productid"})
        assert value == 0xC52B
        rc, out, err = _cli(capsys, "detach", "--qmp", str(qmp), "--id", "rg-usb-046d-c52b")
        assert rc == 0 and "rg-usb-046d-c52b" not in _peripherals(qmp)


def test_a_failed_device_add_takes_its_chardev_back(tmp_path: Path, capsys) -> None:
    with socket.socket() as listener, bare_qemu(tmp_path, ["-device", "qemu-xhci,id=xhci"]) as qmp:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        rc, out, err = _cli(
            capsys, "attach", "--qmp", str(qmp), "--route", f"127.0.0.1:{port}", "--bus", "ehci.0", "--id", "r1"
        )
        assert rc == 1 and out == ""
        assert err == f"redirgate: {qmp}: device_add: Bus 'ehci.0' not found\n"
        assert "r1-chardev" not in _chardevs(qmp) and "r1" not in _peripherals(qmp)


def test_ordinary_mistakes_are_one_line(tmp_path: Path, capsys) -> None:
    with bare_qemu(tmp_path) as qmp:
        rc, _, err = _cli(capsys, "detach", "--qmp", str(qmp), "--id", "nothing")
        assert (
            rc == 1 and err == f"redirgate: {qmp}: no device 'nothing' in this VM (QEMU: Device 'nothing' not found)\n"
        )
        rc, _, err = _cli(capsys, "attach", "--qmp", str(qmp), "--device", "usb-host:046d:c52b")
        assert rc == 1 and err == f"redirgate: {qmp}: device_add: No 'usb-bus' bus found for device 'usb-host'\n"
    missing = tmp_path / "gone.sock"
    rc, _, err = _cli(capsys, "attach", "--qmp", str(missing), "--route", "127.0.0.1:1")
    assert (
        rc == 1
        and err.startswith(f"redirgate: {missing}: cannot connect to QEMU's QMP socket")
        and err.count("\n") == 1
    )
    rc, _, err = _cli(capsys, "attach", "--qmp", str(missing), "--device", "usb:1234")
    assert rc == 1 and "--device takes usb-host:VID:PID" in err
    rc, _, err = _cli(capsys, "attach", "--qmp", str(missing), "--route", "127.0.0.1:1", "--id", "1bad")
    assert rc == 1 and "a device id starts with a letter" in err


def test_domain_goes_through_virsh(capsys) -> None:
    """libvirt's test driver has no live attach: the real virsh's refusal comes out as one line."""
    require_system("virsh")
    rc, _, err = _cli(capsys, "attach", "--domain", "test", "--connect", "test:///default", "--route", "gw:17100")
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("redirgate: test: Failed to attach device from /dev/stdin; ")
    assert "virDomainAttachDeviceFlags" in err
    rc, _, err = _cli(capsys, "detach", "--domain", "test", "--connect", "test:///default", "--id", "rg-redir-17100")
    assert rc == 1 and "Failed to detach device with alias ua-rg-redir-17100" in err
