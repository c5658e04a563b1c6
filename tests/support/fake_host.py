"""Synthetic hosts for `redirgate.host`: a sysfs/proc/dev/etc tree laid out the way Linux does.

What the emulated IOMMU guest cannot show (ACS-less shared groups, a mounted
disk, an interface up, a missing IOMMU, a PF with autoprobe off, a VM
holding a group open) is built here file by file: devices live under
``sys/devices/pci0000:00/...`` behind their bridges, with the same symlinks
the kernel makes (``bus/pci/devices``, ``driver``, ``iommu_group``,
``physfn``/``virtfnN``, ``dev/block``, ``class/net``, ``class/input``).

:class:`FakeKernel` plays the kernel's part for the writes a plan makes
(``driver_override``, ``unbind``, ``bind``, ``drivers_probe``) so the real
executor can run against the tree; the real kernel's behaviour is proven in
the IOMMU guest (tests/e2e/test_host_iommu_guest.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from redirgate.host.paths import HostPaths
from redirgate.host.steps import Step, WriteSysfs, run_steps

__all__ = [
    "ETHERNET",
    "HOST_BRIDGE",
    "ISA_BRIDGE",
    "MOUSE_KEYS",
    "NVME",
    "OTHER",
    "PCI_BRIDGE",
    "SATA",
    "XHCI",
    "FakeHost",
    "FakeKernel",
]

# PCI class codes (PCI Code and ID Assignment Specification)
HOST_BRIDGE, ISA_BRIDGE, PCI_BRIDGE = 0x060000, 0x060100, 0x060400
SATA, NVME, ETHERNET, XHCI, OTHER = 0x010601, 0x010802, 0x020000, 0x0C0330, 0x00FF00

#: /sys/class/input/inputN/capabilities/key of a real USB keyboard and of a USB mouse (BTN_LEFT..BTN_TASK).
_KEYBOARD_KEYS = "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe"
MOUSE_KEYS = "ffff0000 0 0 0 0"


class FakeHost:
    def __init__(self, root: Path, *, iommu: bool = True, interrupt_remapping: bool = True) -> None:
        self.root = root
        self.paths = HostPaths(
            sysfs=root / "sys", proc=root / "proc", dev=root / "dev", etc=root / "etc", state=root / "run"
        )
        for sub in ("devices/pci0000:00", "bus/pci/devices", "bus/pci/drivers", "kernel/iommu_groups", "dev/block"):
            (self.sys / sub).mkdir(parents=True, exist_ok=True)
        for name in ("drivers_probe",):
            (self.sys / "bus" / "pci" / name).write_text("")
        (self.proc / "self").mkdir(parents=True)
        (self.proc / "net").mkdir()
        self.mountinfo: list[str] = []
        self._mount_id = 20
        self.set_mounts()
        (self.proc / "net" / "route").write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n")
        self.root.joinpath("dev").mkdir()
        self.root.joinpath("etc").mkdir()
        if iommu:
            (self.sys / "class" / "iommu" / "dmar0").mkdir(parents=True)
        chip = "IR-PCI-MSI" if interrupt_remapping else "PCI-MSI"
        (self.proc / "interrupts").write_text(f"           CPU0\n 24:          5  {chip} 512000-edge  ahci\n")
        self.iommu = iommu
        self._virtio = 0
        self._inputs = 0

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    def _link(self, link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))

    def device_dir(self, address: str) -> Path:
        return (self.sys / "bus" / "pci" / "devices" / address).resolve()

    # -- PCI -------------------------------------------------------------------------------------------

    def driver(self, name: str) -> Path:
        base = self.sys / "bus" / "pci" / "drivers" / name
        if not base.is_dir():
            base.mkdir(parents=True)
            for attr in ("bind", "unbind", "new_id", "remove_id"):
                (base / attr).write_text("")
        return base

    def add_pci(
        self,
        address: str,
        ident: str,
        class_code: int,
        *,
        driver: str | None = None,
        group: int | None = None,
        parent: str | None = None,
        totalvfs: int | None = None,
        autoprobe: bool = True,
    ) -> Path:
        """A PCI function (``ident`` = vendor:device) behind ``parent`` (a bridge's address) or the root bus."""
        above = self.device_dir(parent) if parent else self.sys / "devices" / "pci0000:00"
        base = above / address
        base.mkdir(parents=True)
        vendor, device = ident.split(":")
        (base / "vendor").write_text(f"0x{vendor}\n")
        (base / "device").write_text(f"0x{device}\n")
        (base / "class").write_text(f"0x{class_code:06x}\n")
        (base / "driver_override").write_text("(null)\n")
        self._link(self.sys / "bus" / "pci" / "devices" / address, base)
        if driver is not None:
            self._link(base / "driver", self.driver(driver))
            self._link(self.driver(driver) / address, base)
        if group is not None and self.iommu:
            group_dir = self.sys / "kernel" / "iommu_groups" / str(group)
            (group_dir / "devices").mkdir(parents=True, exist_ok=True)
            self._link(base / "iommu_group", group_dir)
            self._link(group_dir / "devices" / address, base)
        if totalvfs is not None:
            (base / "sriov_totalvfs").write_text(f"{totalvfs}\n")
            (base / "sriov_numvfs").write_text("0\n")
            (base / "sriov_drivers_autoprobe").write_text("1\n" if autoprobe else "0\n")
        return base

    def add_vf(self, pf: str, index: int, address: str, ident: str, class_code: int, **kw: object) -> Path:
        """A VF of ``pf``: ``physfn`` and ``virtfnN`` links, the PF's ``sriov_numvfs`` counted up."""
        base = self.add_pci(address, ident, class_code, **kw)  # type: ignore[arg-type]  # add_pci's own keywords, passed on
        pf_dir = self.device_dir(pf)
        self._link(base / "physfn", pf_dir)
        self._link(pf_dir / f"virtfn{index}", base)
        (pf_dir / "sriov_numvfs").write_text(f"{len(list(pf_dir.glob('virtfn*')))}\n")
        return base

    # -- what the host depends on ------------------------------------------------------------------------

    def add_disk(self, pci: str, name: str, major_minor: str, partitions: Sequence[tuple[str, str]] = ()) -> None:
        """A disk (and partitions: name, major:minor) on the controller at ``pci``."""
        disk = self.device_dir(pci) / "host0" / "target0:0:0" / "0:0:0:0" / "block" / name
        disk.mkdir(parents=True)
        (disk / "dev").write_text(major_minor + "\n")
        self._link(self.sys / "dev" / "block" / major_minor, disk)
        self._link(self.sys / "class" / "block" / name, disk)
        for part, mm in partitions:
            (disk / part).mkdir()
            (disk / part / "dev").write_text(mm + "\n")
            self._link(self.sys / "dev" / "block" / mm, disk / part)
            self._link(self.sys / "class" / "block" / part, disk / part)

    def set_mounts(self, *mounts: tuple[str, str, str, str]) -> None:
        """/proc/self/mountinfo from (major:minor, mount point, fstype, source) entries."""
        lines = [
            f"{20 + i} 1 {mm} / {point} rw,relatime - {fstype} {source} rw"
            for i, (mm, point, fstype, source) in enumerate(mounts)
        ]
        (self.proc / "self" / "mountinfo").write_text("".join(line + "\n" for line in lines))

    def add_9p(self, pci: str, tag: str) -> None:
        virtio = self.device_dir(pci) / f"virtio{self._virtio}"
        self._virtio += 1
        virtio.mkdir()
        (virtio / "mount_tag").write_text(tag + "\0")  # as 9pnet_virtio shows it
        self._link(self.sys / "bus" / "virtio" / "devices" / virtio.name, virtio)

    def add_net(self, pci: str, name: str, *, up: bool = False, default_route: bool = False) -> None:
        iface = self.device_dir(pci) / "net" / name
        iface.mkdir(parents=True)
        (iface / "flags").write_text("0x1003\n" if up else "0x1002\n")
        self._link(iface / "device", self.device_dir(pci))
        self._link(self.sys / "class" / "net" / name, iface)
        if default_route:
            with open(self.proc / "net" / "route", "a") as f:
                f.write(f"{name}\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\n")

    def add_virtual_net(
        self, name: str, *, lower: Sequence[str] = (), ports: Sequence[str] = (), default_route: bool = False
    ) -> None:
        """A bond/VLAN (``lower_X`` links) or a bridge (``brif/X``) over other interfaces; no device of its own."""
        iface = self.sys / "devices" / "virtual" / "net" / name
        iface.mkdir(parents=True)
        (iface / "flags").write_text("0x1003\n")
        for other in lower:
            self._link(iface / f"lower_{other}", self.sys / "class" / "net" / other)
        for other in ports:
            self._link(iface / "brif" / other, self.sys / "class" / "net" / other / "brport")
        self._link(self.sys / "class" / "net" / name, iface)
        if default_route:
            with open(self.proc / "net" / "route", "a") as f:
                f.write(f"{name}\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\n")

    def add_swap(self, device: str) -> None:
        (self.proc / "swaps").write_text(
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
            f"{device}                               partition\t1048572\t\t0\t\t-2\n"
        )
        (self.root / "dev" / device.removeprefix("/dev/")).write_text("")

    def add_keyboard(
        self, pci: str, name: str = "USB Keyboard", *, console: str = "tty0", keys: str = _KEYBOARD_KEYS
    ) -> None:
        """A keyboard (the KEY_ESC..KEY_D bits udev looks for) on the USB controller at ``pci``.

        ``keys=MOUSE_KEYS`` makes it a mouse (buttons only), which the console does not need.
        """
        node = self.device_dir(pci) / "usb1" / "1-1" / "1-1:1.0" / "input" / f"input{self._inputs}"
        self._inputs += 1
        (node / "capabilities").mkdir(parents=True)
        (node / "capabilities" / "key").write_text(keys + "\n")
        (node / "name").write_text(name + "\n")
        self._link(self.sys / "class" / "input" / node.name, node)
        (self.sys / "class" / "tty" / "console").mkdir(parents=True, exist_ok=True)
        (self.sys / "class" / "tty" / "console" / "active").write_text(console + "\n")

    def hold_vfio_group(self, group: int, pid: int = 4242, comm: str = "qemu-system-x86") -> None:
        """A process (a VM) with /dev/vfio/GROUP open."""
        fd = self.proc / str(pid) / "fd"
        fd.mkdir(parents=True)
        (fd / "3").write_text("")  # readlink fails on it, like an fd that closed between listdir and readlink
        (fd / "17").symlink_to(f"/dev/vfio/{group}")
        (self.proc / str(pid) / "comm").write_text(comm + "\n")

    def driver_of(self, address: str) -> str | None:
        link = self.device_dir(address) / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def override_of(self, address: str) -> str:
        return (self.device_dir(address) / "driver_override").read_text().strip()


class FakeKernel:
    """Does what Linux does for the PCI bind attributes a plan writes, then lets the real executor go on."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.writes: list[tuple[str, str]] = []

    def _unbind(self, address: str) -> None:
        base = self.host.device_dir(address)
        driver = self.host.driver_of(address)
        if driver is not None:
            (base / "driver").unlink()
            (self.host.driver(driver) / address).unlink()

    def _bind(self, address: str, driver: str) -> None:
        base = self.host.device_dir(address)
        self.host._link(base / "driver", self.host.driver(driver))
        self.host._link(self.host.driver(driver) / address, base)

    def react(self, step: Step) -> None:
        if not isinstance(step, WriteSysfs):
            return
        rel = str(step.path.relative_to(self.host.sys))
        self.writes.append((rel, step.value))
        value = step.value.strip()
        if rel.endswith("/unbind"):
            assert self.host.driver_of(value) == step.path.parent.name, f"{value} is not on {step.path.parent.name}"
            self._unbind(value)
        elif rel.endswith("/bind"):
            override = self.host.override_of(value)
            assert override in ("(null)", step.path.parent.name), f"override {override} blocks bind"
            self._bind(value, step.path.parent.name)
        elif rel == "bus/pci/drivers_probe":
            override = self.host.override_of(value)
            if self.host.driver_of(value) is None and override != "(null)":
                self._bind(value, override)

    def run(self, steps: Sequence[Step], report: list[str] | None = None) -> list[str]:
        """Run ``steps`` with the real executor, the kernel reacting after each write."""
        done = [] if report is None else report
        for step in steps:
            run_steps([step], self.host.paths, done.append)
            if isinstance(step, WriteSysfs) and step.path.name == "driver_override" and not step.value.strip():
                step.path.write_text("(null)\n")  # the kernel shows an empty override as (null)
            self.react(step)
        return done
