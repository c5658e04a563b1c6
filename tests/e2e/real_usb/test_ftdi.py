"""QEMU's usb-serial (an FTDI adapter, ftdi_sio's /dev/ttyUSB0 on the thin client) through a
`[[serial]]` export and a `gateway run` route: the route's line settings reach the tty, and every byte
value crosses both ways between the route's consumer and the adapter's far end (a host socket)."""

from __future__ import annotations

import socket

import pytest

from tests.support.usblab import UsbLab

ALL_BYTES = bytes(range(256))


def _recv_exactly(conn: socket.socket, count: int, usb_lab: UsbLab) -> bytes:
    conn.settimeout(300)
    got = b""
    while len(got) < count:
        chunk = conn.recv(count - len(got))
        assert chunk, f"closed after {len(got)} bytes\n{usb_lab.logs()}"
        got += chunk
    return got


@pytest.mark.system
def test_ftdi_adapter_through_a_serial_export(usb_lab: UsbLab) -> None:
    far_end, _ = usb_lab.ftdi_listener.accept()  # the adapter's wire: QEMU dialled it at boot
    with far_end, socket.create_connection(("127.0.0.1", usb_lab.route("ftdi"))) as route:
        # the route's 19200,8E1 reaches the adapter's tty while its consumer is there
        stty = usb_lab.thin.run(
            "until stty -F /dev/ttyUSB0 -a | grep -q 'speed 19200'; do sleep 0.2; done; stty -F /dev/ttyUSB0 -a"
        )
        words = set(stty.replace(";", " ").split())
        assert "19200" in words and {"cs8", "parenb", "-parodd", "-cstopb"} <= words, stty
        route.sendall(ALL_BYTES)
        assert _recv_exactly(far_end, 256, usb_lab) == ALL_BYTES
        far_end.sendall(ALL_BYTES)
        assert _recv_exactly(route, 256, usb_lab) == ALL_BYTES
