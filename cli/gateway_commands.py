"""`redirgate gateway run|check|status|snippet` and `redirgate client run`.

Argument glue over `redirgate.gateway.service` and `redirgate.client.tunnel`;
signals are handled here (SIGTERM/SIGINT cancel the service), nowhere else.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import trio

from redirgate.cli.sdnotify import Notifier, listen_fds
from redirgate.cli.signals import until_signal

__all__ = ["add_client_run_parser", "add_gateway_parser", "format_status"]

log = logging.getLogger("redirgate.cli")


GATEWAY_CONFIG = Path("/etc/redirgate/gateway.toml")
CLIENT_CONFIG = Path("/etc/redirgate/client.toml")


def _config_option(parser: argparse.ArgumentParser, default: Path) -> None:
    parser.add_argument("--config", type=Path, default=default, metavar="FILE", help=f"default: {default}")


def _qemu_version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    if not major.isdigit() or not (minor or "0").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a QEMU version like 7.2 or 9.2")
    return int(major), int(minor or 0)


def add_gateway_parser(commands: Any) -> None:
    gateway = commands.add_parser("gateway", help="DMZ side: tunnel listener, routes, relay")
    sub = gateway.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT (SIGHUP reloads, SIGUSR2 restarts)")
    _config_option(run, GATEWAY_CONFIG)
    run.set_defaults(run=_run_gateway)

    restart = sub.add_parser(
        "restart",
        help="restart the running gateway into a new process (a new redirgate version) without unplugging any VM",
    )
    where = restart.add_mutually_exclusive_group()
    where.add_argument(
        "--config", type=Path, metavar="FILE", help=f"find the admin socket in this config ({GATEWAY_CONFIG})"
    )
    where.add_argument("--socket", type=Path, metavar="PATH", help="the admin socket itself")
    restart.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="how long to wait for the new process"
    )
    restart.set_defaults(run=_run_restart)

    check = sub.add_parser(
        "check", help="validate a gateway config and what run needs (ports, certificates, folders); every mistake"
    )
    _config_option(check, GATEWAY_CONFIG)
    check.set_defaults(run=_run_check)

    status = sub.add_parser("status", help="clients online, routes, live channels (through the admin socket)")
    where = status.add_mutually_exclusive_group()
    where.add_argument(
        "--config", type=Path, metavar="FILE", help=f"find the admin socket in this config ({GATEWAY_CONFIG})"
    )
    where.add_argument("--socket", type=Path, metavar="PATH", help="the admin socket itself")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(run=_run_status)

    disconnect = sub.add_parser(
        "disconnect", help="end a route's channel (the VM sees an unplug, QEMU reconnects) or a client's session"
    )
    where = disconnect.add_mutually_exclusive_group()
    where.add_argument(
        "--config", type=Path, metavar="FILE", help=f"find the admin socket in this config ({GATEWAY_CONFIG})"
    )
    where.add_argument("--socket", type=Path, metavar="PATH", help="the admin socket itself")
    disconnect.add_argument("target", metavar="ROUTE|CLIENT")
    disconnect.set_defaults(run=_run_disconnect)

    snippet = sub.add_parser("snippet", help="libvirt XML or QEMU arguments that attach a VM to a route")
    _config_option(snippet, GATEWAY_CONFIG)
    snippet.add_argument("route", metavar="ROUTE", nargs="?", help="the route (or --all)")
    snippet.add_argument("--all", action="store_true", help="every route, for one VM (one USB controller)")
    kind = snippet.add_mutually_exclusive_group(required=True)
    kind.add_argument("--libvirt", action="store_true", help="<redirdev>/<serial>/<parallel> XML")
    kind.add_argument("--qemu", action="store_true", help="qemu-system-x86_64 arguments")
    snippet.add_argument(
        "--qemu-version",
        type=_qemu_version,
        default=None,
        metavar="X.Y",
        help="reconnect= before 9.2, reconnect-ms= from 9.2 on (default: this machine's QEMU, else 7.2)",
    )
    snippet.set_defaults(run=_run_snippet)


def add_client_run_parser(client_commands: Any) -> None:
    run = client_commands.add_parser("run", help="dial the gateway and export devices until SIGTERM/SIGINT")
    _config_option(run, CLIENT_CONFIG)
    run.set_defaults(run=_run_client)
    check = client_commands.add_parser(
        "check", help="validate a client config and its certificate, key and CA; print every mistake"
    )
    _config_option(check, CLIENT_CONFIG)
    check.set_defaults(run=_run_client_check)


# ------------------------------------------------------------------ gateway
def _error(text: object) -> None:
    print(f"redirgate: {text}", file=sys.stderr)


def _load_gateway_config(path: Path) -> Any:
    from redirgate.gateway.config import ConfigErrors, load_config

    try:
        return load_config(path)
    except ConfigErrors as errors:
        for problem in errors.problems:
            _error(problem)
        return None


def _prepare_gateway(path: Path, *, successor: bool = False) -> Any:
    """The config with everything `run` needs checked (`preflight`), or None after printing why not.
    `successor`: a restart's new process, whose ports the running one holds and hands over."""
    from redirgate.gateway.preflight import preflight

    config = _load_gateway_config(path)
    if config is None:
        return None
    held = set()
    if successor:
        held = {config.tunnel_listen, *(route.listen for route in config.routes)}
        held.update([config.metrics_listen] if config.metrics_listen is not None else [])
    problems = preflight(config, held=held)
    for problem in problems:
        _error(problem)
    return None if problems else config


