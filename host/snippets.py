"""libvirt device XML and QEMU arguments for passthrough and live attach; pure text, no I/O.

Owns the shapes libvirt's domain schema (domaincommon.rng) and QEMU 7.2+
accept, checked in tests with ``virt-xml-validate`` and a real QEMU:

- PCI: ``<hostdev mode='subsystem' type='pci' managed='yes'>`` with the vfio
  driver / ``-device vfio-pci,host=...`` behind a ``pcie-root-port`` on q35;
- USB: ``<hostdev type='usb'>`` by vendor/product or bus/device /
  ``-device usb-host,vendorid=,productid=`` or ``hostbus=,hostaddr=``;
- serial and parallel ports: ``<serial type='dev'>`` / ``<parallel
  type='dev'>`` / ``-serial /dev/...`` / ``-parallel /dev/parportN``;
- a redirgate route: ``<redirdev bus='usb' type='tcp'>`` (what
  ``virsh attach-device`` takes; the gateway's own snippet module writes the
  boot-time form of the same).
"""

from __future__ import annotations

import dataclasses
import re
from xml.sax.saxutils import quoteattr

from redirgate.host.errors import InvalidArgument

__all__ = [
    "UsbSelector",
    "alias",
    "parallel_qemu",
    "parallel_xml",
    "parse_usb_selector",
    "pci_hostdev_xml",
    "pci_qemu",
    "redirdev_xml",
    "serial_qemu",
    "serial_xml",
    "usb_hostdev_xml",
    "usb_qemu",
]

#: libvirt: user-chosen device aliases must start with "ua-".
_ALIAS_PREFIX = "ua-"


@dataclasses.dataclass(frozen=True)
class UsbSelector:
    """A host USB device: by ``vendor:product`` (hex) or by ``bus/address`` (decimal)."""

    vendor: int | None = None
    product: int | None = None
    bus: int | None = None
    address: int | None = None

    def __str__(self) -> str:
        if self.vendor is not None:
            return f"{self.vendor:04x}:{self.product:04x}"
        return f"{self.bus}/{self.address}"


def parse_usb_selector(text: str) -> UsbSelector:
    """``046d:c52b`` or ``1/4`` (bus/device as lsusb prints them)."""
    if m := re.fullmatch(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})", text.strip()):
        return UsbSelector(vendor=int(m.group(1), 16), product=int(m.group(2), 16))
    if m := re.fullmatch(r"(\d{1,3})[/:.-](\d{1,3})", text.strip()):
        return UsbSelector(bus=int(m.group(1)), address=int(m.group(2)))
    raise InvalidArgument(text, "not a USB device: give VID:PID in hex (046d:c52b) or BUS/DEVICE (1/4, as lsusb shows)")


def alias(name: str) -> str:
    """libvirt's user alias for a device id (``ua-NAME``)."""
    return name if name.startswith(_ALIAS_PREFIX) else _ALIAS_PREFIX + name


def _alias_line(name: str | None) -> str:
    return "" if name is None else f"  <alias name={quoteattr(alias(name))}/>\n"


def _pci_parts(address: str) -> tuple[str, str, str, str]:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return domain, bus, slot, function


def pci_hostdev_xml(address: str, *, name: str | None = None) -> str:
    domain, bus, slot, function = _pci_parts(address)
    return (
        "<hostdev mode='subsystem' type='pci' managed='yes'>\n"
        "  <driver name='vfio'/>\n"
        "  <source>\n"
        f"    <address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>\n"
        "  </source>\n"
        f"{_alias_line(name)}"
        "</hostdev>\n"
    )


def pci_qemu(address: str, *, name: str | None = None, root_port: int = 1) -> list[str]:
    """``-device vfio-pci`` behind its own pcie-root-port (q35; on ``pc`` drop the port and ``bus=``)."""
    port = f"rg-rp{root_port}"
    ident = f",id={name}" if name else ""
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    return [
        "-device", f"pcie-root-port,id={port},chassis={root_port},slot={root_port}",
        "-device", f"vfio-pci,host={address},bus={port}{ident}",
    ]
    # fmt: on


def usb_hostdev_xml(selector: UsbSelector, *, name: str | None = None) -> str:
    if selector.vendor is not None:
        source = f"    <vendor id='0x{selector.vendor:04x}'/>\n    <product id='0x{selector.product:04x}'/>\n"
    else:
        source = f"    <address bus='{selector.bus}' device='{selector.address}'/>\n"
    return (
        "<hostdev mode='subsystem' type='usb' managed='yes'>\n"
        f"  <source>\n{source}  </source>\n"
        f"{_alias_line(name)}"
        "</hostdev>\n"
    )


def usb_device_properties(selector: UsbSelector) -> dict[str, str | int]:
    """usb-host's properties for QMP's device_add and for -device."""
    if selector.vendor is not None:
        assert selector.product is not None
        return {"vendorid": selector.vendor, "productid": selector.product}
    assert selector.bus is not None and selector.address is not None
    return {"hostbus": selector.bus, "hostaddr": selector.address}


def usb_qemu(selector: UsbSelector, *, bus: str = "xhci.0", name: str | None = None) -> list[str]:
    """``-device usb-host`` on an xHCI (the controller comes first: ``-device qemu-xhci,id=xhci``)."""
    props = ",".join(
        f"{k}={v:#06x}" if k.endswith("id") else f"{k}={v}" for k, v in usb_device_properties(selector).items()
    )
    ident = f",id={name}" if name else ""
    args = ["-device", f"usb-host,{props},bus={bus}{ident}"]
    if bus == "xhci.0":
        args = ["-device", "qemu-xhci,id=xhci", *args]
    return args


def serial_xml(path: str) -> str:
    return f"<serial type='dev'>\n  <source path={quoteattr(path)}/>\n  <target port='0'/>\n</serial>\n"


def serial_qemu(path: str, *, name: str = "rg-serial0") -> list[str]:
    """QEMU's ``-serial /dev/...`` opens a host tty; other paths go through an explicit serial chardev."""
    if path.startswith("/dev/") and "," not in path:
        return ["-serial", path]
    return ["-chardev", f"serial,id={name},path={path.replace(',', ',,')}", "-serial", f"chardev:{name}"]


def parallel_xml(path: str) -> str:
    return f"<parallel type='dev'>\n  <source path={quoteattr(path)}/>\n  <target port='0'/>\n</parallel>\n"


def parallel_qemu(path: str, *, name: str = "rg-parallel0") -> list[str]:
    """``-parallel /dev/parportN`` (QEMU's ppdev backend: the guest drives the port's lines)."""
    if re.fullmatch(r"/dev/parport\d+", path):
        return ["-parallel", path]
    return ["-chardev", f"parallel,id={name},path={path.replace(',', ',,')}", "-parallel", f"chardev:{name}"]


def redirdev_xml(host: str, port: int, *, name: str | None = None, reconnect_s: int = 2, tls: bool = False) -> str:
    """A redirgate route as a libvirt ``<redirdev>`` (usb-redir over TCP, reconnecting).

    ``tls``: libvirt takes the certificates from qemu.conf's chardev_tls_x509_cert_dir.
    """
    secure = " tls='yes'" if tls else ""
    return (
        "<redirdev bus='usb' type='tcp'>\n"
        f"  <source mode='connect' host={quoteattr(host)} service={quoteattr(str(port))}{secure}>\n"
        f"    <reconnect enabled='yes' timeout='{reconnect_s}'/>\n"
        "  </source>\n"
        "  <protocol type='raw'/>\n"
        f"{_alias_line(name)}"
        "</redirdev>\n"
    )
