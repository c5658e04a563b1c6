"""Unplug during a transfer, replug, and a device reset from the VM, on a real gadget stick.

The VM reads the stick flat out; the gadget's UDC is cleared mid-transfer:
the VM sees the device go, the client keeps running, the gateway keeps the
route.  Plugged again, the stick returns to the same VM (same usb-redir, no
QEMU action), and a USB reset the VM asks for (USBDEVFS_RESET) leaves it
working.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.guest import make_fat_image
from tests.support.thinclient import Gadget, mass_storage, wait_block_script, wait_usb_gone_script, wait_usb_script
from tests.support.usblab import STICK, UsbLab, wait_flag

DATA = os.urandom(4 << 20)

#: The VM: reads the whole stick again and again (O_DIRECT, so every read crosses USB) until it fails.
READ_LOOP = (
    "set -e\n"
    + wait_usb_script(*STICK)
    + 'usb="$found"\n'
    + wait_block_script("usb")
    + "touch {flags}/reading\n"
    + 'while dd if="$blk" of=/dev/null bs=64k iflag=direct 2>/dev/null; do :; done\n'
    + "touch {flags}/read-failed\n"
)

#: The VM: a reset of the stick through usbfs (as a VM's driver asks for one), then its file read back.
RESET_AND_READ = (
    "set -e\n" + wait_usb_script(*STICK) + 'usb="$found"\n' + "python3 -c 'import fcntl, os, sys; "
    'fcntl.ioctl(os.open("/dev/bus/usb/%03d/%03d" % (int(open(sys.argv[1] + "/busnum").read()), '
    'int(open(sys.argv[1] + "/devnum").read())), os.O_WRONLY), 0x5514, 0)\' /sys/bus/usb/devices/$usb\n'
    + wait_block_script("usb")
    + "mkdir -p /tmp/replug && mount -t vfat $blk /tmp/replug && md5sum /tmp/replug/data.bin && umount /tmp/replug\n"
)


def _thin_client_resets(usb_lab: UsbLab) -> int:
    """How often the thin client's kernel reset a device on dummy_hcd (usb_reset_device logs each one)."""
    return int(usb_lab.thin.run("dmesg | grep -c 'reset high-speed USB device .* using dummy_hcd' || true"))


@pytest.fixture
def stick(usb_lab: UsbLab) -> Iterator[Gadget]:
    folder = usb_lab.thin.guest.share_dir("unplug")
    image = make_fat_image(folder / "stick.img", {"data.bin": DATA})
    gadget = Gadget("stick", *STICK, "lab stick", [mass_storage(image)], serial="stick-unplug")
    with usb_lab.thin.plugged_in(gadget):
        yield gadget


@pytest.mark.system
def test_unplug_mid_transfer_then_replug_to_the_same_vm_and_reset(usb_lab: UsbLab, stick: Gadget) -> None:
    flags = usb_lab.vm.guest.share_dir("unplug")
    redir = usb_lab.vm.attach(usb_lab.route("stick"))
    try:
        reader = usb_lab.vm.guest.start(READ_LOOP.format(flags=flags))
        wait_flag(flags / "reading", reader, usb_lab.logs())
        usb_lab.thin.unplug(stick)  # the UDC cleared while the VM's reads are in flight
        wait_flag(flags / "read-failed", reader, usb_lab.logs())
        usb_lab.vm.run(wait_usb_gone_script(*STICK))  # the VM saw the unplug
        # the client still runs, the gateway still has the route
        assert usb_lab.client_pid is not None
        usb_lab.thin.run(f"kill -0 {usb_lab.client_pid}")
        status_command = ["gateway", "status", "--socket", str(usb_lab.share / "gateway.sock")]
        status = subprocess.run(
            [sys.executable, "-m", "redirgate.cli", *status_command],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
        assert "stick" in status
        assert usb_lab.gateway.process.poll() is None
        # plugged again: back in the same VM, and a reset from the VM leaves it working
        usb_lab.thin.plug(stick, create=False)
        usb_lab.vm.run(wait_usb_script(*STICK) + 'usb="$found"\n' + wait_block_script("usb"))
        resets_before = _thin_client_resets(usb_lab)
        result = usb_lab.vm.run(RESET_AND_READ)
        resets_after = _thin_client_resets(usb_lab)
    finally:
        usb_lab.vm.detach(redir)
    assert result.split()[0] == hashlib.md5(DATA).hexdigest(), usb_lab.logs()
    assert resets_after > resets_before  # the VM's reset reached the real device
