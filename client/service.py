"""The client service as `redirgate client run` runs it: devices, port exports, the tunnel.

`ClientService(config)` builds the emulated-device backend the config asks
for, the serial/parallel port exports and the `TunnelClient`; `run()` keeps
the port services and the tunnel going until cancelled, and closes the
emulated devices (their image files are flushed) on the way out.  USB
hotplug comes from the kernel's uevents (client/usb/hotplug.py): a device
plugged in is rescanned at once, with a slow rescan as the safety net, or
every `inventory_interval_s` where netlink is not allowed.  The
demo and the tests compose the client through it too, so they run exactly
what a thin client runs.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio

from redirgate.client.config import ClientConfig
from redirgate.client.exports import PortExports
from redirgate.client.inventory import DeviceInventory
from redirgate.client.parallel.exports import ParallelExports
from redirgate.client.serial.exports import SerialExports
from redirgate.client.tunnel import TunnelClient, revocation_view
from redirgate.client.usb.hotplug import follow_usb_uevents
from redirgate.client.usb.uevent import is_usb_device_event
from redirgate.transport import client_context

__all__ = ["FOLLOWUP_RESCAN_S", "SAFETY_RESCAN_S", "ClientService"]

log = logging.getLogger(__name__)

#: the inventory's rescan while kernel uevents announce every USB device
SAFETY_RESCAN_S = 30.0
#: a second look after a uevent: udev may still be making the new device
#: node readable (its strings, hence its id, unreadable at the first look)
FOLLOWUP_RESCAN_S = 1.0


class ClientService:
    """Build with a loaded config, then `await run()` (exactly once)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.backend: Any = None
        if config.export.virtual:
            from redirgate.client.virtual import make_backend

            self.backend = make_backend(list(config.export.virtual))
        # serial and parallel ports (empty sets too: a reload may add some)
        self.ports = PortExports(SerialExports(config.serial), ParallelExports(config.parallel))
        self.client = TunnelClient(config, DeviceInventory(config.export, self.backend), serial=self.ports)

    def reload(self, config: ClientConfig) -> list[str]:
        """Apply a new (checked) config; returns what changed.

        The export policy applies at once (a rescan is asked for): devices
        it no longer allows leave the gateway's inventory.  Serial and
        parallel ports removed or changed stop and new ones start;
        unchanged ports keep their open port, ring and consumer.  The
        certificate, key, CA and gateway address apply from the next
        connection; emulated devices (`export.virtual`) need a restart.
        """
        old, changes = self.config, []
        if config.export != old.export:
            self.client.inventory.policy = config.export
            self.client.request_rescan()
            changes.append("export policy")
        if config.export.virtual != old.export.virtual:
            log.warning("reload: export.virtual changed; emulated devices change on the next restart")
        assert self.ports.serial is not None and self.ports.parallel is not None
        port_changes = self.ports.serial.reload(config.serial) + self.ports.parallel.reload(config.parallel)
        changes += [str(change) for change in port_changes]
        # a VM's channel to a port that is no longer exported (or is now another port) ends with it
        stopped = {change.name for change in port_changes if change.stopped}
        self.client.end_channels(stopped, "its export was removed or changed by a reload of the client's config")
        # certificates are read again even when their paths stayed (a renewal)
        self.client.context = client_context(config.cert, config.key, config.ca, config.server_name)
        self.client.revocations = revocation_view(config, self.client.revocations)
        tls = ("gateway_host", "gateway_port", "more_gateways", "server_name", "cert", "key", "ca", "crl")
        if any(getattr(config, key) != getattr(old, key) for key in tls):
            changes.append("gateway connection (from the next connection)")
        self.client.config = self.config = config
        log.info("reloaded %s: %s", config.path, "; ".join(changes) or "nothing changed")
        return changes

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.ports.run)
                await nursery.start(self._hotplug)
                await self.client.run()
                nursery.cancel_scope.cancel()
        finally:
            if self.backend is not None:
                self.backend.close()

    async def _hotplug(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rescan the inventory when the kernel says a USB device came or
        went (and an emulated one is plugged or unplugged), with a slow
        rescan as the safety net; without uevents, rescan on the config's
        interval as before.  One log line says which."""
        client = self.client
        token = trio.lowlevel.current_trio_token()

        def virtual_change() -> None:
            # any thread may plug an emulated device: hand it to the trio thread
            token.run_sync_soon(client.request_rescan)

        if self.backend is not None:
            self.backend.on_change.append(virtual_change)
        try:
            async with trio.open_nursery() as nursery:
                on_change = partial(client.request_rescan, followup_s=FOLLOWUP_RESCAN_S)
                unavailable = await nursery.start(partial(follow_usb_uevents, on_change, matches=is_usb_device_event))
                if unavailable is not None:
                    log.info("hotplug: %s; rescanning USB devices every %g s", unavailable, client.rescan_interval_s)
                else:
                    client.rescan_interval_s = max(client.rescan_interval_s, SAFETY_RESCAN_S)
                    log.info(
                        "hotplug: following the kernel's USB uevents (netlink); a full rescan every %g s as a "
                        "safety net",
                        client.rescan_interval_s,
                    )
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self.backend is not None:
                self.backend.on_change.remove(virtual_change)
