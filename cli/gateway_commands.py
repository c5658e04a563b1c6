"""`redirgate gateway run|check|status|snippet` and `redirgate client run`.

Argument glue over `redirgate.gateway.service` and `redirgate.client.tunnel`;
signals are handled here (SIGTERM/SIGINT cancel the service), nowhere else.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import trio

from redirgate.cli.signals import until_signal

__all__ = ["add_client_run_parser", "add_gateway_parser", "format_status"]


def add_gateway_parser(commands: Any) -> None:
    gateway = commands.add_parser("gateway", help="DMZ side: tunnel listener, routes, relay")
    sub = gateway.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, type=Path, metavar="FILE")
    run.set_defaults(run=_run_gateway)

    check = sub.add_parser("check", help="validate a gateway config; print every mistake with its line")
    check.add_argument("--config", required=True, type=Path, metavar="FILE")
    check.set_defaults(run=_run_check)

    status = sub.add_parser("status", help="clients online, routes, live channels (through the admin socket)")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, metavar="FILE", help="find the admin socket in this config")
    where.add_argument("--socket", type=Path, metavar="PATH", help="the admin socket itself")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(run=_run_status)

    snippet = sub.add_parser("snippet", help="libvirt XML or QEMU arguments that attach a VM to a route")
    snippet.add_argument("--config", required=True, type=Path, metavar="FILE")
    snippet.add_argument("route", metavar="ROUTE")
    kind = snippet.add_mutually_exclusive_group(required=True)
    kind.add_argument("--libvirt", action="store_true", help="<redirdev>/<serial>/<parallel> XML")
    kind.add_argument("--qemu", action="store_true", help="qemu-system-x86_64 arguments")
    snippet.add_argument(
        "--qemu-version", default="7.2", metavar="X.Y", help="reconnect= before 9.2, reconnect-ms= after"
    )
    snippet.set_defaults(run=_run_snippet)


def add_client_run_parser(client_commands: Any) -> None:
    run = client_commands.add_parser("run", help="dial the gateway and export devices until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, type=Path, metavar="FILE")
    run.set_defaults(run=_run_client)


# ------------------------------------------------------------------ gateway
def _load_gateway_config(path: Path) -> Any:
    from redirgate.gateway.config import ConfigErrors, load_config

    try:
        return load_config(path)
    except ConfigErrors as errors:
        for problem in errors.problems:
            print(f"redirgate: {problem}", file=sys.stderr)
        return None


def _run_check(args: argparse.Namespace) -> int:
    config = _load_gateway_config(args.config)
    if config is None:
        return 1
    print(f"{args.config}: ok: tunnel on {config.tunnel_listen}, {len(config.routes)} route(s)")
    for route in config.routes:
        note = " (allow: loopback only, the default)" if route.allow_defaulted else ""
        tls = ", TLS" if route.tls else ""
        print(f"  {route.name}: {route.listen} -> {route.device} on {route.client} [{route.protocol}{tls}]{note}")
    return 0


def _run_gateway(args: argparse.Namespace) -> int:
    from redirgate.gateway.service import Gateway

    config = _load_gateway_config(args.config)
    if config is None:
        return 1
    gateway = Gateway(config)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(gateway.serve)
            print(f"tunnel {addresses.tunnel[0]}:{addresses.tunnel[1]}", flush=True)
            for name, (host, port) in addresses.routes.items():
                print(f"route {name} {host}:{port}", flush=True)
            print(f"admin {addresses.admin}", flush=True)

    trio.run(until_signal, serve)
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from redirgate.gateway.admin import read_status

    path = args.socket
    if path is None:
        config = _load_gateway_config(args.config)
        if config is None:
            return 1
        path = config.admin_socket
    try:
        status = read_status(path)
    except OSError as exc:
        print(f"redirgate: no gateway answers on {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=1, sort_keys=True) if args.json else format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    lines = [f"gateway up {status['uptime_s']:.0f} s, {status['tunnel_refusals']} tunnel refusal(s)"]
    clients = status["clients"]
    more = status.get("clients_more", 0)
    lines.append(f"clients online: {len(clients) + more}")
    for c in clients:
        rtt = f", rtt {c['rtt_ms']} ms" if c.get("rtt_ms") is not None else ""
        lines.append(f"  {c['identity']} from {c['peer']} for {time.time() - c['since']:.0f} s{rtt}")
        for d in c["devices"]:
            lines.append(f"    {d['id']}{' (busy)' if d['busy'] else ''}  {d['description']}")
    if more:
        lines.append(f"  ... and {more} more (the admin socket lists the first {len(clients)})")
    counters = {k: v for k, v in status.get("counters", {}).items() if v}
    if counters:
        lines.append("held back: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    lines.append("routes:")
    for r in status["routes"]:
        state = r["state"]
        if state == "held":
            state += f" ({r['waiting_for']})"
        lines.append(f"  {r['name']}: {r['listen']} -> {r['device']} on {r['client']}: {state}")
        ch = r.get("channel")
        if ch:
            lines.append(
                f"    channel {ch['id']} with {ch['hypervisor']}: {ch['bytes_to_device']} B to the device, "
                f"{ch['bytes_to_hypervisor']} B to the hypervisor"
            )
    return "\n".join(lines)


def _run_snippet(args: argparse.Namespace) -> int:
    from redirgate.gateway.snippet import libvirt_xml, qemu_args

    config = _load_gateway_config(args.config)
    if config is None:
        return 1
    route = config.route(args.route)
    if route is None:
        names = ", ".join(r.name for r in config.routes) or "none"
        print(f"redirgate: no route {args.route!r} in {args.config} (routes: {names})", file=sys.stderr)
        return 2
    if args.libvirt:
        print(libvirt_xml(config, route))
    else:
        major, _, minor = args.qemu_version.partition(".")
        version = (int(major), int(minor or 0))
        print(" ".join(shlex.quote(a) for a in qemu_args(config, route, qemu_version=version)))
    return 0


# ------------------------------------------------------------------ client
def _run_client(args: argparse.Namespace) -> int:
    from redirgate.client.config import ConfigError, load_client_config
    from redirgate.client.service import ClientService
    from redirgate.client.virtual.errors import VirtualSpecError

    try:
        config = load_client_config(args.config)
    except ConfigError as errors:
        for problem in errors.problems:
            print(f"redirgate: {problem}", file=sys.stderr)
        return 1
    try:
        service = ClientService(config)
    except VirtualSpecError as exc:
        print(f"redirgate: {args.config}: export.virtual: {exc}", file=sys.stderr)
        return 1
    print(f"client: dialling {config.gateway_host}:{config.gateway_port}", flush=True)
    trio.run(until_signal, service.run)
    return 0
