"""A real USB printer (usb_f_printer: /dev/usb/lpN on the thin client, /dev/g_printerN on the gadget side).

Through `client serve-parallel`: the data reaches the gadget, and the status
the gadget side reports (selected while it holds the printer open, set with
GADGET_SET_PRINTER_STATUS) is named correctly when the port opens.  Through a
`[[parallel]]` export and the gateway's route: the data reaches the gadget,
and each status the gadget side sets (paper out, not selected, error, ready)
is named in the client's log and in `gateway status`.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Iterator

import pytest

from redirgate.gateway.admin import read_status
from tests.support import waiting
from tests.support.thinclient import UDCS, Gadget, printer
from tests.support.usblab import PRINTER, UsbLab, wait_flag, wait_for_text

SERVE_PARALLEL_PORT = 7002

#: linux/usb/g_printer.h: _IOWR('g', 0x22, unsigned char); f_printer takes the status by value.
GADGET_SET_PRINTER_STATUS = 0xC0016722

#: The gadget side of a printer: holds /dev/g_printerN open (f_printer allows one opener, and reports
#: the printer selected only while it is open) and runs the commands the test drops in its folder:
#: "status N" (GADGET_SET_PRINTER_STATUS, by value) or "read COUNT PATH"; it answers each NAME.cmd with NAME.done.
GADGET_PRINTER = r"""
import fcntl, glob, os, sys, time
dev, folder = sys.argv[1], sys.argv[2]
fd = os.open(dev, os.O_RDWR)
open(folder + "/open", "w").close()
while not os.path.exists(folder + "/quit"):
    for cmd in sorted(glob.glob(folder + "/*.cmd")):
        words = open(cmd).read().split()
        if words[0] == "status":
            fcntl.ioctl(fd, SET_STATUS, int(words[1], 0))
        elif words[0] == "read":
            got = bytearray()
            while len(got) < int(words[1]):
                got += os.read(fd, 65536)
            open(words[2], "wb").write(got)
        os.rename(cmd, cmd[:-4] + ".done")
    time.sleep(0.1)  # a poll interval: the host writes commands into a 9p share; the guest sees no inotify for those
