"""In-process gateway + client on loopback for tests (real TLS, real sockets).

`running_lab(tmp, routes, virtual=...)` writes the PKI and both configs with
`redirgate.cli.lab`, starts `Gateway.serve` and `TunnelClient.run` in the
caller's nursery, waits until the client is online, and yields the bound
addresses.  Everything stops with the nursery.

The gateway runs in its own cancel scope: `lab.stop_gateway()` cancels it
and waits until it is down; `lab.start_gateway()` starts a new `Gateway` on
the ports the previous run bound (gateway.toml is rewritten with them), so
a client that keeps running finds it where it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.client.config import load_client_config
from redirgate.client.service import ClientService
from redirgate.client.tunnel import TunnelClient
from redirgate.gateway.config import GatewayConfig, load_config
from redirgate.gateway.service import Gateway, GatewayAddresses
from tests.support.fault_proxy import FaultProxy, fault_proxy


@dataclass
class Lab:
    directory: Path
    gateway: Gateway
    addresses: GatewayAddresses
    client: TunnelClient | None
    client_scope: trio.CancelScope | None
    client_config: Path
    nursery: trio.Nursery | None = None
    routes: tuple[LabRoute, ...] = ()
    gateway_options: dict[str, float] = field(default_factory=dict)
    gateway_scope: trio.CancelScope | None = None
    gateway_stopped: trio.Event | None = None

    def route_port(self, name: str) -> int:
        return self.addresses.routes[name][1]

    @property
    def tunnel_port(self) -> int:
        return self.addresses.tunnel[1]

    async def stop_gateway(self) -> None:
        """Cancel the running gateway and wait until it is down."""
        assert self.gateway_scope is not None and self.gateway_stopped is not None
        self.gateway_scope.cancel()
        await self.gateway_stopped.wait()

    async def start_gateway(self) -> None:
        """Start a new Gateway on the ports the last one bound (after `stop_gateway`)."""
        assert self.nursery is not None and self.gateway_stopped is not None and self.gateway_stopped.is_set()
        host, port = self.addresses.tunnel
        routes = [replace(r, listen="{}:{}".format(*self.addresses.routes[r.name])) for r in self.routes]
        path = write_gateway_config(self.directory, routes, tunnel_listen=f"{host}:{port}", **self.gateway_options)
        self.gateway, self.addresses, self.gateway_scope, self.gateway_stopped = await start_gateway(
            self.nursery, load_config(path)
        )


async def start_gateway(
    nursery: trio.Nursery, config: GatewayConfig
) -> tuple[Gateway, GatewayAddresses, trio.CancelScope, trio.Event]:
    """Run a Gateway for `config` in its own cancel scope; `stopped` is set once it is down."""
    gateway = Gateway(config)
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[GatewayAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await gateway.serve(task_status=task_status)
        finally:
            stopped.set()

    addresses = await nursery.start(run)
    return gateway, addresses, scope, stopped


async def start_client(
    nursery: trio.Nursery, config_path: Path, *, wait: bool = True
) -> tuple[TunnelClient, trio.CancelScope]:
    """`wait`: until its tunnel is up (a client the gateway refuses never gets there)."""
    service = ClientService(load_client_config(config_path))
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await service.run()

    nursery.start_soon(run)
    if wait:
        await service.client.connected.wait()  # the test runner's safety net ends a wait that never ends
    return service.client, scope


@asynccontextmanager
async def running_lab(
    directory: Path,
    routes: Sequence[LabRoute],
    *,
    virtual: Sequence[str] = (),
    client_extra_export: str = "",
    start_client_now: bool = True,
    hypervisors: Sequence[str] = (),
    **gateway_options: float,
) -> AsyncIterator[Lab]:
    make_pki(directory, hypervisors=hypervisors)
    config = load_config(write_gateway_config(directory, routes, **gateway_options))
    async with trio.open_nursery() as nursery:
        gateway, addresses, gateway_scope, stopped = await start_gateway(nursery, config)
        client_config = write_client_config(
            directory, addresses.tunnel[1], virtual=virtual, extra_export=client_extra_export
        )
        client = scope = None
        if start_client_now:
            client, scope = await start_client(nursery, client_config)
        yield Lab(
            directory,
            gateway,
            addresses,
            client,
            scope,
            client_config,
            nursery,
            tuple(routes),
            dict(gateway_options),
            gateway_scope,
            stopped,
        )
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxied_lab(
    tmp_path: Path, routes: Sequence[LabRoute], *, virtual: Sequence[str] = (), extra: str = "", **options: float
) -> AsyncIterator[tuple[Lab, FaultProxy]]:
    """A lab whose client reaches the gateway only through a fault proxy."""
    async with running_lab(tmp_path, routes, virtual=virtual, start_client_now=False, **options) as lab:
        async with fault_proxy(("127.0.0.1", lab.tunnel_port)) as proxy:
            config = write_client_config(tmp_path, proxy.port, virtual=virtual, extra_export=extra)
            assert lab.nursery is not None
            lab.client, lab.client_scope = await start_client(lab.nursery, config)
            yield lab, proxy
            lab.client_scope.cancel()
