"""The `redirgate` command as a user runs it: real processes, real sockets."""

from __future__ import annotations

from pathlib import Path

from tests.support.services import redirgate, running


def test_version_and_help():
    out = redirgate("--version")
    assert out.returncode == 0 and out.stdout.startswith("redirgate ")
    helped = redirgate("--help")
    assert helped.returncode == 0
    for command in ("client", "probe", "selfcheck"):
        assert command in helped.stdout


def test_selfcheck_passes():
    out = redirgate("selfcheck")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "USB path" in out.stdout and "Virtual Flash Drive" in out.stdout


def test_probe_describes_a_stick_served_by_serve_usb(tmp_path: Path):
    image = tmp_path / "stick.img"
    image.write_bytes(bytes(4 * 1024 * 1024))
    argv = ["client", "serve-usb", "--listen", "127.0.0.1:0", f"virtual:storage:{image}"]
    with running(argv, tmp_path / "serve.log") as service:
        out = redirgate("probe", f"127.0.0.1:{service.port}", "--timeout", "20")
        second = redirgate("probe", f"127.0.0.1:{service.port}", "--timeout", "20")
    assert out.returncode == 0, out.stderr
    assert "1209:0001" in out.stdout and "Mass Storage" in out.stdout
    assert "Endpoint 0x81 IN Bulk" in out.stdout
    # the device is released when the VM side disconnects and offered again
    assert second.returncode == 0, second.stderr


def test_bad_selector_is_a_clear_error():
    out = redirgate("client", "serve-usb", "--listen", "127.0.0.1:0", "not-a-device")
    assert out.returncode == 2
    assert "cannot understand device selector 'not-a-device'" in out.stderr


def test_probe_of_a_closed_port_names_the_cause():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = redirgate("probe", f"127.0.0.1:{port}", "--timeout", "5")
    assert out.returncode == 1
    assert out.stderr == f"redirgate probe: 127.0.0.1:{port}: nothing is listening there (connection refused)\n"


def test_devices_lists_emulated_devices_with_the_export_policy():
    out = redirgate(
        "client",
        "devices",
        "--virtual",
        "virtual:keyboard",
        "--virtual",
        "virtual:loopback",
        "--policy",
        "0x03,-1,-1,-1,1|-1,-1,-1,-1,0",
    )
    assert out.returncode == 0, out.stderr
    usb_table = out.stdout.split("\n\n", 1)[0]  # serial ports follow after a blank line
    rows = {line.split()[1]: line.split() for line in usb_table.splitlines()[1:]}
    assert rows["1209:0002"][4] == "yes"  # HID keyboard: allowed by the policy
    assert rows["1209:0003"][4] == "no"  # vendor-specific loopback: blocked
    assert "Virtual Keyboard" in out.stdout


def test_devices_rejects_a_broken_policy():
    out = redirgate("client", "devices", "--policy", "0x03,-1,-1")
    assert out.returncode == 2
    assert "bad --policy" in out.stderr and "5" in out.stderr
