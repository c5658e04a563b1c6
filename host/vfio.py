"""Plans `vfio bind` and `vfio unbind` for a whole IOMMU group; checks every refusal first.

Owns the rules:

- a group goes to vfio-pci whole: every endpoint function in it (a VM can
  only use a group whose endpoints are all on vfio-pci or on no driver),
  while PCI bridges keep their driver (vfio needs nothing from them);
- binding is ``driver_override`` + unbind + ``drivers_probe`` for that one
  address, never ``new_id`` (which claims every device with the same
  vendor:device: identical NICs, a PF's VFs);
- refused, with nothing changed, when any function of the group is one the
  host depends on or is in use (:mod:`redirgate.host.deps`), when a PF in it
  has VFs (unbinding its driver would take them away), when the IOMMU is off;
  unbind is refused while a process (a VM) holds the group open;
- each device's previous driver and override are saved in the state folder
  before anything changes and given back on unbind.

The result is a :class:`VfioPlan`: the steps (run by
:func:`redirgate.host.steps.run_steps`) plus what it means, so `--dry-run`
and a real run print the same thing.
"""

from __future__ import annotations

import dataclasses

from redirgate.host.deps import Use, find_uses, vfio_group_users
from redirgate.host.errors import HostDependency, InUse, Refused
from redirgate.host.paths import HostPaths
from redirgate.host.pci import PciDevice, group_devices, iommu_status, read_device
from redirgate.host.persist import vfio_steps
from redirgate.host.state import Previous, load_previous, state_file
from redirgate.host.steps import ExpectDriver, LoadModule, RemoveFile, Step, WriteFile, WriteSysfs

__all__ = ["VFIO_DRIVER", "VfioPlan", "plan_bind", "plan_unbind"]

VFIO_DRIVER = "vfio-pci"


@dataclasses.dataclass(frozen=True)
class VfioPlan:
    """What `vfio bind`/`unbind` will do to one IOMMU group."""

    action: str  # "bind" or "unbind"
    group: int
    devices: tuple[PciDevice, ...]
    #: address -> why it is left alone ("PCI bridge, stays on pcieport", "already on vfio-pci")
    untouched: dict[str, str]
    steps: tuple[Step, ...]

    @property
    def vfio_node(self) -> str:
        return f"/dev/vfio/{self.group}"

    def summary(self) -> list[str]:
        """Lines saying what the plan does, before its steps."""
        lines = [f"IOMMU group {self.group}: {len(self.devices)} device(s)"]
        for device in self.devices:
            note = self.untouched.get(device.address)
            if note is not None:
                what = f"left alone: {note}"
            elif self.action == "bind":
                what = f"{device.driver or 'no driver'} -> {VFIO_DRIVER}"
            else:
                what = f"{VFIO_DRIVER} -> {self._back_to(device)}"
            lines.append(f"  {device.address} {device.ident} {device.description}: {what}")
        return lines

    def _back_to(self, device: PciDevice) -> str:
        for step in self.steps:
            if isinstance(step, ExpectDriver) and step.address == device.address:
                return {None: "no driver (as before)", "*": "whichever driver the kernel picks"}.get(
                    step.driver, step.driver or ""
                )
        return "?"


def _group_of(paths: HostPaths, address: str) -> tuple[PciDevice, int, list[PciDevice]]:
    device = read_device(paths, address)
    iommu_status(paths).require()
    if device.iommu_group is None:
        raise Refused(address, "has no IOMMU group (is it behind an IOMMU?)")
    members = [read_device(paths, a) for a in group_devices(paths, device.iommu_group)]
    return device, device.iommu_group, members


def _refuse_dependencies(address: str, group: int, members: list[PciDevice], uses: dict[str, list[Use]]) -> None:
    found = [(m, u) for m in members for u in uses.get(m.address, [])]
    host = [f"{m.address} is {u.reason}" for m, u in found if u.kind == "host"]
    if host:
        raise HostDependency(
            address, f"refusing: IOMMU group {group} holds what the host depends on: " + "; ".join(host)
        )
    busy = [f"{m.address} {u.reason}" for m, u in found if u.kind == "in-use"]
    if busy:
        raise InUse(address, f"refusing: IOMMU group {group} is in use: " + "; ".join(busy) + " (release it first)")


