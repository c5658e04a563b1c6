"""The hypervisor-kit test guest: q35 with an emulated Intel IOMMU, running this checkout over virtio-9p.

Host side.  The layout is the one of shared/docs/hypervisor-kit-facts.md:
interrupt remapping on, a lone e1000e behind its own root port, a qemu-xhci
(id ``xhci``, for live attach), an NVMe PF with SR-IOV (8 VFs), a
pcie-pci-bridge holding an e1000 and an ``edu`` device (one group: no ACS
behind a PCI bridge), an empty root port, plus the host-root guest's two
virtio-9p devices (the root filesystem and the share) and an AHCI disk
mounted at /run/disk (ICH9's LPC + AHCI + SMBus share a group).  Bus numbers
depend on QEMU's enumeration order: tests find devices by vendor:device.

:class:`IommuGuest` runs Python in the guest with
:mod:`tests.support.iommu_guest_side` imported and returns the dict the
snippet fills (one interpreter per call: Python under TCG takes ~20 s to
import the CLI, so a test does all its guest work in one call).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from redirgate.cli.guestvm.hostroot import HostRootGuest, build_hostroot_guest, start_hostroot_guest
from tests.support.guest import make_fat_image

__all__ = ["REPO", "IommuGuest", "start_iommu_guest"]

REPO = Path(__file__).resolve().parents[2]
#: One call runs a Python that imports the CLI (~20 s under TCG on a busy machine) and does several commands.
_CALL_TIMEOUT_S = 600.0

_SETUP = """\
modprobe -a e1000e e1000 nvme xhci_pci ahci sd_mod vfat nls_cp437 nls_ascii usb_storage
i=0; while [ ! -b /dev/sda ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /run/disk
mount -t vfat -o ro /dev/sda /run/disk
"""


def _layout(workdir: Path, qmp: Path) -> list[str]:
    nvme = workdir / "nvme0.img"
    with open(nvme, "wb") as f:
        f.truncate(16 << 20)
    disk = make_fat_image(workdir / "disk.img", {"on-the-guest-disk.txt": b"mounted\n"}, size_mib=8)
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    return [
        "-machine", "q35,kernel-irqchip=split",
        "-device", "intel-iommu,intremap=on",
        "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
        "-netdev", "user,id=u1", "-device", "e1000e,bus=rp1,netdev=u1",
        "-device", "pcie-root-port,id=rp2,chassis=2,slot=2", "-device", "qemu-xhci,id=xhci,bus=rp2",
        "-device", "pcie-root-port,id=rp3,chassis=3,slot=3",
        "-drive", f"file={nvme},if=none,id=nvd0,format=raw",
        "-device", "nvme-subsys,id=subsys0",
        "-device", "nvme,id=nvme0,bus=rp3,serial=redirgate,subsys=subsys0,sriov_max_vfs=8,"
        "sriov_vq_flexible=16,sriov_vi_flexible=8,max_ioqpairs=20,msix_qsize=12",
        "-device", "nvme-ns,drive=nvd0,bus=nvme0,nsid=1",
        "-device", "pcie-root-port,id=rp4,chassis=4,slot=4", "-device", "pcie-pci-bridge,id=pb1,bus=rp4",
        "-netdev", "user,id=u2", "-device", "e1000,bus=pb1,addr=1,netdev=u2", "-device", "edu,bus=pb1,addr=2",
        "-device", "pcie-root-port,id=rp5,chassis=5,slot=5",
        "-drive", f"file={disk},if=none,id=disk0,format=raw", "-device", "ide-hd,drive=disk0,bus=ide.0",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]
    # fmt: on


class IommuGuest:
    def __init__(self, guest: HostRootGuest, qmp: Path) -> None:
        self.guest = guest
        self.qmp = qmp
        self._calls = 0

    def python(self, code: str, timeout_s: float = _CALL_TIMEOUT_S) -> dict[str, Any]:
        """Run ``code`` in the guest (helpers of iommu_guest_side in scope); returns its ``result`` dict."""
        self._calls += 1
        script = self.guest.share / f"call{self._calls}.py"
        script.write_text(
            f"import json, sys\nsys.path.insert(0, {str(REPO)!r})\n"
            "from tests.support.iommu_guest_side import *  # noqa: F403\n"
            "result = {}\n"
            f"{code}\n"
            "print('@@JSON ' + json.dumps(result))\n"
        )
        done = self.guest.run(f"cd {REPO} && {sys.executable} {script}", timeout_s, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("@@JSON ")]
        assert done.rc == 0 and lines, f"guest python failed ({done.rc}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("@@JSON "))
        return result

    def shell(self, script: str, timeout_s: float = _CALL_TIMEOUT_S) -> str:
        return self.guest.run(script, timeout_s).stdout


def start_iommu_guest(workdir: Path) -> IommuGuest:
    """Boot the guest (the caller stops ``.guest``); returns once its agent and setup are done."""
    qmp = workdir / "hv.qmp"
    guest = start_hostroot_guest(
        _layout(workdir, qmp),
        network=False,
        setup=_SETUP,
        mem_mib=1024,
        guest=build_hostroot_guest(),
        # no_timer_check: on a loaded host TCG can miss the IO-APIC timer check, which panics
        # with interrupt remapping on ("timer doesn't work through Interrupt-remapped IO-APIC")
        append_extra="intel_iommu=on no_timer_check",
    )
    return IommuGuest(guest, qmp)
