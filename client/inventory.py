"""What this thin client exports now: local USB devices that pass the policy.

`DeviceInventory.scan()` looks at libusb and at the emulated-device backend
(in a worker thread), keeps what the export policy allows, and names each
device with a stable id the gateway's routes can select: `usb:VID:PID:SERIAL`
when the device has a serial number, else `usb-port:BUS-PORT`.
`diff()` turns two scans into the hotplug update the control connection
sends.  Devices held by a channel are marked busy.

A device the client never exports (a hub, the thin client's boot device:
client/usb/safety.py) stays out of the inventory whatever the policy says;
when the policy would have exported it, one warning says why it is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
import usb.core

from redirgate.client.config import ExportPolicy
from redirgate.client.usb.descriptors import DeviceSnapshot, snapshot
from redirgate.client.usb.errors import USB_CALL_ERRORS
from redirgate.client.usb.libusb import refresh_libusb
from redirgate.client.usb.safety import boot_usb_ports, refusal
from redirgate.client.usb.source import find_devices
from redirgate.proto.tunnel.errors import TunnelProtocolError
from redirgate.proto.tunnel.inventory import DeviceEntry, DeviceKind

__all__ = ["DeviceInventory", "entry_for", "stable_id"]

log = logging.getLogger(__name__)


def stable_id(snap: DeviceSnapshot) -> str:
    if snap.serial and snap.serial.isprintable() and len(snap.serial) <= 126:
        return f"usb:{snap.vendor_id:04x}:{snap.product_id:04x}:{snap.serial}"
    return f"usb-port:{snap.port_path}"


def entry_for(snap: DeviceSnapshot, *, busy: bool = False) -> DeviceEntry:
    return DeviceEntry(
        id=stable_id(snap),
        kind=DeviceKind.USB,
        vendor_id=snap.vendor_id,
        product_id=snap.product_id,
        serial=snap.serial or None,
        port_path=snap.port_path,
        description=" ".join(x for x in (snap.manufacturer, snap.product) if x)[:128],
        busy=busy,
    )


@dataclass
class _Found:
    entry: DeviceEntry
    snapshot: DeviceSnapshot
    backend: Any


class DeviceInventory:
    def __init__(
        self,
        policy: ExportPolicy,
        virtual_backend: Any = None,
        *,
        boot_ports: Callable[[], Mapping[str, str]] = boot_usb_ports,
    ) -> None:
        self.policy = policy
        self.virtual_backend = virtual_backend
        self.boot_ports = boot_ports
        self.busy: set[str] = set()
        self._libusb_missing_logged = False
        #: refusals already logged (device description, reason)
        self._refusals_logged: set[tuple[str, str]] = set()

    @property
    def backends(self) -> tuple[Any, ...]:
        return (None, self.virtual_backend) if self.virtual_backend is not None else (None,)

    def policy_allows(self, dev: usb.core.Device, backend: Any) -> bool:
        """The export policy, for a device found on `backend` (blocking).
        Refused devices (client/usb/safety.py) are not its business: a
        `SelectorSource` never opens one and says why."""
        if backend is not None and backend is self.virtual_backend:
            return True
        try:
            return self.policy.allows(snapshot(dev))
        except USB_CALL_ERRORS:
            return False

    def scan_blocking(self) -> dict[str, _Found]:
        found: dict[str, _Found] = {}
        boot: Mapping[str, str] | None = None
        for backend in self.backends:
            try:
                devices = find_devices(backend)
            except usb.core.NoBackendError:
                if not self._libusb_missing_logged:
                    log.warning("libusb is not available: only emulated devices are exported")
                    self._libusb_missing_logged = True
                continue
            for dev in devices:
                try:
                    snap = snapshot(dev)
                except USB_CALL_ERRORS as exc:
                    log.debug("skipping a device that cannot be read: %s", exc)
                    continue
                if backend is None and not self.policy.allows(snap):
                    continue
                boot = boot if boot is not None else self.boot_ports()
                reason = refusal(snap, boot)
                if reason is not None:
                    if (snap.describe(), reason) not in self._refusals_logged:
                        self._refusals_logged.add((snap.describe(), reason))
                        log.warning(
                            "not exporting %s although the export policy allows it: %s", snap.describe(), reason
                        )
                    continue
                try:
                    entry = entry_for(snap)
                except TunnelProtocolError as exc:
                    log.info("not exporting %s: %s", snap.describe(), exc)
                    continue
                found[entry.id] = _Found(entry, snap, backend)
        return found

    async def scan(self, *, fresh_libusb: bool = False) -> dict[str, DeviceEntry]:
        """The inventory now; `fresh_libusb` first takes a new libusb context
        (client/usb/libusb.py: its list may not have heard of a change)."""
        if fresh_libusb:
            await trio.to_thread.run_sync(refresh_libusb)
        found = await trio.to_thread.run_sync(self.scan_blocking)
        return {key: entry_for(item.snapshot, busy=key in self.busy) for key, item in found.items()}


def diff(old: dict[str, DeviceEntry], new: dict[str, DeviceEntry]) -> tuple[tuple[DeviceEntry, ...], tuple[str, ...]]:
    """(added or changed entries, removed ids) between two scans."""
    added = tuple(entry for key, entry in new.items() if old.get(key) != entry)
    removed = tuple(key for key in old if key not in new)
    return added, removed
