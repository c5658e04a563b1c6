"""usbredir messages: one frozen class per message type, and their layouts.

Each class owns its type-specific header layout (`header_size` for the caps
both sides share, `pack_into`, `unpack_from`).  Field names are the C field
names of `usbredirproto.h`, so a message compares field by field with what the
reference parser reports.  Constructors validate field ranges, so a message
object that exists can always be serialized (LocalProtocolError otherwise).

This module never frames messages and never looks at a stream: that is
`connection.py`'s job.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from redirgate.proto.usbredir.constants import (
    ENDPOINT_SLOTS,
    MAX_BULK_TRANSFER_SIZE,
    MAX_INTERFACES,
    VERSION_LEN,
    Cap,
    MsgType,
)
from redirgate.proto.usbredir.errors import LocalProtocolError

__all__ = [
    "MESSAGE_CLASSES",
    "AllocBulkStreams",
    "AltSettingStatus",
    "BufferedBulkPacket",
    "BulkPacket",
    "BulkReceivingStatus",
    "BulkStreamsStatus",
    "CancelDataPacket",
    "ConfigurationStatus",
    "ControlPacket",
    "DataMessage",
    "DeviceConnect",
    "DeviceDisconnect",
    "DeviceDisconnectAck",
    "EpInfo",
    "FilterFilter",
    "FilterReject",
    "FreeBulkStreams",
    "GetAltSetting",
    "GetConfiguration",
    "Hello",
    "InterfaceInfo",
    "InterruptPacket",
    "InterruptReceivingStatus",
    "IsoPacket",
    "IsoStreamStatus",
    "Message",
    "Reset",
    "Sender",
    "SetAltSetting",
    "SetConfiguration",
    "StartBulkReceiving",
    "StartInterruptReceiving",
    "StartIsoStream",
    "StopBulkReceiving",
    "StopInterruptReceiving",
    "StopIsoStream",
]

Buffer = bytes | bytearray | memoryview

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


class Sender:
    """Who may send a message type (the reference parser's direction table)."""

    HOST = "host"  # host -> guest only
    GUEST = "guest"  # guest -> host only
    BOTH = "both"


def _check_uint(cls_name: str, name: str, value: Any, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise LocalProtocolError(f"{cls_name}.{name}={value!r} is not an integer in 0..{limit}")


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every usbredir message.  `id` is the main header's id."""

    TYPE: ClassVar[MsgType]
    SENDER: ClassVar[str]
    #: (field name, limit) pairs checked by the constructor, in wire order.
    _UINTS: ClassVar[tuple[tuple[str, int], ...]] = ()
    #: layout of the type-specific header for the simple fixed-size messages
    _STRUCT: ClassVar[struct.Struct | None] = None
    #: the `_UINTS` fields' values as a tuple, in wire order (set for every
    #: class below the class definitions: one C call where a generator of
    #: getattr calls cost a Python frame per field, on every message sent)
    _VALUES: ClassVar[staticmethod[[Any], tuple[Any, ...]]]

    id: int = field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        # plain ints in range pass here (every message parsed off the wire,
        # most built); anything else gets the full check and its message
        value = self.id
        if type(value) is not int or not 0 <= value <= _U64:
            _check_uint(type(self).__name__, "id", value, _U64)
        for fname, limit in self._UINTS:
            value = getattr(self, fname)
            if type(value) is not int or not 0 <= value <= limit:
                _check_uint(type(self).__name__, fname, value, limit)

    # -- layout ---------------------------------------------------------
    @classmethod
    def header_size(cls, shared: Cap) -> int:
        """Size of the type-specific header given the caps both sides have."""
        return cls._STRUCT.size if cls._STRUCT is not None else 0

    def pack_into(self, buf: Buffer, offset: int, shared: Cap) -> None:
        """Write the type-specific header at `offset`."""
        if self._STRUCT is not None:
            self._STRUCT.pack_into(buf, offset, *self._VALUES(self))

    @classmethod
    def unpack_from(cls, view: memoryview, shared: Cap, msg_id: int, data: memoryview) -> Message:
        """Build a message from a type-specific header already size-checked."""
        if cls._STRUCT is None:
            return cls(id=msg_id)
        # a subclass's positional fields are the ones its _STRUCT lays out
        make: Callable[..., Message] = cls
        return make(*cls._STRUCT.unpack_from(view), id=msg_id)

    @property
    def payload(self) -> Buffer:
        """The bytes that follow the type-specific header (none by default)."""
        return b""

    def as_dict(self) -> dict[str, Any]:
        """The message's fields by their C names (payloads as they are)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class DataMessage(Message):
    """A data packet: bytes flow in one direction chosen by `endpoint` bit 7."""

    data: Buffer = field(default=b"", kw_only=True)

    @property
    def payload(self) -> Buffer:
        return self.data

    # Every data packet class has `endpoint` and `length` fields (ints the
    # constructor checked): read directly, these run several times per
    # transfer. DataMessage cannot declare the two itself (a dataclass would
    # make them its own constructor fields, ahead of each subclass's), hence
    # the ignores.
    @property
    def transfer_length(self) -> int:
        """The length the type-specific header states for the data."""
        return self.length  # type: ignore[attr-defined,no-any-return]  # a field of every subclass, see above

    @property
    def endpoint_address(self) -> int:
        return self.endpoint  # type: ignore[attr-defined,no-any-return]  # a field of every subclass, see above


#: `Cap.BULK_LENGTH_32BIT` as a plain int: BulkPacket tests it per transfer,
#: and ``int(shared) & bit`` is C code where ``cap in shared`` runs
#: `enum.Flag.__contains__` in Python
_BULK_LENGTH_32BIT = int(Cap.BULK_LENGTH_32BIT)


def _simple(fields: tuple[tuple[str, int], ...]) -> struct.Struct:
    codes = {_U8: "B", _U16: "H", _U32: "I"}
    return struct.Struct("<" + "".join(codes[limit] for _, limit in fields))


# ---------------------------------------------------------------- hello


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message each way.  `caps` is the first capability word; words
    beyond the first are ignored, as the reference does (USB_REDIR_CAPS_SIZE)."""

    TYPE = MsgType.HELLO
    SENDER = Sender.BOTH
    _HEADER_SIZE: ClassVar[int] = VERSION_LEN

    version: str = ""
    caps: Cap = Cap(0)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        raw = self.version.encode("latin-1", "replace")
        if len(raw) >= VERSION_LEN or b"\0" in raw:
            raise LocalProtocolError(f"Hello.version must be under {VERSION_LEN} bytes without NUL: {self.version!r}")
        _check_uint("Hello", "caps", int(self.caps), _U32)

    @classmethod
    def header_size(cls, shared: Cap) -> int:
        return VERSION_LEN

    def pack_into(self, buf: Buffer, offset: int, shared: Cap) -> None:
        raw = self.version.encode("latin-1", "replace")
        struct.pack_into(f"<{VERSION_LEN}s", buf, offset, raw)

    @property
    def payload(self) -> bytes:
        return struct.pack("<I", int(self.caps))

    @classmethod
    def unpack_from(cls, view: memoryview, shared: Cap, msg_id: int, data: memoryview) -> Hello:
        raw = bytes(view[: VERSION_LEN - 1])  # the reference truncates at 63 chars
        version = raw.split(b"\0", 1)[0].decode("latin-1")
        word = struct.unpack_from("<I", data)[0] if len(data) >= 4 else 0
        return cls(version, Cap(word), id=msg_id)


# ------------------------------------------------------- device messages


@dataclass(frozen=True, slots=True)
class DeviceConnect(Message):
    TYPE = MsgType.DEVICE_CONNECT
    SENDER = Sender.HOST
    _UINTS = (
        ("speed", _U8),
        ("device_class", _U8),
        ("device_subclass", _U8),
        ("device_protocol", _U8),
        ("vendor_id", _U16),
        ("product_id", _U16),
        ("device_version_bcd", _U16),
    )
    _LONG: ClassVar[struct.Struct] = struct.Struct("<BBBBHHH")
    _SHORT: ClassVar[struct.Struct] = struct.Struct("<BBBBHH")

    speed: int = 0
    device_class: int = 0
    device_subclass: int = 0
    device_protocol: int = 0
    vendor_id: int = 0
    product_id: int = 0
    #: only on the wire when both sides have connect_device_version; else 0
    device_version_bcd: int = 0

    @classmethod
    def header_size(cls, shared: Cap) -> int:
        return (cls._LONG if Cap.CONNECT_DEVICE_VERSION in shared else cls._SHORT).size

    def pack_into(self, buf: Buffer, offset: int, shared: Cap) -> None:
        values = (
            self.speed,
            self.device_class,
            self.device_subclass,
            self.device_protocol,
            self.vendor_id,
            self.product_id,
        )
        if Cap.CONNECT_DEVICE_VERSION in shared:
            self._LONG.pack_into(buf, offset, *values, self.device_version_bcd)
        else:
            self._SHORT.pack_into(buf, offset, *values)

    @classmethod
    def unpack_from(cls, view: memoryview, shared: Cap, msg_id: int, data: memoryview) -> DeviceConnect:
        if Cap.CONNECT_DEVICE_VERSION in shared:
            return cls(*cls._LONG.unpack_from(view), id=msg_id)
        return cls(*cls._SHORT.unpack_from(view), id=msg_id)


@dataclass(frozen=True, slots=True)
class DeviceDisconnect(Message):
    TYPE = MsgType.DEVICE_DISCONNECT
    SENDER = Sender.HOST


@dataclass(frozen=True, slots=True)
class Reset(Message):
    """Guest asks for a port reset.  There is no reply."""

    TYPE = MsgType.RESET
    SENDER = Sender.GUEST


def _array(cls_name: str, name: str, values: Any, limit: int) -> None:
    if not isinstance(values, tuple) or len(values) != ENDPOINT_SLOTS:
        raise LocalProtocolError(f"{cls_name}.{name} must be a tuple of {ENDPOINT_SLOTS} integers")
    for index, value in enumerate(values):
        _check_uint(cls_name, f"{name}[{index}]", value, limit)


_ZERO32 = (0,) * 32


@dataclass(frozen=True, slots=True)
class InterfaceInfo(Message):
    """Interfaces of the active configuration at their current alt settings.
    Each array has 32 entries; entries past `interface_count` are 0."""

    TYPE = MsgType.INTERFACE_INFO
    SENDER = Sender.HOST
    _STRUCT_II: ClassVar[struct.Struct] = struct.Struct("<I32s32s32s32s")

    interface_count: int = 0
    interface: tuple[int, ...] = _ZERO32
    interface_class: tuple[int, ...] = _ZERO32
    interface_subclass: tuple[int, ...] = _ZERO32
    interface_protocol: tuple[int, ...] = _ZERO32

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        _check_uint("InterfaceInfo", "interface_count", self.interface_count, MAX_INTERFACES)
        for name in ("interface", "interface_class", "interface_subclass", "interface_protocol"):
            _array("InterfaceInfo", name, getattr(self, name), _U8)

    @classmethod
    def header_size(cls, shared: Cap) -> int:
        return cls._STRUCT_II.size

    def pack_into(self, buf: Buffer, offset: int, shared: Cap) -> None:
        self._STRUCT_II.pack_into(
            buf,
            offset,
            self.interface_count,
            bytes(self.interface),
            bytes(self.interface_class),
            bytes(self.interface_subclass),
            bytes(self.interface_protocol),
        )

    @classmethod
    def unpack_from(cls, view: memoryview, shared: Cap, msg_id: int, data: memoryview) -> InterfaceInfo:
        count, a, b, c, d = cls._STRUCT_II.unpack_from(view)
        return cls(count, tuple(a), tuple(b), tuple(c), tuple(d), id=msg_id)


@dataclass(frozen=True, slots=True)
class EpInfo(Message):
    """Per-endpoint table indexed by the 32-slot index.  `max_packet_size` is
    on the wire only with ep_info_max_packet_size, `max_streams` only with
    bulk_streams (both sides); absent arrays read as zeros."""

    TYPE = MsgType.EP_INFO
    SENDER = Sender.HOST
    _BASE: ClassVar[struct.Struct] = struct.Struct("<32s32s32s")
    _MPS: ClassVar[struct.Struct] = struct.Struct("<32H")
    _STREAMS: ClassVar[struct.Struct] = struct.Struct("<32I")

    type: tuple[int, ...] = (0,) + (255,) * 15 + (0,) + (255,) * 15
    interval: tuple[int, ...] = _ZERO32
    interface: tuple[int, ...] = _ZERO32
    max_packet_size: tuple[int, ...] = _ZERO32
    max_streams: tuple[int, ...] = _ZERO32

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        for name in ("type", "interval", "interface"):
            _array("EpInfo", name, getattr(self, name), _U8)
        _array("EpInfo", "max_packet_size", self.max_packet_size, _U16)
        _array("EpInfo", "max_streams", self.max_streams, _U32)

    @classmethod
    def header_size(cls, shared: Cap) -> int:
        if Cap.BULK_STREAMS in shared:
            return 288
        if Cap.EP_INFO_MAX_PACKET_SIZE in shared:
            return 160
        return 96

    def pack_into(self, buf: Buffer, offset: int, shared: Cap) -> None:
        self._BASE.pack_into(buf, offset, bytes(self.type), bytes(self.interval), bytes(self.interface))
        size = self.header_size(shared)
        if size >= 160:
            self._MPS.pack_into(buf, offset + 96, *self.max_packet_size)
        if size == 288:
            self._STREAMS.pack_into(buf, offset + 160, *self.max_streams)

    @classmethod
    def unpack_from(cls, view: memoryview, shared: Cap, msg_id: int, data: memoryview) -> EpInfo:
        types, intervals, interfaces = cls._BASE.unpack_from(view)
        size = cls.header_size(shared)
        mps = cls._MPS.unpack_from(view, 96) if size >= 160 else _ZERO32
        streams = cls._STREAMS.unpack_from(view, 160) if size == 288 else _ZERO32
        return cls(tuple(types), tuple(intervals), tuple(interfaces), mps, streams, id=msg_id)


# ------------------------------------------------ configuration and alt


@dataclass(frozen=True, slots=True)
class SetConfiguration(Message):
    TYPE = MsgType.SET_CONFIGURATION
    SENDER = Sender.GUEST
    _UINTS = (("configuration", _U8),)
    _STRUCT = _simple(_UINTS)
    configuration: int = 0


@dataclass(frozen=True, slots=True)
class GetConfiguration(Message):
    TYPE = MsgType.GET_CONFIGURATION
    SENDER = Sender.GUEST


@dataclass(frozen=True, slots=True)
class ConfigurationStatus(Message):
    TYPE = MsgType.CONFIGURATION_STATUS
    SENDER = Sender.HOST
    _UINTS = (("status", _U8), ("configuration", _U8))
    _STRUCT = _simple(_UINTS)
    status: int = 0
    configuration: int = 0


@dataclass(frozen=True, slots=True)
class SetAltSetting(Message):
    TYPE = MsgType.SET_ALT_SETTING
    SENDER = Sender.GUEST
    _UINTS = (("interface", _U8), ("alt", _U8))
    _STRUCT = _simple(_UINTS)
    interface: int = 0
    alt: int = 0


@dataclass(frozen=True, slots=True)
class GetAltSetting(Message):
    TYPE = MsgType.GET_ALT_SETTING
    SENDER = Sender.GUEST
    _UINTS = (("interface", _U8),)
    _STRUCT = _simple(_UINTS)
    interface: int = 0


@dataclass(frozen=True, slots=True)
class AltSettingStatus(Message):
    TYPE = MsgType.ALT_SETTING_STATUS
    SENDER = Sender.HOST
    _UINTS = (("status", _U8), ("interface", _U8), ("alt", _U8))
    _STRUCT = _simple(_UINTS)
    status: int = 0
    interface: int = 0
    alt: int = 0


# ---------------------------------------------------------------- streams


@dataclass(frozen=True, slots=True)
class StartIsoStream(Message):
    TYPE = MsgType.START_ISO_STREAM
    SENDER = Sender.GUEST
    _UINTS = (("endpoint", _U8), ("pkts_per_urb", _U8), ("no_urbs", _U8))
    _STRUCT = _simple(_UINTS)
    endpoint: int = 0
    pkts_per_urb: int = 0
    no_urbs: int = 0


@dataclass(frozen=True, slots=True)
class StopIsoStream(Message):
    TYPE = MsgType.STOP_ISO_STREAM
    SENDER = Sender.GUEST
    _UINTS = (("endpoint", _U8),)
    _STRUCT = _simple(_UINTS)
    endpoint: int = 0


@dataclass(frozen=True, slots=True)
class IsoStreamStatus(Message):
    TYPE = MsgType.ISO_STREAM_STATUS
    SENDER = Sender.HOST
    _UINTS = (("status", _U8), ("endpoint", _U8))
    _STRUCT = _simple(_UINTS)
    status: int = 0
    endpoint: int = 0


@dataclass(frozen=True, slots=True)
class StartInterruptReceiving(Message):
    """Only for interrupt IN endpoints (bit 7 set)."""

    TYPE = MsgType.START_INTERRUPT_RECEIVING
    SENDER = Sender.GUEST
    _UINTS = (("endpoint", _U8),)
    _STRUCT = _simple(_UINTS)
    endpoint: int = 0x81


@dataclass(frozen=True, slots=True)
class StopInterruptReceiving(Message):
    TYPE = MsgType.STOP_INTERRUPT_RECEIVING
    SENDER = Sender.GUEST
    _UINTS = (("endpoint", _U8),)
    _STRUCT = _simple(_UINTS)
    endpoint: int = 0x81


@dataclass(frozen=True, slots=True)
class InterruptReceivingStatus(Message):
    TYPE = MsgType.INTERRUPT_RECEIVING_STATUS
    SENDER = Sender.HOST
    _UINTS = (("status", _U8), ("endpoint", _U8))
    _STRUCT = _simple(_UINTS)
    status: int = 0
    endpoint: int = 0x81


@dataclass(frozen=True, slots=True)
class AllocBulkStreams(Message):
    TYPE = MsgType.ALLOC_BULK_STREAMS
    SENDER = Sender.GUEST
    _UINTS = (("endpoints", _U32), ("no_streams", _U32))
    _STRUCT = _simple(_UINTS)
    endpoints: int = 0
    no_streams: int = 0


@dataclass(frozen=True, slots=True)
class FreeBulkStreams(Message):
    TYPE = MsgType.FREE_BULK_STREAMS
    SENDER = Sender.GUEST
    _UINTS = (("endpoints", _U32),)
    _STRUCT = _simple(_UINTS)
    endpoints: int = 0


@dataclass(frozen=True, slots=True)
class BulkStreamsStatus(Message):
    TYPE = MsgType.BULK_STREAMS_STATUS
    SENDER = Sender.HOST
    _UINTS = (("endpoints", _U32), ("no_streams", _U32), ("status", _U8))
    _STRUCT = _simple(_UINTS)
    endpoints: int = 0
    no_streams: int = 0
    status: int = 0


@dataclass(frozen=True, slots=True)
class CancelDataPacket(Message):
    """Cancel the in-flight request whose id is this message's `id`."""

    TYPE = MsgType.CANCEL_DATA_PACKET
    SENDER = Sender.GUEST


@dataclass(frozen=True, slots=True)
class FilterReject(Message):
    TYPE = MsgType.FILTER_REJECT
    SENDER = Sender.GUEST


@dataclass(frozen=True, slots=True)
class FilterFilter(Message):
    """The guest's device filter, as text (token `,`, rule `|`).  Parse it with
    `redirgate.proto.usbredir.filter`; the reference ignores a string that does
    not parse, so the text is handed over as it came."""

    TYPE = MsgType.FILTER_FILTER
    SENDER = Sender.BOTH
    filter_string: str = ""

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if "\0" in self.filter_string:
            raise LocalProtocolError("FilterFilter.filter_string may not contain NUL")

    @property
    def payload(self) -> bytes:
        return self.filter_string.encode("latin-1", "replace") + b"\0"

    @classmethod
    def unpack_from(cls, view: memoryview, shared: Cap, msg_id: int, data: memoryview) -> FilterFilter:
        text = bytes(data).split(b"\0", 1)[0].decode("latin-1")
        return cls(text, id=msg_id)


@dataclass(frozen=True, slots=True)
class DeviceDisconnectAck(Message):
    TYPE = MsgType.DEVICE_DISCONNECT_ACK
    SENDER = Sender.GUEST


@dataclass(frozen=True, slots=True)
class StartBulkReceiving(Message):
    TYPE = MsgType.START_BULK_RECEIVING
    SENDER = Sender.GUEST
    _UINTS = (
        ("stream_id", _U32),
        ("bytes_per_transfer", _U32),
        ("endpoint", _U8),
        ("no_transfers", _U8),
    )
    _STRUCT = _simple(_UINTS)
    stream_id: int = 0
    bytes_per_transfer: int = 0
    endpoint: int = 0x81
    no_transfers: int = 0


@dataclass(frozen=True, slots=True)
class StopBulkReceiving(Message):
    TYPE = MsgType.STOP_BULK_RECEIVING
    SENDER = Sender.GUEST
    _UINTS = (("stream_id", _U32), ("endpoint", _U8))
    _STRUCT = _simple(_UINTS)
    stream_id: int = 0
    endpoint: int = 0x81


@dataclass(frozen=True, slots=True)
class BulkReceivingStatus(Message):
    TYPE = MsgType.BULK_RECEIVING_STATUS
    SENDER = Sender.HOST
    _UINTS = (("stream_id", _U32), ("endpoint", _U8), ("status", _U8))
    _STRUCT = _simple(_UINTS)
    stream_id: int = 0
    endpoint: int = 0x81
    status: int = 0


# ------------------------------------------------------------ data packets


@dataclass(frozen=True, slots=True)
class ControlPacket(DataMessage):
    """A control transfer.  Request: OUT carries `length` bytes, IN none.
    Reply: `length` = bytes transferred, IN replies carry them."""

    TYPE = MsgType.CONTROL_PACKET
    SENDER = Sender.BOTH
    _UINTS = (
        ("endpoint", _U8),
        ("request", _U8),
        ("requesttype", _U8),
        ("status", _U8),
        ("value", _U16),
        ("index", _U16),
        ("length", _U16),
    )
    _STRUCT = _simple(_UINTS)
    endpoint: int = 0
    request: int = 0
    requesttype: int = 0
    status: int = 0
    value: int = 0
    index: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True)
class BulkPacket(DataMessage):
    """A bulk transfer.  `length` is the whole 32-bit length; on the wire it is
    split into `length` and `length_high` when both sides have
    32bits_bulk_length, else it must fit 16 bits."""

    TYPE = MsgType.BULK_PACKET
    SENDER = Sender.BOTH
    _LONG: ClassVar[struct.Struct] = struct.Struct("<BBHIH")
    _SHORT: ClassVar[struct.Struct] = struct.Struct("<BBHI")
    _UINTS = (
        ("endpoint", _U8),
        ("status", _U8),
        ("length", MAX_BULK_TRANSFER_SIZE),
        ("stream_id", _U32),
    )
    endpoint: int = 0
    status: int = 0
    length: int = 0
    stream_id: int = 0

    @classmethod
    def header_size(cls, shared: Cap) -> int:
        return (cls._LONG if Cap.BULK_LENGTH_32BIT in shared else cls._SHORT).size

    def pack_into(self, buf: Buffer, offset: int, shared: Cap) -> None:
        if int(shared) & _BULK_LENGTH_32BIT:
            self._LONG.pack_into(
                buf,
                offset,
                self.endpoint,
                self.status,
                self.length & 0xFFFF,
                self.stream_id,
                self.length >> 16,
            )
        elif self.length > 0xFFFF:
            raise LocalProtocolError(
                f"bulk length {self.length} needs the 32bits_bulk_length cap on both sides",
                msg_type=self.TYPE,
            )
        else:
            self._SHORT.pack_into(buf, offset, self.endpoint, self.status, self.length, self.stream_id)

    @classmethod
    def unpack_from(cls, view: memoryview, shared: Cap, msg_id: int, data: memoryview) -> BulkPacket:
        if int(shared) & _BULK_LENGTH_32BIT:
            ep, status, low, stream, high = cls._LONG.unpack_from(view)
            return cls(ep, status, low | (high << 16), stream, id=msg_id, data=data)
        ep, status, low, stream = cls._SHORT.unpack_from(view)
        return cls(ep, status, low, stream, id=msg_id, data=data)


@dataclass(frozen=True, slots=True)
class IsoPacket(DataMessage):
    """One iso packet of a stream: G->H for OUT endpoints, H->G for IN."""

    TYPE = MsgType.ISO_PACKET
    SENDER = Sender.BOTH
    _UINTS = (("endpoint", _U8), ("status", _U8), ("length", _U16))
    _STRUCT = _simple(_UINTS)
    endpoint: int = 0
    status: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True)
