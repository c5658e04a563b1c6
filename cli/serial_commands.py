"""`redirgate client serve-serial` (standalone mode, ser2net's job) and the serial
section of `redirgate client devices`.

Owns argument parsing and printing for serial ports only; the work is
`redirgate.client.serial` (PortService + serve_serial_listen).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from redirgate.cli.args import int_in, parse_hostport, run_port_server
from redirgate.client.serial.errors import SerialError
from redirgate.client.serial.selector import list_ports, parse_port_selector
from redirgate.client.serial.serve import serve_serial_listen
from redirgate.client.serial.service import DEFAULT_RING_BYTES, PortService
from redirgate.client.serial.settings import LineSettings

__all__ = ["add_client_parsers", "print_serial_ports"]

log = logging.getLogger("redirgate")


def add_client_parsers(client_commands: Any) -> None:
    """Add `client serve-serial` and a serial section to `client devices`."""
    serve = client_commands.add_parser(
        "serve-serial",
        help="serve one serial port on TCP (raw or RFC 2217), like ser2net",
        description="PORT: a /dev path, a /dev/serial/by-id name (or by-id:NAME), or a USB-serial "
        "adapter's VID:PID[:SERIAL].  The port stays open while nobody is connected; what it "
        "sends meanwhile is kept in a ring buffer and replayed to the next consumer.",
    )
    serve.add_argument(
        "--listen", type=parse_hostport, required=True, metavar="HOST:PORT", help="where consumers connect"
    )
    serve.add_argument("port", metavar="PORT")
    serve.add_argument("--baud", type=int_in(1), default=None, help="baud rate (overrides --settings)")
    serve.add_argument(
        "--settings",
        default="115200,8N1",
        metavar="LINE",
        help="BAUD[,BITS PARITY STOP][,rtscts][,xonxoff][,dtr=on|off][,rts=on|off], e.g. 9600,8N1,rtscts "
        "(default 115200,8N1)",
    )
    serve.add_argument("--rfc2217", action="store_true", help="speak telnet + RFC 2217 (pyserial rfc2217://)")
    serve.add_argument(
        "--ring-bytes",
        type=int_in(1),
        default=DEFAULT_RING_BYTES,
        metavar="N",
        help=f"bytes kept while nobody is connected (default {DEFAULT_RING_BYTES})",
    )
    serve.add_argument("--takeover", action="store_true", help="a new consumer takes the port from the current one")
    serve.set_defaults(run=_run_serve_serial)

    devices = client_commands.choices.get("devices")
    if devices is not None:
        devices.set_defaults(run=_with_serial_section(devices.get_default("run")))


def _with_serial_section(run_usb: Callable[[argparse.Namespace], int] | None) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result = run_usb(args) if run_usb is not None else 0
        if result == 0 and not getattr(args, "json", False):  # --json: the USB devices only
            print()
            print_serial_ports()
        return result

    return run


def print_serial_ports() -> None:
    """The serial ports serial.tools.list_ports knows, one a line."""
    rows = list_ports()
    print("SERIAL PORTS")
    if not rows:
        print("(none found)")
        return
    print(f"{'DEVICE':<16}{'ID':<11}{'SERIAL':<18}{'LOCATION':<12}{'DESCRIPTION':<30}BY-ID")
    for row in rows:
        vid, pid = row["vid"], row["pid"]
        ident = f"{vid:04x}:{pid:04x}" if isinstance(vid, int) and isinstance(pid, int) else "-"
        print(
            f"{row['device']!s:<16}{ident:<11}{(row['serial_number'] or '-')!s:<18}"
            f"{(row['location'] or '-')!s:<12}{str(row['description'] or '-')[:29]:<30}{row['by_id'] or '-'}"
        )


def _run_serve_serial(args: argparse.Namespace) -> int:
    try:
        selector = parse_port_selector(args.port)
        settings = LineSettings.parse(args.settings)
        if args.baud is not None:
            settings = settings.replace(baud=args.baud)
    except SerialError as exc:
        print(f"redirgate: {exc}", file=sys.stderr)
        return 2
    service = PortService(str(selector), selector, settings, ring_bytes=args.ring_bytes, takeover=args.takeover)
    protocol = "rfc2217" if args.rfc2217 else "raw"
    host, port = args.listen
    listen = partial(serve_serial_listen, host, port, service, protocol=protocol)
    return run_port_server(service.run, listen, f"{selector} ({settings.describe()}, {protocol})", SerialError)
