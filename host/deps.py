"""Finds the PCI devices the host depends on or that are in use, from sysfs and /proc only.

Owns the question "what breaks if this device leaves the host?":

- *host dependencies* (never given away): the device under the root
  filesystem (a disk controller, or the virtio device of a 9p root), the NIC
  of the default route (through bridges, bonds and VLANs), and the
  controllers of the console: the keyboards' (a USB or PS/2 controller) when
  the console is a VT, the serial port's when it is a serial line;
- *in use* (refused until released): every mounted or swapped-on disk, every
  mounted 9p share, every network interface that is up.

Each finding is tied to the deepest PCI function on the device's sysfs path
(the controller; the bridges above it stay with the host anyway).  It never
writes, and reads nothing outside the roots of :class:`HostPaths`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from redirgate.host.paths import HostPaths
from redirgate.host.pci import read_text
from redirgate.proto.mountinfo import Mount, parse_mountinfo

__all__ = ["Use", "find_uses", "pci_function_of", "vfio_group_users"]

_PCI_COMPONENT_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
#: include/uapi/linux/if.h
_IFF_UP = 0x1
#: udev's input_id: a keyboard has KEY_ESC..KEY_D (bits 1..31 of the first word) all set.
_KEYBOARD_BITS = 0xFFFFFFFE


@dataclasses.dataclass(frozen=True)
class Use:
    """Why a PCI function may not leave the host: ``host`` = a dependency, ``in-use`` = busy now."""

    address: str
    kind: str  # "host" or "in-use"
    reason: str


def pci_function_of(path: Path) -> str | None:
    """The deepest PCI address on ``path``'s resolved sysfs path (None: not on PCI)."""
    try:
        resolved = Path(os.path.realpath(path))
    except OSError:
        return None
    for part in reversed(resolved.parts):
        if _PCI_COMPONENT_RE.match(part):
            return part
    return None


def _mounts(paths: HostPaths) -> list[Mount]:
    return parse_mountinfo(read_text(paths.proc / "self" / "mountinfo") or "")


def _block_functions(paths: HostPaths, sys_block: Path, seen: set[str] | None = None) -> set[str]:
    """PCI functions under a block device, through dm/md ``slaves``."""
    seen = set() if seen is None else seen
    key = os.path.realpath(sys_block)
    if key in seen or not os.path.exists(key):
        return set()
    seen.add(key)
    found: set[str] = set()
    address = pci_function_of(sys_block)
    if address is not None:
        found.add(address)
    slaves = Path(key) / "slaves"
    if slaves.is_dir():
        for slave in sorted(slaves.iterdir()):
            found |= _block_functions(paths, paths.sysfs / "class" / "block" / slave.name, seen)
    return found


def _mount_functions(paths: HostPaths, mount: Mount) -> set[str]:
    if mount.fstype == "9p":
        return set(_virtio_9p(paths, mount.source))
    major, _, _minor = mount.major_minor.partition(":")
    if major not in ("", "0"):
        return _block_functions(paths, paths.sysfs / "dev" / "block" / mount.major_minor)
    if mount.source.startswith("/dev/"):  # btrfs and friends show an anonymous 0:N
        node = os.path.realpath(paths.dev / mount.source.removeprefix("/dev/"))
        return _block_functions(paths, paths.sysfs / "class" / "block" / os.path.basename(node))
    return set()


def _virtio_9p(paths: HostPaths, tag: str) -> Iterator[str]:
    base = paths.sysfs / "bus" / "virtio" / "devices"
    if not base.is_dir():
        return
    for device in sorted(base.iterdir()):
        # 9pnet_virtio shows the tag with a trailing NUL and no newline
        if (read_text(device / "mount_tag") or "").rstrip("\0") == tag:
            address = pci_function_of(device)
            if address is not None:
                yield address


def _swap_functions(paths: HostPaths) -> Iterator[tuple[str, str]]:
    text = read_text(paths.proc / "swaps") or ""
    for line in text.splitlines()[1:]:
        source = line.split()[0] if line.split() else ""
        if source.startswith("/dev/"):
            node = os.path.realpath(paths.dev / source.removeprefix("/dev/"))
            for address in _block_functions(paths, paths.sysfs / "class" / "block" / os.path.basename(node)):
                yield address, source


