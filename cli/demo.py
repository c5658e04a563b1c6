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
from redirgate.cli.usb_commands import _until_signal

__all__ = ["add_parser", "run_demo"]

log = logging.getLogger(__name__)

ROUTES = (LabRoute("stick", "usb:1209:0001"), LabRoute("keyboard", "usb:1209:0002"))


def add_parser(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run gateway + client + emulated devices on loopback and check each route")
    demo.add_argument("--once", action="store_true", help="stop after the check instead of running until Ctrl-C")
    demo.add_argument("--dir", type=Path, default=None, help="keep the PKI and configs here (default: a temporary folder)")
    demo.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return trio.run(_until_signal_result, args.dir, args.once)
    with tempfile.TemporaryDirectory(prefix="redirgate-demo-") as tmp:
        return trio.run(_until_signal_result, Path(tmp), args.once)


async def _until_signal_result(directory: Path, once: bool) -> int:
    result: list[int] = []

    async def body() -> None:
        result.append(await run_demo(directory, once=once))

    await _until_signal(body)
    return result[0] if result else 0


def _make_stick(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(16 * 1024 * 1024)


async def run_demo(directory: Path, *, once: bool, out: Any = None) -> int:
    from redirgate.client.config import load_client_config
    from redirgate.client.inventory import DeviceInventory
    from redirgate.client.probe import ProbeError, probe
    from redirgate.client.tunnel import TunnelClient
    from redirgate.client.virtual import make_backend
    from redirgate.gateway.config import Endpoint, load_config
    from redirgate.gateway.service import Gateway
    from redirgate.gateway.snippet import libvirt_xml, qemu_args

    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"redirgate demo in {directory}")
    make_pki(directory)
    say("  PKI: a CA, a gateway certificate, a client certificate for thin-01")
    stick = directory / "stick.img"
    _make_stick(stick)
    config = load_config(write_gateway_config(directory, ROUTES))
    gateway = Gateway(config)
    failures = 0
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(gateway.serve)
        say(f"  gateway: tunnel on {addresses.tunnel[0]}:{addresses.tunnel[1]}, admin socket {addresses.admin}")
        client_config = load_client_config(
            write_client_config(directory, addresses.tunnel[1], virtual=[f"virtual:storage:{stick}", "virtual:keyboard"])
        )
        backend = make_backend(list(client_config.export.virtual))
        client = TunnelClient(client_config, DeviceInventory(client_config.export, backend))

        async def run_client() -> None:
            try:
                await client.run()
            finally:
                backend.close()

        nursery.start_soon(run_client)
        with trio.fail_after(20):
            await client.connected.wait()
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
        if not once:
            say("running; Ctrl-C stops")
            while True:
                snap = gateway.snapshot()
                active = [r for r in snap["routes"] if r["state"] == "active"]
                up = sum(r["channel"]["bytes_to_device"] for r in active if r["channel"])
                down = sum(r["channel"]["bytes_to_hypervisor"] for r in active if r["channel"])
                out.write(f"\r{len(snap['clients'])} client(s), {len(active)} live channel(s), "
                          f"{up} B to devices, {down} B to VMs   ")  # fmt: skip
                out.flush()
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return 1 if failures else 0
