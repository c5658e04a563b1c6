"""`VirtualBackend`: a pyusb ``IBackend`` whose devices are `VirtualDevice`s.

Pass it to ``usb.core.find(backend=...)`` and the ordinary pyusb objects
(usb.core.Device, Configuration, Interface, Endpoint, usb.util, usb.control)
work unchanged against the emulated devices.  This module owns the host side
of the emulation: the virtual bus (plug/unplug, bus/address/port numbering),
device handles, interface claims with libusb's rules (claims are per handle;
SET_CONFIGURATION with a claimed interface is BUSY; SET_INTERFACE needs the
interface claimed; release resets the interface to alternate 0), and the
translation of pyusb's array buffers into the device calls.  Errors are the
ones pyusb's libusb1 backend raises (see `errors`).

Thread safety: a backend lock guards the device list and claims, never held
while a device transfer runs; device state is guarded by each device's own
condition (see `device`).  Any number of threads may call in at once.

No-wait calls: `inline_device(dev)` says whether a pyusb device of this
backend may be driven from an event loop (its hooks never do I/O or sleep),
and `call_nowait(fn, ...)` runs one pyusb call there with NAK waits turned
into ``BlockingIOError`` (see `device.run_no_wait`).  The host engine uses them
to skip the worker-thread round trip for transfers that complete at once;
pyusb's libusb1 backend has neither, so real devices always use threads.

Kernel drivers: `bind_kernel_driver(device, interfaces)` makes interfaces
look bound to a kernel driver (as Linux binds usb-storage or usbhid), with
libusb's rules: claiming such an interface is BUSY until the driver is
detached; detach and attach are recorded in `driver_calls`; a driver bound
with ``detachable=False`` refuses to let go (ACCESS).  The client's
re-attach-on-every-exit rule is tested against this.

Per-packet iso IN: `iso_read_packets` reads N isochronous packets in one
transfer and returns each packet's own status and payload, which pyusb's
``iso_read`` (the sum of the lengths) cannot; client/usb/iso.py uses it.
"""

from __future__ import annotations

import array
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import usb.backend

from .descriptors import (
    ConfigurationDescriptor,
    DeviceDescriptor,
    EndpointDescriptor,
    InterfaceDescriptor,
    TransferType,
    with_topology,
)
from .device import Setup, TransferStatus, VirtualDevice, run_no_wait
from .errors import LibusbError, usb_error

__all__ = ["VIRTUAL_BUS", "VirtualBackend"]

log = logging.getLogger(__name__)

VIRTUAL_BUS = 254  # bus number the virtual devices report; no real host has that many
T = TypeVar("T")


class _DeviceId:
    """What enumerate_devices yields: one connection of one device."""

    def __init__(self, device: VirtualDevice, generation: int, address: int, port: int) -> None:
        self.device = device
        self.generation = generation
        self.address = address
        self.port = port
        self.claims: dict[int, _Handle] = {}

    def __repr__(self) -> str:
        return f"<virtual {self.device.name} bus {VIRTUAL_BUS} addr {self.address}>"


class _Handle:
    """What open_device returns."""

    def __init__(self, devid: _DeviceId) -> None:
        self.devid = devid
        self.closed = False


