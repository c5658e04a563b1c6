"""Plain snapshots of a USB device's descriptors, and the usbredir tables built from them.

pyusb descriptor objects read from the device lazily; the engine wants a
frozen picture it can consult on the trio thread without I/O.  `snapshot()`
runs in a worker thread once per open (and after a configuration change);
everything else here is pure.  The endpoint table follows usbredirhost.c
(`usbredirhost_parse_interface`), see the protocol reference §3.4.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import usb.core
import usb.util

from redirgate.proto.usbredir import EndpointType, Speed, endpoint_slot
from redirgate.proto.usbredir import messages as m

__all__ = [
    "AltSettingDesc",
    "ConfigDesc",
    "DeviceSnapshot",
    "EndpointDesc",
    "port_path",
    "snapshot",
    "usbredir_speed",
]

_SS_ENDPOINT_COMPANION = 0x30

# pyusb's speed constants (usb.util.SPEED_*) -> usbredir speeds
_SPEEDS = {1: Speed.LOW, 2: Speed.FULL, 3: Speed.HIGH, 4: Speed.SUPER, 5: Speed.SUPER}


def usbredir_speed(pyusb_speed: int | None) -> Speed:
    """SuperSpeed+ is reported as super (libusbredirhost says unknown)."""
    return _SPEEDS.get(pyusb_speed or 0, Speed.UNKNOWN)


def port_path(dev: usb.core.Device) -> str:
    """`BUS-PORT.PORT...`, stable across replugs into the same socket."""
    ports = getattr(dev, "port_numbers", None) or ()
    if not ports:
        return f"{dev.bus}-{getattr(dev, 'port_number', 0) or 0}"
    return f"{dev.bus}-" + ".".join(str(p) for p in ports)


#: bmAttributes bits 1..0 -> EndpointType
_TRANSFER_TYPES = tuple(EndpointType(bits) for bits in range(4))


@dataclass(frozen=True)
class EndpointDesc:
    address: int
    attributes: int
    max_packet_size_raw: int
    interval: int
    max_streams: int = 0

    @property
    def transfer_type(self) -> EndpointType:
        # a tuple lookup: EndpointType(bits) runs enum's Python lookup, and
        # the engine asks this for every transfer
        return _TRANSFER_TYPES[self.attributes & 0x3]

    def max_packet_size(self, speed: Speed) -> int:
        """Bytes per (micro)frame: high-bandwidth multiplier only for iso
        endpoints of high-speed devices, as libusbredirhost does."""
        size = self.max_packet_size_raw & 0x7FF
        if speed is Speed.HIGH and self.transfer_type is EndpointType.ISO:
            mult = (self.max_packet_size_raw >> 11) & 0x3
            size *= {1: 2, 2: 3}.get(mult, 1)
        return size


@dataclass(frozen=True)
class AltSettingDesc:
    number: int
    alt: int
    interface_class: int
    interface_subclass: int
    interface_protocol: int
    endpoints: tuple[EndpointDesc, ...]


@dataclass(frozen=True)
class ConfigDesc:
    value: int
    #: interface number -> alt settings, in descriptor order
    interfaces: dict[int, tuple[AltSettingDesc, ...]]

    def alt(self, interface: int, alt: int) -> AltSettingDesc | None:
        for setting in self.interfaces.get(interface, ()):
            if setting.alt == alt:
                return setting
        return None


@dataclass(frozen=True)
class DeviceSnapshot:
    vendor_id: int
    product_id: int
    device_class: int
    device_subclass: int
    device_protocol: int
    bcd_device: int
    bcd_usb: int
    speed: Speed
    bus: int
    address: int
    port_path: str
    configs: dict[int, ConfigDesc]
    #: bConfigurationValue of the active configuration, 0 when unconfigured
    active_config: int
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    num_configurations: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    def describe(self) -> str:
        what = " ".join(x for x in (self.manufacturer, self.product) if x) or "USB device"
        return f"{self.id} {what} at {self.port_path}"

    # -- usbredir tables -------------------------------------------------
    def interface_info(self, alts: dict[int, int]) -> m.InterfaceInfo:
        config = self.configs.get(self.active_config)
        numbers, classes, subclasses, protocols = [], [], [], []
        if config is not None:
            for number in config.interfaces:
                setting = config.alt(number, alts.get(number, 0)) or config.interfaces[number][0]
                numbers.append(number)
                classes.append(setting.interface_class)
                subclasses.append(setting.interface_subclass)
                protocols.append(setting.interface_protocol)
        pad = 32 - len(numbers)
        return m.InterfaceInfo(
            len(numbers),
            tuple(numbers) + (0,) * pad,
            tuple(classes) + (0,) * pad,
            tuple(subclasses) + (0,) * pad,
            tuple(protocols) + (0,) * pad,
        )

    def endpoints(self, alts: dict[int, int]) -> dict[int, tuple[EndpointDesc, int]]:
        """Endpoint address -> (descriptor, interface number) for the active
        configuration at the current alt settings."""
        table: dict[int, tuple[EndpointDesc, int]] = {}
        config = self.configs.get(self.active_config)
        if config is None:
            return table
        for number in config.interfaces:
            setting = config.alt(number, alts.get(number, 0))
            if setting is None:
                continue
            for ep in setting.endpoints:
                table[ep.address] = (ep, number)
        return table

    def ep_info(self, alts: dict[int, int]) -> m.EpInfo:
        types = [EndpointType.INVALID] * 32
        types[0] = types[16] = EndpointType.CONTROL
        intervals, interfaces, sizes, streams = [0] * 32, [0] * 32, [0] * 32, [0] * 32
        for address, (ep, number) in self.endpoints(alts).items():
            slot = endpoint_slot(address)
            types[slot] = ep.transfer_type
            intervals[slot] = ep.interval
            interfaces[slot] = number
            sizes[slot] = ep.max_packet_size(self.speed)
            streams[slot] = ep.max_streams
        return m.EpInfo(tuple(int(t) for t in types), tuple(intervals), tuple(interfaces), tuple(sizes), tuple(streams))

    def interface_classes(self, alts: dict[int, int]) -> tuple[tuple[int, int, int], ...]:
        info = self.interface_info(alts)
        n = info.interface_count
        return tuple(
            zip(info.interface_class[:n], info.interface_subclass[:n], info.interface_protocol[:n], strict=True)
        )


def _max_streams(extra: bytes, attributes: int) -> int:
    """2^(bmAttributes & 0x1f) from a SuperSpeed companion of a bulk endpoint."""
    pos = 0
    while pos + 2 <= len(extra):
        length, kind = extra[pos], extra[pos + 1]
        if length < 2:
            break
        if kind == _SS_ENDPOINT_COMPANION and length >= 4 and attributes & 0x3 == 2:
            exponent = extra[pos + 3] & 0x1F
            return 1 << exponent if exponent else 0
        pos += length
    return 0


def _string(dev: usb.core.Device, index: int) -> str | None:
    if not index:
        return None
    try:
        return usb.util.get_string(dev, index)
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None


def snapshot(dev: usb.core.Device, *, read_strings: bool = True) -> DeviceSnapshot:
    """Read everything the engine needs (blocking: call in a worker thread)."""
    configs: dict[int, ConfigDesc] = {}
    for cfg in dev:
        interfaces: dict[int, list[AltSettingDesc]] = {}
        for intf in cfg:
            endpoints = tuple(
                EndpointDesc(
                    ep.bEndpointAddress,
                    ep.bmAttributes,
                    ep.wMaxPacketSize,
                    ep.bInterval,
                    _max_streams(bytes(getattr(ep, "extra_descriptors", b"") or b""), ep.bmAttributes),
                )
                for ep in intf
            )
            interfaces.setdefault(intf.bInterfaceNumber, []).append(
                AltSettingDesc(
                    intf.bInterfaceNumber,
                    intf.bAlternateSetting,
                    intf.bInterfaceClass,
                    intf.bInterfaceSubClass,
                    intf.bInterfaceProtocol,
                    endpoints,
                )
            )
        configs[cfg.bConfigurationValue] = ConfigDesc(
            cfg.bConfigurationValue, {k: tuple(v) for k, v in interfaces.items()}
        )
    try:
        active = dev.get_active_configuration().bConfigurationValue
    except usb.core.USBError:
        active = 0
    return DeviceSnapshot(
        vendor_id=dev.idVendor,
        product_id=dev.idProduct,
        device_class=dev.bDeviceClass,
        device_subclass=dev.bDeviceSubClass,
        device_protocol=dev.bDeviceProtocol,
        bcd_device=dev.bcdDevice,
        bcd_usb=dev.bcdUSB,
        speed=usbredir_speed(dev.speed),
        bus=dev.bus or 0,
        address=dev.address or 0,
        port_path=port_path(dev),
        configs=configs,
        active_config=active,
        manufacturer=_string(dev, dev.iManufacturer) if read_strings else None,
        product=_string(dev, dev.iProduct) if read_strings else None,
        serial=_string(dev, dev.iSerialNumber) if read_strings else None,
        num_configurations=dev.bNumConfigurations,
    )
