"""`redirgate probe` against ports that give it no device: one line naming
the peer once and the cause, exit status 1, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.services import redirgate, running


def _one_line(out, port: int) -> str:
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    prefix = f"redirgate probe: 127.0.0.1:{port}: "
    assert line.startswith(prefix) and line.count(f"127.0.0.1:{port}") == 1, line
    return line[len(prefix) :]


def test_probe_of_a_device_another_vm_holds(tmp_path: Path) -> None:
    image = tmp_path / "stick.img"
    image.write_bytes(bytes(1024 * 1024))
    argv = ["client", "serve-usb", "--listen", "127.0.0.1:0", f"virtual:storage:{image}"]
    with running(argv, tmp_path / "serve.log") as service, socket.create_connection(("127.0.0.1", service.port)) as vm:
        vm.settimeout(30)
        assert vm.recv(64)  # the host's hello: this connection is the one served
        out = redirgate("probe", f"127.0.0.1:{service.port}", "--timeout", "20")
    reason = _one_line(out, service.port)
    assert reason.startswith("the host closed the connection") and "busy, served to another VM" in reason


def test_probe_of_a_port_that_never_speaks() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        out = redirgate("probe", f"127.0.0.1:{port}", "--timeout", "1")
    assert _one_line(out, port).startswith("connected, but no usbredir hello came within 1 s")


def test_probe_of_a_serve_usb_whose_device_is_absent(tmp_path: Path) -> None:
    argv = ["client", "serve-usb", "--listen", "127.0.0.1:0", "1234:5678"]
    with running(argv, tmp_path / "serve.log") as service:
        out = redirgate("probe", f"127.0.0.1:{service.port}", "--timeout", "5")
        log = service.log()
    assert _one_line(out, service.port) == (
        "no device announced within 5 s: the host is waiting for its device (is it plugged in?)"
    )
    # serve-usb said so itself
    assert "redirgate: 1234:5678: no such USB device is plugged in; waiting for it" in log
