"""The client service as `redirgate client run` runs it: devices, port exports, the tunnel.

`ClientService(config)` builds the emulated-device backend the config asks
for, the serial/parallel port exports and the `TunnelClient`; `run()` keeps
the port services and the tunnel going until cancelled, and closes the
emulated devices (their image files are flushed) on the way out.  The
demo and the tests compose the client through it too, so they run exactly
what a thin client runs.
"""

from __future__ import annotations

from typing import Any

import trio

from redirgate.client.config import ClientConfig
from redirgate.client.exports import PortExports
from redirgate.client.inventory import DeviceInventory
from redirgate.client.tunnel import TunnelClient

__all__ = ["ClientService"]


class ClientService:
    """Build with a loaded config, then `await run()` (exactly once)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.backend: Any = None
        if config.export.virtual:
            from redirgate.client.virtual import make_backend

            self.backend = make_backend(list(config.export.virtual))
        self.ports = PortExports.from_config(config)  # serial and parallel ports, or None
        self.client = TunnelClient(config, DeviceInventory(config.export, self.backend), serial=self.ports)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                if self.ports is not None:
                    nursery.start_soon(self.ports.run)
                await self.client.run()
        finally:
            if self.backend is not None:
                self.backend.close()
