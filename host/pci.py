"""Reads the PCI side of sysfs into plain values: devices, IOMMU groups, the IOMMU's state.

Owns the sysfs layout of ``/sys/bus/pci`` and ``/sys/kernel/iommu_groups``
(and ``/proc/interrupts`` for interrupt remapping); never writes anything
(that is :mod:`redirgate.host.execute`), never guesses: what a file does not
say is None.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from redirgate.host.errors import DeviceNotFound, IommuMissing
from redirgate.host.paths import HostPaths

__all__ = [
    "IommuStatus",
    "PciDevice",
    "class_name",
    "group_devices",
    "iommu_status",
    "list_devices",
    "read_device",
    "read_text",
]

#: PCI Code and ID Assignment Specification: base class / subclass (/ prog-if) names we print.
_CLASS_NAMES: dict[int, str] = {
    0x0100: "SCSI controller",
    0x0101: "IDE controller",
    0x0104: "RAID controller",
    0x0106: "SATA controller",
    0x0107: "SAS controller",
    0x0108: "NVMe controller",
    0x0200: "Ethernet controller",
    0x0280: "Network controller",
    0x0300: "VGA controller",
    0x0302: "3D controller",
    0x0403: "Audio device",
    0x0600: "Host bridge",
    0x0601: "ISA bridge",
    0x0604: "PCI bridge",
    0x0700: "Serial controller",
    0x0701: "Parallel controller",
    0x0C03: "USB controller",
    0x0C05: "SMBus",
}
_BASE_NAMES: dict[int, str] = {
    0x01: "Mass storage controller",
    0x02: "Network controller",
    0x03: "Display controller",
    0x04: "Multimedia controller",
    0x06: "Bridge",
    0x07: "Communication controller",
    0x0C: "Serial bus controller",
}
#: PCI-to-PCI and CardBus bridges: vfio needs nothing from them, they keep their driver.
_BRIDGE_CLASSES = (0x0604, 0x0607)
_USB_PROG_IF = {0x00: "UHCI", 0x10: "OHCI", 0x20: "EHCI", 0x30: "xHCI"}


def read_text(path: Path) -> str | None:
    """A sysfs/proc file's text, stripped; None when it does not exist or cannot be read."""
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, OSError):
        return None


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def class_name(class_code: int) -> str:
    """``0x0c0330`` -> ``USB controller (xHCI)``."""
    sub = class_code >> 8
    name = _CLASS_NAMES.get(sub) or _BASE_NAMES.get(class_code >> 16) or f"class {class_code:06x}"
    if sub == 0x0C03 and (class_code & 0xFF) in _USB_PROG_IF:
        name += f" ({_USB_PROG_IF[class_code & 0xFF]})"
    return name


@dataclasses.dataclass(frozen=True)
class PciDevice:
    """One PCI function as sysfs shows it."""

    address: str
    vendor: str  # four hex digits, no 0x
    device: str
    class_code: int
    driver: str | None
    driver_override: str | None
    iommu_group: int | None
    #: SR-IOV: the PF of a VF, the VFs of a PF, the PF's counts and its autoprobe switch.
    physfn: str | None = None
    virtfns: tuple[str, ...] = ()
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    sriov_drivers_autoprobe: bool | None = None

    @property
    def ident(self) -> str:
        return f"{self.vendor}:{self.device}"

    @property
    def is_bridge(self) -> bool:
        return (self.class_code >> 8) in _BRIDGE_CLASSES

    @property
    def description(self) -> str:
        return class_name(self.class_code)

    @property
    def is_pf(self) -> bool:
        return self.sriov_totalvfs is not None and self.sriov_totalvfs > 0

    def summary(self) -> str:
        """``0000:01:00.0 8086:10d3 Ethernet controller (e1000e)``."""
        return f"{self.address} {self.ident} {self.description} ({self.driver or 'no driver'})"


