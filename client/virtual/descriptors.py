"""USB descriptors for the virtual devices: built once as raw bytes, parsed back.

This module owns the byte layout of the standard USB 2.0 descriptors (USB 2.0
spec chapter 9.6: device, configuration, interface, endpoint, string, device
qualifier, other-speed configuration; USB 3.2 spec 9.6.2 for BOS) and the
attribute objects pyusb's backend interface hands to `usb.core` (the same
attribute names libusb's structs carry).  Devices describe themselves with
the frozen ``*Spec`` dataclasses; `build_descriptor_set` turns them into the
exact bytes GET_DESCRIPTOR returns, and the attribute objects are produced by
*parsing those bytes*, so enumeration through pyusb takes the same path as
with a real device.  It never does I/O and holds no device state.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ConfigSpec",
    "ConfigurationDescriptor",
    "DescriptorError",
    "DescriptorSet",
    "DescriptorType",
    "DeviceDescriptor",
    "DeviceIdentity",
    "EndpointDescriptor",
    "EndpointSpec",
    "InterfaceDescriptor",
    "InterfaceSpec",
    "Speed",
    "TransferType",
    "bos_usb2_extension",
    "build_descriptor_set",
    "iso_max_packet_bytes",
    "parse_configuration",
    "parse_device_descriptor",
    "string_descriptor",
]

LANGID_EN_US = 0x0409


class DescriptorError(ValueError):
    """A descriptor could not be built or parsed; carries the reason."""


class Speed(enum.IntEnum):
    """Device speed, numbered like libusb's ``enum libusb_speed``."""

    UNKNOWN = 0
    LOW = 1
    FULL = 2
    HIGH = 3
    SUPER = 4
    SUPER_PLUS = 5


class DescriptorType(enum.IntEnum):
    """bDescriptorType values (USB 2.0 table 9-5, USB 3.2 table 9-6, HID 7.1)."""

    DEVICE = 1
    CONFIGURATION = 2
    STRING = 3
    INTERFACE = 4
    ENDPOINT = 5
    DEVICE_QUALIFIER = 6
    OTHER_SPEED_CONFIGURATION = 7
    BOS = 0x0F
    DEVICE_CAPABILITY = 0x10
    HID = 0x21
    HID_REPORT = 0x22


class TransferType(enum.IntEnum):
    """Endpoint bmAttributes bits 1..0 (USB 2.0 table 9-13)."""

    CONTROL = 0
    ISOCHRONOUS = 1
    BULK = 2
    INTERRUPT = 3


_TRANSFER_TYPES = tuple(TransferType(bits) for bits in range(4))


def iso_max_packet_bytes(w_max_packet_size: int, speed: Speed) -> int:
    """Bytes per (micro)frame of a periodic endpoint, as
    libusb_get_max_iso_packet_size computes it: bits 10..0 times (1 + bits
    12..11) at high speed (USB 2.0 table 9-13)."""
    size = w_max_packet_size & 0x7FF
    if speed == Speed.HIGH:
        size *= 1 + ((w_max_packet_size >> 11) & 3)
    return size


