"""The `redirgate` command line: the one place that composes client and gateway.

`redirgate.client` and `redirgate.gateway` must not import each other; the CLI
(and the demo it runs) is the composition root that may use both.  It owns
argument parsing, logging setup and signal handling, nothing else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import metadata

from redirgate.cli import (
    demo,
    gateway_commands,
    host_commands,
    parallel_commands,
    pki_commands,
    selfcheck,
    serial_commands,
    usb_commands,
)

__all__ = ["build_parser", "main"]


def _version() -> str:
    try:
        return metadata.version("redirgate")
    except metadata.PackageNotFoundError:  # running from a bare checkout
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redirgate",
        description="USB (usbredir) and serial/parallel redirection from thin clients "
        "to virtual machines, through a TLS gateway.",
    )
    parser.add_argument("--version", action="version", version=f"redirgate {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    client_commands = usb_commands.add_client_parsers(commands)
    gateway_commands.add_client_run_parser(client_commands)
    serial_commands.add_client_parsers(client_commands)
    parallel_commands.add_client_parsers(client_commands)
    gateway_commands.add_gateway_parser(commands)
    demo.add_parser(commands)
    usb_commands.add_probe_parser(commands)
    selfcheck.add_parser(commands)
    pki_commands.add_parser(commands)
    host_commands.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command is None:
        parser.print_help()
        return 0
    result: int = args.run(args)
    return result
