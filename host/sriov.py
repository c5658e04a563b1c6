"""Plans `host sriov ADDR --vfs N`: SR-IOV virtual functions on a PF through sysfs.

Owns the kernel's rules for ``sriov_numvfs`` (Documentation/PCI/pci-iov-howto):
the count must not exceed ``sriov_totalvfs``; a non-zero count changes only
through 0 (EBUSY otherwise); it needs the PF's driver bound (ENOENT
otherwise, the driver does the work); ``sriov_drivers_autoprobe`` decides
whether host drivers take the new VFs (0 leaves them driverless, ready for
`vfio bind`).  Refuses to remove VFs that are on vfio-pci or in use.

The older way, a driver's ``max_vfs`` module parameter (igb, ixgbe; deprecated
there), is explained in `--help` and the README; it is a boot-time module
option, not something to write at run time.
"""

from __future__ import annotations

import dataclasses

from redirgate.host.deps import find_uses
from redirgate.host.errors import Refused, SriovError
from redirgate.host.paths import HostPaths
from redirgate.host.pci import PciDevice, read_device
from redirgate.host.persist import sriov_steps
from redirgate.host.steps import Step, WriteSysfs

__all__ = ["SriovPlan", "plan_sriov", "read_vfs"]


@dataclasses.dataclass(frozen=True)
class SriovPlan:
    pf: PciDevice
    numvfs: int
    steps: tuple[Step, ...]

    def summary(self) -> list[str]:
        pf = self.pf
        autoprobe = {None: "unknown", True: "on", False: "off"}[pf.sriov_drivers_autoprobe]
        return [
            f"{pf.summary()}: SR-IOV PF, {pf.sriov_numvfs or 0} of {pf.sriov_totalvfs} VFs enabled,"
            f" drivers autoprobe {autoprobe}",
            f"  wanted: {self.numvfs} VFs" + ("" if self.steps else " (nothing to change)"),
        ]


def read_vfs(paths: HostPaths, pf: PciDevice) -> list[PciDevice]:
    """The PF's VFs as sysfs shows them now."""
    return [read_device(paths, address) for address in read_device(paths, pf.address).virtfns]


def plan_sriov(
    paths: HostPaths, address: str, numvfs: int, *, autoprobe: bool | None = None, persist: bool = False
) -> SriovPlan:
    pf = read_device(paths, address)
    if pf.physfn is not None:
        raise SriovError(address, f"is a VF (of {pf.physfn}); give the PF's address")
    if pf.sriov_totalvfs is None:
        raise SriovError(address, "is not SR-IOV capable (no sriov_totalvfs)")
    if numvfs > pf.sriov_totalvfs:
        raise SriovError(address, f"supports at most {pf.sriov_totalvfs} VFs (sriov_totalvfs), not {numvfs}")
    current = pf.sriov_numvfs or 0
    if pf.driver is None and numvfs != current:
        raise SriovError(
            address,
            "has no driver: sriov_numvfs needs the PF's own driver bound (the kernel answers ENOENT); "
            "`redirgate host vfio unbind` it or load its driver first",
        )
    steps: list[Step] = []
    base = paths.device(address)
    if autoprobe is not None and autoprobe != pf.sriov_drivers_autoprobe:
        steps.append(WriteSysfs(base / "sriov_drivers_autoprobe", "1" if autoprobe else "0"))
    if numvfs != current:
        if current:
            _refuse_busy_vfs(paths, pf)
            steps.append(WriteSysfs(base / "sriov_numvfs", "0"))
        if numvfs:
            steps.append(WriteSysfs(base / "sriov_numvfs", str(numvfs)))
    if persist:
        steps += sriov_steps(paths, address, numvfs, autoprobe)
    return SriovPlan(pf, numvfs, tuple(steps))


def _refuse_busy_vfs(paths: HostPaths, pf: PciDevice) -> None:
    uses = find_uses(paths)
    busy: list[str] = []
    for vf in read_vfs(paths, pf):
        if vf.driver == "vfio-pci":
            busy.append(f"{vf.address} is on vfio-pci (given to a VM?)")
        busy += [f"{vf.address} {use.reason}" for use in uses.get(vf.address, [])]
    if busy:
        raise Refused(
            pf.address,
            "refusing to remove its VFs: " + "; ".join(busy) + " (`redirgate host vfio unbind` / release them first)",
        )
