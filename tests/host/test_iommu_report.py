"""`host iommu`: groups, devices, SR-IOV, the host's own devices and the IOMMU's state, from sysfs and /proc."""

from __future__ import annotations

import json
from pathlib import Path

from redirgate.host.deps import find_uses
from tests.support.fake_host import ETHERNET, NVME, SATA, FakeHost


def _groups(out: str) -> dict[int, list[str]]:
    return {g["group"]: [d["address"] for d in g["devices"]] for g in json.loads(out)["groups"]}


def test_json_lists_every_group_with_its_devices(machine: FakeHost, host_cli) -> None:
    ran = host_cli(machine, "iommu", "--json")
    assert ran.rc == 0, ran.err
    data = json.loads(ran.out)
    assert data["iommu"] == {
        "enabled": True,
        "units": ["dmar0"],
        "groups": 12,
        "interrupt_remapping": True,
        "allow_unsafe_interrupts": None,
        "vfio_pci_loaded": True,
    }
    groups = _groups(ran.out)
    assert groups[1] == ["0000:00:1f.0", "0000:00:1f.2"]
    assert groups[3] == ["0000:01:00.0"]
    assert groups[7] == ["0000:00:1e.0", "0000:03:01.0", "0000:03:02.0"]  # no ACS: the bridge and both devices
    devices = {d["address"]: d for g in data["groups"] for d in g["devices"]}
    nic = devices["0000:01:00.0"]
    assert (nic["id"], nic["class"], nic["driver"], nic["description"]) == (
        "8086:10d3",
        "020000",
        "e1000e",
        "Ethernet controller",
    )
    assert devices["0000:00:1e.0"]["bridge"] is True and devices["0000:03:02.0"]["driver"] is None
    assert devices["0000:00:1d.0"]["sriov_pf"] == {"totalvfs": 8, "numvfs": 0, "drivers_autoprobe": False, "vfs": []}
    assert data["ungrouped"] == []


def test_the_host_s_own_devices_are_named_with_the_reason(machine: FakeHost, host_cli) -> None:
    data = json.loads(host_cli(machine, "iommu", "--json").out)
    devices = {d["address"]: d for g in data["groups"] for d in g["devices"]}
    assert devices["0000:00:1f.2"]["host_depends_on"] == ["the root filesystem (/dev/sda1 on /, ext4)"]
    assert devices["0000:02:00.0"]["host_depends_on"] == ["the default route (via eth0)"]
    assert devices["0000:00:14.0"]["host_depends_on"] == ["the console keyboard (input0 USB Keyboard)"]
    assert devices["0000:00:1b.0"]["in_use"] == ["mounted: /dev/sdb1 on /data"]
    assert devices["0000:00:1a.0"]["in_use"] == ["interface eth1 is up"]
    assert devices["0000:00:1d.7"]["host_depends_on"] == []  # a mouse is not the console's keyboard
    assert devices["0000:01:00.0"]["host_depends_on"] == [] and devices["0000:01:00.0"]["in_use"] == []
    flags = {g["group"]: (g["host_depends_on"], g["in_use"]) for g in data["groups"]}
    assert flags[1] == (True, True) and flags[3] == (False, False) and flags[9] == (False, True)


def test_text_view_marks_groups(machine: FakeHost, host_cli) -> None:
    out = host_cli(machine, "iommu").out
    assert out.splitlines()[0] == "IOMMU: on (dmar0), 12 groups; interrupt remapping: on; vfio-pci loaded"
    assert "group 1 [the host depends on it]" in out
    assert "group 9 [in use]" in out
    assert "  0000:01:00.0 8086:10d3 Ethernet controller        e1000e\n" in out
    assert "SR-IOV PF 0/8 VFs" in out


