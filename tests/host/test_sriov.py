"""`host sriov`: the kernel's rules for sriov_numvfs, autoprobe, refusals, listing and persisting VFs."""

from __future__ import annotations

import pytest

from redirgate.host.errors import Refused, SriovError
from redirgate.host.sriov import plan_sriov
from redirgate.host.steps import WriteFile, WriteSysfs
from tests.support.fake_host import NVME, FakeHost, FakeKernel

PF = "0000:00:1d.0"


def _writes(plan) -> list[tuple[str, str]]:
    return [(s.path.name, s.value) for s in plan.steps if isinstance(s, WriteSysfs)]


def test_vfs_from_zero(machine: FakeHost) -> None:
    assert _writes(plan_sriov(machine.paths, PF, 2)) == [("sriov_numvfs", "2")]
    assert _writes(plan_sriov(machine.paths, PF, 2, autoprobe=True)) == [
        ("sriov_drivers_autoprobe", "1"),
        ("sriov_numvfs", "2"),
    ]
    assert _writes(plan_sriov(machine.paths, PF, 2, autoprobe=False)) == [("sriov_numvfs", "2")]  # already off
    assert plan_sriov(machine.paths, PF, 0).steps == ()


def test_changing_a_count_goes_through_zero(machine: FakeHost) -> None:
    machine.add_vf(PF, 0, "0000:00:1d.1", "1b36:0010", NVME, group=21)
    machine.add_vf(PF, 1, "0000:00:1d.2", "1b36:0010", NVME, group=22)
    assert _writes(plan_sriov(machine.paths, PF, 4)) == [("sriov_numvfs", "0"), ("sriov_numvfs", "4")]
    assert _writes(plan_sriov(machine.paths, PF, 0)) == [("sriov_numvfs", "0")]
    assert plan_sriov(machine.paths, PF, 2).steps == ()


def test_vfs_on_vfio_are_not_removed(machine: FakeHost) -> None:
    machine.add_vf(PF, 0, "0000:00:1d.1", "1b36:0010", NVME, group=21, driver="vfio-pci")
    with pytest.raises(Refused, match=r"refusing to remove its VFs: 0000:00:1d.1 is on vfio-pci"):
        plan_sriov(machine.paths, PF, 0)


@pytest.mark.parametrize(
    ("address", "count", "message"),
    [
        (PF, 9, "supports at most 8 VFs (sriov_totalvfs), not 9"),
        ("0000:01:00.0", 2, "is not SR-IOV capable"),
        ("0000:00:1d.1", 1, "is a VF (of 0000:00:1d.0)"),
    ],
)
def test_impossible_counts(machine: FakeHost, address: str, count: int, message: str) -> None:
    machine.add_vf(PF, 0, "0000:00:1d.1", "1b36:0010", NVME, group=21)
    with pytest.raises(SriovError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_sriov(machine.paths, address, count)


def test_a_pf_without_driver_cannot_make_vfs(machine: FakeHost, host_cli) -> None:
    FakeKernel(machine).react(WriteSysfs(machine.paths.sysfs / "bus/pci/drivers/nvme/unbind", PF))
    ran = host_cli(machine, "sriov", PF, "--vfs", "2")
    assert ran.rc == 1 and "has no driver: sriov_numvfs needs the PF's own driver" in ran.err


def test_cli_lists_the_vfs_with_their_groups(machine: FakeHost, host_cli) -> None:
    machine.add_vf(PF, 0, "0000:00:1d.1", "1b36:0010", NVME, group=21)
    machine.add_vf(PF, 1, "0000:00:1d.2", "1b36:0010", NVME, group=22)
    ran = host_cli(machine, "sriov", PF, "--vfs", "2")
    assert ran.rc == 0, ran.err
    assert ran.out.splitlines() == [
        f"{PF} 1b36:0010 NVMe controller (nvme): SR-IOV PF, 2 of 8 VFs enabled, drivers autoprobe off",
        "  wanted: 2 VFs (nothing to change)",
        "nothing to do",
        f"2 VFs on {PF}",
        "  0000:00:1d.1 1b36:0010 NVMe controller (no driver), IOMMU group 21 (alone)",
        "  0000:00:1d.2 1b36:0010 NVMe controller (no driver), IOMMU group 22 (alone)",
    ]


def test_persist_writes_a_bind_rule(machine: FakeHost, host_cli) -> None:
    plan = plan_sriov(machine.paths, PF, 2, autoprobe=False, persist=True)
    (rule,) = [s for s in plan.steps if isinstance(s, WriteFile)]
    assert rule.path == machine.paths.etc / "udev/rules.d/60-redirgate-sriov.rules"
    assert rule.content.splitlines()[-1] == (
        f'ACTION=="bind", SUBSYSTEM=="pci", KERNEL=="{PF}", ATTR{{sriov_drivers_autoprobe}}="0", ATTR{{sriov_numvfs}}="2"'
    )


def test_help_explains_the_max_vfs_way(capsys) -> None:
    from redirgate.cli import main

    with pytest.raises(SystemExit):
        main(["host", "sriov", "--help"])
    out = capsys.readouterr().out
    assert "max_vfs" in out and "/etc/modprobe.d" in out