class VirtualBackend(usb.backend.IBackend):
    """A pyusb backend holding a list of plugged-in virtual devices.

    ``VirtualBackend(devices=())`` plugs each given device.  ``plug(device)``
    / ``unplug(device)`` are hotplug; ``devices`` lists what is plugged in;
    ``close()`` unplugs everything and closes the devices (image files).
    """

    def __init__(self, devices: Iterable[VirtualDevice] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._plugged: dict[int, _DeviceId] = {}  # id(device) -> connection
        self._next_address = 1
        self._next_port = 1
        #: id(device) -> interface -> detachable, for interfaces a driver holds
        self._drivers: dict[int, dict[int, bool]] = {}
        #: id(device) -> interfaces whose driver is detached now
        self._detached: dict[int, set[int]] = {}
        #: ("detach" | "attach", device name, interface), in call order
        self.driver_calls: list[tuple[str, str, int]] = []
        #: called (on the plugging thread, no lock held) after each plug and
        #: unplug: the virtual bus's hotplug events
        self.on_change: list[Callable[[], None]] = []
        for device in devices:
            self.plug(device)

    # ------------------------------------------------------------ virtual bus

    def plug(self, device: VirtualDevice) -> None:
        """Connect ``device``: it enumerates unconfigured, with a new address."""
        with self._lock:
            if id(device) in self._plugged:
                raise ValueError(f"{device.name} is already plugged in")
            self._next_address = self._next_address % 127 + 1
            port = self._next_port
            self._next_port += 1
            generation = device.attach()
            self._plugged[id(device)] = _DeviceId(device, generation, self._next_address, port)
            self._detached.pop(id(device), None)  # plugged in: its drivers bind again
        log.info("virtual device %s plugged in", device.name)
        self._changed()

    def unplug(self, device: VirtualDevice) -> None:
        """Disconnect ``device``: open handles get NO_DEVICE, blocked reads wake."""
        with self._lock:
            devid = self._plugged.pop(id(device), None)
            if devid is None:
                raise ValueError(f"{device.name} is not plugged in")
            devid.claims.clear()
        device.detach()
        log.info("virtual device %s unplugged", device.name)
        self._changed()

    def _changed(self) -> None:
        for callback in list(self.on_change):
            callback()

    def bind_kernel_driver(self, device: VirtualDevice, interfaces: Iterable[int], *, detachable: bool = True) -> None:
        """A kernel driver holds `interfaces` of `device` from now on."""
        with self._lock:
            bound = self._drivers.setdefault(id(device), {})
            for number in interfaces:
                bound[number] = detachable
                self._detached.get(id(device), set()).discard(number)

    def kernel_driver_bound(self, device: VirtualDevice, interface: int) -> bool:
        """Whether a kernel driver holds `interface` now (bound, not detached)."""
        with self._lock:
            return self._driver_active_locked(device, interface)

    def _driver_active_locked(self, device: VirtualDevice, interface: int) -> bool:
        return interface in self._drivers.get(id(device), {}) and interface not in self._detached.get(id(device), set())

    @property
    def devices(self) -> list[VirtualDevice]:
        with self._lock:
            return [d.device for d in self._plugged.values()]

    def close(self) -> None:
        """Unplug every device and close it."""
        for device in self.devices:
            self.unplug(device)
            device.close()

    # ------------------------------------------------------------ no-wait calls

    def inline_device(self, dev: Any) -> bool:
        """Whether transfers on the pyusb device ``dev`` (found on this
        backend) may be attempted with `call_nowait` on an event loop."""
        with self._lock:
            for devid in self._plugged.values():
                if devid.address == dev.address:
                    return devid.device.inline_transfers
        return False

    def call_nowait(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a pyusb control, bulk or interrupt call) on this
        thread; where the device would wait it raises ``BlockingIOError``
        with ``characters_written`` = OUT bytes accepted, having changed
        nothing else."""
        return run_no_wait(fn, *args)

    # ------------------------------------------------------------ descriptors

    def enumerate_devices(self) -> list[_DeviceId]:
        with self._lock:
            return list(self._plugged.values())

    def get_parent(self, dev: _DeviceId) -> None:
        return None

    def get_device_descriptor(self, dev: _DeviceId) -> DeviceDescriptor:
        d = dev.device
        return with_topology(
            d.descriptors.device_descriptor, bus=VIRTUAL_BUS, address=dev.address, port=dev.port, speed=d.speed
        )

    def get_configuration_descriptor(self, dev: _DeviceId, config: int) -> ConfigurationDescriptor:
        configs = dev.device.descriptors.parsed_configurations
        if not 0 <= config < len(configs):
            raise IndexError(f"Invalid configuration index {config}")
        return configs[config]

    def get_interface_descriptor(self, dev: _DeviceId, intf: int, alt: int, config: int) -> InterfaceDescriptor:
        cfg = self.get_configuration_descriptor(dev, config)
        if not 0 <= intf < len(cfg.interfaces):
            raise IndexError(f"Invalid interface index {intf}")
        alts = cfg.interfaces[intf]
        if not 0 <= alt < len(alts):
            raise IndexError(f"Invalid alternate setting index {alt}")
        return alts[alt]

    def get_endpoint_descriptor(self, dev: _DeviceId, ep: int, intf: int, alt: int, config: int) -> EndpointDescriptor:
        eps = self.get_interface_descriptor(dev, intf, alt, config).endpoints
        if not 0 <= ep < len(eps):
            raise IndexError(f"Invalid endpoint index {ep}")
        return eps[ep]

    # ------------------------------------------------------------ handles and claims

    def _live(self, handle: _Handle) -> _DeviceId:
        devid = handle.devid
        device = devid.device
        if handle.closed:
            raise usb_error(LibusbError.NO_DEVICE, device.name, "handle closed")
        with self._lock:
            current = self._plugged.get(id(device))
        if current is not devid:
            raise usb_error(LibusbError.NO_DEVICE, device.name, "device disconnected")
        return devid

    def open_device(self, dev: _DeviceId) -> _Handle:
        with self._lock:
            if self._plugged.get(id(dev.device)) is not dev:
                raise usb_error(LibusbError.NO_DEVICE, dev.device.name, "device disconnected")
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        # Never raises: pyusb calls it from finalizers, also after unplug.
        devid = dev_handle.devid
        with self._lock:
            for intf, owner in list(devid.claims.items()):
                if owner is dev_handle:
                    del devid.claims[intf]
        dev_handle.closed = True

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        devid = self._live(dev_handle)
        with self._lock:
            if devid.claims:
                raise usb_error(LibusbError.BUSY, devid.device.name, f"interfaces {sorted(devid.claims)} are claimed")
        devid.device.set_configuration(devid.generation, config_value)

    def get_configuration(self, dev_handle: _Handle) -> int:
        devid = self._live(dev_handle)
        return devid.device.configuration_value

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        devid = self._live(dev_handle)
        with self._lock:
            if devid.claims.get(intf) is not dev_handle:
                raise usb_error(LibusbError.NOT_FOUND, devid.device.name, f"interface {intf} not claimed")
        devid.device.set_interface(devid.generation, intf, altsetting)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        devid = self._live(dev_handle)
        if not devid.device.has_interface(intf):
            raise usb_error(
                LibusbError.NOT_FOUND, devid.device.name, f"no interface {intf} in the active configuration"
            )
        with self._lock:
            if self._driver_active_locked(devid.device, intf):
                raise usb_error(LibusbError.BUSY, devid.device.name, f"a kernel driver holds interface {intf}")
            owner = devid.claims.get(intf)
            if owner is not None and owner is not dev_handle:
                raise usb_error(LibusbError.BUSY, devid.device.name, f"interface {intf} claimed elsewhere")
            devid.claims[intf] = dev_handle

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        devid = self._live(dev_handle)
        with self._lock:
            if devid.claims.get(intf) is not dev_handle:
                raise usb_error(LibusbError.NOT_FOUND, devid.device.name, f"interface {intf} not claimed")
            del devid.claims[intf]
        if devid.device.alternate_setting(intf) != 0:
            devid.device.set_interface(devid.generation, intf, 0)

    # ------------------------------------------------------------ transfers

    def _endpoint(
        self, dev_handle: _Handle, ep: int, kind: TransferType, is_in: bool
    ) -> tuple[_DeviceId, EndpointDescriptor]:
        devid = self._live(dev_handle)
        if bool(ep & 0x80) != is_in:
            raise usb_error(LibusbError.INVALID_PARAM, devid.device.name, f"endpoint {ep:#04x} has the wrong direction")
        return devid, devid.device.endpoint(devid.generation, ep, kind)

    def _write(self, kind: TransferType, dev_handle: _Handle, ep: int, data: array.array[int], timeout: int) -> int:
        devid, _ = self._endpoint(dev_handle, ep, kind, False)
        return devid.device.transfer_out(devid.generation, ep, memoryview(data).cast("B"), timeout)

    def _read(self, kind: TransferType, dev_handle: _Handle, ep: int, buff: array.array[int], timeout: int) -> int:
        devid, _ = self._endpoint(dev_handle, ep, kind, True)
        view = memoryview(buff).cast("B")
        data = devid.device.transfer_in(devid.generation, ep, len(view), timeout)
        view[: len(data)] = data
        return len(data)

    def bulk_write(self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int) -> int:
        return self._write(TransferType.BULK, dev_handle, ep, data, timeout)

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return self._read(TransferType.BULK, dev_handle, ep, buff, timeout)

    def intr_write(self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int) -> int:
        return self._write(TransferType.INTERRUPT, dev_handle, ep, data, timeout)

    def intr_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return self._read(TransferType.INTERRUPT, dev_handle, ep, buff, timeout)

    def iso_write(self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int) -> int:
        devid, desc = self._endpoint(dev_handle, ep, TransferType.ISOCHRONOUS, False)
        return devid.device.iso_out(devid.generation, desc, memoryview(data).cast("B"))

    def iso_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        devid, desc = self._endpoint(dev_handle, ep, TransferType.ISOCHRONOUS, True)
        return devid.device.iso_in(devid.generation, desc, memoryview(buff).cast("B"))

    def iso_read_packets(
        self, dev_handle: _Handle, ep: int, intf: int, count: int, packet_size: int, timeout: int
    ) -> list[tuple[TransferStatus, bytes]]:
        """One isochronous IN transfer of ``count`` packets of at most
        ``packet_size`` bytes, with every packet's own result: a list of
        (libusb transfer status, payload), a failed packet without data.
        pyusb's ``iso_read`` returns only the sum of the lengths; the host
        engine looks for this method (client/usb/iso.py).  Takes ``count``
        (micro)frames, as `iso_read` does; ``intf`` and ``timeout`` are
        ignored (the emulated device never makes an iso transfer wait)."""
        devid, desc = self._endpoint(dev_handle, ep, TransferType.ISOCHRONOUS, True)
        if count < 1 or packet_size < 1:
            raise usb_error(LibusbError.INVALID_PARAM, devid.device.name, f"{count} iso packets of {packet_size} bytes")
        return devid.device.iso_in_packets(devid.generation, desc, count, packet_size)

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        devid = self._live(dev_handle)
        view = memoryview(data).cast("B")
        setup = Setup(bmRequestType, bRequest, wValue, wIndex, len(view))
        is_in = bmRequestType & 0x80  # Setup.is_in, without its property call
        result = devid.device.control(devid.generation, setup, b"" if is_in else bytes(view))
        if is_in:
            assert result is not None
            view[: len(result)] = result
            return len(result)
        return len(view)

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        devid = self._live(dev_handle)
        devid.device.clear_halt(devid.generation, ep)

    def reset_device(self, dev_handle: _Handle) -> None:
        devid = self._live(dev_handle)
        devid.device.reset(devid.generation)

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        devid = self._live(dev_handle)
        with self._lock:
            return self._driver_active_locked(devid.device, intf)

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        device = self._live(dev_handle).device
        with self._lock:
            self.driver_calls.append(("detach", device.name, intf))
            if not self._driver_active_locked(device, intf):
                raise usb_error(LibusbError.NOT_FOUND, device.name, f"no kernel driver on interface {intf}")
            if not self._drivers[id(device)][intf]:
                raise usb_error(LibusbError.ACCESS, device.name, f"the driver of interface {intf} does not let go")
            self._detached.setdefault(id(device), set()).add(intf)

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        devid = self._live(dev_handle)
        device = devid.device
        with self._lock:
            self.driver_calls.append(("attach", device.name, intf))
            if intf not in self._detached.get(id(device), set()):
                raise usb_error(LibusbError.NOT_FOUND, device.name, f"no detached driver on interface {intf}")
            if devid.claims.get(intf) is not None:
                raise usb_error(LibusbError.BUSY, device.name, f"interface {intf} is claimed")
            self._detached[id(device)].discard(intf)
