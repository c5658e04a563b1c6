"""Which tty a port selector means, now: path, /dev/serial/by-id name, or USB VID:PID[:SERIAL].

A selector is resolved again at every (re)open, so a USB-serial adapter
selected by VID:PID:serial is found after a replug under a new ttyUSBn.
`list_ports()` gives serial.tools.list_ports details for `client devices`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serial.tools import list_ports as _list_ports

from redirgate.client.serial.errors import SelectorError

__all__ = ["BY_ID_DIR", "PortSelector", "list_ports", "parse_port_selector"]

BY_ID_DIR = Path("/dev/serial/by-id")
_USB = re.compile(r"^(?:usb:)?(?P<vid>[0-9a-fA-F]{4}):(?P<pid>[0-9a-fA-F]{4})(?::(?P<serial>.+))?$")


@dataclass(frozen=True)
class PortSelector:
    """Exactly one of `path`, `by_id`, or `vid`/`pid` (+ optional `serial`)."""

    path: str | None = None
    by_id: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        if self.by_id is not None:
            return f"by-id:{self.by_id}"
        tail = f":{self.serial}" if self.serial else ""
        return f"usb:{self.vid:04x}:{self.pid:04x}{tail}"

    def resolve(self) -> str:
        """The device path this selector means right now; SelectorError if none."""
        if self.path is not None:
            if not os.path.exists(self.path):
                raise SelectorError(str(self), "no such device")
            return self.path
        if self.by_id is not None:
            link = BY_ID_DIR / self.by_id
            if not link.exists():
                raise SelectorError(str(self), f"not in {BY_ID_DIR}")
            return str(link.resolve())
        matches = [
            p.device
            for p in _comports(str(self))
            if p.vid == self.vid and p.pid == self.pid and (self.serial is None or p.serial_number == self.serial)
        ]
        if not matches:
            raise SelectorError(str(self), "no USB-serial adapter with this id is plugged in")
        if len(matches) > 1:
            raise SelectorError(str(self), f"ambiguous, matches {', '.join(sorted(matches))}; add :SERIAL")
        return matches[0]


#: How often the port list is read again when a device went away while it was read.
_LIST_ATTEMPTS = 3


def _comports(what: str) -> list[Any]:
    """serial.tools.list_ports.comports(), tolerating a USB device unplugged while it is read.

    pyserial reads each tty's sysfs files one by one; when the device goes
    between two reads it gets None where a number was (TypeError from int()),
    or an OSError.  Seen on the real-USB harness under load: a ttyACM's
    gadget was removed while the client resolved another port's selector,
    and the exception ended the client.  The list is read again; if it keeps
    changing, the caller's SelectorError makes the port wait and retry.
    """
    for _ in range(_LIST_ATTEMPTS):
        try:
            return list(_list_ports.comports())
        except (TypeError, ValueError, OSError) as exc:
            failure = exc
    raise SelectorError(what, f"the serial port list changed while it was read ({failure!r}); trying again later")


def parse_port_selector(text: str) -> PortSelector:
    """`/dev/ttyUSB0` | `by-id:NAME` (or a bare by-id name) | `[usb:]VID:PID[:SERIAL]`."""
    text = text.strip()
    if not text:
        raise SelectorError(text, "empty port selector")
    if text.startswith("/"):
        return PortSelector(path=text)
    if text.startswith("by-id:"):
        return PortSelector(by_id=text[len("by-id:") :])
    match = _USB.match(text)
    if match:
        return PortSelector(vid=int(match["vid"], 16), pid=int(match["pid"], 16), serial=match["serial"])
    if (BY_ID_DIR / text).exists():
        return PortSelector(by_id=text)
    raise SelectorError(text, "expected a /dev path, by-id:NAME or VID:PID[:SERIAL]")


def list_ports() -> list[dict[str, object]]:
    """Serial ports the system knows, with serial.tools.list_ports details."""
    by_id: dict[str, str] = {}
    if BY_ID_DIR.is_dir():
        for link in BY_ID_DIR.iterdir():
            by_id[str(link.resolve())] = link.name
    rows = []
    for info in sorted(_comports("the port list"), key=lambda p: p.device):
        rows.append(
            {
                "device": info.device,
                "by_id": by_id.get(info.device),
                "description": info.description,
                "hwid": info.hwid,
                "vid": info.vid,
                "pid": info.pid,
                "serial_number": info.serial_number,
                "manufacturer": info.manufacturer,
                "product": info.product,
                "location": info.location,
            }
        )
    return rows