def plan_bind(paths: HostPaths, address: str, *, persist: bool = False) -> VfioPlan:
    """The plan that puts ``address``'s whole IOMMU group on vfio-pci, or a Refused error."""
    _device, group, members = _group_of(paths, address)
    _refuse_dependencies(address, group, members, find_uses(paths))
    with_vfs = [m for m in members if m.sriov_numvfs]
    if with_vfs:
        pf = with_vfs[0]
        raise Refused(
            address,
            f"refusing: {pf.address} is an SR-IOV PF with {pf.sriov_numvfs} VFs, which unbinding its driver "
            f"would remove; run `redirgate host sriov {pf.address} --vfs 0` first",
        )
    untouched: dict[str, str] = {}
    steps: list[Step] = []
    bound: list[str] = []
    for member in members:
        if member.is_bridge:
            untouched[member.address] = f"PCI bridge, stays on {member.driver or 'no driver'}"
            continue
        bound.append(member.address)
        if member.driver == VFIO_DRIVER and member.driver_override == VFIO_DRIVER:
            untouched[member.address] = f"already on {VFIO_DRIVER}"
            continue
        base = paths.device(member.address)
        if load_previous(paths, member.address) is None:
            previous = Previous(member.address, member.driver, member.driver_override)
            steps.append(WriteFile(state_file(paths, member.address), previous.to_json(), "what unbind restores"))
        steps.append(WriteSysfs(base / "driver_override", VFIO_DRIVER))
        if member.driver is not None and member.driver != VFIO_DRIVER:
            steps.append(WriteSysfs(paths.pci_drivers / member.driver / "unbind", member.address))
        if member.driver != VFIO_DRIVER:
            steps.append(WriteSysfs(paths.sysfs / "bus" / "pci" / "drivers_probe", member.address))
        steps.append(ExpectDriver(member.address, VFIO_DRIVER))
    if any(isinstance(s, WriteSysfs) for s in steps) and not iommu_status(paths).vfio_pci_loaded:
        steps.insert(0, LoadModule("vfio-pci", VFIO_DRIVER))
    if persist:
        steps += vfio_steps(paths, bound, persist=True)
    return VfioPlan("bind", group, tuple(members), untouched, tuple(steps))


def plan_unbind(paths: HostPaths, address: str, *, unpersist: bool = False) -> VfioPlan:
    """The plan that gives ``address``'s IOMMU group back to its previous drivers."""
    _device, group, members = _group_of(paths, address)
    users = vfio_group_users(paths, group)
    if users:
        raise InUse(address, f"refusing: /dev/vfio/{group} is open by {', '.join(users)}; stop or detach the VM first")
    untouched: dict[str, str] = {}
    steps: list[Step] = []
    touched: list[str] = []
    for member in members:
        if member.is_bridge:
            untouched[member.address] = f"PCI bridge, stays on {member.driver or 'no driver'}"
            continue
        touched.append(member.address)
        if member.driver != VFIO_DRIVER and member.driver_override != VFIO_DRIVER:
            untouched[member.address] = f"not on {VFIO_DRIVER} (on {member.driver or 'no driver'})"
            continue
        previous = load_previous(paths, member.address)
        base = paths.device(member.address)
        override = previous.driver_override if previous is not None else None
        steps.append(WriteSysfs(base / "driver_override", override or "\n"))
        if member.driver == VFIO_DRIVER:
            steps.append(WriteSysfs(paths.pci_drivers / VFIO_DRIVER / "unbind", member.address))
        if previous is None:
            steps.append(WriteSysfs(paths.sysfs / "bus" / "pci" / "drivers_probe", member.address))
            steps.append(ExpectDriver(member.address, "*"))
        elif previous.driver is None:
            steps.append(ExpectDriver(member.address, None))
        else:
            if (paths.pci_drivers / previous.driver).is_dir():
                steps.append(WriteSysfs(paths.pci_drivers / previous.driver / "bind", member.address))
            else:  # its module was unloaded meanwhile: the probe loads nothing, but says what happened
                steps.append(WriteSysfs(paths.sysfs / "bus" / "pci" / "drivers_probe", member.address))
            steps.append(ExpectDriver(member.address, previous.driver))
        if previous is not None:
            steps.append(RemoveFile(state_file(paths, member.address), "restored"))
    if unpersist:
        steps += vfio_steps(paths, touched, persist=False)
    return VfioPlan("unbind", group, tuple(members), untouched, tuple(steps))
