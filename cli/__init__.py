"""The `redirgate` command line: the one place that composes client and gateway.

`redirgate.client` and `redirgate.gateway` must not import each other; the CLI
(and the demo it runs) is the composition root that may use both.  It owns
argument parsing, logging setup and signal handling, nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from redirgate.cli import (
    demo,
    gateway_commands,
    host_commands,
    install_service,
    parallel_commands,
    pki_commands,
    selfcheck,
    serial_commands,
    usb_commands,
)
from redirgate.cli.logs import FORMATS, LEVELS, hoist_log_options, setup_logging

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
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug); also after the subcommand"
    )
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=None,
        help="log level (default: info for the services, gateway run and client run; else warning)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="auto",
        help="plain lines, journal (<N> priority prefixes; auto under systemd), or json (one object per line)",
    )
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
    install_service.add_parser(commands)
    return parser


#: (command, subcommand) pairs that run as services: INFO by default (the
#: standalone serve-* commands say what they serve on stdout/stderr themselves)
_SERVICES = {("gateway", "run"), ("client", "run")}


def _log_level(args: argparse.Namespace) -> int:
    if args.log_level is not None:
        return int(getattr(logging, args.log_level.upper()))
    sub = getattr(args, "gateway_command", None) or getattr(args, "client_command", None)
    base = logging.INFO if (args.command, sub) in _SERVICES else logging.WARNING
    return max(logging.DEBUG, base - 10 * args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(hoist_log_options(sys.argv[1:] if argv is None else argv))
    setup_logging(_log_level(args), args.log_format)
    # A crash in native code (libusb through ctypes, OpenSSL) would otherwise end
    # a service with no word in its log: Python's own fault handler writes each
    # thread's stack to stderr (the journal) on SIGSEGV, SIGBUS, SIGABRT, SIGFPE.
    # (An stderr without a file descriptor, as under a test's capture, keeps the
    # handler it had.)
    with contextlib.suppress(ValueError, OSError, AttributeError):
        faulthandler.enable()
    if args.command is None:
        parser.print_help()
        return 0
    try:
        result: int = args.run(args)
    except BrokenPipeError:
        # `redirgate gateway status | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    return result