def _run_check(args: argparse.Namespace) -> int:
    config = _prepare_gateway(args.config)
    if config is None:
        return 1
    print(f"{args.config}: ok: tunnel on {config.tunnel_listen}, {len(config.routes)} route(s)")
    for route in config.routes:
        note = " (allow: loopback only, the default)" if route.allow_defaulted else ""
        tls = ", TLS" if route.tls else ""
        print(f"  {route.name}: {route.listen} -> {route.device} on {route.client} [{route.protocol}{tls}]{note}")
    if config.cluster is not None:
        cluster = config.cluster
        print(f"  cluster: node {cluster.node}, advertised as {cluster.advertise}, Redis {cluster.redis}")
    return 0


def _run_gateway(args: argparse.Namespace) -> int:
    from redirgate.gateway.admin import AdminSocketInUse, answer_timeout_s, check_admin_socket
    from redirgate.gateway.errors import GatewayError
    from redirgate.gateway.handover import HANDOVER_ENV, HandoverFailed, Inheritance
    from redirgate.gateway.pki import PkiError
    from redirgate.gateway.service import Gateway

    handover_fd = os.environ.pop(HANDOVER_ENV, "")  # a restart's new process: the old one hands over
    if handover_fd and not handover_fd.isdigit():
        _error(f"{HANDOVER_ENV}={handover_fd!r} is not a descriptor number")
        return 1
    config = _prepare_gateway(args.config, successor=bool(handover_fd))
    if config is None:
        return 1
    stored = _from_fd_store(listen_fds())  # systemd's fd store: what the process before this one stored
    try:
        if not handover_fd and "admin" not in stored:
            check_admin_socket(config.admin_socket)
    except AdminSocketInUse as exc:
        _error(exc)
        return 1
    try:
        gateway = Gateway(config)
    except PkiError as exc:  # a file changed between the check and now
        _error(f"{args.config}: {exc}")
        return 1
    notifier = Notifier()

    in_store = {_fd_name(name) for name in stored}  # what the fd store holds now, by FDNAME

    async def serve() -> None:
        inherited = await Inheritance.receive(int(handover_fd)) if handover_fd else None
        if inherited is None and stored:
            inherited = Inheritance.from_listeners(stored)
            log.info("gateway: %d listener(s) back from systemd's file-descriptor store", len(stored))
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(gateway.serve, inherited)
            _store_listeners(notifier, gateway, in_store)
            if inherited is not None and inherited.sock is not None:
                notifier.send(MAINPID=os.getpid())  # before the old main process exits
                await inherited.confirm()
            print(f"tunnel {addresses.tunnel[0]}:{addresses.tunnel[1]}", flush=True)
            for name, (host, port) in addresses.routes.items():
                print(f"route {name} {host}:{port}", flush=True)
            if addresses.metrics is not None:
                print(f"metrics {addresses.metrics[0]}:{addresses.metrics[1]}", flush=True)
            print(f"admin {addresses.admin}", flush=True)
            notifier.ready(_gateway_status(gateway))
            if notifier.enabled:
                nursery.start_soon(_keep_status, notifier, lambda: _gateway_status(gateway))

    async def reload() -> None:
        new = await trio.to_thread.run_sync(_reload_gateway_config, args.config, gateway.held_endpoints())
        if new is None:
            notifier.status("reload refused: the running configuration stays (see the log)")
            return
        try:
            await gateway.reload(new)
        except (GatewayError, PkiError, OSError) as exc:
            log.error("reload refused: %s; the running configuration stays", exc)
            return
        _store_listeners(notifier, gateway, in_store)  # routes added, moved or gone
        notifier.status(_gateway_status(gateway))

    async def restart() -> None:
        try:
            await gateway.restart()
        except HandoverFailed:
            notifier.status("restart called off: this process goes on serving (see the log)")
            return
        # the admin socket is the new process's now: the answers this one is writing
        # are finished first (a status cut short is torn JSON to its reader)
        with trio.move_on_after(answer_timeout_s() + 1):
            await gateway.admin_answers.finish()
        # the new process owns every socket now: this one's teardown must not touch
        # them (close QEMU's, remove the admin socket's file), so it ends here
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)

    _tune_gc()
    try:
        trio.run(functools.partial(until_signal, serve, reload=reload, notifier=notifier, restart=restart))
    except HandoverFailed as exc:
        _error(f"cannot take over from the running gateway: {exc.reason}")
        return 1
    except GatewayError as exc:
        _error(f"{args.config}: {exc}")
        return 1
    finally:
        notifier.close()
    return 0


