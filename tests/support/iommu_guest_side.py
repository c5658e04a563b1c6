"""Guest side of the hypervisor-kit tests: small helpers the IOMMU guest's Python snippets use.

Runs inside the guest (see tests/support/iommu_guest.py), on the guest's
real /sys and /proc: the redirgate CLI in-process with its output captured,
and plain sysfs reads that do not go through redirgate.host (so the tests
compare the tool with the kernel, not with itself).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

from redirgate.cli import main
from tests.support.vfio_check import open_vfio_device

__all__ = ["cli", "driver", "find", "group", "group_members", "open_vfio_device", "override"]

_PCI = "/sys/bus/pci/devices"


def cli(*args: str) -> dict[str, Any]:
    """`redirgate host ARGS` in this process: rc, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["host", *args])
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}


def find(ident: str) -> list[str]:
    """Addresses of the devices with vendor:device ``ident`` (hex, no 0x)."""
    vendor, device = ident.split(":")
    found = []
    for address in sorted(os.listdir(_PCI)):
        with open(f"{_PCI}/{address}/vendor") as v, open(f"{_PCI}/{address}/device") as d:
            if v.read().strip() == f"0x{vendor}" and d.read().strip() == f"0x{device}":
                found.append(address)
    return found


def driver(address: str) -> str | None:
    link = f"{_PCI}/{address}/driver"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def override(address: str) -> str:
    with open(f"{_PCI}/{address}/driver_override") as f:
        return f.read().strip()


def group(address: str) -> int:
    return int(os.path.basename(os.readlink(f"{_PCI}/{address}/iommu_group")))


def group_members(number: int) -> list[str]:
    return sorted(os.listdir(f"/sys/kernel/iommu_groups/{number}/devices"))
