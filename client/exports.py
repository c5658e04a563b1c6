"""The client's port exports - serial and parallel - behind one channel interface.

`TunnelClient(serial=...)` asks one object for `entries()` (inventory),
`knows(device_id)` and `serve(request, stream)` for non-USB channels.
`PortExports` is that object when the config has `[[serial]]` and/or
`[[parallel]]` tables: it holds a `SerialExports` and a `ParallelExports`,
dispatches by the device id's scheme, and `run()` keeps both going.  It
owns no state of its own.
"""

from __future__ import annotations

from typing import Any

import trio

from redirgate.client.parallel.exports import ParallelExports
from redirgate.client.serial.exports import SerialExports
from redirgate.proto.tunnel import DeviceEntry, OpenChannel

__all__ = ["PortExports"]


class PortExports:
    """Serial and parallel exports as one (either may be None)."""

    def __init__(self, serial: SerialExports | None = None, parallel: ParallelExports | None = None) -> None:
        self.serial = serial
        self.parallel = parallel

    @classmethod
    def from_config(cls, config: Any) -> PortExports | None:
        """From a ClientConfig's `serial` and `parallel` tuples; None when both are empty."""
        serial = SerialExports(config.serial) if config.serial else None
        parallel = ParallelExports(config.parallel) if config.parallel else None
        return cls(serial, parallel) if serial is not None or parallel is not None else None

    def _parts(self) -> list[SerialExports | ParallelExports]:
        return [part for part in (self.serial, self.parallel) if part is not None]

    def entries(self) -> list[DeviceEntry]:
        return [entry for part in self._parts() for entry in part.entries()]

    def knows(self, device_id: str) -> bool:
        return self._owner(device_id) is not None

    def _owner(self, device_id: str) -> SerialExports | ParallelExports | None:
        if device_id.startswith("serial:") and self.serial is not None and self.serial.knows(device_id):
            return self.serial
        if self.parallel is not None and self.parallel.knows(device_id):
            return self.parallel
        return None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for part in self._parts():
                nursery.start_soon(part.run)

    async def serve(self, request: OpenChannel, stream: trio.abc.Stream) -> None:
        owner = self._owner(request.device_selector)
        if owner is None:
            raise KeyError(request.device_selector)  # TunnelClient asks knows() first
        await owner.serve(request, stream)
