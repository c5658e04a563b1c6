"""A USB Attached SCSI disk with bulk streams (QEMU's usb-uas at super speed on the thin client's xHCI).

`client serve-usb` in the thin client exports it, and so does the lab's
`client run` through the gateway on this host (its "uas" route); either takes
it from the thin client's own `uas` driver, which gets it back after; the VM side (qemu-xhci
+ usb-redir, super speed) binds its `uas` driver, which allocates USB 3 bulk
streams through usbredir's bulk_streams capability (the client logs what
libusb allocated), mounts the disk, reads a file whose md5 the test knows
and writes one whose bytes must land in the image.  Without the capability
the VM's uas driver cannot use its streams and the disk never appears.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import pytest

from redirgate.cli.guestvm.hostroot import AgentError
from redirgate.cli.guestvm.image import read_fat_file, write_fat_file
from tests.support.thinclient import QEMU_IDS, wait_block_script, wait_usb_script
from tests.support.usblab import UsbLab, wait_flag, wait_for_text

UAS = QEMU_IDS["usb-uas"]
#: the thin client's guest port `serve-usb` listens on (forwarded from the host, tests/support/usblab.py)
SERVE_USB_PORT = 7000
#: small: TCG moves every byte through two emulated xHCIs
KNOWN = os.urandom(256 * 1024)


def _vm_script(flags: str, mnt: str, known: str, from_vm: str) -> str:
    """The VM side: wait for the disk, note its speed and driver, mount it, md5 the known file, write one."""
    return (
        "set -e\n"
        + wait_usb_script(*UAS)
        + 'usb="$found"\n'
        + f"cat /sys/bus/usb/devices/$usb/speed > {flags}/speed\n"
        + wait_block_script("usb")
        + f'basename "$(readlink /sys/bus/usb/devices/$usb:1.0/driver)" > {flags}/driver\n'
        f"mkdir -p {mnt} && mount -t vfat $blk {mnt}\n"
        f"md5sum {mnt}/{known} > {flags}/md5\n"
        f"cp {flags}/{from_vm} {mnt}/{from_vm} && sync && umount {mnt}\n"
        f"touch {flags}/done\n"
    )


def _failure_context(usb_lab: UsbLab, log: Path, start: int) -> str:
    """The exporter's log and the VM side's kernel log, for a failure message."""
    try:
        kernel = usb_lab.vm.run("dmesg | tail -40", 60.0)
    except AgentError as exc:
        kernel = f"(no dmesg: {exc})"
    text = log.read_text(errors="replace")[start:]
    return f"--- {log.name}:\n{text[-4000:]}\n--- VM side dmesg:\n{kernel}"


def _refused(log: Path, start: int) -> str | None:
    """Why the VM side will never see the disk, from the exporter's log: QEMU drops a device whose
    streams cannot be allocated (without the bulk_streams cap, or when libusb refuses them)."""
    text = log.read_text(errors="replace")[start:]
    return "the VM side rejected the device" if "rejected by the guest" in text else None


def _uas_sysfs_name(usb_lab: UsbLab) -> str:
    return usb_lab.thin.run(wait_usb_script(*UAS) + 'echo "$found"\n').strip()


def _vm_uses_the_uas_disk(usb_lab: UsbLab, name: str, port: int, log: Path, start: int) -> str:
    """The VM side attaches to `port` (whatever exports the thin client's usb-uas there, logging to
    `log` from byte `start`), mounts the disk with its uas driver, reads a known file and writes one;
    everything checked.  Returns the exporter's log from `start`."""
    thin = usb_lab.thin
    usb = _uas_sysfs_name(usb_lab)
    interface = f"{usb}:1.0"
    assert thin.run(f"cat /sys/bus/usb/devices/{usb}/speed").strip() == "5000"  # super speed
    assert thin.drivers(usb) == {interface: "uas"}  # the thin client's own driver first
    image = thin.guest.share / "uas.img"
    known, from_vm = f"known-{name}.bin", f"vm-{name}.bin"
    write_fat_file(image, known, KNOWN)
    data = os.urandom(100_000)
    flags = usb_lab.vm.guest.share_dir(f"uas-{name}")
    (flags / from_vm).write_bytes(data)
    redir = usb_lab.vm.attach(port)
    try:
        job = usb_lab.vm.guest.start(_vm_script(str(flags), f"/tmp/uas-{name}", known, from_vm))
        wait_flag(
            flags / "done",
            job,
            lambda: _failure_context(usb_lab, log, start),
            give_up=lambda: _refused(log, start),
        )
        job.wait().check()
        # while the VM held it, the thin client's uas let go of it (libusb claimed it)
        assert thin.drivers(usb) == {interface: "usbfs"}
    finally:
        usb_lab.vm.detach(redir)
    text = log.read_text(errors="replace")[start:]
    assert "transfers: async" in text  # streams need libusb's asynchronous path
    assert (flags / "speed").read_text().strip() == "5000", text  # the VM side sees it at super speed
    assert (flags / "driver").read_text().strip() == "uas", text  # uas, not usb-storage
    # the VM's uas allocated its streams, and libusb allocated them on the real device
    allocated = re.search(r"allocated (\d+) bulk streams on (0x[0-9a-f]{2}(?:, 0x[0-9a-f]{2})*) of", text)
    assert allocated and int(allocated.group(1)) >= 2 and len(allocated.group(2).split(", ")) == 3, text
    md5 = (flags / "md5").read_text().split()[0]
    assert md5 == hashlib.md5(KNOWN).hexdigest()
    # the thin client's uas has its disk back, and the VM's file is in the image
    thin.run(
        f'until [ "$(basename "$(readlink /sys/bus/usb/devices/{interface}/driver 2>/dev/null)")" = uas ]; '
        "do sleep 0.1; done"
    )
    assert read_fat_file(image, from_vm) == data
    return text


@pytest.mark.system
def test_vm_uas_driver_uses_bulk_streams_through_serve_usb(usb_lab: UsbLab) -> None:
    thin = usb_lab.thin
    log = thin.guest.share_dir("uas") / "serve-usb.log"
    pid = thin.guest.spawn(
        f"{sys.executable} -m redirgate.cli -v client serve-usb --listen 0.0.0.0:{SERVE_USB_PORT} "
        f"{UAS[0]:04x}:{UAS[1]:04x}",
        log,
    )
    try:
        wait_for_text(log, r"serving \S+ on", 300.0)
        _vm_uses_the_uas_disk(usb_lab, "serve", thin.guest.host_port(SERVE_USB_PORT), log, 0)
    finally:
        thin.guest.signal(pid, "TERM")
        thin.guest.wait_exit(pid)


@pytest.mark.system
def test_vm_uas_driver_uses_bulk_streams_through_client_and_gateway(usb_lab: UsbLab) -> None:
    """The lab's `client run` exports the usb-uas, the VM side dials the gateway's route: the
    bulk_streams capability and the stream allocation cross the tunnel and the gateway's guard."""
    log = usb_lab.client_log
    text = _vm_uses_the_uas_disk(usb_lab, "gateway", usb_lab.route("uas"), log, log.stat().st_size)
    assert re.search(r"channel \d+: serving usb:46f4:0003", text), text  # through a gateway channel
