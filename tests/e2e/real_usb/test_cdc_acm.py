"""A real CDC-ACM port (usb_f_acm: /dev/ttyACM0 on the thin client, /dev/ttyGS0 on the gadget side).

Through `client serve-serial` (reached through a host forward) and through
a `[[serial]]` export with `gateway run` routes: every byte value both ways,
the route's line settings reaching the tty (termios, read back with stty),
and the port vanishing (gadget unplugged) and returning.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from redirgate.cli.guestvm.hostroot import AgentJob
from tests.support.thinclient import Gadget, acm
from tests.support.usblab import ACM, ACM_ROUTED_SERIAL, UsbLab, wait_flag, wait_for_text

ALL_BYTES = bytes(range(256))
SERVE_SERIAL_PORT = 7001

#: The gadget side of the port: raw mode, say so, read 256 bytes, send 256 back.
GADGET_SIDE = r"""
import os, sys, termios, tty
flags = sys.argv[1]
fd = os.open("/dev/ttyGS0", os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
open(flags + "/open", "w").close()
got = b""
while len(got) < 256:
    got += os.read(fd, 256 - len(got))
open(flags + "/received", "wb").write(got)
os.write(fd, bytes(range(256)))
termios.tcdrain(fd)
"""


def _acm_gadget(serial: str) -> Gadget:
    return Gadget("acm", *ACM, "lab acm", [acm()], serial=serial)


@pytest.fixture
def flags(usb_lab: UsbLab) -> Path:
    folder = usb_lab.thin.guest.share_dir("acm")
    (folder / "gadget_side.py").write_text(GADGET_SIDE)
    return folder


def _gadget_side(usb_lab: UsbLab, flags: Path) -> AgentJob:
    for name in ("open", "received"):
        (flags / name).unlink(missing_ok=True)
    job = usb_lab.thin.guest.start(f"python3 {flags}/gadget_side.py {flags}")
    wait_flag(flags / "open", job, usb_lab.logs())
    return job


def _exchange(conn: socket.socket, usb_lab: UsbLab, flags: Path, job: AgentJob) -> None:
    """All 256 byte values host -> gadget side, then gadget side -> host."""
    conn.sendall(ALL_BYTES)
    got = b""
    conn.settimeout(300)
    while len(got) < 256:
        chunk = conn.recv(4096)
        assert chunk, f"the port closed after {len(got)} bytes\n{usb_lab.logs()}"
        got += chunk
    job.wait().check()
    assert (flags / "received").read_bytes() == ALL_BYTES
    assert got == ALL_BYTES


@pytest.mark.system
def test_serve_serial_carries_every_byte_both_ways(usb_lab: UsbLab, flags: Path) -> None:
    gadget = _acm_gadget("acm-standalone")  # not the [[serial]] export's serial number: the client leaves it be
    usb_lab.thin.plug(gadget)
    log = flags / "serve-serial.log"
    pid = usb_lab.thin.guest.spawn(
        f"{sys.executable} -m redirgate.cli -v client serve-serial --listen 0.0.0.0:{SERVE_SERIAL_PORT} "
        "/dev/ttyACM0 --settings 115200,8N1",
        log,
    )
    try:
        wait_for_text(log, r"listening on", 300)
        job = _gadget_side(usb_lab, flags)
        with socket.create_connection(("127.0.0.1", usb_lab.thin.guest.host_port(SERVE_SERIAL_PORT))) as conn:
            _exchange(conn, usb_lab, flags, job)
    finally:
        usb_lab.thin.guest.signal(pid)
        usb_lab.thin.guest.wait_exit(pid)
        usb_lab.thin.remove(gadget)


@pytest.mark.system
def test_serial_export_routes_bytes_settings_and_survives_replug(usb_lab: UsbLab, flags: Path) -> None:
    gadget = _acm_gadget(ACM_ROUTED_SERIAL)
    usb_lab.thin.plug(gadget)
    try:
        wait_for_text(usb_lab.client_log, r"acm: opened /dev/ttyACM\d", 300)
        # every byte both ways through the gateway route (8N1)
        job = _gadget_side(usb_lab, flags)
        with socket.create_connection(("127.0.0.1", usb_lab.route("acm"))) as conn:
            _exchange(conn, usb_lab, flags, job)
        # a route with its own line settings: they reach the tty while its consumer is there
        with socket.create_connection(("127.0.0.1", usb_lab.route("acm7e1"))):
            stty = usb_lab.thin.run(
                "until stty -F /dev/ttyACM0 -a | grep -q 'speed 9600'; do sleep 0.2; done; stty -F /dev/ttyACM0 -a"
            )
        words = set(stty.replace(";", " ").split())
        assert "9600" in words and {"cs7", "parenb", "-parodd", "-cstopb"} <= words, stty
        # the port vanishes and returns: the client reopens it and the route works again
        opened = usb_lab.client_log_text().count("acm: opened")
        usb_lab.thin.unplug(gadget)
        wait_for_text(usb_lab.client_log, r"acm: .*reopening when it returns", 300)
        usb_lab.thin.plug(gadget, create=False)
        wait_for_text(usb_lab.client_log, r"(?s)" + r"acm: opened.*" * (opened + 1), 300)
        job = _gadget_side(usb_lab, flags)
        with socket.create_connection(("127.0.0.1", usb_lab.route("acm"))) as conn:
            _exchange(conn, usb_lab, flags, job)
    finally:
        usb_lab.thin.remove(gadget)
