"""The host package's exception hierarchy: each error names the device (or peer) and the reason.

The CLI prints ``str(error)`` as one line and exits non-zero; none of these
is a programming error, so none should ever reach the user as a traceback.
"""

from __future__ import annotations

__all__ = [
    "DeviceNotFound",
    "HostDependency",
    "HostError",
    "InUse",
    "InvalidArgument",
    "IommuMissing",
    "PersistError",
    "QmpError",
    "Refused",
    "SriovError",
    "SysfsError",
    "VirshError",
]


class HostError(Exception):
    """Base of the hypervisor-side errors; `subject` is a PCI address, a file, a socket..."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"{subject}: {reason}")
        self.subject = subject
        self.reason = reason


class InvalidArgument(HostError):
    """An address, ID or path the user gave cannot be understood."""


class DeviceNotFound(HostError):
    """No such PCI device (or driver) under the sysfs root."""


class IommuMissing(HostError):
    """The IOMMU is off (no groups): vfio-pci cannot work."""


class Refused(HostError):
    """The command would be unsafe, so nothing was changed."""


class HostDependency(Refused):
    """The IOMMU group holds a device the host itself depends on."""


class InUse(Refused):
    """A device of the group is in use (a mounted disk, an interface up, an open VFIO group)."""


class SysfsError(HostError):
    """A sysfs write failed or did not have the effect the kernel promises."""


class SriovError(HostError):
    """SR-IOV cannot be set up on this device as asked."""


class PersistError(HostError):
    """A persistence file could not be read or written."""


class QmpError(HostError):
    """QEMU's QMP said no, or the socket failed; `subject` is the socket path."""


class VirshError(HostError):
    """virsh failed; `subject` is the domain."""
