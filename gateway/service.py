"""The gateway service: one tunnel listener, one listener per route, the admin socket.

`serve_gateway(config)` runs until cancelled (the CLI cancels it on
SIGTERM/SIGINT).  It reports where it listens through `task_status.started`
(a `GatewayAddresses`), so tests and the demo can bind port 0.  Shutdown
choreography: cancelling the one nursery closes the listeners first (no new
connections), then every connection task unwinds; relays close both of
their streams on the way out, so QEMU and the clients see the end.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography import x509

from redirgate.gateway.admin import AdminAnswers, AdminRequest, Streamed, open_admin, serve_admin
from redirgate.gateway.admission import AcceptPause, serve_bounded
from redirgate.gateway.cluster.channels import RemoteChannels
from redirgate.gateway.cluster.identity import ClusterIdentity
from redirgate.gateway.cluster.metrics import ClusterCollector
from redirgate.gateway.cluster.node import ClusterNode
from redirgate.gateway.config import Endpoint, GatewayConfig, Route
from redirgate.gateway.errors import ListenError
from redirgate.gateway.events import AuditLog, GatewayCollector, GatewayEvents
from redirgate.gateway.handover import HandoverFailed, Inheritance, guard_of, hand_over
from redirgate.gateway.pki import EXPIRY_WARNING_DAYS, RevocationList, certificate_expiry
from redirgate.gateway.registry import Registry
from redirgate.gateway.route_server import RouteServer
from redirgate.gateway.tunnel_server import TunnelServer
from redirgate.transport import RelayReactor, hypervisor_server_context, serve_metrics, server_context

__all__ = ["Gateway", "GatewayAddresses", "serve_gateway"]

log = logging.getLogger(__name__)


@dataclass
class GatewayAddresses:
    tunnel: tuple[str, int]
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    admin: Path | None = None
    metrics: tuple[str, int] | None = None


def contained(
    handler: Callable[[trio.SocketStream], Awaitable[None]], what: str
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A connection handler whose unexpected errors end that connection only.

    Expected failures are handled (and logged) inside the handlers; this is
    the last line that keeps one connection's bug from stopping the
    listener and with it every other connection.
    """

    async def run(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except Exception:
            log.exception("%s: internal error on one connection; it was closed, the gateway goes on", what)
            await trio.aclose_forcefully(stream)

    return run


def _bound(listeners: list[trio.SocketListener]) -> tuple[str, int]:
    host, port = listeners[0].socket.getsockname()[:2]
    return host, port


async def _open_listeners(endpoint: Endpoint, what: str) -> list[trio.SocketListener]:
    """TCP listeners for `endpoint`, or ListenError naming `what` and the port."""
    try:
        return await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
    except OSError as exc:
        raise ListenError(what, f"cannot listen on {endpoint}: {exc.strerror or exc}") from None


def _listens_on(listeners: list[trio.SocketListener], endpoint: Endpoint) -> bool:
    """Whether inherited `listeners` are on the config's `endpoint`'s port (any, where it says 0).
    Ports only: a host name and the address it resolves to are the same listener."""
    return not endpoint.port or all(listener.socket.getsockname()[1] == endpoint.port for listener in listeners)


async def _close_all(groups: list[list[trio.SocketListener]]) -> None:
    for listeners in groups:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


@dataclass
class _RouteTask:
    server: RouteServer
    scope: trio.CancelScope
    done: trio.Event
    bound: tuple[str, int]
    listeners: list[trio.SocketListener] = field(default_factory=list)


class Gateway:
    """The gateway's live objects (see `serve_gateway`).

    Everything here belongs to the one trio loop that runs `serve`;
    `reload` runs on that loop too (the CLI calls it on SIGHUP).
    """

    def __init__(self, config: GatewayConfig, *, admin: bool = True) -> None:
        self.config = config
        self.started_at = time.time()
        self.registry = Registry()
        self.revocation = _revocation(config)
        self.tunnel = TunnelServer(
            self.registry,
            server_context(config.cert, config.key, config.ca),
            revocation=self.revocation,
            handshake_timeout_s=config.handshake_timeout_s,
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            heartbeat_rtt_every=config.heartbeat_rtt_every,
            limits=config.client_limits,
            handshake_limits=config.handshake_limits,
        )
        self.cluster: ClusterNode | None = None
        self.remote: RemoteChannels | None = None
        if config.cluster is not None:
            self.cluster = ClusterNode(config.cluster, self.registry, describe=self._cluster_describe)
            self.remote = RemoteChannels(self.cluster, self.registry)
            self.tunnel.peers = self.cluster.peer_addresses
            self.tunnel.remote_acks = self.remote.acks
            self.tunnel.cluster_identity = ClusterIdentity(self.cluster, self.registry, self.tunnel)
        self.events = GatewayEvents(
            AuditLog(config.audit_log) if config.audit_log is not None else None,
            node=config.cluster.node if config.cluster is not None else None,
        )
        self.events.watch(GatewayCollector(self._metrics_state))
        if self.cluster is not None:
            self.events.watch(ClusterCollector(self.cluster))
        self.tunnel.events = self.events
        self.expiry = certificate_expiry(_certificate_files(config))
        self.routes = [self._route_server(route) for route in config.routes]
        self.admin = admin
        self.addresses: GatewayAddresses | None = None
        self.reloads = 0
        self._reactor: RelayReactor | None = None
        self._nursery: trio.Nursery | None = None
        self._tasks: dict[str, _RouteTask] = {}
        #: stops and restarts the tunnel's and the routes' accept loops (a restart hands them over)
        self._pause = AcceptPause()
        #: the admin answers under way: a process that hands over finishes them before it exits
        self.admin_answers = AdminAnswers()
        #: the admin socket's listener is kept by systemd's fd store: its file stays when this process ends
        self.admin_stored = False
        #: listening sockets other than the routes', by name (a restart hands them over)
        self._listening: list[tuple[str, trio.SocketListener]] = []
        #: why the last restart was called off ("" if none was), and how many were
        self.restart_failed = ""
        self.restart_failures = 0

    def _route_server(self, route: Route) -> RouteServer:
        server = self._new_route_server(route)
        server.events = self.events
        server.cluster = self.remote
        return server

    def _cluster_describe(self) -> dict[str, Any]:
        """What this node's key in Redis says besides its address (read at each heartbeat)."""
        return {
            "channels": sum(1 for r in self.routes if r.state == "active"),
            "routes": {r.name: r.state for r in self.routes},
        }

    def _metrics_state(self) -> dict[str, Any]:
        """What the collector reads at scrape time (on this loop: the endpoint runs here)."""
        return {
            "clients": len(self.registry.clients),
            "channels": sum(1 for r in self.routes if r.state == "active"),
            "bytes": [(r.name, *r.bytes_moved()) for r in self.routes],
            "dropped": [(r.name, r.route.client, *r.dropped) for r in self.routes],
            "expiry": [(str(path), not_after - time.time()) for path, not_after in self.expiry.items()],
            "crl": _crl_state(self.revocation),
            "counters": dict(self.tunnel.counters),
        }

    def _new_route_server(self, route: Route) -> RouteServer:
        return RouteServer(
            route,
            self.registry,
            tls_context=_route_context(route),
            revocation=self.revocation,
            handshake_timeout_s=self.config.handshake_timeout_s,
            options={"settings": route.settings} if route.settings else None,
            hold_timeout_s=self.config.hold_timeout_s,
            resume_grace_s=self.config.resume_grace_s,
            hello_timeout_s=self.config.usb_hello_timeout_s,
            handshake_limits=self.config.handshake_limits,
            counters=self.tunnel.counters,
        )

    def snapshot(self) -> dict[str, Any]:
        """The whole state at once (for tests and the demo; the admin socket streams `status`)."""
        document = self.status()
        document["clients"] = [s.snapshot() for s in self.registry.clients.values()]
        return document

    def status(self) -> dict[str, Any]:
        """The admin socket's document: the clients are rendered while they are sent, bounded."""
        return {
            "pid": os.getpid(),
            **(
                {"restart_failed": self.restart_failed, "restart_failures": self.restart_failures}
                if self.restart_failures
                else {}
            ),
            "uptime_s": round(time.time() - self.started_at, 1),
            "tunnel_refusals": self.tunnel.refusals,
            "tunnel_handshakes": self.tunnel.gate.snapshot(),
            "counters": dict(self.tunnel.counters),
            "reloads": self.reloads,
            "clients": Streamed(list(self.registry.clients.values()), lambda session: session.snapshot()),
            "routes": [r.snapshot() for r in self.routes],
            **({"cluster": self.cluster.snapshot()} if self.cluster is not None else {}),
        }

    async def _serve_bounded(
        self, handler: Callable[[trio.SocketStream], Awaitable[None]], listeners: list[trio.SocketListener], what: str
    ) -> None:
        """Serve opened listeners with the accept loop that survives running out of descriptors."""
        await serve_bounded(
            handler,
            listeners,
            what=what,
            counters=self.tunnel.counters,
            log_interval_s=self.config.handshake_limits.log_interval_s,
            pause=self._pause,
        )

    def pause_accepting(self) -> None:
        """The tunnel and route listeners stop accepting (new connections wait in the backlog)."""
        self._pause.pause()

    def resume_accepting(self) -> None:
        self._pause.resume()

    def listeners(self) -> list[tuple[str, trio.SocketListener]]:
        """Every listening socket by the name a successor knows it by."""
        named = list(self._listening)
        for task in self._tasks.values():
            named += [(f"route:{task.server.name}", listener) for listener in task.listeners]
        return named

    async def restart(self) -> int:
        """Hand everything to a new process (gateway/handover.py): its pid once it
        serves (the caller exits at once), or HandoverFailed (logged; this one goes on)."""
        try:
            pid = await hand_over(self)
        except HandoverFailed as exc:
            self.restart_failed = exc.reason
            self.restart_failures += 1
            log.error("gateway: restart called off, this process (pid %d) goes on serving: %s", os.getpid(), exc.reason)
            raise
        return pid

    async def _summaries(self) -> None:
        """Once per interval: the summary line of a refusal storm that has ended, and of the
        connections turned away before their handshake (tunnel and routes)."""
        while True:
            await trio.sleep(self.config.client_limits.log_interval_s)
            self.tunnel.refusal_log.flush()
            self.tunnel.gate.flush()
            for server in self.routes:
                server.gate.flush()

    async def _watch_expiry(self, every_s: float = 86400.0) -> None:
        """Log, at start and daily, each certificate that expires within EXPIRY_WARNING_DAYS (the metric is live)."""
        while True:
            for path, not_after in self.expiry.items():
                days = (not_after - time.time()) / 86400
                if days < 0:
                    log.error("gateway: certificate %s expired %.0f day(s) ago; renew it and reload", path, -days)
                elif days < EXPIRY_WARNING_DAYS:
                    log.warning("gateway: certificate %s expires in %.0f day(s); renew it and reload", path, days)
            self._check_own_certificate()
            crl = self.revocation.current if self.revocation is not None else None
            if crl is not None and crl.next_update is not None:
                days = (crl.next_update.timestamp() - time.time()) / 86400
                if 0 <= days < EXPIRY_WARNING_DAYS:
                    log.warning(
                        "gateway: CRL %s passes its nextUpdate in %.0f day(s); re-sign it (redirgate pki crl) "
                        "and copy it here, or new handshakes will be refused",
                        self.config.crl,
                        days,
                    )
            await trio.sleep(every_s)

    def _check_own_certificate(self) -> None:
        """Log (ERROR) when the CRL in force revokes this gateway's own certificate: its clients refuse it."""
        if self.revocation is None:
            return
        try:
            cert = x509.load_pem_x509_certificate(self.config.cert.read_bytes())
        except (OSError, ValueError):
            return  # `gateway check` names it
        if self.revocation.is_revoked(cert):
            log.error(
                "gateway: this gateway's certificate %s (serial %x) is revoked by %s: its clients refuse it; "
                "issue a new one (redirgate pki request / pki sign --gateway) and reload",
                self.config.cert,
                cert.serial_number,
                self.config.crl,
            )

    def _healthy(self) -> tuple[bool, str]:
        if self._nursery is None:
            return False, "starting"
        return True, f"ok: {len(self.registry.clients)} client(s) online, {len(self.routes)} route(s)"

    def command(self, asked: AdminRequest) -> dict[str, Any]:
        """An admin socket request other than status (see gateway.admin)."""
        if asked.command != "disconnect":
            return {"ok": False, "error": f"unknown command {asked.command!r} (status, disconnect)"}
        return self.disconnect(asked.target)

    def disconnect(self, target: str) -> dict[str, Any]:
        """End route `target`'s channel, or client `target`'s whole session."""
        for server in self.routes:
            if server.name == target:
                channel = server.channel
                if channel is None or server.state != "active":
                    return {"ok": False, "error": f"route {target} has no channel now ({server.state})"}
                log.info("gateway: admin disconnects route %s (channel %d)", target, channel.channel_id)
                channel.fail("disconnected by the admin")
                return {"ok": True, "done": f"route {target}: channel {channel.channel_id} ended"}
        session = self.registry.clients.get(target)
        if session is not None:
            log.info("gateway: admin disconnects client %s (%s)", target, session.peer)
            session.close("disconnected by the admin")
            return {"ok": True, "done": f"client {target}: session from {session.peer} ended"}
        routes = ", ".join(s.name for s in self.routes) or "none"
        clients = ", ".join(self.registry.clients) or "none"
        return {
            "ok": False,
            "error": f"no route or client online named {target!r} (routes: {routes}; clients: {clients})",
        }

    def held_endpoints(self) -> set[Endpoint]:
        """The endpoints this gateway listens on now (a reload's preflight skips them)."""
        held = {self.config.tunnel_listen}
        held.update(task.server.route.listen for task in self._tasks.values())
        if self.config.metrics_listen is not None:
            held.add(self.config.metrics_listen)
        if self.addresses is not None:  # port 0 in the config: the port it got
            held.add(Endpoint(self.config.tunnel_listen.host, self.addresses.tunnel[1]))
        held.update(Endpoint(task.server.route.listen.host, task.bound[1]) for task in self._tasks.values())
        return held

    async def serve(
        self,
        inherited: Inheritance | None = None,
        *,
        task_status: trio.TaskStatus[GatewayAddresses] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; `inherited`: what the process before a restart handed over
        (its listeners are used instead of opening new ones, its channels go on)."""
        config = self.config
        # Every listener is opened before anything runs, so a port that
        # cannot be had ends `serve` with one ListenError naming it.
        opened: list[list[trio.SocketListener]] = []
        admin_listener = None

        async def listen(name: str, endpoint: Endpoint, what: str) -> list[trio.SocketListener]:
            taken = inherited.take_listeners(name) if inherited is not None else None
            if taken and not _listens_on(taken, endpoint):  # the config moved it since (systemd's store)
                log.info("gateway: the inherited listener %s is not on %s any more; closed", name, endpoint)
                await _close_all([taken])
                taken = None
            return taken if taken else await _open_listeners(endpoint, what)

        try:
            tunnel = await listen("tunnel", config.tunnel_listen, "gateway.tunnel_listen")
            opened.append(tunnel)
            for server in self.routes:
                opened.append(await listen(f"route:{server.name}", server.route.listen, f"route {server.name}"))
            metrics_listeners = None
            if config.metrics_listen is not None:
                metrics_listeners = await listen("metrics", config.metrics_listen, "gateway.metrics_listen")
                opened.append(metrics_listeners)
            if self.admin:
                taken = inherited.take_listeners("admin") if inherited is not None else None
                if taken and taken[0].socket.getsockname() != os.fspath(config.admin_socket):
                    await _close_all([taken])
                    taken = None
                try:
                    admin_listener = taken[0] if taken else await open_admin(config.admin_socket)
                except OSError as exc:
                    raise ListenError(
                        "gateway.admin_socket", f"cannot bind {config.admin_socket}: {exc.strerror or exc}"
                    ) from None
            if inherited is not None:
                await inherited.close_unused()
        except BaseException:
            await _close_all(opened)
            raise
        self._listening = [("tunnel", listener) for listener in tunnel]
        self._listening += [("metrics", listener) for listener in metrics_listeners or []]
        if admin_listener is not None:
            self._listening.append(("admin", admin_listener))
        try:
            await self._serve_opened(tunnel, opened, metrics_listeners, admin_listener, task_status, inherited)
        finally:
            self.events.close()

    async def _serve_opened(
        self,
        tunnel: list[trio.SocketListener],
        opened: list[list[trio.SocketListener]],
        metrics_listeners: list[trio.SocketListener] | None,
        admin_listener: trio.SocketListener | None,
        task_status: trio.TaskStatus[GatewayAddresses],
        inherited: Inheritance | None,
    ) -> None:
        config = self.config
        handed: dict[str, list[Callable[[], Awaitable[None]]]] = {}
        if inherited is not None:
            taken = []
            for server, channel, stream, state in inherited.channels(self):
                taken.append(channel)
                run = functools.partial(server.serve_handed, stream, channel, state.to_client, guard_of(state))
                handed.setdefault(server.name, []).append(run)
            self.registry.take_over(taken, inherited.state.next_ids)
        async with RelayReactor() as reactor, trio.open_nursery() as nursery:
            self._reactor, self._nursery = reactor, nursery
            await nursery.start(self.tunnel.run_timers)  # before the first session: they need it running
            nursery.start_soon(self._serve_bounded, contained(self.tunnel.handle, "tunnel"), tunnel, "tunnel")
            addresses = GatewayAddresses(_bound(tunnel))
            log.info("gateway: tunnel listener on %s:%d", *addresses.tunnel)
            if self.cluster is not None:
                if config.cluster is not None and config.cluster.advertise_port == 0:
                    self.cluster.advertise = f"{config.cluster.advertise_host}:{addresses.tunnel[1]}"
                await nursery.start(functools.partial(self.cluster.run))
                if self.remote is not None:
                    nursery.start_soon(self.remote.acks.run)
                if self.tunnel.cluster_identity is not None:
                    nursery.start_soon(self.tunnel.cluster_identity.run)
            for server, listeners in zip(self.routes, opened[1 : 1 + len(self.routes)], strict=True):
                addresses.routes[server.name] = self._start_route(server, listeners, handed.get(server.name, ()))
            nursery.start_soon(self._watch_expiry)
            nursery.start_soon(self._summaries)
            if metrics_listeners is not None:
                nursery.start_soon(serve_metrics, metrics_listeners, self.events.registry, self._healthy)
                addresses.metrics = _bound(metrics_listeners)
                log.info("gateway: metrics on http://%s:%d/metrics", *addresses.metrics)
            if admin_listener is not None:
                addresses.admin = await nursery.start(
                    functools.partial(
                        serve_admin,
                        config.admin_socket,
                        self.status,
                        listener=admin_listener,
                        commands=self.command,
                        answers=self.admin_answers,
                        keep_path=lambda: self.admin_stored,
                    )
                )
            self.addresses = addresses
            task_status.started(addresses)

    async def reload(self, config: GatewayConfig) -> list[str]:
        """Apply a new (checked) config without touching what did not change; returns what changed.

        Certificates, CA and CRL are read again (new connections use them;
        live ones keep theirs).  Routes are matched by name: an unchanged
        route keeps its listener and its channel; a removed route ends its
        listener and its sessions; a changed one is ended and started anew.
        Ports for new listeners are opened before anything is stopped, so a
        port that cannot be had refuses the whole reload (ListenError) and
        the running configuration stays.  `tunnel_listen` and `admin_socket`
        take effect on the next restart.
        """
        if self._nursery is None:
            raise ListenError("gateway", "not serving yet; nothing to reload")
        old = self.config
        changes: list[str] = []
        tunnel_context = server_context(config.cert, config.key, config.ca)
        revocation = _revocation(config)
        contexts = {route.name: _route_context(route) for route in config.routes}
        current = {task.server.name: task for task in self._tasks.values()}
        wanted = {route.name: route for route in config.routes}
        ending = [name for name in current if name not in wanted or wanted[name] != current[name].server.route]
        starting = [name for name in wanted if name not in current or name in ending]
        # ports we do not hold now are opened first: failing here changes nothing
        freed = {current[name].server.route.listen for name in ending}
        opened: dict[str, list[trio.SocketListener]] = {}
        try:
            for name in starting:
                if wanted[name].listen not in freed or wanted[name].listen.port == 0:
                    opened[name] = await _open_listeners(wanted[name].listen, f"route {name}")
        except BaseException:
            await _close_all(list(opened.values()))
            raise
        for what in ("tunnel_listen", "admin_socket", "metrics_listen", "audit_log", "cluster"):
            if getattr(old, what) != getattr(config, what):
                log.warning(
                    "gateway: reload: %s changed to %s; it takes effect on the next restart",
                    what,
                    getattr(config, what),
                )
                config = dataclasses.replace(config, **{what: getattr(old, what)})
        self.config = config
        self.revocation = revocation
        self.expiry = certificate_expiry(_certificate_files(config))
        tunnel = self.tunnel
        tunnel.context, tunnel.revocation = tunnel_context, revocation
        tunnel.handshake_timeout_s = config.handshake_timeout_s
        tunnel.heartbeat_interval_s = config.heartbeat_interval_s
        tunnel.heartbeat_timeout_s = config.heartbeat_timeout_s
        tunnel.heartbeat_rtt_every = config.heartbeat_rtt_every
        tunnel.limits = config.client_limits
        tunnel.gate.reconfigure(config.handshake_limits)
        if old.handshake_limits != config.handshake_limits:
            log.info("gateway: reload: handshake limits now %s (for the next connections)", config.handshake_limits)
        for name in ending:
            await self._stop_route(name)
            changes.append(f"route {name} {'removed' if name not in wanted else 'changed'}")
            log.info(
                "gateway: reload: route %s %s; its sessions ended", name, "removed" if name not in wanted else "changed"
            )
        servers = {server.name: server for server in self.routes}
        for name in wanted:
            if name in current and name not in ending:
                server = servers[name]  # unchanged: fresh certificates and CRL for its next connections
                server.tls_context, server.revocation = contexts[name], revocation
                server.handshake_timeout_s = config.handshake_timeout_s
                server.hold_timeout_s = config.hold_timeout_s
                server.resume_grace_s = config.resume_grace_s
                server.hello_timeout_s = config.usb_hello_timeout_s
                server.gate.reconfigure(config.handshake_limits)
        self.routes = []
        for route in config.routes:
            if route.name in starting:
                server = self._route_server(route)
                listeners = opened.get(route.name) or await _open_listeners(route.listen, f"route {route.name}")
                bound = self._start_route(server, listeners)
                if self.addresses is not None:
                    self.addresses.routes[route.name] = bound
                if route.name not in current:
                    changes.append(f"route {route.name} added")
                self.routes.append(server)
            else:
                self.routes.append(servers[route.name])
        if self.addresses is not None:
            for name in current:
                if name not in wanted:
                    self.addresses.routes.pop(name, None)
        self.reloads += 1
        log.info("gateway: reloaded %s: %s", config.path, "; ".join(changes) or "no route changed")
        return changes

    def _start_route(
        self,
        server: RouteServer,
        listeners: list[trio.SocketListener],
        handed: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> tuple[str, int]:
        """Serve one route in its own cancel scope (a reload ends it alone); `handed`:
        its channel taken over at a restart, run beside the listener."""
        assert self._nursery is not None
        server.reactor = self._reactor
        task = _RouteTask(server, trio.CancelScope(), trio.Event(), _bound(listeners), listeners)
        self._tasks[server.name] = task

        async def run() -> None:
            try:
                with task.scope:
                    async with trio.open_nursery() as nursery:
                        for carry_on in handed:
                            nursery.start_soon(_contained_task, carry_on, f"route {server.name}")
                        await self._serve_bounded(
                            contained(server.handle, f"route {server.name}"), listeners, f"route {server.name}"
                        )
            finally:
                task.done.set()

        self._nursery.start_soon(run)
        log.info(
            "gateway: route %s on %s:%d -> %s on client %s",
            server.name,
            *task.bound,
            server.route.device,
            server.route.client,
        )
        return task.bound

    async def _stop_route(self, name: str) -> None:
        task = self._tasks.pop(name)
        task.scope.cancel()
        await task.done.wait()


async def _contained_task(run: Callable[[], Awaitable[None]], what: str) -> None:
    """A channel taken over at a restart: a bug ends it alone (as `contained` does for a connection)."""
    try:
        await run()
    except Exception:
        log.exception(
            "%s: internal error on a channel taken over at a restart; it was closed, the gateway goes on", what
        )


def _revocation(config: GatewayConfig) -> RevocationList | None:
    """The CRL in force (PkiError if it is missing or unreadable: the gateway does not start), or None
    when the config turned revocation off."""
    if config.crl is None:
        log.warning('gateway: revocation is off (crl = ""): a revoked certificate is accepted')
        return None
    return RevocationList(
        config.crl, config.ca, stale=config.stale_crl, log_interval_s=config.client_limits.log_interval_s
    )


def _crl_state(revocation: RevocationList | None) -> dict[str, float] | None:
    """What the metrics say about the CRL in force (None: revocation is off); a scrape
    looks at crl.pem too, so a fresh copy shows at once, before any handshake."""
    if revocation is None:
        return None
    revocation.refresh()
    crl = revocation.current
    left = crl.next_update.timestamp() - time.time() if crl.next_update is not None else float("inf")
    return {"next_update_s": left, "stale": float(crl.stale()), "stale_accepted": revocation.stale_accepted}


def _certificate_files(config: GatewayConfig) -> list[Path]:
    files = [config.cert, config.ca]
    for route in config.routes:
        if route.tls is not None:
            files += [route.tls.cert, route.tls.ca]
    return list(dict.fromkeys(files))


def _route_context(route: Route) -> ssl.SSLContext | None:
    if route.tls is None:
        return None
    return hypervisor_server_context(route.tls.cert, route.tls.key, route.tls.ca)


async def serve_gateway(
    config: GatewayConfig, *, task_status: trio.TaskStatus[GatewayAddresses] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a gateway for `config` until cancelled."""
    await Gateway(config).serve(task_status=task_status)