class InterruptPacket(DataMessage):
    """Interrupt OUT request/reply, or interrupt IN data (H->G only)."""

    TYPE = MsgType.INTERRUPT_PACKET
    SENDER = Sender.BOTH
    _UINTS = (("endpoint", _U8), ("status", _U8), ("length", _U16))
    _STRUCT = _simple(_UINTS)
    endpoint: int = 0
    status: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True)
class BufferedBulkPacket(DataMessage):
    """Data from bulk receiving (H->G only)."""

    TYPE = MsgType.BUFFERED_BULK_PACKET
    SENDER = Sender.HOST
    _UINTS = (
        ("stream_id", _U32),
        ("length", _U32),
        ("endpoint", _U8),
        ("status", _U8),
    )
    _STRUCT = _simple(_UINTS)
    stream_id: int = 0
    length: int = 0
    endpoint: int = 0x81
    status: int = 0


def _attach_data(cls: type[DataMessage]) -> None:
    """Data packets built from a simple struct also take the data view."""
    struct_ = cls._STRUCT
    assert struct_ is not None

    def unpack_from(
        klass: type[DataMessage], view: memoryview, shared: Cap, msg_id: int, data: memoryview
    ) -> DataMessage:
        return klass(*struct_.unpack_from(view), id=msg_id, data=data)

    # replaces the inherited classmethod once the class exists (its struct is
    # known only then); mypy does not follow assigning methods to a class
    cls.unpack_from = classmethod(unpack_from)  # type: ignore[method-assign,assignment]  # see above