def _default_route_interfaces(paths: HostPaths) -> set[str]:
    names: set[str] = set()
    for line in (read_text(paths.proc / "net" / "route") or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            names.add(fields[0])
    for line in (read_text(paths.proc / "net" / "ipv6_route") or "").splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo":
            names.add(fields[9])
    return names


def _interface_functions(paths: HostPaths, name: str, seen: set[str] | None = None) -> set[str]:
    """PCI functions under a network interface, through bridge ports, bonds and VLANs."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    base = paths.sysfs / "class" / "net" / name
    found: set[str] = set()
    address = pci_function_of(base / "device") if (base / "device").exists() else None
    if address is not None:
        found.add(address)
    lower = [p.name.removeprefix("lower_") for p in base.glob("lower_*")]
    ports = sorted(p.name for p in (base / "brif").iterdir()) if (base / "brif").is_dir() else []
    for other in lower + ports:
        found |= _interface_functions(paths, other, seen)
    return found


def _console_functions(paths: HostPaths) -> Iterator[tuple[str, str]]:
    active = (read_text(paths.sysfs / "class" / "tty" / "console" / "active") or "").split()
    if any(re.fullmatch(r"tty\d+", name) for name in active):
        for address, what in _keyboards(paths):
            yield address, f"the console keyboard ({what})"
    for name in active:
        if not re.fullmatch(r"tty\d+", name):
            found = pci_function_of(paths.sysfs / "class" / "tty" / name / "device")
            if found is not None:
                yield found, f"the console ({name})"


def _keyboards(paths: HostPaths) -> Iterator[tuple[str, str]]:
    base = paths.sysfs / "class" / "input"
    if not base.is_dir():
        return
    for entry in sorted(base.iterdir()):
        if not re.fullmatch(r"input\d+", entry.name):
            continue
        words = (read_text(entry / "capabilities" / "key") or "0").split()
        try:
            low = int(words[-1], 16) & 0xFFFFFFFF
        except ValueError:
            continue
        if low & _KEYBOARD_BITS != _KEYBOARD_BITS:
            continue
        address = pci_function_of(entry)
        if address is not None:
            yield address, f"{entry.name} {read_text(entry / 'name') or ''}".strip()


def find_uses(paths: HostPaths) -> dict[str, list[Use]]:
    """PCI address -> why the host needs it (kind ``host``) or it is busy (kind ``in-use``)."""
    uses: dict[str, list[Use]] = defaultdict(list)

    def add(address: str, kind: str, reason: str) -> None:
        use = Use(address, kind, reason)
        if use not in uses[address]:
            uses[address].append(use)

    mounts = _mounts(paths)
    root = [m for m in mounts if m.mount_point == "/"]
    if root:  # the last mount on / is the one in force
        for address in sorted(_mount_functions(paths, root[-1])):
            add(address, "host", f"the root filesystem ({root[-1].source} on /, {root[-1].fstype})")
    for mount in mounts:
        for address in sorted(_mount_functions(paths, mount)):
            add(address, "in-use", f"mounted: {mount.source} on {mount.mount_point}")
    for address, source in _swap_functions(paths):
        add(address, "in-use", f"swap on {source}")
    for name in sorted(_default_route_interfaces(paths)):
        for address in sorted(_interface_functions(paths, name)):
            add(address, "host", f"the default route (via {name})")
    net = paths.sysfs / "class" / "net"
    for iface in sorted(net.iterdir()) if net.is_dir() else []:
        flags = read_text(iface / "flags")
        try:
            up = flags is not None and int(flags, 16) & _IFF_UP
        except ValueError:
            up = False
        if up and (iface / "device").exists():
            nic = pci_function_of(iface / "device")
            if nic is not None:
                add(nic, "in-use", f"interface {iface.name} is up")
    for address, reason in _console_functions(paths):
        add(address, "host", reason)
    return dict(uses)


def vfio_group_users(paths: HostPaths, group: int) -> list[str]:
    """``PID (COMM)`` of every process holding /dev/vfio/GROUP open (a VM using the group)."""
    target = str(Path("/dev") / "vfio" / str(group))
    users = []
    try:
        pids = sorted((p for p in os.listdir(paths.proc) if p.isdigit()), key=int)
    except FileNotFoundError:
        return []
    for pid in pids:
        fd_dir = paths.proc / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        links = set()
        for fd in fds:
            try:  # an fd may close between listdir and readlink (listdir's own does)
                links.add(os.readlink(fd_dir / fd))
            except OSError:
                continue
        if target in links:
            users.append(f"{pid} ({read_text(paths.proc / pid / 'comm') or '?'})")
    return users
