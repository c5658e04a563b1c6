"""`redirgate host` on a real kernel with a real IOMMU: a q35 TCG guest with QEMU's emulated Intel IOMMU.

One guest for the module (tests/support/iommu_guest.py) runs this checkout
over virtio-9p.  Proven there, on the guest kernel's own sysfs, vfio and
SR-IOV: `host iommu --json` matches the kernel's groups; binding the lone
e1000e gives /dev/vfio/N that opens the way QEMU opens it (container,
type1v2 IOMMU, a DMA map, the device fd) and unbinding gives it back to
e1000e (refused while the group is held open); one device of the
pcie-pci-bridge group takes its partner along (a half-bound group is shown
not viable) and both come back; the groups of the 9p root and of the mounted
AHCI disk are refused; `sriov --vfs 2` makes two VFs in groups of their own
and one binds to vfio-pci alone, its PF untouched; a QEMU in the guest starts
with what `host xml pci --qemu` printed and takes a second device by `host
attach --device vfio-pci:`.  Then live attach: the
guest, running, gets a redirgate route (serve-usb with a stick image on the
host) by `host attach --qmp`, mounts the stick, loses it on `host detach`,
and gets it again on a second attach.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from redirgate.cli import main
from tests.support.guest import guest_unavailable_reason, make_fat_image
from tests.support.iommu_guest import IommuGuest, start_iommu_guest
from tests.support.services import running
from tests.support.system import require

pytestmark = pytest.mark.system

E1000E, E1000, EDU, BRIDGE = "8086:10d3", "8086:100e", "1234:11e8", "1b36:000e"
NVME, LPC, AHCI, VIRTIO_9P = "1b36:0010", "8086:2918", "8086:2922", "1af4:1009"


@pytest.fixture(scope="module")
def hv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IommuGuest]:
    reason = guest_unavailable_reason()
    require("QEMU test guest", reason is None, reason or "")
    guest = start_iommu_guest(tmp_path_factory.mktemp("iommu-guest"))
    try:
        yield guest
    finally:
        guest.guest.stop()


def test_iommu_json_matches_the_kernel_s_groups(hv: IommuGuest) -> None:
    r = hv.python(
        "import os\n"
        "result['cli'] = cli('iommu', '--json')\n"
        "result['kernel'] = {n: group_members(int(n)) for n in os.listdir('/sys/kernel/iommu_groups')}\n"
        f"result['ids'] = {{i: find(i) for i in {[E1000E, E1000, EDU, BRIDGE, NVME, LPC, AHCI, VIRTIO_9P]!r}}}\n"
        "result['tags'] = {os.path.basename(os.path.dirname(os.path.realpath(f'/sys/bus/virtio/devices/{v}'))):"
        " open(f'/sys/bus/virtio/devices/{v}/mount_tag').read().strip(chr(0)) for v in os.listdir('/sys/bus/virtio/devices')}\n"
    )
    assert r["cli"]["rc"] == 0, r["cli"]["err"]
    data = json.loads(r["cli"]["out"])
    assert (
        data["iommu"]["enabled"]
        and data["iommu"]["interrupt_remapping"] is True
        and data["iommu"]["units"] == ["dmar0"]
    )
    listed = {str(g["group"]): [d["address"] for d in g["devices"]] for g in data["groups"]}
    assert listed == r["kernel"] and len(listed) == 13 and data["ungrouped"] == []
    ids = r["ids"]
    by_address = {d["address"]: (g["group"], d) for g in data["groups"] for d in g["devices"]}
    assert listed[str(by_address[ids[E1000E][0]][0])] == ids[E1000E]  # alone behind its root port
    assert sorted(listed[str(by_address[ids[EDU][0]][0])]) == sorted(ids[BRIDGE] + ids[E1000] + ids[EDU])
    assert len(listed[str(by_address[ids[LPC][0]][0])]) == 3  # LPC + AHCI + SMBus
    root = next(a for a, tag in r["tags"].items() if tag == "hostroot")
    assert by_address[root][1]["host_depends_on"] == ["the root filesystem (hostroot on /, 9p)"]
    share = next(a for a, tag in r["tags"].items() if tag == "share")
    assert by_address[share][1]["host_depends_on"] == [] and by_address[share][1]["in_use"][0].startswith(
        "mounted: share on "
    )
    assert by_address[ids[AHCI][0]][1]["in_use"] == ["mounted: /dev/sda on /run/disk"]
    pf = by_address[ids[NVME][0]][1]
    assert pf["sriov_pf"]["totalvfs"] == 8 and pf["driver"] == "nvme"
    assert by_address[ids[BRIDGE][0]][1]["bridge"] is True


def test_the_lone_e1000e_goes_to_vfio_opens_and_comes_back(hv: IommuGuest) -> None:
    r = hv.python(
        "import contextlib, os\n"
        f"nic = find({E1000E!r})[0]; g = group(nic); result.update(nic=nic, group=g)\n"
        "result['bind'] = cli('vfio', 'bind', nic)\n"
        "result['bound'] = [driver(nic), override(nic), os.path.exists(f'/dev/vfio/{g}')]\n"
        "with contextlib.ExitStack() as hold:\n"
        "    result['vfio'] = open_vfio_device(g, nic, hold)\n"
        "    result['unbind_held'] = cli('vfio', 'unbind', nic)\n"
        "result['unbind'] = cli('vfio', 'unbind', nic)\n"
        "result['back'] = [driver(nic), override(nic)]\n"
    )
    nic, g = r["nic"], r["group"]
    assert r["bind"]["rc"] == 0, r["bind"]["err"]
    out = r["bind"]["out"]
    assert f"  {nic} 8086:10d3 Ethernet controller: e1000e -> vfio-pci" in out
    assert f"  done: write vfio-pci to /sys/bus/pci/devices/{nic}/driver_override" in out
    assert f"  done: write {nic} to /sys/bus/pci/drivers/e1000e/unbind" in out
    assert out.endswith(f"IOMMU group {g} is on vfio-pci: /dev/vfio/{g}\n")
    assert r["bound"] == ["vfio-pci", "vfio-pci", True]
    vfio = r["vfio"]
    assert "error" not in vfio, vfio
    assert vfio["api_version"] and vfio["type1v2"] and vfio["viable"] and vfio["device_is_pci"]
    assert vfio["regions"] >= 7  # six BARs, the ROM, config space...
    held = r["unbind_held"]
    assert held["rc"] == 1 and f"/dev/vfio/{g} is open by " in held["err"] and "(python" in held["err"]
    assert r["unbind"]["rc"] == 0, r["unbind"]["err"]
    assert f"  {nic} 8086:10d3 Ethernet controller: vfio-pci -> e1000e" in r["unbind"]["out"]
    assert r["back"] == ["e1000e", "(null)"]


def test_one_device_of_the_bridge_group_takes_its_partner_along(hv: IommuGuest) -> None:
    r = hv.python(
        "import contextlib, os, subprocess\n"
        f"edu, nic, bridge = find({EDU!r})[0], find({E1000!r})[0], find({BRIDGE!r})[0]; g = group(edu)\n"
        "result.update(edu=edu, nic=nic, bridge=bridge, group=g)\n"
        "subprocess.run(['modprobe', 'vfio-pci'], check=True)\n"
        "# what a per-device script does: only edu on vfio-pci, e1000 still on e1000 -> the group is not viable\n"
        "open(f'/sys/bus/pci/devices/{edu}/driver_override', 'w').write('vfio-pci')\n"
        "open('/sys/bus/pci/drivers_probe', 'w').write(edu)\n"
        "result['half'] = open_vfio_device(g, edu)\n"
        "open('/sys/bus/pci/drivers/vfio-pci/unbind', 'w').write(edu)\n"
        "open(f'/sys/bus/pci/devices/{edu}/driver_override', 'w').write('\\n')\n"
        "result['before'] = [driver(edu), driver(nic), driver(bridge)]\n"
        "result['bind'] = cli('vfio', 'bind', edu)\n"
        "result['bound'] = [driver(edu), driver(nic), driver(bridge)]\n"
        "with contextlib.ExitStack() as hold:\n"
        "    result['vfio'] = open_vfio_device(g, nic, hold)\n"
        "result['unbind'] = cli('vfio', 'unbind', nic)\n"
        "result['back'] = [driver(edu), driver(nic), driver(bridge), override(edu), override(nic)]\n"
    )
    assert r["half"]["viable"] is False and r["half"]["error"] == "set_container: Operation not permitted"
    assert r["before"] == [None, "e1000", None]
    assert r["bind"]["rc"] == 0, r["bind"]["err"]
    out = r["bind"]["out"]
    assert out.startswith(f"IOMMU group {r['group']}: 3 device(s)\n")
    assert f"  {r['bridge']} 1b36:000e PCI bridge: left alone: PCI bridge, stays on no driver" in out
    assert f"  {r['nic']} 8086:100e Ethernet controller: e1000 -> vfio-pci" in out
    assert f"  {r['edu']} 1234:11e8 class 00ff00: no driver -> vfio-pci" in out
    assert r["bound"] == ["vfio-pci", "vfio-pci", None]
    assert "error" not in r["vfio"] and r["vfio"]["viable"], r["vfio"]
    assert r["unbind"]["rc"] == 0, r["unbind"]["err"]
    assert r["back"] == [None, "e1000", None, "(null)", "(null)"]


def test_the_groups_the_guest_depends_on_are_refused(hv: IommuGuest) -> None:
    r = hv.python(
        "import os\n"
        "tags = {open(f'/sys/bus/virtio/devices/{v}/mount_tag').read().strip(chr(0)):"
        " os.path.basename(os.path.dirname(os.path.realpath(f'/sys/bus/virtio/devices/{v}')))"
        " for v in os.listdir('/sys/bus/virtio/devices')}\n"
        f"lpc, ahci = find({LPC!r})[0], find({AHCI!r})[0]\n"
        "result.update(root=tags['hostroot'], share=tags['share'], lpc=lpc, ahci=ahci)\n"
        "result['root_bind'] = cli('vfio', 'bind', tags['hostroot'])\n"
        "result['lpc_bind'] = cli('vfio', 'bind', lpc, '--dry-run')\n"
        "result['share_bind'] = cli('vfio', 'bind', tags['share'])\n"
        "result['after'] = [driver(tags['hostroot']), driver(ahci), driver(tags['share']), override(ahci)]\n"
    )
    root = r["root_bind"]
    assert root["rc"] == 1 and root["out"] == "" and root["err"].count("\n") == 1
    assert "holds what the host depends on: " + r["root"] + " is the root filesystem (hostroot on /, 9p)" in root["err"]
    lpc = r["lpc_bind"]
    assert lpc["rc"] == 1 and f"is in use: {r['ahci']} mounted: /dev/sda on /run/disk" in lpc["err"]
    assert r["share_bind"]["rc"] == 1 and f"{r['share']} mounted: share on " in r["share_bind"]["err"]
    assert r["after"] == ["virtio-pci", "ahci", "virtio-pci", "(null)"]


def test_sriov_vfs_get_groups_of_their_own_and_one_binds_alone(hv: IommuGuest) -> None:
    r = hv.python(
        "import contextlib, glob, os\n"
        f"pf = find({NVME!r})[0]; result['pf'] = pf\n"
        "result['make'] = cli('sriov', pf, '--vfs', '2', '--autoprobe', 'off')\n"
        "vfs = [os.path.basename(os.readlink(f'/sys/bus/pci/devices/{pf}/virtfn{i}')) for i in range(2)]\n"
        "result['vfs'] = vfs\n"
        "result['groups'] = [group_members(group(vf)) for vf in vfs]\n"
        "result['bind'] = cli('vfio', 'bind', vfs[1])\n"
        "result['bound'] = [driver(pf), driver(vfs[0]), driver(vfs[1])]\n"
        "with contextlib.ExitStack() as hold:\n"
        "    result['vfio'] = open_vfio_device(group(vfs[1]), vfs[1], hold)\n"
        "result['remove_refused'] = cli('sriov', pf, '--vfs', '0')\n"
        "result['unbind'] = cli('vfio', 'unbind', vfs[1])\n"
        "result['remove'] = cli('sriov', pf, '--vfs', '0')\n"
        "result['left'] = len(glob.glob(f'/sys/bus/pci/devices/{pf}/virtfn*'))\n"
    )
    pf, vfs = r["pf"], r["vfs"]
    assert r["make"]["rc"] == 0, r["make"]["err"]
    out = r["make"]["out"]
    assert f"  done: write 0 to /sys/bus/pci/devices/{pf}/sriov_drivers_autoprobe" in out
    assert f"  done: write 2 to /sys/bus/pci/devices/{pf}/sriov_numvfs" in out
    assert f"2 VFs on {pf}" in out and out.count("(alone)") == 2
    assert r["groups"] == [[vfs[0]], [vfs[1]]]
    assert r["bind"]["rc"] == 0, r["bind"]["err"]
    assert r["bound"] == ["nvme", None, "vfio-pci"]  # the PF keeps nvme, the other VF stays driverless
    assert "error" not in r["vfio"] and r["vfio"]["viable"], r["vfio"]
    refused = r["remove_refused"]
    assert refused["rc"] == 1 and f"refusing to remove its VFs: {vfs[1]} is on vfio-pci" in refused["err"]
    assert r["unbind"]["rc"] == 0 and r["remove"]["rc"] == 0, r["unbind"]["err"] + r["remove"]["err"]
    assert r["left"] == 0


FIND_STICK = r"""
find_stick() {
    for d in /sys/bus/usb/devices/*; do
        [ "$(cat "$d/idVendor" 2>/dev/null)" = 1209 ] && [ "$(cat "$d/idProduct")" = 0001 ] || continue
        for b in "$d"/*/host*/target*/*/block/*; do [ -e "$b" ] && { basename "$b"; return 0; }; done
    done
    return 1
}
"""
MOUNT_STICK = (
    FIND_STICK
    + r"""
i=0; until dev=$(find_stick) && [ -b "/dev/$dev" ]; do i=$((i+1)); [ $i -lt 1800 ] || { echo "no stick" >&2; exit 1; }; sleep 0.1; done
mkdir -p /run/stick
mount -t vfat -o ro "/dev/$dev" /run/stick
cat /run/stick/hello.txt
umount /run/stick
"""
)
STICK_GONE = (
    FIND_STICK
    + r"""
i=0; while find_stick >/dev/null; do i=$((i+1)); [ $i -lt 1800 ] || { echo "stick still there" >&2; exit 1; }; sleep 0.1; done
echo gone
"""
)


def _host(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(["host", *args])
    return rc, out.getvalue()


def test_live_attach_of_a_route_mounts_the_stick_detach_and_again(hv: IommuGuest, tmp_path: Path) -> None:
    hello = b"hello through a live attach\n"
    image = make_fat_image(tmp_path / "stick.img", {"hello.txt": hello})
    argv = ["client", "serve-usb", "--listen", "127.0.0.1:0", f"virtual:storage:{image}"]
    with running(argv, tmp_path / "serve-usb.log") as service:
        for cycle in range(2):
            rc, out = _host(
                "attach",
                "--qmp",
                str(hv.qmp),
                "--route",
                f"127.0.0.1:{service.port}",
                "--bus",
                "xhci.0",
                "--id",
                "stick",
            )
            assert rc == 0, out
            assert hv.shell(MOUNT_STICK) == hello.decode(), f"cycle {cycle}: {service.log()}"
            rc, out = _host("detach", "--qmp", str(hv.qmp), "--id", "stick")
            assert rc == 0 and out.splitlines() == ["device_del stick: QEMU reports it deleted", "detached stick"], out
            assert hv.shell(STICK_GONE) == "gone\n"


def test_qemu_in_the_guest_takes_the_devices_from_xml_qemu_and_attach(hv: IommuGuest) -> None:
    """The arguments `host xml pci --qemu` prints start a real QEMU with the e1000e passed through, and
    `host attach --device vfio-pci:` hot plugs the bridge group's e1000 into it: both show up in the
    nested VM's PCI tree with their real IDs (read through VFIO); unbind is refused while QEMU holds them."""
    r = hv.python(
        "import shlex\n"
        f"nic, e1000 = find({E1000E!r})[0], find({E1000!r})[0]\n"
        "result['binds'] = [cli('vfio', 'bind', nic)['rc'], cli('vfio', 'bind', e1000)['rc']]\n"
        "xml = cli('xml', 'pci', nic, '--qemu', '--id', 'nic0')\n"
        "result['xml'] = xml\n"
        "args = shlex.split(xml['out'].replace('\\\\\\n', ' '))\n"
        "vm = start_qemu([*args, '-device', 'pcie-root-port,id=hp1,chassis=9,slot=9'], '/tmp/nested.qmp')\n"
        "try:\n"
        "    result['attach'] = cli('attach', '--qmp', '/tmp/nested.qmp', '--device', 'vfio-pci:' + e1000,"
        " '--bus', 'hp1', '--id', 'pass1')\n"
        f"    result['ids'] = sorted(pci_ids('/tmp/nested.qmp', {{{E1000E!r}, {E1000!r}}}))\n"
        "    result['held'] = cli('vfio', 'unbind', nic)\n"
        "finally:\n"
        "    vm.terminate(); vm.wait()\n"
        "result['unbinds'] = [cli('vfio', 'unbind', nic)['rc'], cli('vfio', 'unbind', e1000)['rc']]\n"
        "result['back'] = [driver(nic), driver(e1000)]\n"
    )
    assert r["binds"] == [0, 0] and r["xml"]["rc"] == 0
    assert "-device vfio-pci,host=" in r["xml"]["out"]
    assert r["attach"]["rc"] == 0, r["attach"]["err"]
    assert "8086:10d3" in r["ids"] and "8086:100e" in r["ids"], r["ids"]
    assert r["held"]["rc"] == 1 and "(qemu-system-x86)" in r["held"]["err"]
    assert r["unbinds"] == [0, 0] and r["back"] == ["e1000e", "e1000"]