def _fd_name(listener: str) -> str:
    """A listener's name in systemd's fd store (FDNAME may not hold ':'): route:NAME is route.NAME."""
    return "route." + listener[6:] if listener.startswith("route:") else listener


def _from_fd_store(fds: list[tuple[str, int]]) -> dict[str, list[socket.socket]]:
    """The listening sockets systemd gave back, by listener name (others are closed)."""
    named: dict[str, list[socket.socket]] = {}
    for fd_name, fd in fds:
        sock = socket.socket(fileno=fd)
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 0
        if not listening:
            log.warning("gateway: descriptor %d (%s) from systemd is not a listening socket; closed", fd, fd_name)
            sock.close()
            continue
        name = "route:" + fd_name[6:] if fd_name.startswith("route.") else fd_name
        named.setdefault(name, []).append(sock)
    return named


def _store_listeners(notifier: Notifier, gateway: Any, in_store: set[str]) -> None:
    """Keep every listening socket in systemd's file-descriptor store (units with
    `FileDescriptorStoreMax=`, which say so in `$FDSTORE`), so that the next process
    after a stop, a `systemctl restart` or a crash gets them back: connections made
    meanwhile wait in the backlog instead of being refused.  `in_store`: the names
    stored so far, updated (a listener gone since is dropped from the store)."""
    if not notifier.enabled or not os.environ.get("FDSTORE", "").isdigit() or int(os.environ["FDSTORE"]) <= 0:
        return
    groups: dict[str, list[int]] = {}
    for name, listener in gateway.listeners():
        groups.setdefault(_fd_name(name), []).append(listener.socket.fileno())
    for name in in_store - groups.keys():
        notifier.remove_stored(name)
    stored = set()
    for name, fds in groups.items():
        notifier.remove_stored(name)  # a listener the config moved: its old socket goes
        if notifier.store_fds(name, fds):
            stored.add(name)
    in_store.clear()
    in_store.update(stored)
    gateway.admin_stored = "admin" in stored  # its file must outlive this process
    log.info("gateway: %d listener(s) kept in systemd's file-descriptor store", len(stored))


