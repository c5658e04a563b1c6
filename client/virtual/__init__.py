"""redirgate.client.virtual: emulated USB devices behind a pyusb backend.

`VirtualBackend` implements pyusb's ``IBackend``; pass it to
``usb.core.find(backend=...)`` and the client's real device code runs
unchanged against a flash drive (`MassStorageDevice`), a HID boot keyboard
(`KeyboardDevice`) or a loopback/source/sink device with bulk, interrupt and
isochronous endpoints (`LoopbackDevice`).  ``virtual:...`` specs
(`parse_virtual_spec`, `make_backend`) name them on command lines and in
configuration.  Used by tests and demos; never imports trio or the gateway.
"""

from .backend import VIRTUAL_BUS, VirtualBackend
from .descriptors import Speed
from .device import Setup, VirtualDevice
from .errors import LibusbError, Stall, VirtualSpecError, VirtualUSBError, VirtualUSBTimeoutError
from .hub import HubDevice
from .keyboard import KeyboardDevice
from .loopback import LoopbackDevice, LoopbackMode, LoopbackStats, iso_pattern, source_pattern
from .spec import make_backend, parse_virtual_spec
from .storage import MassStorageDevice

__all__ = [
    "VIRTUAL_BUS",
    "HubDevice",
    "KeyboardDevice",
    "LibusbError",
    "LoopbackDevice",
    "LoopbackMode",
    "LoopbackStats",
    "MassStorageDevice",
    "Setup",
    "Speed",
    "Stall",
    "VirtualBackend",
    "VirtualDevice",
    "VirtualSpecError",
    "VirtualUSBError",
    "VirtualUSBTimeoutError",
    "iso_pattern",
    "make_backend",
    "parse_virtual_spec",
    "source_pattern",
]
