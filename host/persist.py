"""The files `--persist` writes so a binding or a VF count survives a reboot, and `--unpersist` edits.

Owns their names and lines; returns steps (never writes itself):

- ``/etc/udev/rules.d/60-redirgate-vfio.rules``: one rule per PCI function
  that sets ``driver_override=vfio-pci`` when the device appears.  It runs
  before udev's 80-drivers.rules loads the host driver's module, so that
  driver never binds it; by address, never by vendor:device (which would
  take identical cards and VFs too);
- ``/etc/modules-load.d/redirgate-vfio.conf``: loads vfio-pci at boot, which
  then claims every device whose override names it;
- ``/etc/udev/rules.d/60-redirgate-sriov.rules``: when a PF's driver binds,
  set its ``sriov_drivers_autoprobe`` and ``sriov_numvfs`` (the PF driver
  must be bound for ``sriov_numvfs`` to work, hence the ``bind`` event).

A driver built into the kernel or loaded from the initramfs before udev's
rules run can still win: add vfio-pci to the initramfs in that case (the
README says how).
"""

from __future__ import annotations

from pathlib import Path

from redirgate.host.errors import PersistError
from redirgate.host.paths import HostPaths
from redirgate.host.steps import RemoveFile, Step, WriteFile

__all__ = ["modules_file", "sriov_rules_file", "sriov_steps", "vfio_rules_file", "vfio_steps"]

_HEADER_VFIO = (
    "# Written by `redirgate host vfio bind --persist`; `redirgate host vfio unbind --unpersist` removes lines.\n"
    "# These PCI functions go to vfio-pci at boot: driver_override is set before 80-drivers.rules loads\n"
    "# the host driver, so it never binds them.\n"
)
_HEADER_SRIOV = (
    "# Written by `redirgate host sriov --persist`: the VF count of each PF, set when its driver binds\n"
    "# (sriov_numvfs needs the PF driver).  `redirgate host sriov ADDR --vfs 0 --persist` removes a line.\n"
)
_MODULES = (
    "# Written by `redirgate host vfio bind --persist`: vfio-pci claims the devices udev marked for it.\nvfio-pci\n"
)


def vfio_rules_file(paths: HostPaths) -> Path:
    return paths.etc / "udev" / "rules.d" / "60-redirgate-vfio.rules"


def sriov_rules_file(paths: HostPaths) -> Path:
    return paths.etc / "udev" / "rules.d" / "60-redirgate-sriov.rules"


def modules_file(paths: HostPaths) -> Path:
    return paths.etc / "modules-load.d" / "redirgate-vfio.conf"


def _key(address: str) -> str:
    return f'KERNEL=="{address}"'


def _read_rules(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PersistError(str(path), f"cannot read: {exc.strerror or exc}") from exc


def _edit(path: Path, header: str, set_lines: dict[str, str | None], why: str) -> list[Step]:
    """Steps that make ``path`` hold ``set_lines`` (address -> rule, None = remove), others kept."""
    rules = _read_rules(path)
    kept = [line for line in rules if not any(_key(address) in line for address in set_lines)]
    new = kept + [line for line in set_lines.values() if line is not None]
    if new == rules:
        return []
    if not new:
        return [RemoveFile(path, why)]
    return [WriteFile(path, header + "".join(line + "\n" for line in new), why)]


def vfio_steps(paths: HostPaths, addresses: list[str], *, persist: bool) -> list[Step]:
    """Add (persist) or remove (unpersist) the boot-time vfio-pci rule of each address."""
    lines: dict[str, str | None] = {
        address: (
            f'ACTION=="add", SUBSYSTEM=="pci", {_key(address)}, ATTR{{driver_override}}="vfio-pci"' if persist else None
        )
        for address in addresses
    }
    why = (
        "vfio-pci at boot for " + ", ".join(addresses) if persist else "no vfio-pci at boot for " + ", ".join(addresses)
    )
    steps = _edit(vfio_rules_file(paths), _HEADER_VFIO, lines, why)
    remaining = [line for line in _read_rules(vfio_rules_file(paths)) if not any(_key(a) in line for a in addresses)]
    modules = modules_file(paths)
    if persist and not modules.exists():
        steps.append(WriteFile(modules, _MODULES, "load vfio-pci at boot"))
    elif not persist and not remaining and modules.exists():
        steps.append(RemoveFile(modules, "no device left for vfio-pci at boot"))
    return steps


def sriov_steps(paths: HostPaths, address: str, numvfs: int, autoprobe: bool | None) -> list[Step]:
    """Make the PF at ``address`` get ``numvfs`` VFs at boot (0 removes its rule)."""
    line: str | None = None
    if numvfs > 0:
        probe = "" if autoprobe is None else f', ATTR{{sriov_drivers_autoprobe}}="{int(autoprobe)}"'
        line = f'ACTION=="bind", SUBSYSTEM=="pci", {_key(address)}{probe}, ATTR{{sriov_numvfs}}="{numvfs}"'
    why = f"{numvfs} VFs on {address} at boot" if numvfs else f"no VFs on {address} at boot"
    return _edit(sriov_rules_file(paths), _HEADER_SRIOV, {address: line}, why)