#: the gateway's youngest-generation threshold (CPython's default is 700 allocations)
GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    """The gateway process's garbage collector, before it serves: what was imported and
    configured so far is moved out of the collector's sight for good (`gc.freeze`), and young
    objects are collected every GC_YOUNG_THRESHOLD allocations instead of 700.  A returning
    client allocates a few thousand objects (its handshake, session, tasks, messages), most
    freed at once by reference counting; with the defaults the collections ran every few
    clients and were about 12 % of the gateway's CPU while a herd of clients came back
    (measured: 0.45 s of 3.2 s for 1,000 clients; 0.15 s after, all of it before the first)."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _run_restart(args: argparse.Namespace) -> int:
    """SIGUSR2 to the gateway that answers on the admin socket, then wait until
    another process answers there (restarted) or the running one says why not."""
    from redirgate.gateway.admin import request

    before = _ask_gateway(args, {"command": "status"})
    if before is None:
        return 1
    pid = before.get("pid")
    if not isinstance(pid, int):
        _error("the running gateway does not say its pid (too old for `gateway restart`; restart it by hand)")
        return 1
    try:
        os.kill(pid, signal.SIGUSR2)
    except OSError as exc:
        _error(f"cannot signal the gateway (pid {pid}): {exc.strerror or exc}; run this as its user or root")
        return 1
    path = _admin_path(args)
    assert path is not None  # it answered above
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            now = request(path, {"command": "status"})
        except OSError:
            continue  # between the two processes
        if now.get("pid") != pid:
            print(f"gateway restarted: pid {pid} -> {now.get('pid')}; channels handed over, no VM unplugged")
            return 0
        if now.get("restart_failures", 0) > before.get("restart_failures", 0):
            _error(f"restart called off, pid {pid} goes on serving: {now['restart_failed']}")
            return 1
    _error(f"no new gateway process answered within {args.timeout:g} s; pid {pid} still serves (see its log)")
    return 1


def _reload_gateway_config(path: Path, held: Any) -> Any:
    """The new config for a reload, or None after logging every problem (a worker thread runs it)."""
    from redirgate.gateway.config import ConfigErrors, load_config
    from redirgate.gateway.preflight import preflight

    try:
        config = load_config(path)
        problems = preflight(config, held=held)
    except ConfigErrors as errors:
        problems = errors.problems
    for problem in problems:
        log.error("reload refused: %s", problem)
    if problems:
        log.error("reload refused: %d problem(s) in %s; the running configuration stays", len(problems), path)
        return None
    return config


def _gateway_status(gateway: Any) -> str:
    snap = gateway.snapshot()
    active = sum(1 for r in snap["routes"] if r["state"] == "active")
    refusals = snap["tunnel_refusals"] + sum(r["refusals"] for r in snap["routes"])
    return (
        f"{len(snap['clients'])} client(s) online, {active} of {len(snap['routes'])} route(s) attached, "
        f"{refusals} refusal(s)"
    )


async def _keep_status(notifier: Notifier, status: Any, every_s: float = 10.0) -> None:
    """STATUS= for `systemctl status`, refreshed while the service runs."""
    while True:
        await trio.sleep(every_s)
        notifier.status(status())


def _admin_path(args: argparse.Namespace) -> Path | None:
    if args.socket is not None:
        return Path(args.socket)
    config = _load_gateway_config(args.config or GATEWAY_CONFIG)
    return None if config is None else Path(config.admin_socket)


def _ask_gateway(args: argparse.Namespace, message: dict[str, Any]) -> dict[str, Any] | None:
    """One request on the running gateway's admin socket and its reply; None
    after saying why not (no config to find the socket in, nobody answers)."""
    from redirgate.gateway.admin import request

    path = _admin_path(args)
    if path is None:
        return None
    try:
        return request(path, message)
    except OSError as exc:
        _error(f"no gateway answers on {path}: {exc.strerror or exc}")
        return None


def _run_status(args: argparse.Namespace) -> int:
    status = _ask_gateway(args, {"command": "status"})
    if status is None:
        return 1
    print(json.dumps(status, indent=1, sort_keys=True) if args.json else format_status(status))
    return 0


def _run_disconnect(args: argparse.Namespace) -> int:
    reply = _ask_gateway(args, {"command": "disconnect", "target": args.target})
    if reply is None:
        return 1
    if not reply.get("ok"):
        print(f"redirgate: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    print(reply["done"])
    return 0


def _age(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _drops(entry: dict[str, Any]) -> str:
    """'; DROPPED 12 iso OUT packet(s) ...' for a client, route or channel whose client dropped packets, else ''."""
    iso_out, to_guest = entry.get("iso_out_dropped", 0), entry.get("to_guest_dropped", 0)
    said = []
    if iso_out:
        said.append(f"{iso_out} iso OUT packet(s) (the device behind the VM)")
    if to_guest:
        said.append(f"{to_guest} stream packet(s) to the VM (the VM reading too slowly)")
    return f"; DROPPED {' and '.join(said)}" if said else ""


def format_status(status: dict[str, Any]) -> str:
    routes = status["routes"]
    refusals = status["tunnel_refusals"] + sum(r.get("refusals", 0) for r in routes)
    lines = [
        f"gateway up {status['uptime_s']:.0f} s, {refusals} refusal(s) ({status['tunnel_refusals']} on the tunnel)"
        + (f", {status['reloads']} reload(s)" if status.get("reloads") else "")
    ]
    clients = status["clients"]
    more = status.get("clients_more", 0)
    lines.append(f"clients online: {len(clients) + more}")
    for c in clients:
        rtt = f", rtt {c['rtt_ms']} ms" if c.get("rtt_ms") is not None else ""
        lines.append(f"  {c['identity']} from {c['peer']} for {_age(c['since'])}{rtt}{_drops(c)}")
        for d in c["devices"]:
            lines.append(f"    {d['id']}{' (busy)' if d['busy'] else ''}  {d['description']}")
    if more:
        lines.append(f"  ... and {more} more (the admin socket lists the first {len(clients)})")
    counters = {k: v for k, v in status.get("counters", {}).items() if v}
    if counters:
        lines.append("held back: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    lines.append("routes:")
    for r in routes:
        state = r["state"]
        if state == "held":
            state += f" ({r['waiting_for']})"
        refused = f", {r['refusals']} refused" if r.get("refusals") else ""
        lines.append(f"  {r['name']}: {r['listen']} -> {r['device']} on {r['client']}: {state}{refused}{_drops(r)}")
        ch = r.get("channel")
        if ch:
            resume = ""
            if ch.get("resumable"):
                resume = "; SUSPENDED, waiting for the client to resume it" if ch.get("suspended") else "; resumable"
                resume += f" (resumed {ch['resumes']} time(s))" if ch.get("resumes") else ""
            lines.append(
                f"    channel {ch['id']} with {ch['hypervisor']} for {_age(ch['since'])}: "
                f"{ch['bytes_to_device']} B to the device, {ch['bytes_to_hypervisor']} B to the hypervisor{resume}"
                f"{_drops(ch)}"
            )
        for refusal in r.get("recent_refusals", [])[-3:]:
            lines.append(f"    refused {refusal['peer']} {_age(refusal['time'])} ago: {refusal['reason']}")
    if status.get("cluster"):
        lines += _format_cluster(status["cluster"])
    return "\n".join(lines)


def _format_cluster(cluster: dict[str, Any]) -> list[str]:
    """The whole cluster as this node saw it at its last heartbeat."""
    nodes = cluster.get("nodes", [])
    if cluster.get("redis_up"):
        redis = "up"
    else:
        since = cluster.get("down_since")
        redis = f"UNREACHABLE for {_age(since)}" if since else "not reached yet"
    lines = [f"cluster: node {cluster['node']}, Redis {cluster['redis']} {redis}, {len(nodes)} node(s) live"]
    for n in nodes:
        me = " (this node)" if n.get("self") else ""
        lines.append(
            f"  {n['name']}{me} at {n.get('advertise', '?')}: {n.get('clients', 0)} client(s), "
            f"{n.get('channels', 0)} channel(s)"
        )
    counters = cluster.get("counters", {})
    lines.append(
        f"  attaches here for clients on other nodes: {counters.get('remote_attaches', 0)}; refused while Redis "
        f"was unreachable: {counters.get('attaches_refused_redis_down', 0)}; Redis outages: "
        f"{counters.get('redis_outages', 0)}"
    )
    return lines


def _run_snippet(args: argparse.Namespace) -> int:
    from redirgate.gateway.snippet import libvirt_xml, libvirt_xml_all, local_qemu_version, qemu_args, qemu_args_all

    if args.all == (args.route is not None):
        _error("gateway snippet: name one ROUTE or give --all")
        return 2
    config = _load_gateway_config(args.config)
    if config is None:
        return 1
    if args.all:
        routes = list(config.routes)
        if not routes:
            _error(f"{args.config}: no [[route]] to print")
            return 1
    else:
        route = config.route(args.route)
        if route is None:
            names = ", ".join(r.name for r in config.routes) or "none"
            _error(f"no route {args.route!r} in {args.config} (routes: {names})")
            return 2
        routes = [route]
    if args.libvirt:
        print(libvirt_xml_all(config, routes) if args.all else libvirt_xml(config, routes[0]), end="")
        return 0
    version = args.qemu_version or local_qemu_version() or (7, 2)
    argv = (
        qemu_args_all(config, routes, qemu_version=version)
        if args.all
        else qemu_args(config, routes[0], qemu_version=version)
    )
    print(" ".join(shlex.quote(a) for a in argv))
    return 0


# ------------------------------------------------------------------ client
def _prepare_client(path: Path) -> Any:
    """The client config with its TLS files checked, or None after printing every problem."""
    from redirgate.client.config import ConfigError, load_client_config
    from redirgate.client.preflight import preflight

    try:
        config = load_client_config(path)
    except ConfigError as errors:
        for problem in errors.problems:
            _error(problem)
        return None
    problems = preflight(config)
    for problem in problems:
        _error(problem)
    return None if problems else config


def _run_client_check(args: argparse.Namespace) -> int:
    config = _prepare_client(args.config)
    if config is None:
        return 1
    exports = [
        *config.export.virtual,
        *(f"serial:{s.name}" for s in config.serial),
        *(f"parallel:{p.name}" for p in config.parallel),
    ]
    print(f"{args.config}: ok: gateway {config.gateway_host}:{config.gateway_port} as {config.server_name}")
    if exports:
        print(f"  exports: {', '.join(exports)}")
    return 0


def _run_client(args: argparse.Namespace) -> int:
    from redirgate.client.service import ClientService
    from redirgate.client.virtual.errors import VirtualSpecError

    config = _prepare_client(args.config)
    if config is None:
        return 1
    try:
        service = ClientService(config)
    except VirtualSpecError as exc:
        _error(f"{args.config}: export.virtual: {exc}")
        return 1
    print(f"client: dialling {config.gateway_host}:{config.gateway_port}", flush=True)
    notifier = Notifier()

    def status() -> str:
        client = service.client
        where = f"{client.config.gateway_host}:{client.config.gateway_port}"
        if not client.online:
            return f"connecting to {where}"
        return f"online to {where}, {len(client.channels)} channel(s)"

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            if config.metrics_listen is not None:
                from redirgate.client.metrics import client_registry
                from redirgate.transport import serve_metrics

                host, port = config.metrics_listen
                try:
                    listeners = await trio.open_tcp_listeners(port, host=host)
                except OSError as exc:
                    raise _StartError(
                        f"client.metrics_listen: cannot listen on {host}:{port}: {exc.strerror or exc}"
                    ) from None
                bound = listeners[0].socket.getsockname()
                print(f"metrics {bound[0]}:{bound[1]}", flush=True)
                healthy = lambda: (True, status())  # noqa: E731 - the endpoint asks at each request
                nursery.start_soon(serve_metrics, listeners, client_registry(service), healthy)
            nursery.start_soon(service.run)
            notifier.ready(status())
            if notifier.enabled:
                nursery.start_soon(_keep_status, notifier, status, 5.0)

    async def reload() -> None:
        new = await trio.to_thread.run_sync(_reload_client_config, args.config)
        if new is None:
            notifier.status("reload refused: the running configuration stays (see the log)")
            return
        try:
            service.reload(new)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error("reload refused: %s; the running configuration stays", exc)

    try:
        trio.run(functools.partial(until_signal, serve, reload=reload, notifier=notifier))
    except _StartError as exc:
        _error(f"{args.config}: {exc}")
        return 1
    finally:
        notifier.close()
    return 0


class _StartError(Exception):
    """The client could not start something its config asks for (names the key)."""


def _reload_client_config(path: Path) -> Any:
    """The new client config for a reload, or None after logging every problem (a worker thread runs it)."""
    from redirgate.client.config import ConfigError, load_client_config
    from redirgate.client.preflight import preflight

    try:
        config = load_client_config(path)
        problems = preflight(config)
    except ConfigError as errors:
        problems = errors.problems
    for problem in problems:
        log.error("reload refused: %s", problem)
    if problems:
        log.error("reload refused: %d problem(s) in %s; the running configuration stays", len(problems), path)
        return None
    return config