for _cls in (ControlPacket, IsoPacket, InterruptPacket, BufferedBulkPacket):
    _attach_data(_cls)


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """`attrgetter` that returns a tuple for any number of names (it returns
    the bare value for one)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    return lambda message: tuple(getattr(message, name) for name in names)


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        DeviceConnect,
        DeviceDisconnect,
        Reset,
        InterfaceInfo,
        EpInfo,
        SetConfiguration,
        GetConfiguration,
        ConfigurationStatus,
        SetAltSetting,
        GetAltSetting,
        AltSettingStatus,
        StartIsoStream,
        StopIsoStream,
        IsoStreamStatus,
        StartInterruptReceiving,
        StopInterruptReceiving,
        InterruptReceivingStatus,
        AllocBulkStreams,
        FreeBulkStreams,
        BulkStreamsStatus,
        CancelDataPacket,
        FilterReject,
        FilterFilter,
        DeviceDisconnectAck,
        StartBulkReceiving,
        StopBulkReceiving,
        BulkReceivingStatus,
        ControlPacket,
        BulkPacket,
        IsoPacket,
        InterruptPacket,
        BufferedBulkPacket,
    )
}
assert len(MESSAGE_CLASSES) == len(MsgType)
for _msg_cls in MESSAGE_CLASSES.values():
    # staticmethod: a plain function would be bound to the message
    _msg_cls._VALUES = staticmethod(_values_getter(tuple(name for name, _ in _msg_cls._UINTS)))
