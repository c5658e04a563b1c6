"""`redirgate host ...`: the hypervisor side (passthrough, SR-IOV, live attach).

Argument parsing and printing only; the work is :mod:`redirgate.host`.
Exit status: 0 done, 1 a HostError (refused, not found, the kernel or QEMU
said no: one line on stderr, nothing else), 2 invalid arguments (argparse).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from redirgate.cli.args import int_in, parse_hostport
from redirgate.host import attach as attach_mod
from redirgate.host.errors import HostError, InvalidArgument
from redirgate.host.paths import DEFAULT_STATE_DIR, HostPaths, parse_pci_address
from redirgate.host.pci import group_devices, read_device
from redirgate.host.qmp import open_qmp
from redirgate.host.report import inventory
from redirgate.host.snippets import (
    parallel_qemu,
    parallel_xml,
    parse_usb_selector,
    pci_hostdev_xml,
    pci_qemu,
    serial_qemu,
    serial_xml,
    usb_hostdev_xml,
    usb_qemu,
)
from redirgate.host.sriov import plan_sriov, read_vfs
from redirgate.host.steps import Step, run_steps
from redirgate.host.vfio import plan_bind, plan_unbind

__all__ = ["add_parser"]

SRIOV_HELP = """\
Creates N SR-IOV virtual functions on the PF at ADDR through sysfs: checks
sriov_totalvfs, goes through 0 when changing a non-zero count (the kernel
answers EBUSY otherwise), needs the PF's driver bound, and lists the new VFs
with their IOMMU groups.  --autoprobe off first turns sriov_drivers_autoprobe
off so the VFs come up without a host driver, ready for `host vfio bind`.

