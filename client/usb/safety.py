"""Devices the client never exports, whatever the policy or the command line says.

Exporting a device takes it away from the thin client: its kernel drivers
are detached and a VM drives it.  For two kinds of device that harms the
thin client itself:

* **hubs** (bDeviceClass 0x09, root hubs included, or a hub interface):
  the kernel's hub driver lets go and every device behind the hub drops off
  the thin client (seen with a root hub: the whole bus vanished and QEMU's
  reset of the hub failed in a loop);
* **the device the thin client boots from**: the USB device that holds the
  block device behind `/` or `/boot`.  It is found from
  `/proc/self/mountinfo` (the mount's major:minor) and sysfs
  (`/sys/dev/block/MAJ:MIN` resolves to a path through every USB device
  above the disk, e.g. `.../usb2/2-1/2-1.4/2-1.4:1.0/host0/.../block/sda/sda1`),
  following device-mapper/md slaves, loop devices' backing files and
  overlayfs' lower/upper directories (a live system on a USB stick).

`refusal(snap, boot)` names the reason, or None; `boot_usb_ports()` reads
the boot devices (blocking, small file reads: call it in a worker thread or
a CLI).  A device whose kernel driver cannot be detached is refused when it
is opened (client/usb/device.py), since only trying tells.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from redirgate.client.usb.descriptors import DeviceSnapshot
from redirgate.proto.mountinfo import Mount, parse_mountinfo

__all__ = ["BOOT_MOUNTS", "HUB_CLASS", "boot_usb_ports", "interface_driver", "is_hub", "refusal"]

log = logging.getLogger(__name__)

HUB_CLASS = 0x09
#: the mounts whose devices the thin client cannot live without
BOOT_MOUNTS = ("/", "/boot")
#: a USB device's sysfs name: BUS-PORT[.PORT...] (interfaces add ":C.I")
_USB_DEVICE = re.compile(r"^\d+-\d+(?:\.\d+)*$")
_ROOT_HUB = re.compile(r"^usb(\d+)$")
_MAX_DEPTH = 8  # loop -> mount -> overlay -> ...: a cycle guard


def is_hub(snap: DeviceSnapshot) -> bool:
    """bDeviceClass 0x09, or any interface of any configuration of class 0x09."""
    if snap.device_class == HUB_CLASS:
        return True
    return any(
        setting.interface_class == HUB_CLASS
        for config in snap.configs.values()
        for settings in config.interfaces.values()
        for setting in settings
    )


def refusal(snap: DeviceSnapshot, boot: Mapping[str, str]) -> str | None:
    """Why `snap` must never be exported, or None.  `boot` maps the port
    paths of the USB devices behind the boot mounts to the mount point."""
    if is_hub(snap):
        return "it is a USB hub, and exporting it would take every device behind it off the thin client"
    mount = boot.get(snap.port_path)
    if mount is not None:
        return f"the thin client boots from it (it holds {mount})"
    return None


# ------------------------------------------------------------ boot devices


def _mounts(proc_root: Path) -> list[Mount]:
    """The mount table; btrfs (and others) report an anonymous 0:N as the
    device number: the mount source's is taken instead when the source is
    a block device."""
    try:
        text = (proc_root / "self" / "mountinfo").read_text()
    except OSError as exc:
        log.debug("cannot read mountinfo: %s", exc)
        return []
    mounts = []
    for mount in parse_mountinfo(text):
        if mount.major_minor.startswith("0:") and mount.source.startswith("/dev/"):
            mount = dataclasses.replace(mount, major_minor=_block_devno(mount.source) or mount.major_minor)
        mounts.append(mount)
    return mounts


def _block_devno(path: str) -> str | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(info.st_mode):
        return None
    return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"


def _mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding `path`: the last-mounted one with the longest prefix."""
    best = None
    for mount in mounts:
        point = mount.mount_point
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best.mount_point):
                best = mount
    return best


def _usb_ports_of_sysfs_path(path: str) -> list[str]:
    """Port paths of every USB device on a sysfs device path (hubs first)."""
    ports = []
    for part in path.split("/"):
        root = _ROOT_HUB.match(part)
        if root:
            ports.append(f"{root[1]}-0")
        elif _USB_DEVICE.match(part):
            ports.append(part)
    return ports


def _block_usb_ports(devno: str, sys_root: Path, mounts: list[Mount], depth: int) -> list[str]:
    """USB port paths behind block device MAJ:MIN (slaves and loops followed)."""
    if depth > _MAX_DEPTH:
        return []
    node = sys_root / "dev" / "block" / devno
    try:
        real = os.path.realpath(node)
    except OSError:
        return []
    if not os.path.exists(real):
        return []
    found = _usb_ports_of_sysfs_path(real)
    block = Path(real)
    # a partition's slaves/loop live on the whole disk's node
    for where in (block, block.parent):
        for slave in _listdir(where / "slaves"):
            devno_file = where / "slaves" / slave / "dev"
            slave_devno = _read(devno_file)
            if slave_devno:
                found += _block_usb_ports(slave_devno, sys_root, mounts, depth + 1)
        backing = _read(where / "loop" / "backing_file")
        if backing:
            found += _path_usb_ports(backing, sys_root, mounts, depth + 1)
    return found


def _path_usb_ports(path: str, sys_root: Path, mounts: list[Mount], depth: int) -> list[str]:
    """USB port paths behind the filesystem that holds `path`."""
    if depth > _MAX_DEPTH:
        return []
    mount = _mount_of(path, mounts)
    if mount is None:
        return []
    devno, fstype, options = mount.major_minor, mount.fstype, mount.super_options
    found = []
    if not devno.startswith("0:"):
        found += _block_usb_ports(devno, sys_root, mounts, depth + 1)
    if fstype == "overlay":
        for option in options.split(","):
            key, _, value = option.partition("=")
            if key in ("lowerdir", "upperdir"):
                for directory in value.split(":"):
                    if directory:
                        found += _path_usb_ports(directory, sys_root, mounts, depth + 1)
    return found


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def boot_usb_ports(
    mount_points: Iterable[str] = BOOT_MOUNTS, *, proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys")
) -> dict[str, str]:
    """Port path -> mount point, for every USB device (and the hubs above
    it) that holds one of `mount_points`' filesystems.  Blocking."""
    mounts = _mounts(proc_root)
    found: dict[str, str] = {}
    for point in mount_points:
        mount = _mount_of(point, mounts)
        if mount is None or mount.mount_point != point:
            continue  # not a mount of its own (e.g. /boot inside /)
        for port in _path_usb_ports(point, sys_root, mounts, 0):
            found.setdefault(port, point)
    return found


def interface_driver(port_path: str, config: int, interface: int, *, sys_root: Path = Path("/sys")) -> str | None:
    """The kernel driver bound to an interface (sysfs), or None."""
    link = sys_root / "bus" / "usb" / "devices" / f"{port_path}:{config}.{interface}" / "driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None
