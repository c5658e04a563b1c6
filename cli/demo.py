"""`redirgate demo`: the whole product on loopback, no hardware, no setup.

A throwaway PKI, a gateway, a client exporting an emulated flash drive and
keyboard, a route for each; every route is checked with `probe` through the
gateway, the QEMU arguments and libvirt XML for each are printed, then a
one-line live status runs until Ctrl-C (`--once` stops after the check).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.cli.signals import until_signal

__all__ = ["add_parser", "run_demo"]

log = logging.getLogger(__name__)

ROUTES = (LabRoute("stick", "usb:1209:0001"), LabRoute("keyboard", "usb:1209:0002"))


def add_parser(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run gateway + client + emulated devices on loopback and check each route")
    demo.add_argument("--once", action="store_true", help="stop after the check instead of running until Ctrl-C")
    demo.add_argument(
        "--dir", type=Path, default=None, help="keep the PKI and configs here (default: a temporary folder)"
    )
    demo.add_argument(
        "--vm",
        action="store_true",
        help="also boot a small guest (QEMU TCG, Debian's kernel + busybox) attached to the routes and show "
        "it listing the stick's files (needs qemu-system-x86, linux-image-amd64, busybox-static, kmod, dosfstools, mtools)",
    )
    demo.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return trio.run(_until_signal_result, args.dir, args.once, args.vm)
    with tempfile.TemporaryDirectory(prefix="redirgate-demo-") as tmp:
        return trio.run(_until_signal_result, Path(tmp), args.once, args.vm)


async def _until_signal_result(directory: Path, once: bool, vm: bool) -> int:
    result: list[int] = []

    async def body() -> None:
        result.append(await run_demo(directory, once=once, vm=vm))

    await until_signal(body)
    return result[0] if result else 0


STICK_FILES = {
    "hello.txt": b"Hello from a thin client, through the redirgate gateway.\n",
    "docs/README.txt": b"This stick is an image file served by redirgate's emulated flash drive.\n",
}

VM_SCRIPT = r"""
usb=$(wait_for_usb 1209 0001 90) || fail "the stick did not appear in the guest"
report_usb "$usb" stick
dev=$(wait_for_block sda 60) || fail "no disk for the stick"
mount_vfat "$dev" /mnt/stick
ls -lR /mnt/stick > /tmp/listing.txt
report_file listing /tmp/listing.txt
report_file hello /mnt/stick/hello.txt
umount /mnt/stick
kbd=$(wait_for_usb 1209 0002 30) && report_usb "$kbd" kbd || true
"""


def _vm_unavailable() -> str | None:
    from redirgate.cli.guestvm.image import fat_tools_unavailable_reason, guest_unavailable_reason

    return guest_unavailable_reason() or fat_tools_unavailable_reason()


def _make_stick(path: Path, *, with_files: bool) -> None:
    if with_files:
        from redirgate.cli.guestvm.image import make_fat_image

        make_fat_image(path, STICK_FILES)
        return
    with path.open("wb") as f:
        f.truncate(16 * 1024 * 1024)


async def _boot_vm(say: Any, ports: dict[str, int]) -> bool:
    """Boot the guest with a usb-redir per route; print what it saw."""
    from redirgate.cli.guestvm.image import build_guest
    from redirgate.cli.guestvm.qemu import GuestError, start_guest

    say("booting a guest (QEMU TCG; the first run builds its initramfs) ...")
    guest_image = await trio.to_thread.run_sync(build_guest)
    args = ["-device", "qemu-xhci,id=xhci"]
    for name, port in ports.items():
        args += [
            "-chardev",
            f"socket,id=rg-{name},host=127.0.0.1,port={port},reconnect=1",
            "-device",
            f"usb-redir,chardev=rg-{name},bus=xhci.0",
        ]
    try:
        with start_guest(VM_SCRIPT, args, guest=guest_image) as guest:
            result = await guest.wait_async(180)
    except GuestError as exc:
        say(f"  the guest did not finish: {exc}")
        return False
    if result.rc != 0:
        say(f"  the guest failed: {result.results.get('fail', result.rc)}")
        return False
    say(
        f"  guest sees {result.results.get('stick.manufacturer')} {result.results.get('stick.product')}"
        f" at {result.results.get('stick.speed')} Mb/s; its files:"
    )
    for line in result.files.get("listing", b"").decode(errors="replace").splitlines():
        say(f"    {line}")
    say(f"  hello.txt: {result.files.get('hello', b'').decode(errors='replace').strip()}")
    if "kbd.product" in result.results:
        say(f"  and the {result.results['kbd.product']} as a USB device")
    return True


async def run_demo(directory: Path, *, once: bool, vm: bool = False, out: Any = None) -> int:
    from redirgate.client.config import load_client_config
    from redirgate.client.service import ClientService
    from redirgate.gateway.config import Endpoint, load_config
    from redirgate.gateway.service import Gateway
    from redirgate.gateway.snippet import libvirt_xml, qemu_args
    from redirgate.vmside.probe import ProbeError, probe

    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"redirgate demo in {directory}")
    make_pki(directory)
    say("  PKI: a CA, a gateway certificate, a client certificate for thin-01")
    if vm:
        missing = _vm_unavailable()
        if missing is not None:
            say(f"redirgate demo --vm: {missing}")
            return 2
    stick = directory / "stick.img"
    _make_stick(stick, with_files=vm)
    config = load_config(write_gateway_config(directory, ROUTES))
    gateway = Gateway(config)
    failures = 0
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(gateway.serve)
        say(f"  gateway: tunnel on {addresses.tunnel[0]}:{addresses.tunnel[1]}, admin socket {addresses.admin}")
        client_config = load_client_config(
            write_client_config(
                directory, addresses.tunnel[1], virtual=[f"virtual:storage:{stick}", "virtual:keyboard"]
            )
        )
        client = ClientService(client_config)
        nursery.start_soon(client.run)
        with trio.fail_after(20):
            await client.client.connected.wait()
        say("  client thin-01: online, exporting an emulated flash drive and a keyboard")
        say()
        for route in config.routes:
            host, port = addresses.routes[route.name]
            say(f"route {route.name}: {host}:{port} -> {route.device} on {route.client}")
            try:
                found = await probe(host, port, timeout_s=20)
            except ProbeError as exc:
                failures += 1
                say(f"  probe FAILED: {exc}")
                continue
            for line in found.summary().splitlines()[:4]:
                say(f"  probe: {line}")
            live = dataclasses.replace(route, listen=Endpoint(host, port))
            say("  QEMU:    " + " ".join(shlex.quote(a) for a in qemu_args(config, live)))
            say("  libvirt:")
            for line in libvirt_xml(config, live).splitlines():
                say(f"    {line}")
            say()
        say("all routes answered" if not failures else f"{failures} route(s) did not answer")
        if vm and not failures:
            if not await _boot_vm(say, {name: port for name, (_, port) in addresses.routes.items()}):
                failures += 1
        if not once:
            say("running; Ctrl-C stops")
            while True:
                snap = gateway.snapshot()
                active = [r for r in snap["routes"] if r["state"] == "active"]
                up = sum(r["channel"]["bytes_to_device"] for r in active if r["channel"])
                down = sum(r["channel"]["bytes_to_hypervisor"] for r in active if r["channel"])
                out.write(
                    f"\r{len(snap['clients'])} client(s), {len(active)} live channel(s), "
                    f"{up} B to devices, {down} B to VMs   "
                )
                out.flush()
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return 1 if failures else 0