The older way: some drivers (igb, ixgbe; deprecated there) take the count as
a module parameter instead, e.g. `options igb max_vfs=4` in
/etc/modprobe.d/igb.conf, then reload the module (or update the initramfs
and reboot).  It applies to every port that driver handles; prefer
sriov_numvfs where the driver supports it (every driver since Linux 3.8).
"""


def add_parser(commands: Any) -> None:
    host = commands.add_parser(
        "host",
        help="hypervisor side: PCI/USB passthrough (vfio), SR-IOV, libvirt/QEMU snippets, live attach",
        description="Give devices of this machine to VMs safely, and hot plug redirgate routes into running VMs.",
    )
    sub = host.add_subparsers(dest="host_command", metavar="HOST_COMMAND", required=True)
    roots = argparse.ArgumentParser(add_help=False)
    group = roots.add_argument_group("where the host is read (for tests)")
    group.add_argument("--sysfs-root", type=Path, default=Path("/sys"), metavar="DIR", help="default /sys")
    group.add_argument("--proc-root", type=Path, default=Path("/proc"), metavar="DIR", help="default /proc")
    group.add_argument("--dev-root", type=Path, default=Path("/dev"), metavar="DIR", help="default /dev")
    group.add_argument("--etc-root", type=Path, default=Path("/etc"), metavar="DIR", help="default /etc (--persist)")
    group.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"what unbind restores (default {DEFAULT_STATE_DIR})",
    )

    iommu = sub.add_parser(
        "iommu", parents=[roots], help="the IOMMU, every group with its devices, what the host depends on"
    )
    iommu.add_argument("--json", action="store_true", help="machine-readable output")
    iommu.set_defaults(run=_guarded(_run_iommu))

    vfio = sub.add_parser("vfio", help="give a PCI device's IOMMU group to vfio-pci and back")
    vsub = vfio.add_subparsers(dest="vfio_command", metavar="VFIO_COMMAND", required=True)
    bind = vsub.add_parser(
        "bind",
        parents=[roots],
        help="put ADDR's whole IOMMU group on vfio-pci (driver_override, never new_id)",
        description="Every endpoint device of ADDR's IOMMU group goes to vfio-pci through driver_override; "
        "bridges keep their driver.  Refused when the group holds a device the host depends on (root "
        "filesystem disk, default route NIC, console keyboard) or one in use.  The previous drivers are "
        "remembered for `vfio unbind`.",
    )
    bind.add_argument("address", metavar="ADDR", help="PCI address, e.g. 0000:01:00.0")
    bind.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    bind.add_argument("--persist", action="store_true", help="also bind at boot (udev rule + modules-load.d)")
    bind.set_defaults(run=_guarded(_run_bind))
    unbind = vsub.add_parser(
        "unbind", parents=[roots], help="give ADDR's IOMMU group back to the drivers it had before"
    )
    unbind.add_argument("address", metavar="ADDR")
    unbind.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    unbind.add_argument("--unpersist", action="store_true", help="also remove what --persist wrote for the group")
    unbind.set_defaults(run=_guarded(_run_unbind))

    sriov = sub.add_parser(
        "sriov",
        parents=[roots],
        help="create SR-IOV virtual functions on a PF",
        description=SRIOV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sriov.add_argument("address", metavar="ADDR", help="the PF's PCI address")
    sriov.add_argument("--vfs", type=int_in(0), required=True, metavar="N", help="how many VFs (0 removes them)")
    sriov.add_argument(
        "--autoprobe",
        choices=("on", "off"),
        default=None,
        help="set sriov_drivers_autoprobe first (off: VFs get no host driver); default: leave it",
    )
    sriov.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sriov.add_argument("--persist", action="store_true", help="also create them at boot (udev rule)")
    sriov.set_defaults(run=_guarded(_run_sriov))

    xml = sub.add_parser("xml", help="libvirt XML (or --qemu arguments) for a passthrough device")
    xsub = xml.add_subparsers(dest="xml_command", metavar="KIND", required=True)
    for kind, metavar, helptext in (
        ("pci", "ADDR", "a PCI function (vfio): <hostdev type='pci'> / -device vfio-pci"),
        ("usb", "VID:PID|BUS/DEV", "a host USB device: <hostdev type='usb'> / -device usb-host"),
        ("serial", "PATH", "a host serial port: <serial type='dev'> / -serial"),
        ("parallel", "PATH", "a host parallel port: <parallel type='dev'> / -parallel /dev/parportN"),
    ):
        p = xsub.add_parser(kind, parents=[roots], help=helptext)
        p.add_argument("target", metavar=metavar)
        p.add_argument("--qemu", action="store_true", help="QEMU command-line arguments instead of libvirt XML")
        p.add_argument("--id", default=None, metavar="NAME", help="device id (libvirt alias ua-NAME)")
        p.set_defaults(run=_guarded(_run_xml), kind=kind)

    at = sub.add_parser(
        "attach",
        help="hot plug a redirgate route or a host device into a running VM",
        description="Over QMP: chardev-add + device_add usb-redir for a route, device_add usb-host or vfio-pci "
        "for passthrough.  With --domain: the same through libvirt (virsh attach-device --live).",
    )
    _vm_arguments(at)
    what = at.add_mutually_exclusive_group(required=True)
    what.add_argument("--route", type=parse_hostport, metavar="HOST:PORT", help="a redirgate route (gateway port)")
    what.add_argument(
        "--device", metavar="KIND:WHAT", help="usb-host:VID:PID, usb-host:BUS/DEV or vfio-pci:ADDR (bind it first)"
    )
    at.add_argument(
        "--tls-dir",
        default=None,
        metavar="DIR",
        help="the route's gateway port speaks TLS: QEMU's tls-creds-x509 directory from `redirgate pki "
        "issue-hypervisor` (with --domain, libvirt reads qemu.conf's chardev_tls_x509_cert_dir instead: give "
        "the same DIR there)",
    )
    at.add_argument("--id", default=None, metavar="NAME", help="the device id for detach (default from the target)")
    at.add_argument("--bus", default=None, metavar="BUS", help="where to plug it, e.g. xhci.0 or a root port id")
    at.set_defaults(run=_guarded(_run_attach))

    de = sub.add_parser("detach", help="unplug what attach plugged in (by --id)")
    _vm_arguments(de)
    de.add_argument("--id", required=True, metavar="NAME")
    de.set_defaults(run=_guarded(_run_detach))


def _vm_arguments(parser: argparse.ArgumentParser) -> None:
    vm = parser.add_mutually_exclusive_group(required=True)
    vm.add_argument("--qmp", metavar="SOCKET", help="the VM's QMP unix socket (-qmp unix:SOCKET,server=on,wait=off)")
    vm.add_argument("--domain", metavar="NAME", help="a libvirt domain (virsh ... --live)")
    parser.add_argument("--connect", default=None, metavar="URI", help="libvirt URI for --domain (virsh -c)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="how long to wait for QEMU")


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except HostError as exc:
            print(f"redirgate: {exc}", file=sys.stderr)
            return 1

    return guarded


def _paths(args: argparse.Namespace) -> HostPaths:
    return HostPaths(
        sysfs=args.sysfs_root, proc=args.proc_root, dev=args.dev_root, etc=args.etc_root, state=args.state_dir
    )


# -- iommu ---------------------------------------------------------------------------------------------


def _onoff(value: bool | None) -> str:
    return {None: "unknown", True: "on", False: "off"}[value]


def _run_iommu(args: argparse.Namespace) -> int:
    data = inventory(_paths(args))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    iommu = data["iommu"]
    units = f" ({', '.join(iommu['units'])})" if iommu["units"] else ""
    print(
        f"IOMMU: {_onoff(iommu['enabled'])}{units}, {iommu['groups']} groups; interrupt remapping:"
        f" {_onoff(iommu['interrupt_remapping'])}; vfio-pci {'loaded' if iommu['vfio_pci_loaded'] else 'not loaded'}"
    )
    if not iommu["enabled"]:
        print("No IOMMU groups: enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on (or amd_iommu=on).")
    elif iommu["interrupt_remapping"] is False:
        print("Without interrupt remapping vfio refuses to set up a container (allow_unsafe_interrupts is unsafe).")
    for group in data["groups"]:
        flags = " [the host depends on it]" if group["host_depends_on"] else " [in use]" if group["in_use"] else ""
        print(f"group {group['group']}{flags}")
        for device in group["devices"]:
            _print_device(device)
    if data["ungrouped"]:
        print("not in any IOMMU group")
        for device in data["ungrouped"]:
            _print_device(device)
    return 0


def _print_device(device: dict[str, Any]) -> None:
    notes = []
    if device["bridge"]:
        notes.append("bridge")
    if device["sriov_pf"]:
        notes.append(f"SR-IOV PF {device['sriov_pf']['numvfs']}/{device['sriov_pf']['totalvfs']} VFs")
    if device["sriov_vf_of"]:
        notes.append(f"VF of {device['sriov_vf_of']}")
    notes += [f"host: {reason}" for reason in device["host_depends_on"]]
    notes += [f"in use: {reason}" for reason in device["in_use"]]
    line = f"  {device['address']} {device['id']} {device['description']:<26} {device['driver'] or '-'}"
    print(line + ("  (" + "; ".join(notes) + ")" if notes else ""))


# -- vfio and sriov: plans -------------------------------------------------------------------------------


def _execute(steps: tuple[Step, ...], paths: HostPaths, dry_run: bool) -> None:
    if not steps:
        print("nothing to do")
        return
    if dry_run:
        print("dry run, nothing changed; it would:")
        for number, step in enumerate(steps, 1):
            print(f"  {number}. {step.describe()}")
        return
    run_steps(steps, paths, lambda text: print(f"  done: {text}", flush=True))


def _run_bind(args: argparse.Namespace) -> int:
    paths = _paths(args)
    plan = plan_bind(paths, parse_pci_address(args.address), persist=args.persist)
    print("\n".join(plan.summary()))
    _execute(plan.steps, paths, args.dry_run)
    if not args.dry_run:
        print(f"IOMMU group {plan.group} is on vfio-pci: {plan.vfio_node}")
    return 0


def _run_unbind(args: argparse.Namespace) -> int:
    paths = _paths(args)
    plan = plan_unbind(paths, parse_pci_address(args.address), unpersist=args.unpersist)
    print("\n".join(plan.summary()))
    _execute(plan.steps, paths, args.dry_run)
    return 0


def _run_sriov(args: argparse.Namespace) -> int:
    paths = _paths(args)
    autoprobe = None if args.autoprobe is None else args.autoprobe == "on"
    plan = plan_sriov(paths, parse_pci_address(args.address), args.vfs, autoprobe=autoprobe, persist=args.persist)
    print("\n".join(plan.summary()))
    _execute(plan.steps, paths, args.dry_run)
    if not args.dry_run:
        vfs = read_vfs(paths, plan.pf)
        print(f"{len(vfs)} VFs on {plan.pf.address}")
        for vf in vfs:
            alone = vf.iommu_group is not None and group_devices(paths, vf.iommu_group) == [vf.address]
            group = "no IOMMU group" if vf.iommu_group is None else f"IOMMU group {vf.iommu_group}"
            print(f"  {vf.summary()}, {group}{' (alone)' if alone else ''}")
    return 0


# -- xml ---------------------------------------------------------------------------------------------------


def _run_xml(args: argparse.Namespace) -> int:
    paths = _paths(args)
    if args.id is not None:
        attach_mod.check_name(args.id)
    if args.kind == "pci":
        address = parse_pci_address(args.target)
        device = read_device(paths, address)
        partners = [] if device.iommu_group is None else group_devices(paths, device.iommu_group)
        others = [a for a in partners if a != address and not read_device(paths, a).is_bridge]
        if others:
            print(
                f"note: IOMMU group {device.iommu_group} also holds {', '.join(others)}: give them to the same VM"
                " or leave them on vfio-pci",
                file=sys.stderr,
            )
        if device.driver != "vfio-pci":
            print(
                f"note: {address} is on {device.driver or 'no driver'}; libvirt's managed='yes' rebinds it, for"
                f" QEMU run `redirgate host vfio bind {address}` first",
                file=sys.stderr,
            )
        text = _shell(pci_qemu(address, name=args.id)) if args.qemu else pci_hostdev_xml(address, name=args.id)
    elif args.kind == "usb":
        selector = parse_usb_selector(args.target)
        text = _shell(usb_qemu(selector, name=args.id)) if args.qemu else usb_hostdev_xml(selector, name=args.id)
    elif args.kind == "serial":
        text = _shell(serial_qemu(_device_path(args.target))) if args.qemu else serial_xml(_device_path(args.target))
    else:
        path = _device_path(args.target)
        text = _shell(parallel_qemu(path)) if args.qemu else parallel_xml(path)
    print(text, end="")
    return 0


def _device_path(text: str) -> str:
    if not text.startswith("/"):
        raise InvalidArgument(text, "give the port's absolute path, e.g. /dev/ttyS0 or /dev/parport0")
    return text


def _shell(argv: list[str]) -> str:
    """One option and its value per line, ready to paste into a shell command."""
    pairs = [argv[i : i + 2] for i in range(0, len(argv), 2)]
    return " \\\n".join(shlex.join(pair) for pair in pairs) + "\n"


# -- attach / detach -------------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> attach_mod.Target:
    if args.route is not None:
        host, port = args.route
        tls_dir = None if args.tls_dir is None else str(Path(args.tls_dir).resolve())
        if tls_dir is not None and args.qmp is not None and not (Path(tls_dir) / "ca-cert.pem").is_file():
            raise InvalidArgument(
                args.tls_dir, "no ca-cert.pem there: give the directory `redirgate pki issue-hypervisor` wrote"
            )
        return attach_mod.Target("route", host=host, port=port, tls_dir=tls_dir)
    if args.tls_dir is not None:
        raise InvalidArgument("--tls-dir", "only a --route has TLS (a host device is not on the network)")
    kind, _, what = str(args.device).partition(":")
    if kind == "usb-host" and what:
        return attach_mod.Target("usb-host", usb=parse_usb_selector(what))
    if kind == "vfio-pci" and what:
        return attach_mod.Target("vfio-pci", address=parse_pci_address(what))
    raise InvalidArgument(args.device, "--device takes usb-host:VID:PID, usb-host:BUS/DEV or vfio-pci:ADDR")


def _run_attach(args: argparse.Namespace) -> int:
    target = _target(args)
    name = attach_mod.check_name(args.id or attach_mod.default_name(target))
    if args.domain is not None:
        lines = attach_mod.virsh_attach(args.domain, target, name, connect=args.connect)
    else:

        async def run() -> list[str]:
            async with open_qmp(args.qmp, timeout_s=args.timeout) as qmp:
                return await attach_mod.attach_qmp(qmp, target, name, args.bus)

        lines = trio.run(run)
    for line in lines:
        print(line)
    print(f"attached {target} as {name} (detach: redirgate host detach ... --id {name})")
    return 0


def _run_detach(args: argparse.Namespace) -> int:
    name = attach_mod.check_name(args.id)
    if args.domain is not None:
        lines = attach_mod.virsh_detach(args.domain, name, connect=args.connect)
    else:

        async def run() -> list[str]:
            async with open_qmp(args.qmp, timeout_s=args.timeout) as qmp:
                return await attach_mod.detach_qmp(qmp, name, timeout_s=args.timeout)

        lines = trio.run(run)
    for line in lines:
        print(line)
    print(f"detached {name}")
    return 0
