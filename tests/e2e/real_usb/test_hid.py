"""A real HID keyboard (usb_f_hid) through `client run` + `gateway run`: key reports written on the
thin client's /dev/hidg0 arrive in the VM as input events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.thinclient import KEY_EVENT_READER, Gadget, hid_keyboard, wait_usb_script
from tests.support.usblab import KBD, UsbLab, wait_flag

#: Boot keyboard reports: 'a' (usage 0x04) down, all up, 'b' (0x05) down, all up.
REPORTS = [bytes([0, 0, 4, 0, 0, 0, 0, 0]), bytes(8), bytes([0, 0, 5, 0, 0, 0, 0, 0]), bytes(8)]
#: What Linux makes of them: KEY_A = 30, KEY_B = 48; 1 = press, 0 = release.
EXPECTED = [(30, 1), (30, 0), (48, 1), (48, 0)]


@pytest.fixture
def keyboard(usb_lab: UsbLab) -> Iterator[Gadget]:
    gadget = Gadget("kbd", *KBD, "lab keyboard", [hid_keyboard()], serial="kbd-1")
    with usb_lab.thin.plugged_in(gadget):
        yield gadget


@pytest.mark.system
def test_key_reports_arrive_in_the_vm(usb_lab: UsbLab, keyboard: Gadget) -> None:
    flags = usb_lab.vm.guest.share_dir("hid")
    (flags / "reader.py").write_text(KEY_EVENT_READER)
    redir = usb_lab.vm.attach(usb_lab.route("kbd"))
    try:
        job = usb_lab.vm.guest.start(
            "set -e\n" + wait_usb_script(*KBD) + f'exec python3 {flags}/reader.py "$found" {flags} {len(EXPECTED)}\n'
        )
        wait_flag(flags / "listening", job, usb_lab.logs())
        # hidg blocks a write until the host has polled the previous report: one write per report
        for report in REPORTS:
            octal = "".join(f"\\{b:03o}" for b in report)
            usb_lab.thin.run(f"printf '{octal}' > /dev/hidg0")
        result = job.wait().check()
    finally:
        usb_lab.vm.detach(redir)
    events = [tuple(int(n) for n in line.split()) for line in result.stdout.splitlines()]
    assert events == EXPECTED, usb_lab.logs()
