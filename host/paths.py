"""Where the host's state is read and written: the roots a test can move.

Every path the package touches is built from a :class:`HostPaths`, so a test
points it at a synthetic tree (``--sysfs-root``, ``--proc-root``, ...) and
the real run uses the defaults.  Only three kinds of place are ever written:
sysfs, the files `--persist` names (under ``etc``), and ``state``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from redirgate.host.errors import InvalidArgument

__all__ = ["DEFAULT_STATE_DIR", "HostPaths", "parse_pci_address"]

#: What `vfio unbind` must restore lives here (tmpfs: a reboot forgets bindings too).
DEFAULT_STATE_DIR = Path("/run/redirgate/host")

_ADDRESS_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")


def parse_pci_address(text: str) -> str:
    """``01:00.0`` or ``0000:01:00.0`` -> ``0000:01:00.0`` (lower case), else InvalidArgument."""
    match = _ADDRESS_RE.match(text.strip())
    if match is None:
        raise InvalidArgument(text, "not a PCI address (DOMAIN:BUS:SLOT.FUNCTION, e.g. 0000:01:00.0)")
    domain, bus, slot, function = match.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{slot.lower()}.{function}"


@dataclasses.dataclass(frozen=True)
class HostPaths:
    """The roots: real ones by default, a synthetic tree in tests."""

    sysfs: Path = Path("/sys")
    proc: Path = Path("/proc")
    dev: Path = Path("/dev")
    etc: Path = Path("/etc")
    state: Path = DEFAULT_STATE_DIR

    @property
    def pci_devices(self) -> Path:
        return self.sysfs / "bus" / "pci" / "devices"

    @property
    def pci_drivers(self) -> Path:
        return self.sysfs / "bus" / "pci" / "drivers"

    @property
    def iommu_groups(self) -> Path:
        return self.sysfs / "kernel" / "iommu_groups"

    def device(self, address: str) -> Path:
        return self.pci_devices / address

    def is_real_system(self) -> bool:
        """True on the live system (then missing kernel modules may be loaded with modprobe)."""
        return self.sysfs == Path("/sys")
