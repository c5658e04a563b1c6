"""`redirgate client serve-usb`, `redirgate client devices`, `redirgate probe`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import trio
import usb.core

from redirgate.cli.args import parse_hostport
from redirgate.cli.signals import until_signal
from redirgate.client.usb.errors import SelectorError
from redirgate.client.usb.selector import DeviceSelector, parse_selector
from redirgate.client.usb.serve import serve_connect, serve_listen
from redirgate.client.usb.source import SelectorSource
from redirgate.vmside.probe import ProbeError, probe

__all__ = ["add_client_parsers", "add_probe_parser", "parse_hostport", "source_for"]

log = logging.getLogger("redirgate")


def source_for(selector: DeviceSelector) -> SelectorSource:
    """A device source for a selector; `virtual:` ones get their emulated backend."""
    if selector.virtual is not None:
        from redirgate.client.virtual import make_backend

        return SelectorSource(selector, backend=make_backend([selector.virtual]))
    return SelectorSource(selector)


def add_client_parsers(commands: Any) -> Any:
    """Add `client` and its USB subcommands; returns the `client` subparsers
    so other command modules can add theirs."""
    client = commands.add_parser("client", help="thin-client side: export local devices")
    sub = client.add_subparsers(dest="client_command", metavar="SUBCOMMAND", required=True)

    serve = sub.add_parser(
        "serve-usb",
        help="serve one USB device to QEMU directly (like usbredirserver / usbredirect)",
        description="DEVICE: VID:PID[:SERIAL], BUS-PORT (1-2.3), BUS/ADDR, or virtual:storage:IMAGE, "
        "virtual:keyboard, virtual:loopback",
    )
    mode = serve.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", type=parse_hostport, metavar="HOST:PORT", help="wait for QEMU to connect")
    mode.add_argument("--connect", type=parse_hostport, metavar="HOST:PORT", help="dial a QEMU chardev with server=on")
    serve.add_argument("device", metavar="DEVICE")
    serve.set_defaults(run=_run_serve_usb)

    devices = sub.add_parser(
        "devices", help="list local USB devices like lsusb, and which ones the export policy allows"
    )
    devices.add_argument(
        "--policy",
        metavar="RULES",
        default=None,
        help="usbredir filter rules, e.g. '0x08,-1,-1,-1,1|-1,-1,-1,-1,0' (mass storage only); "
        "a device no rule matches is not exported",
    )
    devices.add_argument(
        "--virtual",
        metavar="SPEC",
        action="append",
        default=[],
        help="also list an emulated device (virtual:storage:IMAGE, virtual:keyboard, virtual:loopback)",
    )
    devices.set_defaults(run=_run_devices)
    return sub


def add_probe_parser(commands: Any) -> None:
    parser = commands.add_parser("probe", help="speak the VM side to a usbredir port and describe the device")
    parser.add_argument("target", type=parse_hostport, metavar="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the device")
    parser.set_defaults(run=_run_probe)


def _run_serve_usb(args: argparse.Namespace) -> int:
    try:
        selector = parse_selector(args.device)
    except SelectorError as exc:
        print(f"redirgate: {exc}", file=sys.stderr)
        return 2
    source = source_for(selector)

    async def main() -> None:
        if args.listen:
            host, port = args.listen

            async def serve() -> None:
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(serve_listen, host, port, source)
                    for listener in listeners:
                        addr = listener.socket.getsockname()
                        print(f"serving {selector} on {addr[0]}:{addr[1]}", flush=True)

            await until_signal(serve)
        else:
            host, port = args.connect
            await until_signal(serve_connect, host, port, source)

    try:
        trio.run(main)
    finally:
        close = getattr(source.backend, "close", None)
        if close is not None:
            close()  # emulated devices flush their image files
    return 0


def _run_devices(args: argparse.Namespace) -> int:
    from redirgate.client.usb.descriptors import snapshot
    from redirgate.client.usb.source import find_devices
    from redirgate.proto.usbredir import filter as usbfilter

    rules = None
    if args.policy is not None:
        try:
            rules = usbfilter.parse_rules(args.policy)
        except usbfilter.FilterError as exc:
            print(f"redirgate: bad --policy: {exc}", file=sys.stderr)
            return 2
    found = []
    try:
        found += find_devices()
    except (usb.core.NoBackendError, usb.core.USBError) as exc:
        print(f"redirgate: cannot list USB devices through libusb: {exc}", file=sys.stderr)
    backends = []
    if args.virtual:
        from redirgate.client.virtual import VirtualSpecError, make_backend

        try:
            backends.append(make_backend(args.virtual))
        except VirtualSpecError as exc:
            print(f"redirgate: {exc}", file=sys.stderr)
            return 2
        found += find_devices(backends[0])
    try:
        print(f"{'PORT':<10}{'ID':<11}{'CLASS':<7}{'SPEED':<7}{'EXPORT':<8}{'MANUFACTURER':<22}{'PRODUCT':<28}SERIAL")
        for dev in found:
            snap = snapshot(dev)
            export = "yes"
            if rules is not None:
                verdict = usbfilter.check(
                    rules,
                    snap.device_class,
                    snap.device_subclass,
                    snap.device_protocol,
                    snap.interface_classes({}) or _all_interface_classes(snap),
                    snap.vendor_id,
                    snap.product_id,
                    snap.bcd_device,
                )
                export = "yes" if verdict.allowed else "no"
            print(
                f"{snap.port_path:<10}{snap.id:<11}{snap.device_class:#04x}   {snap.speed.name.lower():<7}"
                f"{export:<8}{(snap.manufacturer or '-')[:21]:<22}{(snap.product or '-')[:27]:<28}{snap.serial or '-'}"
            )
    finally:
        for backend in backends:
            backend.close()
    return 0


def _all_interface_classes(snap: Any) -> tuple[tuple[int, int, int], ...]:
    """Interface classes of the first configuration (an unconfigured device
    is judged by what it will show once configured)."""
    for config in snap.configs.values():
        return tuple(
            (alts[0].interface_class, alts[0].interface_subclass, alts[0].interface_protocol)
            for alts in config.interfaces.values()
        )
    return ()


def _run_probe(args: argparse.Namespace) -> int:
    host, port = args.target
    try:
        result = trio.run(lambda: probe(host, port, timeout_s=args.timeout))
    except ProbeError as exc:
        print(f"redirgate probe: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
