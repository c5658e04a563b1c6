"""In-process gateway + client on loopback for tests (real TLS, real sockets).

`running_lab(tmp, routes, virtual=...)` writes the PKI and both configs with
`redirgate.cli.lab`, starts `Gateway.serve` and `TunnelClient.run` in the
caller's nursery, waits until the client is online, and yields the bound
addresses.  Everything stops with the nursery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.client.config import load_client_config
from redirgate.client.inventory import DeviceInventory
from redirgate.client.tunnel import TunnelClient
from redirgate.client.virtual import make_backend
from redirgate.gateway.config import load_config
from redirgate.gateway.service import Gateway, GatewayAddresses


@dataclass
class Lab:
    directory: Path
    gateway: Gateway
    addresses: GatewayAddresses
    client: TunnelClient | None
    client_scope: trio.CancelScope | None
    client_config: Path

    def route_port(self, name: str) -> int:
        return self.addresses.routes[name][1]


async def start_client(nursery: trio.Nursery, config_path: Path) -> tuple[TunnelClient, trio.CancelScope]:
    config = load_client_config(config_path)
    backend = make_backend(list(config.export.virtual)) if config.export.virtual else None
    client = TunnelClient(config, DeviceInventory(config.export, backend))
    scope = trio.CancelScope()

    async def run() -> None:
        try:
            with scope:
                await client.run()
        finally:
            if backend is not None:
                backend.close()

    nursery.start_soon(run)
    with trio.fail_after(15):
        await client.connected.wait()
    return client, scope


@asynccontextmanager
async def running_lab(
    directory: Path,
    routes: Sequence[LabRoute],
    *,
    virtual: Sequence[str] = (),
    start_client_now: bool = True,
    hypervisors: Sequence[str] = (),
    **gateway_options: float,
) -> AsyncIterator[Lab]:
    make_pki(directory, hypervisors=hypervisors)
    config = load_config(write_gateway_config(directory, routes, **gateway_options))
    gateway = Gateway(config)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(gateway.serve)
        client_config = write_client_config(directory, addresses.tunnel[1], virtual=virtual)
        client = scope = None
        if start_client_now:
            client, scope = await start_client(nursery, client_config)
        yield Lab(directory, gateway, addresses, client, scope, client_config)
        nursery.cancel_scope.cancel()
