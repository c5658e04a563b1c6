"""Where a host engine gets its device: find by selector, wait, open.

`SelectorSource.acquire()` polls libusb (or the emulated-device backend)
until a device matching the selector is present, then opens it.  Polling is
what makes replug work without hotplug support in pyusb: after an unplug the
engine calls `acquire()` again and gets the device back when it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio
import usb.core

from redirgate.client.usb.device import UsbDevice
from redirgate.client.usb.errors import USB_CALL_ERRORS
from redirgate.client.usb.selector import DeviceSelector

__all__ = ["SelectorSource", "find_devices"]

log = logging.getLogger(__name__)


def find_devices(backend: Any = None) -> list[usb.core.Device]:
    """All devices libusb (or `backend`) sees; blocking."""
    return list(usb.core.find(find_all=True, backend=backend) or [])


class SelectorSource:
    """The device a selector names, on libusb or on given pyusb backends.

    `backends` are searched in order (None is libusb itself); `allowed`, when
    given, must accept a found device (the client's export policy), so a
    channel can never open a device the thin client does not export.
    """

    def __init__(
        self,
        selector: DeviceSelector,
        *,
        backend: Any = None,
        backends: Sequence[Any] | None = None,
        allowed: Callable[[usb.core.Device, Any], bool] | None = None,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.selector = selector
        self.backend = backend
        self.backends: tuple[Any, ...] = tuple(backends) if backends is not None else (backend,)
        self.allowed = allowed
        self.poll_interval_s = poll_interval_s

    def describe(self) -> str:
        return str(self.selector)

    def _find(self) -> usb.core.Device | None:
        for backend in self.backends:
            try:
                devices = find_devices(backend)
            except usb.core.NoBackendError:
                continue  # no libusb on this machine: only emulated devices
            for dev in devices:
                if self.selector.virtual is not None or self.selector.matches(dev):
                    if self.allowed is None or self.allowed(dev, backend):
                        return dev
        return None

    async def present(self) -> bool:
        """Whether a matching (and allowed) device is there now."""
        return await trio.to_thread.run_sync(self._find) is not None

    async def acquire(self) -> UsbDevice:
        waiting_logged = False
        while True:
            dev = await trio.to_thread.run_sync(self._find)
            if dev is not None:
                try:
                    return await UsbDevice.open(dev)
                except USB_CALL_ERRORS as exc:
                    log.warning("cannot open %s: %s", self.selector, exc)
            elif not waiting_logged:
                log.info("waiting for a USB device matching %s", self.selector)
                waiting_logged = True
            await trio.sleep(self.poll_interval_s)
