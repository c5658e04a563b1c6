"""Device selectors: which USB device a user means, stable across replugs.

Forms (hex ids):
    VID:PID            usb:VID:PID          any device with these ids
    VID:PID:SERIAL     usb:VID:PID:SERIAL   ... with this serial number
    1-2.3              usb-port:1-2.3       whatever is plugged into that port
    BUS/ADDR           usb-addr:BUS/ADDR    bus and device address (not stable)
    virtual:KIND[:ARG] an emulated device (redirgate.client.virtual)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import usb.core

from redirgate.client.usb.descriptors import port_path
from redirgate.client.usb.errors import SelectorError

__all__ = ["DeviceSelector", "parse_selector"]

_IDS = re.compile(r"^(?P<vid>[0-9a-fA-F]{1,4}):(?P<pid>[0-9a-fA-F]{1,4})(?::(?P<serial>.+))?$")
_PORT = re.compile(r"^(?P<bus>\d+)-(?P<ports>\d+(?:\.\d+)*)$")
_ADDR = re.compile(r"^(?P<bus>\d+)/(?P<addr>\d+)$")


@dataclass(frozen=True)
class DeviceSelector:
    text: str
    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    port: str | None = None
    bus: int | None = None
    address: int | None = None
    virtual: str | None = None

    def matches(self, dev: usb.core.Device) -> bool:
        """Blocking when a serial number must be read: call in a worker thread."""
        if self.vendor_id is not None:
            if dev.idVendor != self.vendor_id or dev.idProduct != self.product_id:
                return False
            if self.serial is not None:
                try:
                    return bool(dev.serial_number == self.serial)
                except (usb.core.USBError, ValueError, NotImplementedError):
                    return False
            return True
        if self.port is not None:
            return port_path(dev) == self.port
        if self.bus is not None:
            return dev.bus == self.bus and dev.address == self.address
        return False

    def __str__(self) -> str:
        return self.text


def parse_selector(text: str) -> DeviceSelector:
    raw = text.strip()
    if raw.startswith("virtual:"):
        return DeviceSelector(raw, virtual=raw)
    body = raw
    for prefix in ("usb:", "usb-port:", "usb-addr:"):
        if raw.startswith(prefix):
            body = raw[len(prefix) :]
            break
    if not raw.startswith(("usb-port:", "usb-addr:")):
        found = _IDS.match(body)
        if found:
            return DeviceSelector(raw, int(found["vid"], 16), int(found["pid"], 16), serial=found["serial"])
    if not raw.startswith(("usb:", "usb-addr:")):
        found = _PORT.match(body)
        if found:
            return DeviceSelector(raw, port=body)
    if not raw.startswith(("usb:", "usb-port:")):
        found = _ADDR.match(body)
        if found:
            return DeviceSelector(raw, bus=int(found["bus"]), address=int(found["addr"]))
    raise SelectorError(
        f"cannot understand device selector {text!r}: use VID:PID[:SERIAL], BUS-PORT.PORT "
        "(e.g. 1-2.3), BUS/ADDR or virtual:storage:IMAGE|virtual:keyboard|virtual:loopback"
    )