# ---------------------------------------------------------------- specs


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint: ``max_packet_size`` is the raw wMaxPacketSize (mult bits
    included); ``extra`` is appended right after the endpoint descriptor."""

    address: int
    transfer_type: TransferType
    max_packet_size: int
    interval: int = 0
    sync_usage_bits: int = 0
    extra: bytes = b""


@dataclass(frozen=True)
class InterfaceSpec:
    """One alternate setting of one interface; ``extra`` (class descriptors,
    e.g. the HID descriptor) goes between the interface and its endpoints."""

    number: int
    alternate: int
    interface_class: int
    interface_subclass: int = 0
    interface_protocol: int = 0
    endpoints: tuple[EndpointSpec, ...] = ()
    name: str | None = None
    extra: bytes = b""


@dataclass(frozen=True)
class ConfigSpec:
    """One configuration; ``interfaces`` lists every alternate setting."""

    value: int
    interfaces: tuple[InterfaceSpec, ...]
    name: str | None = None
    self_powered: bool = False
    remote_wakeup: bool = False
    max_power_ma: int = 100
    extra: bytes = b""


@dataclass(frozen=True)
class DeviceIdentity:
    """Device descriptor fields that do not depend on speed, plus strings."""

    vendor_id: int
    product_id: int
    bcd_device: int
    manufacturer: str | None
    product: str | None
    serial: str | None
    device_class: int = 0
    device_subclass: int = 0
    device_protocol: int = 0
    bcd_usb: int = 0x0200
    max_packet_size0: int = 64


# ----------------------------------------------------- parsed attribute objects


@dataclass(frozen=True)
class DeviceDescriptor:
    """What IBackend.get_device_descriptor returns (libusb field names, plus
    the bus topology attributes pyusb copies onto usb.core.Device)."""

    bLength: int
    bDescriptorType: int
    bcdUSB: int
    bDeviceClass: int
    bDeviceSubClass: int
    bDeviceProtocol: int
    bMaxPacketSize0: int
    idVendor: int
    idProduct: int
    bcdDevice: int
    iManufacturer: int
    iProduct: int
    iSerialNumber: int
    bNumConfigurations: int
    bus: int | None = None
    address: int | None = None
    port_number: int | None = None
    port_numbers: tuple[int, ...] | None = None
    speed: int | None = None


@dataclass(frozen=True)
class EndpointDescriptor:
    bLength: int
    bDescriptorType: int
    bEndpointAddress: int
    bmAttributes: int
    wMaxPacketSize: int
    bInterval: int
    bRefresh: int = 0
    bSynchAddress: int = 0
    extra_descriptors: list[int] = field(default_factory=list)

    @property
    def transfer_type(self) -> TransferType:
        # a tuple lookup, not TransferType(bits) (enum's Python lookup): the
        # device checks it on every transfer
        return _TRANSFER_TYPES[self.bmAttributes & 3]


@dataclass(frozen=True)
class InterfaceDescriptor:
    bLength: int
    bDescriptorType: int
    bInterfaceNumber: int
    bAlternateSetting: int
    bNumEndpoints: int
    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int
    iInterface: int
    extra_descriptors: list[int] = field(default_factory=list)
    endpoints: tuple[EndpointDescriptor, ...] = ()


@dataclass(frozen=True)
class ConfigurationDescriptor:
    bLength: int
    bDescriptorType: int
    wTotalLength: int
    bNumInterfaces: int
    bConfigurationValue: int
    iConfiguration: int
    bmAttributes: int
    bMaxPower: int
    extra_descriptors: list[int] = field(default_factory=list)
    # interfaces[i] = alternate settings of the i-th interface, in order.
    interfaces: tuple[tuple[InterfaceDescriptor, ...], ...] = ()


# ---------------------------------------------------------------- builders

_DEVICE = struct.Struct("<BBHBBBBHHHBBBB")
_CONFIG = struct.Struct("<BBHBBBBB")
_INTERFACE = struct.Struct("<BBBBBBBBB")
_ENDPOINT = struct.Struct("<BBBBHB")
_QUALIFIER = struct.Struct("<BBHBBBBBB")


def string_descriptor(text: str) -> bytes:
    """A string descriptor (USB 2.0 9.6.7): UTF-16LE, at most 126 units."""
    body = text.encode("utf-16-le")
    if len(body) > 252:
        raise DescriptorError(f"string too long for a descriptor: {text!r}")
    return bytes((2 + len(body), DescriptorType.STRING)) + body


def bos_usb2_extension(lpm: bool = False) -> bytes:
    """A BOS descriptor with one USB 2.0 Extension capability (USB 2.0 LPM
    ECN; needed when bcdUSB >= 0x0201).  Bit 1 of bmAttributes = LPM."""
    cap = struct.pack("<BBBI", 7, DescriptorType.DEVICE_CAPABILITY, 0x02, 0x02 if lpm else 0)
    return struct.pack("<BBHB", 5, DescriptorType.BOS, 5 + len(cap), 1) + cap


class _Strings:
    """Assigns string indices: 1..3 for manufacturer/product/serial, then
    config and interface names in order of first use."""

    def __init__(self) -> None:
        self.table: dict[int, str] = {}

    def index(self, text: str | None) -> int:
        if text is None:
            return 0
        for idx, existing in self.table.items():
            if existing == text:
                return idx
        idx = max(self.table, default=0) + 1
        self.table[idx] = text
        return idx


def _build_config(cfg: ConfigSpec, strings: _Strings, dtype: DescriptorType) -> bytes:
    body = bytearray(cfg.extra)
    numbers = []
    for intf in cfg.interfaces:
        if intf.number not in numbers:
            numbers.append(intf.number)
        body += _INTERFACE.pack(
            9,
            DescriptorType.INTERFACE,
            intf.number,
            intf.alternate,
            len(intf.endpoints),
            intf.interface_class,
            intf.interface_subclass,
            intf.interface_protocol,
            strings.index(intf.name),
        )
        body += intf.extra
        for ep in intf.endpoints:
            attrs = int(ep.transfer_type) | ep.sync_usage_bits
            body += _ENDPOINT.pack(7, DescriptorType.ENDPOINT, ep.address, attrs, ep.max_packet_size, ep.interval)
            body += ep.extra
    attrs = 0x80 | (0x40 if cfg.self_powered else 0) | (0x20 if cfg.remote_wakeup else 0)
    total = _CONFIG.size + len(body)
    if total > 0xFFFF:
        raise DescriptorError(f"configuration {cfg.value} is {total} bytes long")
    head = _CONFIG.pack(
        9, dtype, total, len(numbers), cfg.value, strings.index(cfg.name), attrs, min(cfg.max_power_ma // 2, 250)
    )
    return head + bytes(body)


@dataclass(frozen=True)
class DescriptorSet:
    """Everything GET_DESCRIPTOR can return for one device at one speed, as
    raw bytes, plus the parsed attribute objects for the backend."""

    speed: Speed
    device: bytes
    configurations: tuple[bytes, ...]
    other_speed_configurations: tuple[bytes, ...]
    qualifier: bytes | None
    bos: bytes | None
    strings: dict[int, str]
    device_descriptor: DeviceDescriptor
    parsed_configurations: tuple[ConfigurationDescriptor, ...]

    def string(self, index: int) -> bytes | None:
        """String descriptor ``index`` (0 = the LANGID list), or None."""
        if index == 0:
            return struct.pack("<BBH", 4, DescriptorType.STRING, LANGID_EN_US)
        text = self.strings.get(index)
        return None if text is None else string_descriptor(text)

    def configuration_by_value(self, value: int) -> ConfigurationDescriptor | None:
        for cfg in self.parsed_configurations:
            if cfg.bConfigurationValue == value:
                return cfg
        return None


def build_descriptor_set(
    identity: DeviceIdentity,
    speed: Speed,
    configs: Sequence[ConfigSpec],
    other_speed: Speed | None = None,
    other_speed_configs: Sequence[ConfigSpec] = (),
    bos: bytes | None = None,
) -> DescriptorSet:
    """Build the raw descriptors of a device running at ``speed``.

    ``other_speed``/``other_speed_configs`` describe how the device would
    run at its other speed (a high-speed capable device must answer DEVICE
    QUALIFIER and OTHER SPEED CONFIGURATION, USB 2.0 9.6.2/9.6.4); a
    full-speed-only device passes None and STALLs those requests.
    """
    strings = _Strings()
    i_manufacturer = strings.index(identity.manufacturer)
    i_product = strings.index(identity.product)
    i_serial = strings.index(identity.serial)
    raw_configs = tuple(_build_config(c, strings, DescriptorType.CONFIGURATION) for c in configs)
    raw_other = tuple(_build_config(c, strings, DescriptorType.OTHER_SPEED_CONFIGURATION) for c in other_speed_configs)
    device = _DEVICE.pack(
        18,
        DescriptorType.DEVICE,
        identity.bcd_usb,
        identity.device_class,
        identity.device_subclass,
        identity.device_protocol,
        identity.max_packet_size0,
        identity.vendor_id,
        identity.product_id,
        identity.bcd_device,
        i_manufacturer,
        i_product,
        i_serial,
        len(raw_configs),
    )
    qualifier = None
    if other_speed is not None:
        qualifier = _QUALIFIER.pack(
            10,
            DescriptorType.DEVICE_QUALIFIER,
            identity.bcd_usb,
            identity.device_class,
            identity.device_subclass,
            identity.device_protocol,
            identity.max_packet_size0,
            len(raw_other),
            0,
        )
    return DescriptorSet(
        speed=speed,
        device=device,
        configurations=raw_configs,
        other_speed_configurations=raw_other,
        qualifier=qualifier,
        bos=bos,
        strings=dict(strings.table),
        device_descriptor=parse_device_descriptor(device),
        parsed_configurations=tuple(parse_configuration(c) for c in raw_configs),
    )


# ---------------------------------------------------------------- parsers


def parse_device_descriptor(raw: bytes) -> DeviceDescriptor:
    """Parse an 18-byte device descriptor."""
    if len(raw) < _DEVICE.size or raw[0] < _DEVICE.size or raw[1] != DescriptorType.DEVICE:
        raise DescriptorError(f"not a device descriptor: {bytes(raw[:18]).hex()}")
    return DeviceDescriptor(*_DEVICE.unpack_from(raw))


def _iter_descriptors(raw: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(raw):
        length = raw[pos]
        if length < 2 or pos + length > len(raw):
            raise DescriptorError(f"bad descriptor length {length} at offset {pos}")
        yield raw[pos + 1], raw[pos : pos + length]
        pos += length


def _endpoint(desc: bytes, extra: bytearray) -> EndpointDescriptor:
    length, dtype, address, attrs, maxp, interval = _ENDPOINT.unpack_from(desc)
    # Audio-class endpoints are 9 bytes long and carry bRefresh, bSynchAddress.
    refresh, synch = (desc[7], desc[8]) if len(desc) >= 9 else (0, 0)
    return EndpointDescriptor(length, dtype, address, attrs, maxp, interval, refresh, synch, list(extra))


class _PendingInterface:
    """An interface descriptor whose extras and endpoints are still coming."""

    def __init__(self, desc: bytes) -> None:
        if len(desc) < _INTERFACE.size:
            raise DescriptorError("short interface descriptor")
        self.fields: tuple[int, ...] = _INTERFACE.unpack_from(desc)
        self.extra = bytearray()
        self.endpoints: list[tuple[bytes, bytearray]] = []

    def build(self) -> InterfaceDescriptor:
        length, dtype, number, alt, num_eps, cls, sub, proto, i_intf = self.fields
        if len(self.endpoints) != num_eps:
            raise DescriptorError(
                f"interface {number} alt {alt} declares {num_eps} endpoints, has {len(self.endpoints)}"
            )
        endpoints = tuple(_endpoint(d, x) for d, x in self.endpoints)
        return InterfaceDescriptor(
            length, dtype, number, alt, num_eps, cls, sub, proto, i_intf, list(self.extra), endpoints
        )


def parse_configuration(raw: bytes) -> ConfigurationDescriptor:
    """Parse a full configuration descriptor the way libusb does: class and
    vendor descriptors become the ``extra_descriptors`` of the config,
    interface or endpoint they follow; alternate settings are grouped by
    bInterfaceNumber in order of first appearance."""
    if len(raw) < _CONFIG.size or raw[1] not in (
        DescriptorType.CONFIGURATION,
        DescriptorType.OTHER_SPEED_CONFIGURATION,
    ):
        raise DescriptorError(f"not a configuration descriptor: {bytes(raw[:9]).hex()}")
    length, dtype, total, num_intf, value, i_config, attrs, power = _CONFIG.unpack_from(raw)
    if total != len(raw):
        raise DescriptorError(f"wTotalLength {total} but {len(raw)} bytes")
    cfg_extra = bytearray()
    groups: dict[int, list[_PendingInterface]] = {}
    current: _PendingInterface | None = None
    extra = cfg_extra
    for kind, desc in _iter_descriptors(raw[length:]):
        if kind == DescriptorType.INTERFACE:
            current = _PendingInterface(desc)
            groups.setdefault(current.fields[2], []).append(current)
            extra = current.extra
        elif kind == DescriptorType.ENDPOINT:
            if current is None or len(desc) < _ENDPOINT.size:
                raise DescriptorError("endpoint descriptor outside an interface")
            extra = bytearray()
            current.endpoints.append((desc, extra))
        else:
            extra += desc
    interfaces = tuple(tuple(p.build() for p in alts) for alts in groups.values())
    if len(interfaces) != num_intf:
        raise DescriptorError(f"bNumInterfaces {num_intf} but {len(interfaces)} interfaces")
    return ConfigurationDescriptor(
        length, dtype, total, num_intf, value, i_config, attrs, power, list(cfg_extra), interfaces
    )


def with_topology(desc: DeviceDescriptor, *, bus: int, address: int, port: int, speed: Speed) -> DeviceDescriptor:
    """A copy of ``desc`` carrying where the device sits on the virtual bus."""
    return dataclasses.replace(desc, bus=bus, address=address, port_number=port, port_numbers=(port,), speed=int(speed))
