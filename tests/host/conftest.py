"""Fixtures for the host package: a typical synthetic machine and the CLI run in-process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from redirgate.cli import main
from tests.support.fake_host import (
    ETHERNET,
    HOST_BRIDGE,
    ISA_BRIDGE,
    MOUSE_KEYS,
    NVME,
    OTHER,
    PCI_BRIDGE,
    SATA,
    XHCI,
    FakeHost,
)


@pytest.fixture
def machine(tmp_path: Path) -> FakeHost:
    """A workstation-like host.

    group 0  00:00.0 host bridge
    group 1  00:1f.0 LPC + 00:1f.2 AHCI (the root filesystem's disk: sda1 on /)
    group 2  00:1c.0 root port -> group 3: 01:00.0 e1000e (lone, down: free to give away)
    group 4  00:1c.1 root port -> group 5: 02:00.0 e1000e eth0 (up, the default route)
    group 6  00:14.0 xHCI with the console's USB keyboard
    group 7  00:1e.0 PCI bridge without ACS + 03:01.0 e1000 + 03:02.0 (no driver): one group
    group 8  00:1d.0 NVMe SR-IOV PF (8 VFs possible, autoprobe off)
    group 9  00:1b.0 AHCI with sdb1 mounted on /data (in use)
    group 10 00:1a.0 e1000e eth1, up but no default route (in use)
    group 11 00:1d.7 EHCI with a USB mouse (not a keyboard: free)
    """
    host = FakeHost(tmp_path)
    host.add_pci("0000:00:00.0", "8086:29c0", HOST_BRIDGE, group=0)
    host.add_pci("0000:00:1f.0", "8086:2918", ISA_BRIDGE, driver="lpc_ich", group=1)
    host.add_pci("0000:00:1f.2", "8086:2922", SATA, driver="ahci", group=1)
    host.add_disk("0000:00:1f.2", "sda", "8:0", [("sda1", "8:1")])
    host.add_pci("0000:00:1c.0", "1b36:000c", PCI_BRIDGE, driver="pcieport", group=2)
    host.add_pci("0000:01:00.0", "8086:10d3", ETHERNET, driver="e1000e", group=3, parent="0000:00:1c.0")
    host.add_net("0000:01:00.0", "enp1s0")
    host.add_pci("0000:00:1c.1", "1b36:000c", PCI_BRIDGE, driver="pcieport", group=4)
    host.add_pci("0000:02:00.0", "8086:10d3", ETHERNET, driver="e1000e", group=5, parent="0000:00:1c.1")
    host.add_net("0000:02:00.0", "eth0", up=True, default_route=True)
    host.add_pci("0000:00:14.0", "8086:a36d", XHCI, driver="xhci_hcd", group=6)
    host.add_keyboard("0000:00:14.0")
    host.add_pci("0000:00:1e.0", "1b36:000e", PCI_BRIDGE, group=7)
    host.add_pci("0000:03:01.0", "8086:100e", ETHERNET, driver="e1000", group=7, parent="0000:00:1e.0")
    host.add_pci("0000:03:02.0", "1234:11e8", OTHER, group=7, parent="0000:00:1e.0")
    host.add_pci("0000:00:1d.0", "1b36:0010", NVME, driver="nvme", group=8, totalvfs=8, autoprobe=False)
    host.add_pci("0000:00:1b.0", "8086:2922", SATA, driver="ahci", group=9)
    host.add_disk("0000:00:1b.0", "sdb", "8:16", [("sdb1", "8:17")])
    host.add_pci("0000:00:1a.0", "8086:10d3", ETHERNET, driver="e1000e", group=10)
    host.add_net("0000:00:1a.0", "eth1", up=True)
    host.add_pci("0000:00:1d.7", "8086:293a", 0x0C0320, driver="ehci-pci", group=11)
    host.add_keyboard("0000:00:1d.7", "USB Mouse", keys=MOUSE_KEYS)
    host.set_mounts(
        ("8:1", "/", "ext4", "/dev/sda1"), ("8:17", "/data", "ext4", "/dev/sdb1"), ("0:22", "/proc", "proc", "proc")
    )
    host.driver("vfio-pci")
    return host


@dataclasses.dataclass
class Ran:
    rc: int
    out: str
    err: str


@pytest.fixture
def host_cli(capsys: pytest.CaptureFixture[str]):
    """Run `redirgate host ARGS... --sysfs-root ...` in-process against a FakeHost."""

    def run(host: FakeHost, *args: str) -> Ran:
        p = host.paths
        roots = ["--sysfs-root", str(p.sysfs), "--proc-root", str(p.proc), "--dev-root", str(p.dev)]
        roots += ["--etc-root", str(p.etc), "--state-dir", str(p.state)]
        capsys.readouterr()
        rc = main(["host", *args, *roots])
        captured = capsys.readouterr()
        return Ran(rc, captured.out, captured.err)

    return run
