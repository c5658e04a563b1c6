"""A composite gadget (mass storage + CDC-ACM in one device) through `client run` + `gateway run`:
both functions work in the VM at once (a file read from the stick, a line each way over the ACM port)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from tests.support.guest import make_fat_image
from tests.support.thinclient import Gadget, acm, mass_storage, wait_block_script, wait_usb_script
from tests.support.usblab import COMPOSITE, UsbLab, wait_flag

DATA = os.urandom(256 * 1024)

#: The VM: the stick's file md5'd, then the ACM port: opened, a line from the gadget, a line back.
VM_SCRIPT = (
    "set -e\n"
    + wait_usb_script(*COMPOSITE)
    + 'usb="$found"\n'
    + wait_block_script("usb")
    + "mkdir -p /tmp/composite && mount -t vfat $blk /tmp/composite && md5sum /tmp/composite/data.bin\n"
    + "umount /tmp/composite\n"
    + "while ! ls /sys/bus/usb/devices/$usb:1.*/tty >/dev/null 2>&1; do sleep 0.1; done\n"
    + "tty=/dev/$(ls /sys/bus/usb/devices/$usb:1.*/tty | grep ttyACM | head -1)\n"
    + "exec 3<>$tty\nstty -F $tty raw -echo\n"
    + "touch {flags}/acm-open\n"
    + 'read -r line <&3\necho "$line"\n'
    + "echo from-the-vm >&3\nsleep 1\n"
)

#: The thin client's gadget side of the ACM function, once the VM has the port open: a line, then the
#: VM's answer.  Opened only now: the client's reset of the device when it takes it hangs ttyGS0 up.
GADGET_SIDE = (
    'exec 3<>/dev/ttyGS0\nstty -F /dev/ttyGS0 raw -echo\necho from-the-gadget >&3\nread -r line <&3\necho "$line"\n'
)


@pytest.fixture
def composite(usb_lab: UsbLab) -> Iterator[Gadget]:
    folder = usb_lab.thin.guest.share_dir("composite")
    image = make_fat_image(folder / "stick.img", {"data.bin": DATA})
    # an Interface Association for the two ACM interfaces: device class 0xEF/2/1
    gadget = Gadget(
        "composite",
        *COMPOSITE,
        "lab composite",
        [mass_storage(image), acm()],
        serial="composite-1",
        device_class=(0xEF, 2, 1),
    )
    with usb_lab.thin.plugged_in(gadget):
        yield gadget


@pytest.mark.system
def test_both_functions_work_in_the_vm(usb_lab: UsbLab, composite: Gadget) -> None:
    flags = usb_lab.vm.guest.share_dir("composite")
    redir = usb_lab.vm.attach(usb_lab.route("composite"))
    try:
        vm = usb_lab.vm.guest.start(VM_SCRIPT.format(flags=flags))
        wait_flag(flags / "acm-open", vm, usb_lab.logs())
        gadget_side = usb_lab.thin.guest.start(GADGET_SIDE)
        thin_said = gadget_side.wait().check().stdout
        vm_said = vm.wait().check().stdout
    finally:
        usb_lab.vm.detach(redir)
    md5, _, rest = vm_said.partition("\n")
    assert md5.split()[0] == hashlib.md5(DATA).hexdigest()
    assert rest.strip() == "from-the-gadget"
    assert thin_said.strip() == "from-the-vm"