""".replace("SET_STATUS", hex(GADGET_SET_PRINTER_STATUS))


class GadgetPrinter:
    """Drives GADGET_PRINTER in the thin client."""

    def __init__(self, usb_lab: UsbLab, dev: str, name: str) -> None:
        self.folder = usb_lab.thin.guest.share_dir(name)
        (self.folder / "printer.py").write_text(GADGET_PRINTER)
        self.job = usb_lab.thin.guest.start(f"python3 {self.folder}/printer.py {dev} {self.folder}")
        self.logs = usb_lab.logs
        self._n = 0
        wait_flag(self.folder / "open", self.job, usb_lab.logs())

    def command(self, text: str) -> None:
        self._n += 1
        tmp = self.folder / f"{self._n:04d}.tmp"
        tmp.write_text(text)
        tmp.rename(self.folder / f"{self._n:04d}.cmd")
        wait_flag(self.folder / f"{self._n:04d}.done", self.job, self.logs())

    def close(self) -> None:
        (self.folder / "quit").touch()
        self.job.wait().check()


@pytest.fixture
def printers(usb_lab: UsbLab) -> Iterator[tuple[Gadget, Gadget]]:
    """Two printers: the first becomes /dev/usb/lp0 (for serve-parallel), the second /dev/usb/lp1 (the export's)."""
    first = Gadget("printer_a", *PRINTER, "lab printer a", [printer()], serial="printer-a", udc=UDCS[0])
    second = Gadget("printer_b", *PRINTER, "lab printer b", [printer()], serial="printer-b", udc=UDCS[1])
    usb_lab.thin.plug(first)
    usb_lab.thin.run("until [ -e /dev/usb/lp0 ] && [ -e /dev/g_printer0 ]; do sleep 0.1; done")
    usb_lab.thin.plug(second)
    usb_lab.thin.run("until [ -e /dev/usb/lp1 ] && [ -e /dev/g_printer1 ]; do sleep 0.1; done")
    try:
        yield first, second
    finally:
        usb_lab.thin.remove(second)
        usb_lab.thin.remove(first)


@pytest.mark.system
def test_serve_parallel_prints_to_the_gadget(usb_lab: UsbLab, printers: tuple[Gadget, Gadget]) -> None:
    folder = usb_lab.thin.guest.share_dir("printer-serve")
    gadget = GadgetPrinter(usb_lab, "/dev/g_printer0", "printer-a-side")  # switched on before it is served
    log = folder / "serve-parallel.log"
    pid = usb_lab.thin.guest.spawn(
        f"{sys.executable} -m redirgate.cli -v client serve-parallel --listen 0.0.0.0:{SERVE_PARALLEL_PORT} "
        "/dev/usb/lp0",
        log,
    )
    data = os.urandom(200_000)
    try:
        wait_for_text(log, r"listening on", 300)
        with socket.create_connection(("127.0.0.1", usb_lab.thin.guest.host_port(SERVE_PARALLEL_PORT))) as conn:
            conn.sendall(data)
            gadget.command(f"read {len(data)} {folder / 'printed'}")
        opened = wait_for_text(log, r"opened /dev/usb/lp0 \(([^,]+)", 300)
    finally:
        usb_lab.thin.guest.signal(pid)
        usb_lab.thin.guest.wait_exit(pid)
        gadget.close()
    assert (folder / "printed").read_bytes() == data
    assert opened.group(1) == "printer ready (status 0x18)"
    assert "(printer absent)" not in log.read_text()  # the banner comes after the port is open


#: What the gadget side sets (f_printer's status byte: 0x08 not error, 0x10 selected, 0x20 paper empty)
#: and how the client names it.
STATUSES = [
    (0x38, "printer out of paper"),
    (0x08, "printer offline (or switched off)"),
    (0x10, "printer reports an error (or is switched off)"),
]


def _route_description(usb_lab: UsbLab) -> str | None:
    """What `gateway status` says about the exported printer, or None before the client lists it."""
    status = read_status(usb_lab.share / "gateway.sock", timeout_s=120)
    for client in status["clients"]:
        for device in client["devices"]:
            if device["id"] == "parallel:printer":
                return str(device["description"])
    return None


def _wait_description(usb_lab: UsbLab, wanted: str) -> None:
    """Wait until gateway status shows `wanted` for the printer (it travels client -> gateway in an inventory update)."""
    waiting.wait_until(
        lambda: _route_description(usb_lab) == wanted,
        f"gateway status naming the printer {wanted!r}",
        net_s=300,
        detail=lambda: f"it says {_route_description(usb_lab)!r}\n{usb_lab.logs()}",
    )


@pytest.mark.system
def test_parallel_route_prints_and_names_each_printer_status(usb_lab: UsbLab, printers: tuple[Gadget, Gadget]) -> None:
    gadget = GadgetPrinter(usb_lab, "/dev/g_printer1", "printer-b-side")  # /dev/usb/lp1 is the export's
    folder = usb_lab.thin.guest.share_dir("printer-route")
    try:
        _wait_description(usb_lab, "printer ready")
        for status, name in [*STATUSES, (0x18, "printer ready")]:
            log_start = len(usb_lab.client_log_text())
            gadget.command(f"status {status:#x}")
            _wait_description(usb_lab, name)
            line = "printer: printer ready again" if status == 0x18 else f"printer: {name}"
            wait_for_text(usb_lab.client_log, re.escape(line), 300, start=log_start)
        data = os.urandom(150_000)
        log_start = len(usb_lab.client_log_text())
        with socket.create_connection(("127.0.0.1", usb_lab.route("printer"))) as conn:
            # what a parallel route receives before its channel is attached is discarded (counted):
            # QEMU's parallel port must never stall, so the test waits as a print job would not
            wait_for_text(usb_lab.client_log, r"printer: consumer gateway channel \d+ attached", 300, start=log_start)
            conn.sendall(data)
            gadget.command(f"read {len(data)} {folder / 'printed'}")
    finally:
        gadget.close()
    assert (folder / "printed").read_bytes() == data
