"""Device selectors: the strings that name a device in routes and channels.

Grammar (one selector, no whitespace anywhere)::

    usb:VVVV:PPPP            vendor and product id, 4 hex digits each
    usb:VVVV:PPPP:SERIAL     ... and the iSerialNumber string (may hold ':')
    usb-port:B-P[.P...]      bus number and port chain, as in /sys/bus/usb
    serial:NAME              a serial port the client exports under NAME
    parallel:NAME            a parallel port the client exports under NAME

Hex digits are accepted in either case and printed in lower case; `text` is
the canonical form.  A device's stable id (`DeviceEntry.id`) is a canonical
selector that names exactly that device.  This module parses and matches; it
never looks at a real device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from redirgate.proto.tunnel.errors import SelectorError

if TYPE_CHECKING:
    from redirgate.proto.tunnel.inventory import DeviceEntry

__all__ = ["MAX_SELECTOR_LEN", "DeviceSelector", "SelectorScheme", "parse_selector"]

#: Longest selector: "usb:VVVV:PPPP:" + a 126-character serial (a USB string
#: descriptor holds at most (255 - 2) / 2 UTF-16 units), with room to spare.
MAX_SELECTOR_LEN = 160
#: USB string descriptor limit (bLength <= 255, two header bytes, UTF-16).
MAX_SERIAL_LEN = 126
#: Hubs chain at most 5 tiers below the root port (USB 2.0 §4.1.1, USB 3.x §10.1.1): allow 7.
_USB_PORT = re.compile(r"([1-9][0-9]{0,2})-([1-9][0-9]{0,2}(?:\.[1-9][0-9]{0,2}){0,6})")
_USB_IDS = re.compile(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})(?::(.+))?", re.DOTALL)
_NAME = re.compile(r"[A-Za-z0-9_.\-/+@:]{1,128}")


class SelectorScheme(StrEnum):
    USB = "usb"
    USB_PORT = "usb-port"
    SERIAL = "serial"
    PARALLEL = "parallel"


@dataclass(frozen=True, slots=True)
class DeviceSelector:
    """A parsed selector; build it with `parse_selector`."""

    scheme: SelectorScheme
    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    #: usb-port: "B-P.P"; serial/parallel: the NAME
    path: str | None = None

    @property
    def text(self) -> str:
        """The canonical string form."""
        if self.scheme is SelectorScheme.USB:
            base = f"usb:{self.vendor_id:04x}:{self.product_id:04x}"
            return base if self.serial is None else f"{base}:{self.serial}"
        return f"{self.scheme.value}:{self.path}"

    def __str__(self) -> str:
        return self.text

    def matches(self, entry: DeviceEntry) -> bool:
        """Whether this selector picks `entry` out of an inventory."""
        if entry.id == self.text:
            return True
        if self.scheme is SelectorScheme.USB:
            return (
                entry.kind == "usb"
                and entry.vendor_id == self.vendor_id
                and entry.product_id == self.product_id
                and (self.serial is None or entry.serial == self.serial)
            )
        if self.scheme is SelectorScheme.USB_PORT:
            return entry.kind == "usb" and entry.port_path == self.path
        return False


def parse_selector(value: object) -> DeviceSelector:
    """Parse a selector string; SelectorError names what is wrong."""
    if type(value) is not str:
        raise SelectorError(f"selector {value!r} is not a string")
    if not 1 <= len(value) <= MAX_SELECTOR_LEN:
        raise SelectorError(f"selector of {len(value)} characters (1..{MAX_SELECTOR_LEN} allowed)")
    scheme_text, sep, rest = value.partition(":")
    try:
        scheme = SelectorScheme(scheme_text)
    except ValueError:
        raise SelectorError(
            f"selector {value!r}: unknown scheme {scheme_text!r} (known: {', '.join(s.value for s in SelectorScheme)})"
        ) from None
    if not sep:
        raise SelectorError(f"selector {value!r} has nothing after the scheme")
    if scheme is SelectorScheme.USB:
        match = _USB_IDS.fullmatch(rest)
        if match is None:
            raise SelectorError(f"selector {value!r}: expected usb:VVVV:PPPP[:SERIAL] with 4 hex digits each")
        serial = match.group(3)
        if serial is not None and (
            len(serial) > MAX_SERIAL_LEN or not serial.isprintable() or any(c.isspace() for c in serial)
        ):
            raise SelectorError(
                f"selector {value!r}: the serial must be 1..{MAX_SERIAL_LEN} printable characters without spaces"
            )
        return DeviceSelector(scheme, int(match.group(1), 16), int(match.group(2), 16), serial)
    if scheme is SelectorScheme.USB_PORT:
        match = _USB_PORT.fullmatch(rest)
        if match is None or int(match.group(1)) > 255 or any(int(p) > 255 for p in match.group(2).split(".")):
            raise SelectorError(f"selector {value!r}: expected usb-port:BUS-PORT[.PORT...] with numbers 1..255")
        return DeviceSelector(scheme, path=rest)
    if _NAME.fullmatch(rest) is None:
        raise SelectorError(f"selector {value!r}: the name must be 1..128 of [A-Za-z0-9_.-/+@:]")
    return DeviceSelector(scheme, path=rest)
