"""The client's inventory of exportable devices: entries, full lists, updates.

A `DeviceEntry.id` is a canonical device selector that names exactly that
device and stays the same across replugs where the hardware allows it
(`usb:VVVV:PPPP:SERIAL` for devices with a serial number, `usb-port:B-P.P`
otherwise, `serial:NAME`, `parallel:NAME`).  The client sends one full
`Inventory` after its hello, then `InventoryUpdate`s on hotplug and when a
device's `busy` flag changes.  This module validates; keeping the current
inventory is the gateway's registry's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from redirgate.proto.tunnel import validate as v
from redirgate.proto.tunnel.base import Role, TunnelMessage, WireRecord
from redirgate.proto.tunnel.errors import LocalProtocolError, SelectorError
from redirgate.proto.tunnel.selectors import MAX_SERIAL_LEN, DeviceSelector, SelectorScheme, parse_selector

__all__ = ["MAX_DEVICES", "DeviceEntry", "DeviceKind", "Inventory", "InventoryUpdate"]

#: Devices in one inventory.  1024 worst-case entries of ~700 bytes still fit
#: the default 1 MiB control message limit.
MAX_DEVICES = 1024
MAX_DESCRIPTION_LEN = 200
MAX_PORT_PATH_LEN = 128


class DeviceKind(StrEnum):
    USB = "usb"
    SERIAL = "serial"
    PARALLEL = "parallel"


_SCHEME_KIND = {
    SelectorScheme.USB: DeviceKind.USB,
    SelectorScheme.USB_PORT: DeviceKind.USB,
    SelectorScheme.SERIAL: DeviceKind.SERIAL,
    SelectorScheme.PARALLEL: DeviceKind.PARALLEL,
}


def check_device_id(owner: str, name: str, value: Any) -> DeviceSelector:
    """A device id: a selector in canonical form."""
    try:
        selector = parse_selector(value)
    except SelectorError as exc:
        raise LocalProtocolError(f"{owner}.{name}: {exc.reason}") from exc
    if selector.text != value:
        raise LocalProtocolError(f"{owner}.{name}={value!r} is not canonical (expected {selector.text!r})")
    return selector


@dataclass(frozen=True, slots=True)
class DeviceEntry(WireRecord):
    """One exportable device as the client reports it."""

    id: str
    kind: DeviceKind
    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    #: usb: the sysfs port chain "B-P.P"; serial/parallel: the device node
    port_path: str | None = None
    description: str = ""
    #: in use by a channel or locally (not available to a new channel)
    busy: bool = False

    def __post_init__(self) -> None:
        owner = "DeviceEntry"
        selector = check_device_id(owner, "id", self.id)
        kind = v.enum_value(owner, "kind", self.kind, DeviceKind)
        object.__setattr__(self, "kind", kind)
        if _SCHEME_KIND[selector.scheme] is not kind:
            raise LocalProtocolError(f"{owner}: id {self.id!r} does not name a {kind.value} device")
        for name in ("vendor_id", "product_id"):
            value = getattr(self, name)
            if value is None:
                if kind is DeviceKind.USB:
                    raise LocalProtocolError(f"{owner}.{name} is required for a usb device")
            else:
                v.uint(owner, name, value, 0xFFFF)
        if self.serial is not None:
            v.text(owner, "serial", self.serial, MAX_SERIAL_LEN, empty=False)
        if self.port_path is not None:
            v.text(owner, "port_path", self.port_path, MAX_PORT_PATH_LEN, empty=False)
        v.text(owner, "description", self.description, MAX_DESCRIPTION_LEN)
        v.boolean(owner, "busy", self.busy)

    @property
    def selector(self) -> DeviceSelector:
        return parse_selector(self.id)


def _entries(owner: str, name: str, value: Any) -> tuple[DeviceEntry, ...]:
    items = v.sequence(owner, name, value, MAX_DEVICES)
    for item in items:
        if not isinstance(item, DeviceEntry):
            raise LocalProtocolError(f"{owner}.{name} holds a {type(item).__name__}, not a DeviceEntry")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise LocalProtocolError(f"{owner}.{name} lists a device id twice")
    return items


def _entries_from_wire(value: Any) -> Any:
    if type(value) is not list:
        return value  # the constructor names the problem
    return [DeviceEntry.from_wire(item) for item in value[: MAX_DEVICES + 1]]


@dataclass(frozen=True, slots=True)
class Inventory(TunnelMessage):
    """Every device the client exports now (replaces any earlier list)."""

    KIND: ClassVar[str] = "inventory"
    SENDERS: ClassVar[frozenset[Role]] = frozenset({Role.CLIENT})

    devices: tuple[DeviceEntry, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", _entries("Inventory", "devices", self.devices))

    @classmethod
    def _field_from_wire(cls, name: str, value: Any) -> Any:
        return _entries_from_wire(value)


@dataclass(frozen=True, slots=True)
class InventoryUpdate(TunnelMessage):
    """Hotplug: `added` are new or changed entries (replacing by id),
    `removed` the ids of devices that are gone."""

    KIND: ClassVar[str] = "inventory_update"
    SENDERS: ClassVar[frozenset[Role]] = frozenset({Role.CLIENT})

    added: tuple[DeviceEntry, ...] = ()
    removed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        owner = "InventoryUpdate"
        added = _entries(owner, "added", self.added)
        removed = v.sequence(owner, "removed", self.removed, MAX_DEVICES)
        for device_id in removed:
            check_device_id(owner, "removed", device_id)
        if len(set(removed)) != len(removed):
            raise LocalProtocolError(f"{owner}.removed lists a device id twice")
        both = {e.id for e in added} & set(removed)
        if both:
            raise LocalProtocolError(f"{owner}: {sorted(both)[0]!r} is both added and removed")
        object.__setattr__(self, "added", added)
        object.__setattr__(self, "removed", removed)

    @classmethod
    def _field_from_wire(cls, name: str, value: Any) -> Any:
        return _entries_from_wire(value) if name == "added" else value