def read_device(paths: HostPaths, address: str) -> PciDevice:
    """The device at ``address`` (already normalised), else DeviceNotFound."""
    base = paths.device(address)
    vendor = read_text(base / "vendor")
    if vendor is None:
        raise DeviceNotFound(address, f"no such PCI device (nothing at {base})")
    override = read_text(base / "driver_override")
    virtfns = sorted(
        (p for p in base.glob("virtfn*") if p.name[6:].isdigit()),
        key=lambda p: int(p.name[6:]),
    )
    autoprobe = read_text(base / "sriov_drivers_autoprobe")
    return PciDevice(
        address=address,
        vendor=vendor.removeprefix("0x"),
        device=(read_text(base / "device") or "0x????").removeprefix("0x"),
        class_code=_int(read_text(base / "class"), 16) or 0,
        driver=_link_name(base / "driver"),
        driver_override=None if override in (None, "(null)", "") else override,
        iommu_group=_int(_link_name(base / "iommu_group")),
        physfn=_link_name(base / "physfn"),
        virtfns=tuple(name for p in virtfns if (name := _link_name(p)) is not None),
        sriov_totalvfs=_int(read_text(base / "sriov_totalvfs")),
        sriov_numvfs=_int(read_text(base / "sriov_numvfs")),
        sriov_drivers_autoprobe=None if autoprobe is None else autoprobe == "1",
    )


def list_devices(paths: HostPaths) -> list[PciDevice]:
    """Every PCI function, in address order."""
    try:
        names = sorted(os.listdir(paths.pci_devices))
    except FileNotFoundError:
        return []
    return [read_device(paths, name) for name in names]


def group_devices(paths: HostPaths, group: int) -> list[str]:
    """The addresses in IOMMU group ``group``, sorted."""
    try:
        return sorted(os.listdir(paths.iommu_groups / str(group) / "devices"))
    except FileNotFoundError:
        raise DeviceNotFound(f"IOMMU group {group}", "no such group") from None


_IR_CHIP_RE = re.compile(r"\bIR-[A-Z]")


@dataclasses.dataclass(frozen=True)
class IommuStatus:
    """Is DMA remapping on, and interrupt remapping (what vfio needs to be safe)."""

    enabled: bool
    units: tuple[str, ...]
    groups: int
    #: True when /proc/interrupts shows IR- chips (IR-PCI-MSI, IR-IO-APIC), None when unreadable.
    interrupt_remapping: bool | None
    #: vfio_iommu_type1's allow_unsafe_interrupts, None when the module is not loaded.
    allow_unsafe_interrupts: bool | None
    vfio_pci_loaded: bool

    def require(self) -> None:
        """IommuMissing unless there are IOMMU groups."""
        if not self.enabled:
            raise IommuMissing(
                "IOMMU",
                "no IOMMU groups: turn the IOMMU on in the firmware (VT-d/AMD-Vi) and boot with "
                "intel_iommu=on (Intel) or amd_iommu=on; vfio-pci cannot work without it",
            )


def iommu_status(paths: HostPaths) -> IommuStatus:
    try:
        groups = len(os.listdir(paths.iommu_groups))
    except FileNotFoundError:
        groups = 0
    try:
        units = tuple(sorted(os.listdir(paths.sysfs / "class" / "iommu")))
    except FileNotFoundError:
        units = ()
    interrupts = read_text(paths.proc / "interrupts")
    unsafe = read_text(paths.sysfs / "module" / "vfio_iommu_type1" / "parameters" / "allow_unsafe_interrupts")
    return IommuStatus(
        enabled=groups > 0,
        units=units,
        groups=groups,
        interrupt_remapping=None if interrupts is None else bool(_IR_CHIP_RE.search(interrupts)),
        allow_unsafe_interrupts=None if unsafe is None else unsafe in ("Y", "1"),
        vfio_pci_loaded=(paths.pci_drivers / "vfio-pci").is_dir(),
    )
