"""Argument types and the standalone port-server runner shared by the `client serve-*` commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from redirgate.cli.signals import until_signal

__all__ = ["int_in", "parse_hostport", "run_port_server"]


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} out of range")
    return host, number


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= low (and <= high when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def run_port_server(
    run_service: Callable[..., Awaitable[None]],
    listen: Callable[..., Awaitable[None]],
    banner: str | Callable[[], str],
    errors: type[Exception],
) -> int:
    """Run a port service and its TCP listener until SIGTERM/SIGINT.

    Prints `serving {banner} on HOST:PORT` per bound listener (tests and
    scripts read it); a callable banner is asked once the service has
    started (its first open done), so it can say what it found.  The
    service's `errors` end the command with status 1.
    """

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_service)
            listeners: list[Any] = await nursery.start(listen)
            what = banner() if callable(banner) else banner
            for listener in listeners:
                addr = listener.socket.getsockname()
                print(f"serving {what} on {addr[0]}:{addr[1]}", flush=True)

    try:
        trio.run(until_signal, serve)
    except errors as exc:
        print(f"redirgate: {exc}", file=sys.stderr)
        return 1
    return 0
