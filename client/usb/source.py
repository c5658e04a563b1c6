"""Where a host engine gets its device: find by selector, wait, open.

`SelectorSource.acquire()` polls libusb (or the emulated-device backend)
until a device matching the selector is present, then opens it.  Polling is
what makes replug work without hotplug support in pyusb: after an unplug the
engine calls `acquire()` again and gets the device back when it returns.

A matching device the client never exports (a hub, the thin client's boot
device: client/usb/safety.py; one whose kernel driver would not let go) is
never opened: `acquire()` logs why, once, and keeps waiting for a device it
may serve; `check_blocking()` raises `DeviceRefusedError` for it, so a
command that names such a device says why and stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio
import usb.core

from redirgate.client.usb.descriptors import snapshot
from redirgate.client.usb.device import UsbDevice
from redirgate.client.usb.errors import USB_CALL_ERRORS, DeviceRefusedError, UsbAccessError
from redirgate.client.usb.libusb import libusb_backend
from redirgate.client.usb.safety import boot_usb_ports, is_hub, refusal
from redirgate.client.usb.selector import DeviceSelector

__all__ = ["SelectorSource", "device_name", "find_devices", "refusal_of"]

log = logging.getLogger(__name__)


def find_devices(backend: Any = None) -> list[usb.core.Device]:
    """All devices libusb (the current context, client/usb/libusb.py) or
    `backend` sees; blocking."""
    return list(usb.core.find(find_all=True, backend=backend if backend is not None else libusb_backend()) or [])


def refusal_of(dev: usb.core.Device, boot: Callable[[], Mapping[str, str]]) -> str | None:
    """Why `dev` is never exported, or None (blocking: reads descriptors;
    `boot()` gives the boot devices, asked only for a device that is no hub)."""
    try:
        snap = snapshot(dev, read_strings=False)
    except USB_CALL_ERRORS:
        return None  # unreadable: opening it will say why
    return refusal(snap, {} if is_hub(snap) else boot())


def device_name(dev: usb.core.Device) -> str:
    """`VID:PID Manufacturer Product at PORT` (blocking: reads strings)."""
    try:
        return snapshot(dev).describe()
    except USB_CALL_ERRORS:
        return f"{dev.idVendor:04x}:{dev.idProduct:04x} at bus {dev.bus} address {dev.address}"


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
        boot_ports: Callable[[], Mapping[str, str]] = boot_usb_ports,
    ) -> None:
        self.selector = selector
        self.backend = backend
        self.backends: tuple[Any, ...] = tuple(backends) if backends is not None else (backend,)
        self.allowed = allowed
        self.poll_interval_s = poll_interval_s
        self.boot_ports = boot_ports
        #: (backend id, bus, address) -> reason, for devices that failed to
        #: open for a reason of ours (a driver that would not let go): not
        #: tried again until they are replugged (a new address)
        self._open_refused: dict[tuple[int, int, int], str] = {}
        #: devices `acquire` handed out and not released yet (loop thread)
        self.held = 0
        self._unheld = trio.Event()
        self._unheld.set()

    def describe(self) -> str:
        return str(self.selector)

    def look(self) -> tuple[usb.core.Device | None, tuple[int, int, int], dict[str, str]]:
        """(a device to serve or None, its key, refused matches: name -> reason); blocking."""
        refused: dict[str, str] = {}
        boot_cache: list[Mapping[str, str]] = []

        def boot() -> Mapping[str, str]:
            if not boot_cache:
                boot_cache.append(self.boot_ports())
            return boot_cache[0]

        present: set[tuple[int, int, int]] = set()
        for backend in self.backends:
            try:
                devices = find_devices(backend)
            except usb.core.NoBackendError:
                continue  # no libusb on this machine: only emulated devices
            for dev in devices:
                if self.selector.virtual is not None or self.selector.matches(dev):
                    if self.allowed is not None and not self.allowed(dev, backend):
                        continue
                    key = (id(backend), dev.bus or 0, dev.address or 0)
                    present.add(key)
                    reason = self._open_refused.get(key) or refusal_of(dev, boot)
                    if reason is not None:
                        refused[device_name(dev)] = reason
                        continue
                    return dev, key, refused
        # forget devices that were unplugged: a replug is tried afresh
        self._open_refused = {k: v for k, v in self._open_refused.items() if k in present}
        return None, (0, 0, 0), refused

    def _find(self) -> usb.core.Device | None:
        return self.look()[0]

    def check_blocking(self) -> bool:
        """Whether a device is there to serve now; `DeviceRefusedError` when
        every matching device is one the client never exports."""
        dev, _, refused = self.look()
        if dev is not None:
            return True
        for name, reason in refused.items():
            raise DeviceRefusedError(name, reason)
        return False

    async def present(self) -> bool:
        """Whether a matching (and allowed) device is there now."""
        return await trio.to_thread.run_sync(self._find) is not None

    def _hold(self, device: UsbDevice) -> None:
        self.held += 1
        if self.held == 1:
            self._unheld = trio.Event()

        def released() -> None:
            self.held -= 1
            if not self.held:
                self._unheld.set()

        device.on_release = released

    async def until_unheld(self) -> None:
        """Return once no device `acquire` handed out is still held (at once if none is)."""
        while self.held:
            await self._unheld.wait()

    async def acquire(self) -> UsbDevice:
        waiting_logged = False
        logged: set[str] = set()  # each refusal or open failure once
        while True:
            dev, key, refused = await trio.to_thread.run_sync(self.look)
            for name, reason in refused.items():
                line = f"not serving {name}: {reason}"
                if line not in logged:
                    logged.add(line)
                    log.warning("%s", line)
            if dev is not None:
                try:
                    device = await UsbDevice.open(dev)
                except DeviceRefusedError as exc:
                    self._open_refused[key] = exc.reason
                    continue  # logged by the next look, which skips it
                except (UsbAccessError, *USB_CALL_ERRORS) as exc:
                    line = f"cannot open {self.selector}: {exc}"
                    if line not in logged:
                        logged.add(line)
                        log.warning("%s", line)
                else:
                    self._hold(device)
                    return device
            elif not waiting_logged:
                log.info("waiting for a USB device matching %s", self.selector)
                waiting_logged = True
            await trio.sleep(self.poll_interval_s)
