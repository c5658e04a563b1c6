"""A real USB stick (usb_f_mass_storage on an image) through `client run` + `gateway run` into the VM side.

The VM mounts it, reads files whose md5 the test knows and writes one whose
bytes must land in the gadget's image.  On the thin client usb-storage lets
go of the stick while the VM holds it and takes it back after: when the VM
lets go, and when the client is stopped with SIGTERM.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator

import pytest

from redirgate.client.usb.device import DEFAULT_TRANSFERS
from tests.support.guest import make_fat_image, read_fat_file
from tests.support.thinclient import Gadget, mass_storage, wait_block_script, wait_usb_gone_script, wait_usb_script
from tests.support.usblab import STICK, UsbLab, wait_flag

FILES = {"a.bin": os.urandom(1 << 20), "b.txt": b"known bytes on a real gadget\n"}


@pytest.fixture
def stick(usb_lab: UsbLab) -> Iterator[tuple[Gadget, str]]:
    folder = usb_lab.thin.guest.share_dir("stick")
    image = make_fat_image(folder / "stick.img", FILES)
    gadget = Gadget("stick", *STICK, "lab stick", [mass_storage(image)], serial="stick-1")
    with usb_lab.thin.plugged_in(gadget) as name:
        yield gadget, name


def _vm_mount_script(flag_dir: str, mnt: str) -> str:
    """The VM: wait for the stick, mount it, md5 its files, say so, wait for `go`, write, unmount."""
    return (
        "set -e\n"
        + wait_usb_script(*STICK)
        + 'usb="$found"\n'
        + wait_block_script("usb")
        + f"mkdir -p {mnt} && mount -t vfat $blk {mnt}\n"
        f"md5sum {mnt}/a.bin {mnt}/b.txt > {flag_dir}/md5\n"
        f"touch {flag_dir}/mounted\n"
        f"while [ ! -e {flag_dir}/go ]; do sleep 0.1; done\n"
        f"cp {flag_dir}/from-vm.bin {mnt}/from-vm.bin && sync && umount {mnt}\n"
    )


def _md5s(text: str) -> dict[str, str]:
    return {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in text.splitlines() if line.strip()}


def _wait_driver(usb_lab: UsbLab, interface: str, driver: str) -> None:
    """Wait in the thin client until `interface` is bound to `driver`."""
    usb_lab.thin.run(
        f'until [ "$(basename "$(readlink /sys/bus/usb/devices/{interface}/driver 2>/dev/null)")" = {driver} ]; '
        "do sleep 0.1; done"
    )


@pytest.mark.system
def test_vm_reads_and_writes_the_stick_and_usb_storage_returns(usb_lab: UsbLab, stick: tuple[Gadget, str]) -> None:
    _, name = stick
    interface = f"{name}:1.0"
    assert usb_lab.thin.drivers(name) == {interface: "usb-storage"}  # the thin client's own driver first
    flags = usb_lab.vm.guest.share_dir("stick")
    from_vm = os.urandom(300_000)
    (flags / "from-vm.bin").write_bytes(from_vm)
    redir = usb_lab.vm.attach(usb_lab.route("stick"))
    try:
        job = usb_lab.vm.guest.start(_vm_mount_script(str(flags), "/tmp/stick"))
        wait_flag(flags / "mounted", job, usb_lab.logs())
        # while the VM holds the stick, usb-storage on the thin client has let go of it (libusb claimed it)
        assert usb_lab.thin.drivers(name) == {interface: "usbfs"}  # the client holds it
        # the client says which path a real device's transfers take (client/usb/device.py)
        path = rf"lab stick at \S+: transfers: {DEFAULT_TRANSFERS}\n"
        assert re.search(path, usb_lab.client_log_text()), usb_lab.logs()
        (flags / "go").touch()
        job.wait().check()
    finally:
        usb_lab.vm.detach(redir)
    _wait_driver(usb_lab, interface, "usb-storage")  # the VM let go: the thin client has its stick back
    assert _md5s((flags / "md5").read_text()) == {k: hashlib.md5(v).hexdigest() for k, v in FILES.items()}
    usb_lab.thin.unplug(stick[0])
    image = usb_lab.thin.guest.share / "stick" / "stick.img"
    assert read_fat_file(image, "from-vm.bin") == from_vm


@pytest.mark.system
def test_client_sigterm_gives_the_stick_back_to_usb_storage(usb_lab: UsbLab, stick: tuple[Gadget, str]) -> None:
    _, name = stick
    interface = f"{name}:1.0"
    flags = usb_lab.vm.guest.share_dir("stick-term")
    (flags / "from-vm.bin").write_bytes(b"x")
    redir = usb_lab.vm.attach(usb_lab.route("stick"))
    try:
        job = usb_lab.vm.guest.start(_vm_mount_script(str(flags), "/tmp/stick-term"))
        wait_flag(flags / "mounted", job, usb_lab.logs())
        assert usb_lab.thin.drivers(name) == {interface: "usbfs"}  # the client holds it
        usb_lab.stop_client("TERM")
        _wait_driver(usb_lab, interface, "usb-storage")
        # the VM saw its stick go away
        usb_lab.vm.run(wait_usb_gone_script(*STICK))
        job.kill()
        usb_lab.vm.run("umount -l /tmp/stick-term")
    finally:
        usb_lab.vm.detach(redir)
        usb_lab.start_client()
