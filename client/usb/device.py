"""An opened USB device: claimed interfaces, detached kernel drivers, worker threads.

Every pyusb call blocks, so each one runs in a worker thread through
`trio.to_thread.run_sync` with this device's `CapacityLimiter`; libusb gets a
finite timeout on every call, which is what lets a cancelled request give its
thread back (a thread is never abandoned).  Kernel drivers detached on open
are re-attached on release, so a stick goes back to the thin client when the
VM lets go.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio
import usb.core
import usb.util

from redirgate.client.usb.descriptors import DeviceSnapshot, snapshot

__all__ = ["UsbDevice", "DEFAULT_WORKER_THREADS"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Worker threads per device: enough for a control request, a bulk transfer
#: each way and a few endpoint streams to block at the same time.
DEFAULT_WORKER_THREADS = 8


class UsbDevice:
    """A pyusb device opened for redirection (create with `open()`)."""

    def __init__(self, dev: usb.core.Device, snap: DeviceSnapshot, *, threads: int) -> None:
        self.dev = dev
        self.snapshot = snap
        self.name = snap.describe()
        self.limiter = trio.CapacityLimiter(threads)
        self._claimed: set[int] = set()
        self._detached: set[int] = set()
        self._released = False

    @classmethod
    async def open(cls, dev: usb.core.Device, *, threads: int = DEFAULT_WORKER_THREADS) -> "UsbDevice":
        snap = await trio.to_thread.run_sync(snapshot, dev)
        device = cls(dev, snap, threads=threads)
        await device.call(device._claim_active)
        return device

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking pyusb call in one of this device's worker threads."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- blocking helpers (worker threads only) ---------------------------
    def _claim_active(self) -> None:
        config = self.snapshot.configs.get(self.snapshot.active_config)
        if config is None:
            return
        for number in config.interfaces:
            try:
                if self.dev.is_kernel_driver_active(number):
                    self.dev.detach_kernel_driver(number)
                    self._detached.add(number)
            except (NotImplementedError, usb.core.USBError) as exc:
                log.debug("kernel driver check on %s interface %d: %s", self.name, number, exc)
            usb.util.claim_interface(self.dev, number)
            self._claimed.add(number)

    def _release_claimed(self) -> None:
        for number in sorted(self._claimed):
            try:
                usb.util.release_interface(self.dev, number)
            except usb.core.USBError as exc:
                log.debug("release %s interface %d: %s", self.name, number, exc)
        self._claimed.clear()

    def set_configuration_blocking(self, value: int) -> None:
        """Release, set, re-read, re-claim (usbredirhost_set_configuration)."""
        self._release_claimed()
        try:
            self.dev.set_configuration(value)
        finally:
            self.snapshot = dataclasses.replace(self.snapshot, active_config=self._active_value())
            self._claim_active()

    def present_blocking(self) -> bool:
        """Is the device still on the bus?  (pyusb has no hotplug events, and
        an idle device's unplug shows up in no transfer.)"""
        found = usb.core.find(find_all=True, backend=self.dev.backend) or []
        return any(other == self.dev for other in found)

    def reset_blocking(self, alts: dict[int, int]) -> None:
        """Reset the device, then put pyusb's view back: pyusb's reset closes
        the handle, releasing every interface and forgetting the alt
        settings, which libusb and the OS keep across a reset (usbredirhost
        relies on that, protocol reference §4.8)."""
        self.dev.reset()
        for number in sorted(self._claimed):
            usb.util.claim_interface(self.dev, number)
            if alts.get(number, 0):
                self.dev.set_interface_altsetting(number, alts[number])

    def _active_value(self) -> int:
        try:
            return int(self.dev.get_active_configuration().bConfigurationValue)
        except usb.core.USBError:
            return 0

    def release_blocking(self) -> None:
        if self._released:
            return
        self._released = True
        self._release_claimed()
        for number in sorted(self._detached):
            try:
                self.dev.attach_kernel_driver(number)
            except (NotImplementedError, usb.core.USBError) as exc:
                log.info("could not re-attach the kernel driver of %s interface %d: %s", self.name, number, exc)
        self._detached.clear()
        usb.util.dispose_resources(self.dev)

    async def release(self) -> None:
        """Give the device back to the thin client (shielded: runs on cancel too)."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.release_blocking)
