"""The gateway service: one tunnel listener, one listener per route, the admin socket.

`serve_gateway(config)` runs until cancelled (the CLI cancels it on
SIGTERM/SIGINT).  It reports where it listens through `task_status.started`
(a `GatewayAddresses`), so tests and the demo can bind port 0.  Shutdown
choreography: cancelling the one nursery closes the listeners first (no new
connections), then every connection task unwinds; relays close both of
their streams on the way out, so QEMU and the clients see the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from redirgate.gateway.admin import Streamed, serve_admin
from redirgate.gateway.admission import serve_bounded
from redirgate.gateway.config import Endpoint, GatewayConfig, Route
from redirgate.gateway.pki import RevocationList
from redirgate.gateway.reactor import RelayReactor
from redirgate.gateway.registry import Registry
from redirgate.gateway.route_server import RouteServer
from redirgate.gateway.tunnel_server import TunnelServer
from redirgate.transport import RevocationChecker, hypervisor_server_context, server_context

__all__ = ["Gateway", "GatewayAddresses", "serve_gateway"]

log = logging.getLogger(__name__)


@dataclass
class GatewayAddresses:
    tunnel: tuple[str, int]
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    admin: Path | None = None


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


class Gateway:
    """The gateway's live objects (see `serve_gateway`)."""

    def __init__(self, config: GatewayConfig, *, admin: bool = True) -> None:
        self.config = config
        self.started_at = time.time()
        self.registry = Registry()
        revocation: RevocationChecker | None = (
            RevocationList(config.crl, config.ca) if config.crl is not None and config.crl.exists() else None
        )
        if config.crl is not None and revocation is None:
            log.warning(
                "gateway: CRL %s does not exist yet; no certificate is treated as revoked until it does", config.crl
            )
            revocation = _LateRevocation(config.crl, config.ca)
        self.revocation = revocation
        self.tunnel = TunnelServer(
            self.registry,
            server_context(config.cert, config.key, config.ca),
            revocation=revocation,
            handshake_timeout_s=config.handshake_timeout_s,
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            limits=config.client_limits,
            handshake_limits=config.handshake_limits,
        )
        self.routes = [self._route_server(route) for route in config.routes]
        self.admin = admin

    def _route_server(self, route: Route) -> RouteServer:
        context = None
        if route.tls is not None:
            context = hypervisor_server_context(route.tls.cert, route.tls.key, route.tls.ca)
        return RouteServer(
            route,
            self.registry,
            tls_context=context,
            revocation=self.revocation,
            handshake_timeout_s=self.config.handshake_timeout_s,
            options={"settings": route.settings} if route.settings else None,
            hold_timeout_s=self.config.hold_timeout_s,
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
            "uptime_s": round(time.time() - self.started_at, 1),
            "tunnel_refusals": self.tunnel.refusals,
            "counters": dict(self.tunnel.counters),
            "clients": Streamed(list(self.registry.clients.values()), lambda session: session.snapshot()),
            "routes": [r.snapshot() for r in self.routes],
        }

    async def _serve_tcp(
        self,
        handler: Callable[[trio.SocketStream], Awaitable[None]],
        listen: Endpoint,
        what: str,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """`trio.serve_tcp`, with the accept loop that survives running out of descriptors."""
        listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)
        await serve_bounded(
            handler,
            listeners,
            what=what,
            counters=self.tunnel.counters,
            log_interval_s=self.config.handshake_limits.log_interval_s,
            task_status=task_status,
        )

    async def serve(self, *, task_status: trio.TaskStatus[GatewayAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        async with RelayReactor() as reactor, trio.open_nursery() as nursery:
            for server in self.routes:
                server.reactor = reactor
            tunnel = await nursery.start(
                self._serve_tcp, contained(self.tunnel.handle, "tunnel"), config.tunnel_listen, "tunnel"
            )
            addresses = GatewayAddresses(_bound(tunnel))
            log.info("gateway: tunnel listener on %s:%d", *addresses.tunnel)
            for server in self.routes:
                listen = server.route.listen
                bound = await nursery.start(
                    self._serve_tcp, contained(server.handle, f"route {server.name}"), listen, f"route {server.name}"
                )
                addresses.routes[server.name] = _bound(bound)
                log.info(
                    "gateway: route %s on %s:%d -> %s on client %s",
                    server.name,
                    *addresses.routes[server.name],
                    server.route.device,
                    server.route.client,
                )
            if self.admin:
                addresses.admin = await nursery.start(serve_admin, config.admin_socket, self.status)
            task_status.started(addresses)


class _LateRevocation:
    """A CRL path that does not exist yet: checked again on every handshake."""

    def __init__(self, crl: Path, ca: Path) -> None:
        self.crl, self.ca = crl, ca
        self.inner: RevocationList | None = None

    def is_revoked(self, cert: Any) -> bool:
        if self.inner is None and self.crl.exists():
            self.inner = RevocationList(self.crl, self.ca)
        return self.inner is not None and self.inner.is_revoked(cert)


async def serve_gateway(
    config: GatewayConfig, *, task_status: trio.TaskStatus[GatewayAddresses] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a gateway for `config` until cancelled."""
    await Gateway(config).serve(task_status=task_status)
