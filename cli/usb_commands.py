"""`redirgate client serve-usb`, `redirgate client devices`, `redirgate probe`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

import trio
import usb.core

from redirgate.cli.args import parse_hostport
from redirgate.cli.signals import until_signal
from redirgate.client.usb.errors import DeviceRefusedError, SelectorError
from redirgate.client.usb.hotplug import follow_usb_uevents
from redirgate.client.usb.selector import DeviceSelector, parse_selector
from redirgate.client.usb.serve import serve_connect, serve_listen, watch_presence
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
    devices.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per USB device: id, vendor_id, product_id, device_class, port_path, serial, "
        "exportable, reason",
    )
    devices.set_defaults(run=_run_devices)
    return sub


def add_probe_parser(commands: Any) -> None:
    parser = commands.add_parser("probe", help="speak the VM side to a usbredir port and describe the device")
    parser.add_argument("target", type=parse_hostport, metavar="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the device")
    parser.set_defaults(run=_run_probe)


def _run_serve_usb(args: argparse.Namespace) -> int:
    from redirgate.client.virtual import VirtualSpecError

    try:
        selector = parse_selector(args.device)
        source = source_for(selector)
    except (SelectorError, VirtualSpecError) as exc:
        print(f"redirgate: {exc}", file=sys.stderr)
        return 2
    try:
        return _serve_usb(args, selector, source)
    finally:
        close = getattr(source.backend, "close", None)
        if close is not None:
            close()  # emulated devices flush their image files


def _say(line: str) -> None:
    print(f"redirgate: {line}", file=sys.stderr, flush=True)


def _serve_usb(args: argparse.Namespace, selector: DeviceSelector, source: SelectorSource) -> int:
    try:
        source.check_blocking()
    except DeviceRefusedError as exc:
        # a hub or the boot device, named explicitly: never served
        _say(f"refusing {exc.device}: {exc.reason}")
        return 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # the kernel's uevents keep libusb's device list fresh (client/usb/libusb.py)
            await nursery.start(follow_usb_uevents, lambda: None)
            nursery.start_soon(watch_presence, source, _say)
            if args.listen:
                host, port = args.listen
                listeners = await nursery.start(serve_listen, host, port, source)
                for listener in listeners:
                    addr = listener.socket.getsockname()
                    print(f"serving {selector} on {addr[0]}:{addr[1]}", flush=True)
            else:
                host, port = args.connect
                nursery.start_soon(serve_connect, host, port, source)

    trio.run(until_signal, main)
    return 0


def _run_devices(args: argparse.Namespace) -> int:
    from redirgate.client.usb.safety import boot_usb_ports
    from redirgate.client.usb.source import find_devices
    from redirgate.proto.usbredir import filter as usbfilter

    rules = None
    if args.policy is not None:
        try:
            rules = usbfilter.parse_rules(args.policy)
        except usbfilter.FilterError as exc:
            print(f"redirgate: bad --policy: {exc}", file=sys.stderr)
            return 2
    found: list[Any] = []
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
        boot = boot_usb_ports()
        rows = [_device_row(dev, rules, boot) for dev in found]
    finally:
        for backend in backends:
            backend.close()
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=1))
        return 0
    print(f"{'PORT':<10}{'ID':<11}{'CLASS':<7}{'SPEED':<7}{'EXPORT':<8}{'MANUFACTURER':<22}{'PRODUCT':<28}SERIAL")
    for row in rows:
        print(row.line())
        if row.reason is not None:
            print(f"{'':<10}not exportable: {row.reason}")
    return 0


@dataclasses.dataclass
class _DeviceRow:
    """One line of `client devices` (and one object of its --json)."""

    vendor_id: int
    product_id: int
    port_path: str
    device_class: int | None = None
    speed: str = "-"
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    stable_id: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.stable_id,
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "device_class": self.device_class,
            "port_path": self.port_path,
            "serial": self.serial,
            "exportable": self.reason is None,
            "reason": self.reason,
            "description": " ".join(x for x in (self.manufacturer, self.product) if x),
        }

    def line(self) -> str:
        ident = f"{self.vendor_id:04x}:{self.product_id:04x}"
        klass = f"{self.device_class:#04x}" if self.device_class is not None else "-"
        export = "yes" if self.reason is None else "no"
        return (
            f"{self.port_path:<10}{ident:<11}{klass:<7}{self.speed:<7}{export:<8}"
            f"{(self.manufacturer or '-')[:21]:<22}{(self.product or '-')[:27]:<28}{self.serial or '-'}"
        )


def _device_row(dev: Any, rules: Any, boot: Mapping[str, str]) -> _DeviceRow:
    """What `client devices` says about one device: never-exported devices
    (hubs, the boot device) and the --policy verdict name their reason."""
    from redirgate.client.inventory import stable_id
    from redirgate.client.usb.descriptors import port_path, snapshot
    from redirgate.client.usb.errors import USB_CALL_ERRORS
    from redirgate.client.usb.safety import refusal
    from redirgate.proto.usbredir import filter as usbfilter

    try:
        snap = snapshot(dev)
    except USB_CALL_ERRORS as exc:
        return _DeviceRow(dev.idVendor, dev.idProduct, port_path(dev), reason=f"its descriptors cannot be read: {exc}")
    row = _DeviceRow(
        snap.vendor_id,
        snap.product_id,
        snap.port_path,
        snap.device_class,
        snap.speed.name.lower(),
        snap.manufacturer,
        snap.product,
        snap.serial,
        stable_id(snap),
    )
    row.reason = refusal(snap, boot)
    if row.reason is None and rules is not None:
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
        if not verdict.allowed:
            row.reason = f"the --policy rules do not allow it ({verdict.name.lower()})"
    return row


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