def test_a_missing_iommu_shows_no_groups_and_refuses_vfio(tmp_path: Path, host_cli) -> None:
    host = FakeHost(tmp_path, iommu=False, interrupt_remapping=False)
    host.add_pci("0000:01:00.0", "8086:10d3", ETHERNET, driver="e1000e", group=3)
    data = json.loads(host_cli(host, "iommu", "--json").out)
    assert data["iommu"]["enabled"] is False and data["groups"] == []
    assert [d["address"] for d in data["ungrouped"]] == ["0000:01:00.0"]
    text = host_cli(host, "iommu").out
    assert "intel_iommu=on" in text
    ran = host_cli(host, "vfio", "bind", "01:00.0")
    assert ran.rc == 1 and ran.out == ""
    assert ran.err.startswith("redirgate: IOMMU: no IOMMU groups") and len(ran.err.splitlines()) == 1


def test_interrupt_remapping_off_is_reported(tmp_path: Path, host_cli) -> None:
    host = FakeHost(tmp_path, interrupt_remapping=False)
    host.add_pci("0000:01:00.0", "8086:10d3", ETHERNET, driver="e1000e", group=0)
    assert json.loads(host_cli(host, "iommu", "--json").out)["iommu"]["interrupt_remapping"] is False
    assert "Without interrupt remapping" in host_cli(host, "iommu").out


def test_a_9p_root_and_a_btrfs_root_are_found(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add_pci("0000:00:04.0", "1af4:1009", 0x000200, driver="virtio-pci", group=4)
    host.add_9p("0000:00:04.0", "hostroot")
    host.add_pci("0000:00:05.0", "1b36:0010", NVME, driver="nvme", group=5)
    host.add_disk("0000:00:05.0", "nvme0n1", "259:0", [("nvme0n1p2", "259:2")])
    (host.root / "dev" / "nvme0n1p2").write_text("")
    host.set_mounts(("0:30", "/", "9p", "hostroot"), ("0:31", "/srv", "btrfs", "/dev/nvme0n1p2"))
    uses = find_uses(host.paths)
    assert [u.reason for u in uses["0000:00:04.0"]] == [
        "the root filesystem (hostroot on /, 9p)",
        "mounted: hostroot on /",
    ]
    assert [u.reason for u in uses["0000:00:05.0"]] == ["mounted: /dev/nvme0n1p2 on /srv"]


def test_a_disk_under_device_mapper_counts_for_its_controller(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add_pci("0000:00:1f.2", "8086:2922", SATA, driver="ahci", group=1)
    host.add_disk("0000:00:1f.2", "sda", "8:0", [("sda2", "8:2")])
    dm = host.sys / "devices" / "virtual" / "block" / "dm-0"
    (dm / "slaves").mkdir(parents=True)
    (dm / "slaves" / "sda2").symlink_to(host.sys / "class" / "block" / "sda2")
    (host.sys / "dev" / "block" / "254:0").symlink_to(dm)
    host.set_mounts(("254:0", "/", "ext4", "/dev/mapper/root"))
    assert [u.kind for u in find_uses(host.paths)["0000:00:1f.2"]] == ["host", "in-use"]


def test_a_default_route_over_a_bridge_or_a_bond_leads_to_its_nics(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    for index, name in enumerate(("enp1s0", "enp2s0", "enp3s0")):
        host.add_pci(f"0000:0{index + 1}:00.0", "8086:10d3", ETHERNET, driver="e1000e", group=index + 1)
        host.add_net(f"0000:0{index + 1}:00.0", name)
    host.add_virtual_net("bond0", lower=["enp2s0", "enp3s0"])
    host.add_virtual_net("bond0.10", lower=["bond0"])
    host.add_virtual_net("br0", ports=["enp1s0", "bond0.10"], default_route=True)
    uses = find_uses(host.paths)
    for address in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        assert [u.reason for u in uses[address] if u.kind == "host"] == ["the default route (via br0)"]


def test_a_swap_partition_is_in_use(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add_pci("0000:00:1f.2", "8086:2922", SATA, driver="ahci", group=1)
    host.add_disk("0000:00:1f.2", "sda", "8:0", [("sda3", "8:3")])
    host.add_swap("/dev/sda3")
    assert [(u.kind, u.reason) for u in find_uses(host.paths)["0000:00:1f.2"]] == [("in-use", "swap on /dev/sda3")]
