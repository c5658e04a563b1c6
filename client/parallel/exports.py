"""The parallel ports a client exports through the gateway, and their channels.

Each `[[parallel]]` entry of the client config (`name`, `port` = a path,
`ring_bytes` = the bound of what is queued for the printer) gets one
`PrinterService` that keeps the port open and its queue draining for the
whole life of the client, not only while a channel is up: what a VM
printed still reaches the printer after the VM disconnects.  The inventory
lists `parallel:NAME` with the printer's state as its description.  A
gateway channel for `parallel:NAME` (protocol raw) is served by
`serve_parallel_stream` on the attached data connection.

`parse_parallel_tables` turns the config's tables into `ParallelExport`s,
reporting mistakes through the config loader's `problem(key, reason)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from redirgate.client.export_tables import export_tables, ring_bytes
from redirgate.client.parallel.errors import ParallelError
from redirgate.client.parallel.serve import serve_parallel_stream
from redirgate.client.parallel.service import DEFAULT_QUEUE_BYTES, PrinterService
from redirgate.client.service_set import PortChange, ServiceSet
from redirgate.proto.tunnel import DeviceEntry, DeviceKind, OpenChannel

__all__ = ["PREFIX", "ParallelExport", "ParallelExports", "parse_parallel_tables"]

log = logging.getLogger(__name__)

PREFIX: Final = "parallel:"
MAX_RING_BYTES: Final = 64 * 1024 * 1024
_KEYS: Final = {"name", "port", "ring_bytes"}


@dataclass(frozen=True)
class ParallelExport:
    name: str
    path: str
    ring_bytes: int = DEFAULT_QUEUE_BYTES


class ParallelExports:
    """Printer services by export name; `run()` keeps them all going."""

    def __init__(self, exports: Sequence[ParallelExport]) -> None:
        self.ports: ServiceSet[ParallelExport, PrinterService] = ServiceSet(
            exports, lambda e: PrinterService(e.name, e.path, queue_bytes=e.ring_bytes), self._keep
        )

    @property
    def services(self) -> dict[str, PrinterService]:
        return self.ports.services

    def reload(self, exports: Sequence[ParallelExport]) -> list[PortChange]:
        """Ports removed or changed stop, new ones start; the others are not touched."""
        return [PortChange(f"{PREFIX}{change.name}", change.verb) for change in self.ports.reload(exports)]

    def entries(self) -> list[DeviceEntry]:
        return [
            DeviceEntry(
                id=f"{PREFIX}{name}",
                kind=DeviceKind.PARALLEL,
                port_path=service.path[:128],
                description=service.describe()[:200],
            )
            for name, service in self.services.items()
        ]

    def knows(self, device_id: str) -> bool:
        return device_id.startswith(PREFIX) and device_id.removeprefix(PREFIX) in self.services

    async def run(self) -> None:
        await self.ports.run()

    async def _keep(self, service: PrinterService) -> None:
        try:
            await service.run()
        except ParallelError as exc:
            log.error("parallel export %s stopped: %s", service.name, exc)

    async def serve(self, request: OpenChannel, stream: trio.abc.Stream) -> None:
        service = self.services[request.device_selector.removeprefix(PREFIX)]
        await serve_parallel_stream(stream, service, peer=f"gateway channel {request.channel_id}")


def parse_parallel_tables(tables: Any, problem: Callable[[str, str], None]) -> tuple[ParallelExport, ...]:
    """The [[parallel]] tables of a client config; each mistake goes to `problem`."""
    out = []
    for where, table, name in export_tables("parallel", tables, _KEYS, problem):
        port = table.get("port")
        if not isinstance(port, str) or not port.startswith("/"):
            problem(
                f"{where}.port", f"{port!r}: expected a device path such as /dev/lp0, /dev/usb/lp0 or /dev/parport0"
            )
            continue
        ring = ring_bytes(where, table, DEFAULT_QUEUE_BYTES, MAX_RING_BYTES, problem)
        if ring is not None:
            out.append(ParallelExport(name, port, ring))
    return tuple(out)
