"""What `host iommu` shows: the IOMMU's state, every group with its devices, and the host's own devices.

Builds one plain dict (the ``--json`` output; the text view is drawn from
the same dict by the CLI), so what a script reads and what a person reads
cannot disagree.
"""

from __future__ import annotations

from typing import Any

from redirgate.host.deps import find_uses
from redirgate.host.paths import HostPaths
from redirgate.host.pci import PciDevice, iommu_status, list_devices

__all__ = ["inventory"]


def _device(device: PciDevice, uses: dict[str, list[Any]]) -> dict[str, Any]:
    sriov: dict[str, Any] | None = None
    if device.is_pf:
        sriov = {
            "totalvfs": device.sriov_totalvfs,
            "numvfs": device.sriov_numvfs,
            "drivers_autoprobe": device.sriov_drivers_autoprobe,
            "vfs": list(device.virtfns),
        }
    return {
        "address": device.address,
        "id": device.ident,
        "class": f"{device.class_code:06x}",
        "description": device.description,
        "driver": device.driver,
        "driver_override": device.driver_override,
        "bridge": device.is_bridge,
        "sriov_pf": sriov,
        "sriov_vf_of": device.physfn,
        "host_depends_on": [u.reason for u in uses.get(device.address, []) if u.kind == "host"],
        "in_use": [u.reason for u in uses.get(device.address, []) if u.kind == "in-use"],
    }


def inventory(paths: HostPaths) -> dict[str, Any]:
    """``{"iommu": {...}, "groups": [{"group": N, "devices": [...]}], "ungrouped": [...]}``."""
    status = iommu_status(paths)
    uses = find_uses(paths)
    devices = list_devices(paths)
    groups: dict[int, list[dict[str, Any]]] = {}
    ungrouped = []
    for device in devices:
        entry = _device(device, uses)
        if device.iommu_group is None:
            ungrouped.append(entry)
        else:
            groups.setdefault(device.iommu_group, []).append(entry)
    return {
        "iommu": {
            "enabled": status.enabled,
            "units": list(status.units),
            "groups": status.groups,
            "interrupt_remapping": status.interrupt_remapping,
            "allow_unsafe_interrupts": status.allow_unsafe_interrupts,
            "vfio_pci_loaded": status.vfio_pci_loaded,
        },
        "groups": [
            {
                "group": number,
                "devices": members,
                "host_depends_on": any(m["host_depends_on"] for m in members),
                "in_use": any(m["in_use"] for m in members),
            }
            for number, members in sorted(groups.items())
        ],
        "ungrouped": ungrouped,
    }
