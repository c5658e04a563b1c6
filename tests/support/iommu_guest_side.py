"""Guest side of the hypervisor-kit tests: small helpers the IOMMU guest's Python snippets use.

Runs inside the guest (see tests/support/iommu_guest.py), on the guest's
real /sys and /proc: the redirgate CLI in-process with its output captured,
plain sysfs reads that do not go through redirgate.host (so the tests
compare the tool with the kernel, not with itself), and a nested QEMU that
takes a passed-through device (its PCI tree read back over QMP).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import trio

from redirgate.cli import main
from redirgate.host.qmp import open_qmp
from tests.support.vfio_check import open_vfio_device
from tests.support.waiting import wait_until

__all__ = [
    "cli",
    "driver",
    "find",
    "group",
    "group_members",
    "open_vfio_device",
    "override",
    "pci_ids",
    "start_qemu",
]

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


def start_qemu(args: list[str], qmp: str) -> subprocess.Popen[bytes]:
    """A nested q35 QEMU (TCG, its firmware running, nothing to boot) with ``args`` and a QMP socket."""
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-m", "32"]
    proc = subprocess.Popen([*argv, *args, "-qmp", f"unix:{qmp},server=on,wait=off"], stderr=subprocess.PIPE)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        return os.path.exists(qmp)

    wait_until(listening, "the nested QEMU's QMP socket")
    return proc


def pci_ids(qmp: str, wanted: set[str], timeout_s: float = 300.0) -> set[str]:
    """vendor:device of every PCI function the VM shows (query-pci), once ``wanted`` are all there.

    Devices behind root ports appear once the firmware numbered the buses.
    """

    def walk(devices: list[dict[str, Any]]) -> Iterator[str]:
        for d in devices:
            yield f"{d['id']['vendor']:04x}:{d['id']['device']:04x}"
            yield from walk(d.get("pci_bridge", {}).get("devices", []))

    async def ask() -> set[str]:
        async with open_qmp(qmp) as client:
            with trio.move_on_after(timeout_s):
                while True:
                    seen = {i for bus in await client.execute("query-pci") for i in walk(bus["devices"])}
                    if wanted <= seen:
                        return seen
                    # a poll interval: the firmware numbers the buses in its own time and QMP has no event for it
                    await trio.sleep(0.5)
            return seen

    return trio.run(ask)
