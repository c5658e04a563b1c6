"""The serial ports a client exports through the gateway, and their channels.

Each `[[serial]]` entry of the client config gets one `PortService` that
keeps the port open (reopening it after a replug) and its ring filled while
no consumer is attached, for the whole life of the client - not only while
a channel is up - so what a console prints while nobody watches is kept.
A gateway channel for `serial:NAME` is served by `serve_serial_stream` on
the attached data connection, raw or RFC 2217 as the route says.

`run()` also starts the client's relay reactor thread (one per client
process, `transport.RelayReactor`: ports may come with a reload) and stops
it when it ends: raw channels lend it their port's fd and data connection while
plain bytes flow (`client/serial/raw.py`); it owns nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from redirgate.client.serial.errors import SerialError
from redirgate.client.serial.selector import PortSelector
from redirgate.client.serial.serve import serve_serial_stream
from redirgate.client.serial.service import PortService
from redirgate.client.serial.settings import LineSettings
from redirgate.client.service_set import PortChange, ServiceSet
from redirgate.proto.tunnel import DeviceEntry, DeviceKind, OpenChannel
from redirgate.transport import RelayReactor

__all__ = ["SerialExport", "SerialExports"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SerialExport:
    name: str
    selector: PortSelector
    settings: LineSettings
    ring_bytes: int = 64 * 1024
    takeover: bool = False


def _service(e: SerialExport) -> PortService:
    return PortService(e.name, e.selector, e.settings, ring_bytes=e.ring_bytes, takeover=e.takeover)


class SerialExports:
    """Port services by export name; `run()` keeps them all going."""

    def __init__(self, exports: Sequence[SerialExport]) -> None:
        self.ports: ServiceSet[SerialExport, PortService] = ServiceSet(exports, _service, self._keep)
        #: the relay reactor while `run()` runs (raw channels are served by trio tasks alone without it)
        self.mover: RelayReactor | None = None

    @property
    def services(self) -> dict[str, PortService]:
        return self.ports.services

    def reload(self, exports: Sequence[SerialExport]) -> list[PortChange]:
        """Ports removed or changed stop, new ones start; the others are not touched."""
        return [PortChange(f"serial:{change.name}", change.verb) for change in self.ports.reload(exports)]

    def entries(self) -> list[DeviceEntry]:
        return [
            DeviceEntry(
                id=f"serial:{name}",
                kind=DeviceKind.SERIAL,
                port_path=str(service.selector)[:128],
                description=f"{service.settings.describe()}{'' if service.port_up.is_set() else ' (port absent)'}"[
                    :200
                ],
            )
            for name, service in self.services.items()
        ]

    def knows(self, device_id: str) -> bool:
        return device_id.removeprefix("serial:") in self.services

    async def run(self) -> None:
        async with RelayReactor() as reactor:
            self.mover = reactor
            try:
                await self.ports.run()
            finally:
                self.mover = None

    async def _keep(self, service: PortService) -> None:
        from redirgate.client.serial.errors import SerialError

        try:
            await service.run()
        except SerialError as exc:
            log.error("serial export %s stopped: %s", service.name, exc)

    async def serve(self, request: OpenChannel, stream: trio.abc.Stream) -> None:
        service = self.services[request.device_selector.removeprefix("serial:")]
        peer = f"gateway channel {request.channel_id}"
        settings = None
        text = request.options.get("settings")
        if isinstance(text, str):
            try:
                settings = LineSettings.parse(text)
            except SerialError as exc:
                log.error(
                    "%s: the route's settings %r are not valid: %s; the port keeps its own", service.name, text, exc
                )
        await serve_serial_stream(
            stream, service, peer=peer, protocol=request.protocol.value, settings=settings, mover=self.mover
        )
