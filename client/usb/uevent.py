"""Kernel uevents as the netlink socket delivers them: a sans-IO parser.

A datagram from the kernel's NETLINK_KOBJECT_UEVENT group 1 is
``ACTION@DEVPATH\\0`` followed by ``KEY=VALUE\\0`` pairs (lib/kobject_uevent.c:
ACTION, DEVPATH, SUBSYSTEM, SEQNUM, and per subsystem more: a USB device has
DEVTYPE=usb_device, PRODUCT=vid/pid/bcd, BUSNUM, DEVNUM, DEVNAME).  udevd
re-broadcasts on group 2 with a binary ``libudev\\0`` header; those are not
ours (we bind group 1 only) and are refused here too.

`parse_uevent(data)` returns a `Uevent` or None for anything that is not a
well-formed kernel uevent; it never raises on bad input.  No I/O, no trio,
no logging: client/usb/hotplug.py owns the socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_UEVENT_BYTES", "Uevent", "is_usb_device_event", "parse_uevent"]

#: the kernel's UEVENT_BUFFER_SIZE: no uevent is longer
MAX_UEVENT_BYTES = 2048
#: what a kernel datagram starts with: ACTION@ (lib/kobject_uevent.c kobject_actions)
_ACTIONS = frozenset({"add", "remove", "change", "move", "online", "offline", "bind", "unbind"})


@dataclass(frozen=True)
class Uevent:
    action: str
    devpath: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def subsystem(self) -> str:
        return self.env.get("SUBSYSTEM", "")

    @property
    def devtype(self) -> str:
        return self.env.get("DEVTYPE", "")

    @property
    def seqnum(self) -> int | None:
        text = self.env.get("SEQNUM", "")
        return int(text) if text.isdigit() else None


def parse_uevent(data: bytes | bytearray | memoryview) -> Uevent | None:
    """The uevent in one datagram, or None (not a kernel uevent, or malformed)."""
    raw = bytes(data)
    if not raw or len(raw) > MAX_UEVENT_BYTES * 2 or raw.startswith(b"libudev\0"):
        return None
    parts = raw.split(b"\0")
    try:
        head = parts[0].decode("utf-8")
        fields = [p.decode("utf-8") for p in parts[1:] if p]
    except UnicodeDecodeError:
        return None
    action, at, devpath = head.partition("@")
    if not at or action not in _ACTIONS or not devpath.startswith("/"):
        return None
    env: dict[str, str] = {}
    for item in fields:
        key, eq, value = item.partition("=")
        if not eq or not key:
            return None
        env[key] = value
    if env.get("ACTION", action) != action or env.get("DEVPATH", devpath) != devpath:
        return None  # the header and the body disagree: not the kernel's
    return Uevent(action, devpath, env)


def is_usb_device_event(event: Uevent) -> bool:
    """A USB device (not an interface) came, went or changed: what the
    inventory must look at again.  Interface and driver bind/unbind events
    change nothing the inventory lists."""
    return event.subsystem == "usb" and event.devtype == "usb_device" and event.action in ("add", "remove", "change")
