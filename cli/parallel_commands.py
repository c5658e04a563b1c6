"""`redirgate client serve-parallel`: one printer port on TCP (standalone mode).

Owns argument parsing and printing for parallel ports only; the work is
`redirgate.client.parallel` (PrinterService + serve_parallel_listen).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Any

from redirgate.cli.args import int_in, parse_hostport, run_port_server
from redirgate.client.parallel.errors import ParallelError
from redirgate.client.parallel.exports import MAX_RING_BYTES
from redirgate.client.parallel.serve import serve_parallel_listen
from redirgate.client.parallel.service import DEFAULT_QUEUE_BYTES, PrinterService

__all__ = ["add_client_parsers"]


def add_client_parsers(client_commands: Any) -> None:
    """Add `client serve-parallel`."""
    serve = client_commands.add_parser(
        "serve-parallel",
        help="serve one printer port on TCP (what QEMU's isa-parallel chardev connects to)",
        description="PORT: a device path, /dev/lpN, /dev/usb/lpN or /dev/parportN (a file, FIFO or pty "
        "works too: status unknown).  Consumer bytes go to the printer; the consumer is always read, "
        "and what the printer cannot take yet (off, offline, out of paper, unplugged) is queued up "
        "to --ring-bytes and written when it is back.",
    )
    serve.add_argument(
        "--listen", type=parse_hostport, required=True, metavar="HOST:PORT", help="where consumers connect"
    )
    serve.add_argument("port", metavar="PORT")
    serve.add_argument(
        "--ring-bytes",
        type=int_in(1, MAX_RING_BYTES),
        default=DEFAULT_QUEUE_BYTES,
        metavar="N",
        help=f"bytes queued for the printer at most (default {DEFAULT_QUEUE_BYTES})",
    )
    serve.set_defaults(run=_run_serve_parallel)


def _run_serve_parallel(args: argparse.Namespace) -> int:
    path: str = args.port
    if not path.startswith("/"):
        print(f"redirgate: {path!r}: expected a device path such as /dev/lp0", file=sys.stderr)
        return 2
    service = PrinterService(path, path, queue_bytes=args.ring_bytes)
    host, port = args.listen
    listen = partial(serve_parallel_listen, host, port, service)
    # the banner is made after the first open: "(printer absent)" only when it is
    return run_port_server(service.run, listen, lambda: f"{path} ({service.describe()})", ParallelError)
