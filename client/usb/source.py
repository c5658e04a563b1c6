"""Where a host engine gets its device: find by selector, wait, open.

`SelectorSource.acquire()` polls libusb (or the emulated-device backend)
until a device matching the selector is present, then opens it.  Polling is
what makes replug work without hotplug support in pyusb: after an unplug the
engine calls `acquire()` again and gets the device back when it returns.
"""

from __future__ import annotations

import logging
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
    """The device a selector names, on libusb or on a given pyusb backend."""

    def __init__(
        self, selector: DeviceSelector, *, backend: Any = None, poll_interval_s: float = 0.5
    ) -> None:
        self.selector = selector
        self.backend = backend
        self.poll_interval_s = poll_interval_s

    def describe(self) -> str:
        return str(self.selector)

    def _find(self) -> usb.core.Device | None:
        for dev in find_devices(self.backend):
            if self.selector.virtual is not None or self.selector.matches(dev):
                return dev
        return None

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
