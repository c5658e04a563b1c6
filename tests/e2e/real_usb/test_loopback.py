"""usb_f_ss_lb's Loopback gadget through `client run` + `gateway run`: data integrity at every size.

The VM side drives the redirected device with pyusb: each transfer is
written to bulk OUT while a second thread reads it back from bulk IN, at 1 B,
512 B, 4 KiB, 64 KiB and 1 MiB, plus short packets both ways (an OUT
transfer ending in a short packet, an IN read larger than what comes back).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.support.thinclient import Gadget, loopback, wait_usb_script
from tests.support.usblab import LOOP, UsbLab

#: (bytes written, bytes asked for on IN): equal sizes, then the short-packet cases.
CASES = [(1, 1), (512, 512), (4096, 4096), (65536, 65536), (1 << 20, 1 << 20), (1000, 1000), (100, 4096)]

VM_SCRIPT = r"""
import os, sys, threading
import usb.core, usb.util

dev = usb.core.find(idVendor=0x{vid:04x}, idProduct=0x{pid:04x})
intf = dev.get_active_configuration()[(0, 0)]
usb.util.claim_interface(dev, intf)
ep_out = usb.util.find_descriptor(intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_OUT)
ep_in = usb.util.find_descriptor(intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN)
for size, ask in {cases}:
    data = os.urandom(size)
    got = []
    reader = threading.Thread(target=lambda: got.append(bytes(ep_in.read(ask, timeout=120000))))
    reader.start()
    written = ep_out.write(data, timeout=120000)
    reader.join()
    ok = written == size and got[0] == data
    print(size, ask, written, len(got[0]), "ok" if ok else "CORRUPT", flush=True)
"""


@pytest.fixture
def loop_gadget(usb_lab: UsbLab) -> Iterator[Gadget]:
    # 512-byte requests: every OUT packet (full or short) completes one and comes back as one IN transfer.
    gadget = Gadget("loop", *LOOP, "lab loopback", [loopback(buflen=512)], serial="loop-1")
    with usb_lab.thin.plugged_in(gadget):
        yield gadget


@pytest.mark.system
def test_loopback_integrity_at_every_size(usb_lab: UsbLab, loop_gadget: Gadget) -> None:
    folder = usb_lab.vm.guest.share_dir("loop")
    script = folder / "loop.py"
    script.write_text(VM_SCRIPT.format(vid=LOOP[0], pid=LOOP[1], cases=CASES))
    redir = usb_lab.vm.attach(usb_lab.route("loop"))
    try:
        usb_lab.vm.run(wait_usb_script(*LOOP))
        result = usb_lab.vm.guest.run(f"{sys.executable} {script}", check=False)
    finally:
        usb_lab.vm.detach(redir)
    assert result.rc == 0, f"{result.stderr}\n{usb_lab.logs()}"
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines == [[str(size), str(ask), str(size), str(size), "ok"] for size, ask in CASES]
