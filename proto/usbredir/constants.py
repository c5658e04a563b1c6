"""usbredir enumerations, capability bits and the reference parser's limits.

Numbers come from usbredir's `usbredirproto.h` (protocol revision 0.7, the
0.13.0 packages in Debian 12) and the limits from `usbredirparser.c`.
"""

from __future__ import annotations

import enum

__all__ = [
    "CAPS_WORDS",
    "ENDPOINT_SLOTS",
    "MAX_BULK_TRANSFER_SIZE",
    "MAX_INTERFACES",
    "MAX_PACKET_SIZE",
    "VERSION_LEN",
    "Cap",
    "EndpointType",
    "MsgType",
    "Role",
    "Speed",
    "Status",
    "endpoint_slot",
    "slot_endpoint",
]

#: usbredirparser.c MAX_BULK_TRANSFER_SIZE (since 0.10.0): 128 MiB.
MAX_BULK_TRANSFER_SIZE = 128 * 1024 * 1024
#: usbredirparser.c MAX_PACKET_SIZE: the largest main-header `length` accepted.
MAX_PACKET_SIZE = 1024 + MAX_BULK_TRANSFER_SIZE
#: usb_redir_interface_info_header arrays, and the interface_count limit.
MAX_INTERFACES = 32
#: usb_redir_hello_header.version
VERSION_LEN = 64
#: USB_REDIR_CAPS_SIZE: capability words honoured in a hello.
CAPS_WORDS = 1
#: Per-endpoint arrays in ep_info are indexed by a 32-slot index.
ENDPOINT_SLOTS = 32


class Role(enum.Enum):
    """Which end of a usbredir connection we are.

    HOST owns the device (usbredirhost, usbredirect); GUEST uses it (QEMU's
    usb-redir).  The role decides which message types may arrive.
    """

    HOST = "host"
    GUEST = "guest"

    @property
    def peer(self) -> Role:
        return Role.GUEST if self is Role.HOST else Role.HOST


class MsgType(enum.IntEnum):
    HELLO = 0
    DEVICE_CONNECT = 1
    DEVICE_DISCONNECT = 2
    RESET = 3
    INTERFACE_INFO = 4
    EP_INFO = 5
    SET_CONFIGURATION = 6
    GET_CONFIGURATION = 7
    CONFIGURATION_STATUS = 8
    SET_ALT_SETTING = 9
    GET_ALT_SETTING = 10
    ALT_SETTING_STATUS = 11
    START_ISO_STREAM = 12
    STOP_ISO_STREAM = 13
    ISO_STREAM_STATUS = 14
    START_INTERRUPT_RECEIVING = 15
    STOP_INTERRUPT_RECEIVING = 16
    INTERRUPT_RECEIVING_STATUS = 17
    ALLOC_BULK_STREAMS = 18
    FREE_BULK_STREAMS = 19
    BULK_STREAMS_STATUS = 20
    CANCEL_DATA_PACKET = 21
    FILTER_REJECT = 22
    FILTER_FILTER = 23
    DEVICE_DISCONNECT_ACK = 24
    START_BULK_RECEIVING = 25
    STOP_BULK_RECEIVING = 26
    BULK_RECEIVING_STATUS = 27
    CONTROL_PACKET = 100
    BULK_PACKET = 101
    ISO_PACKET = 102
    INTERRUPT_PACKET = 103
    BUFFERED_BULK_PACKET = 104


class Status(enum.IntEnum):
    SUCCESS = 0
    CANCELLED = 1
    INVAL = 2
    IOERROR = 3
    STALL = 4
    TIMEOUT = 5
    BABBLE = 6


class EndpointType(enum.IntEnum):
    """Same numbering as bits 1:0 of an endpoint's bmAttributes."""

    CONTROL = 0
    ISO = 1
    BULK = 2
    INTERRUPT = 3
    INVALID = 255


class Speed(enum.IntEnum):
    LOW = 0
    FULL = 1
    HIGH = 2
    SUPER = 3
    UNKNOWN = 255


class Cap(enum.IntFlag):
    """Capability bits of the hello's first capability word."""

    BULK_STREAMS = 1 << 0
    CONNECT_DEVICE_VERSION = 1 << 1
    FILTER = 1 << 2
    DEVICE_DISCONNECT_ACK = 1 << 3
    EP_INFO_MAX_PACKET_SIZE = 1 << 4
    IDS_64BIT = 1 << 5
    BULK_LENGTH_32BIT = 1 << 6
    BULK_RECEIVING = 1 << 7

    @classmethod
    def all_known(cls) -> Cap:
        return cls(0xFF)


def endpoint_slot(address: int) -> int:
    """The 32-slot index of an endpoint address: OUT 0-15, IN 16-31."""
    return ((address & 0x80) >> 3) | (address & 0x0F)


def slot_endpoint(slot: int) -> int:
    """Inverse of :func:`endpoint_slot`."""
    return ((slot & 0x10) << 3) | (slot & 0x0F)
