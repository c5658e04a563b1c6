"""`HubDevice`: something that looks like a USB hub, for the client's refusal of hubs.

Owns only a hub's descriptors (a root hub's: device class 0x09, Linux
Foundation 1d6b:0002, one interface of class 0x09 with an interrupt IN
status endpoint 0x81).  It has no hub function: no ports, class requests
stall and the status endpoint never has data.  The client never exports a
hub (client/usb/safety.py); this device is what the tests and `client
devices --virtual virtual:hub` show that with, on machines without USB.
"""

from __future__ import annotations

from .descriptors import (
    ConfigSpec,
    DeviceIdentity,
    EndpointSpec,
    InterfaceSpec,
    Speed,
    TransferType,
    build_descriptor_set,
)
from .device import VirtualDevice

__all__ = ["HUB_CLASS", "HubDevice"]

HUB_CLASS = 0x09


class HubDevice(VirtualDevice):
    """``HubDevice(*, vendor_id=0x1d6b, product_id=0x0002, name="hub")``."""

    def __init__(self, *, vendor_id: int = 0x1D6B, product_id: int = 0x0002, name: str = "hub") -> None:
        identity = DeviceIdentity(
            vendor_id=vendor_id,
            product_id=product_id,
            bcd_device=0x0601,
            manufacturer="redirgate",
            product="Virtual Hub",
            serial=None,
            device_class=HUB_CLASS,
            device_protocol=1,  # single TT, as a high-speed hub says
        )
        config = ConfigSpec(
            1,
            (InterfaceSpec(0, 0, HUB_CLASS, endpoints=(EndpointSpec(0x81, TransferType.INTERRUPT, 4, interval=12),)),),
            self_powered=True,
            max_power_ma=0,
        )
        super().__init__(name, build_descriptor_set(identity, Speed.HIGH, [config]))

    def handle_in(self, ep: int, size: int) -> bytes | None:
        return None  # no port ever changes: the status endpoint NAKs
