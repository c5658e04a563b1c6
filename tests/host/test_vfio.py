"""`host vfio bind/unbind`: whole groups through driver_override, refusals, previous drivers restored, persist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redirgate.host.errors import HostDependency, InUse, Refused
from redirgate.host.steps import ExpectDriver, WriteFile, WriteSysfs
from redirgate.host.vfio import plan_bind, plan_unbind
from tests.support.fake_host import FakeHost, FakeKernel


def _tree(host: FakeHost) -> dict[str, str]:
    """Every file's content and every link's target: to prove a refusal changed nothing."""
    found = {}
    for path in sorted(host.root.rglob("*")):
        rel = str(path.relative_to(host.root))
        if path.is_symlink():
            found[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            found[rel] = path.read_text()
    return found


def _no_new_id(steps) -> None:
    assert not [s for s in steps if isinstance(s, WriteSysfs) and s.path.name in ("new_id", "remove_id")]


def test_bind_a_lone_nic_plans_driver_override_unbind_probe(machine: FakeHost) -> None:
    plan = plan_bind(machine.paths, "0000:01:00.0")
    sysfs = machine.paths.sysfs
    dev = sysfs / "bus/pci/devices/0000:01:00.0"
    assert plan.group == 3 and plan.vfio_node == "/dev/vfio/3"
    assert plan.steps[1:] == (
        WriteSysfs(dev / "driver_override", "vfio-pci"),
        WriteSysfs(sysfs / "bus/pci/drivers/e1000e/unbind", "0000:01:00.0"),
        WriteSysfs(sysfs / "bus/pci/drivers_probe", "0000:01:00.0"),
        ExpectDriver("0000:01:00.0", "vfio-pci"),
    )
    saved = plan.steps[0]
    assert isinstance(saved, WriteFile) and saved.path == machine.paths.state / "vfio" / "0000:01:00.0.json"
    assert json.loads(saved.content) == {"address": "0000:01:00.0", "driver": "e1000e", "driver_override": None}
    _no_new_id(plan.steps)


def test_bind_and_unbind_take_the_whole_shared_group_and_give_it_back(machine: FakeHost) -> None:
    kernel = FakeKernel(machine)
    plan = plan_bind(machine.paths, "0000:03:02.0")  # the driverless one: its partner must come too
    assert plan.group == 7
    assert plan.untouched == {"0000:00:1e.0": "PCI bridge, stays on no driver"}
    kernel.run(plan.steps)
    assert machine.driver_of("0000:03:01.0") == "vfio-pci" and machine.driver_of("0000:03:02.0") == "vfio-pci"
    assert machine.override_of("0000:03:01.0") == "vfio-pci"
    assert sorted(p.name for p in (machine.paths.state / "vfio").iterdir()) == [
        "0000:03:01.0.json",
        "0000:03:02.0.json",
    ]
    assert not [w for w in kernel.writes if "new_id" in w[0]]

    again = plan_bind(machine.paths, "0000:03:01.0")
    assert again.steps == () and again.untouched["0000:03:01.0"] == "already on vfio-pci"

    back = plan_unbind(machine.paths, "0000:03:01.0")
    assert "  0000:03:01.0 8086:100e Ethernet controller: vfio-pci -> e1000" in back.summary()
    assert "  0000:03:02.0 1234:11e8 class 00ff00: vfio-pci -> no driver (as before)" in back.summary()
    kernel.run(back.steps)
    assert machine.driver_of("0000:03:01.0") == "e1000" and machine.driver_of("0000:03:02.0") is None
    assert machine.override_of("0000:03:01.0") == "(null)"
    assert list((machine.paths.state / "vfio").iterdir()) == []
    assert ("bus/pci/drivers/e1000/bind", "0000:03:01.0") in kernel.writes


def test_a_previous_override_is_given_back(machine: FakeHost) -> None:
    (machine.device_dir("0000:01:00.0") / "driver_override").write_text("e1000e\n")
    kernel = FakeKernel(machine)
    kernel.run(plan_bind(machine.paths, "0000:01:00.0").steps)
    kernel.run(plan_unbind(machine.paths, "0000:01:00.0").steps)
    assert machine.override_of("0000:01:00.0") == "e1000e" and machine.driver_of("0000:01:00.0") == "e1000e"


def test_unbind_without_a_record_asks_the_kernel_to_probe(machine: FakeHost) -> None:
    kernel = FakeKernel(machine)
    kernel.run(plan_bind(machine.paths, "0000:01:00.0").steps)
    (machine.paths.state / "vfio" / "0000:01:00.0.json").unlink()
    plan = plan_unbind(machine.paths, "0000:01:00.0")
    assert plan.steps[-2:] == (
        WriteSysfs(machine.paths.sysfs / "bus/pci/drivers_probe", "0000:01:00.0"),
        ExpectDriver("0000:01:00.0", "*"),
    )
    assert "vfio-pci -> whichever driver the kernel picks" in plan.summary()[1]


@pytest.mark.parametrize(
    ("address", "error", "reason"),
    [
        ("0000:00:1f.0", HostDependency, "0000:00:1f.2 is the root filesystem (/dev/sda1 on /, ext4)"),
        ("0000:02:00.0", HostDependency, "0000:02:00.0 is the default route (via eth0)"),
        ("0000:00:14.0", HostDependency, "0000:00:14.0 is the console keyboard (input0 USB Keyboard)"),
        ("0000:00:1b.0", InUse, "0000:00:1b.0 mounted: /dev/sdb1 on /data"),
        ("0000:00:1a.0", InUse, "0000:00:1a.0 interface eth1 is up"),
    ],
)
def test_refused_groups_change_nothing(machine: FakeHost, host_cli, address: str, error: type, reason: str) -> None:
    before = _tree(machine)
    with pytest.raises(error) as caught:
        plan_bind(machine.paths, address)
    assert reason in str(caught.value)
    ran = host_cli(machine, "vfio", "bind", address)
    assert ran.rc == 1 and ran.out == "" and len(ran.err.splitlines()) == 1
    assert ran.err.startswith(f"redirgate: {address}: refusing: IOMMU group") and reason in ran.err
    assert _tree(machine) == before


def test_a_pf_with_vfs_is_refused(machine: FakeHost) -> None:
    machine.add_vf("0000:00:1d.0", 0, "0000:00:1d.1", "1b36:0010", 0x010802, group=21)
    with pytest.raises(Refused, match=r"SR-IOV PF with 1 VFs.*host sriov 0000:00:1d.0 --vfs 0"):
        plan_bind(machine.paths, "0000:00:1d.0")


def test_a_vf_binds_alone_and_its_pf_stays(machine: FakeHost) -> None:
    machine.add_vf("0000:00:1d.0", 0, "0000:00:1d.1", "1b36:0010", 0x010802, group=21)
    machine.add_vf("0000:00:1d.0", 1, "0000:00:1d.2", "1b36:0010", 0x010802, group=22)
    plan = plan_bind(machine.paths, "0000:00:1d.2")
    FakeKernel(machine).run(plan.steps)
    assert [d.address for d in plan.devices] == ["0000:00:1d.2"]
    assert machine.driver_of("0000:00:1d.2") == "vfio-pci" and machine.driver_of("0000:00:1d.0") == "nvme"
    assert machine.driver_of("0000:00:1d.1") is None


def test_unbind_is_refused_while_a_vm_holds_the_group(machine: FakeHost) -> None:
    FakeKernel(machine).run(plan_bind(machine.paths, "0000:01:00.0").steps)
    machine.hold_vfio_group(3)
    with pytest.raises(InUse, match=r"/dev/vfio/3 is open by 4242 \(qemu-system-x86\)"):
        plan_unbind(machine.paths, "0000:01:00.0")


def test_dry_run_prints_the_plan_and_changes_nothing(machine: FakeHost, host_cli) -> None:
    before = _tree(machine)
    ran = host_cli(machine, "vfio", "bind", "01:00.0", "--dry-run")
    assert ran.rc == 0, ran.err
    state = machine.paths.state / "vfio" / "0000:01:00.0.json"
    sysfs = machine.paths.sysfs
    assert ran.out.splitlines() == [
        "IOMMU group 3: 1 device(s)",
        "  0000:01:00.0 8086:10d3 Ethernet controller: e1000e -> vfio-pci",
        "dry run, nothing changed; it would:",
        f"  1. write {state} (what unbind restores)",
        f"  2. write vfio-pci to {sysfs}/bus/pci/devices/0000:01:00.0/driver_override",
        f"  3. write 0000:01:00.0 to {sysfs}/bus/pci/drivers/e1000e/unbind",
        f"  4. write 0000:01:00.0 to {sysfs}/bus/pci/drivers_probe",
        "  5. check that 0000:01:00.0 is on vfio-pci",
    ]
    assert _tree(machine) == before


def test_a_real_run_reports_each_step_and_stops_at_the_first_surprise(machine: FakeHost, host_cli) -> None:
    """Without a kernel behind the tree the probe binds nothing: the check fails and says what was done."""
    ran = host_cli(machine, "vfio", "bind", "0000:01:00.0")
    assert ran.rc == 1
    assert "  done: write 0000:01:00.0 to " in ran.out
    assert ran.err.strip() == (
        "redirgate: 0000:01:00.0: expected driver vfio-pci, the kernel left it on e1000e "
        "(4 of 5 steps were done before it)"
    )


def test_persist_writes_udev_rules_and_unpersist_removes_them(machine: FakeHost) -> None:
    kernel = FakeKernel(machine)
    rules = machine.paths.etc / "udev/rules.d/60-redirgate-vfio.rules"
    modules = machine.paths.etc / "modules-load.d/redirgate-vfio.conf"
    kernel.run(plan_bind(machine.paths, "0000:01:00.0", persist=True).steps)
    kernel.run(plan_bind(machine.paths, "0000:03:01.0", persist=True).steps)
    lines = [line for line in rules.read_text().splitlines() if not line.startswith("#")]
    assert lines == [
        'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:01:00.0", ATTR{driver_override}="vfio-pci"',
        'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:03:01.0", ATTR{driver_override}="vfio-pci"',
        'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:03:02.0", ATTR{driver_override}="vfio-pci"',
    ]
    assert "new_id" not in rules.read_text() and "ids=" not in modules.read_text()
    assert modules.read_text().splitlines()[-1] == "vfio-pci"
    kernel.run(plan_unbind(machine.paths, "0000:03:02.0", unpersist=True).steps)
    assert len([line for line in rules.read_text().splitlines() if not line.startswith("#")]) == 1
    assert modules.exists()
    kernel.run(plan_unbind(machine.paths, "0000:01:00.0", unpersist=True).steps)
    assert not rules.exists() and not modules.exists()


def test_ordinary_mistakes_are_one_line(machine: FakeHost, host_cli, tmp_path: Path) -> None:
    for args, message in [
        (("vfio", "bind", "1:0.0"), "redirgate: 1:0.0: not a PCI address"),
        (("vfio", "bind", "0000:09:00.0"), "redirgate: 0000:09:00.0: no such PCI device"),
        (("vfio", "unbind", "0000:42:00.0"), "redirgate: 0000:42:00.0: no such PCI device"),
    ]:
        ran = host_cli(machine, *args)
        assert ran.rc == 1 and ran.err.startswith(message) and len(ran.err.splitlines()) == 1, ran.err
