"""A ctypes binding of the reference usbredir parser, libusbredirparser.so.1.

This is the peer our codec is proved against (Debian 12 ships 0.13.0): a
`RefParser` is a real `struct usbredirparser` in either role, fed with bytes
and asked to send messages through its own `usbredirparser_send_*` functions.
Its callbacks turn into `RefEvent`s whose `fields` use the C field names of
`usbredirproto.h`, so they compare one to one with our message classes.

It must never crash the interpreter, whatever bytes it is fed: it is also the
oracle of differential tests.  So every pointer the library hands over is read
within the size the library guarantees, packet data and filter rules are freed
with the library's own functions exactly once, the ctypes callbacks stay
referenced for the parser's whole life, and a Python exception inside a
callback is carried out of `usbredirparser_do_read` instead of being lost.

Normalisation (documented, deliberate):
- fields that are not on the wire for the caps in force (device_version_bcd
  without connect_device_version, ep_info max_packet_size / max_streams without
  their caps) are reported as 0: the C callback would hand over stale bytes of
  the parser's type-header buffer there;
- a bulk packet's `length` is the whole 32-bit length (`length_high` folded in);
- a hello reports the peer's version as the reference itself keeps it: up to
  the first NUL of the first 63 bytes (handle_hello's strncpy + terminator).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FLAG_NO_HELLO",
    "FLAG_USB_HOST",
    "ParseError",
    "RefEvent",
    "RefParser",
    "RefSendError",
    "load_library",
    "reference_filter_rules",
]

# usbredirparser.h enums
FLAG_USB_HOST = 0x01
FLAG_WRITE_CB_OWNS_BUFFER = 0x02
FLAG_NO_HELLO = 0x04
READ_PARSE_ERROR = -2
LOG_ERROR = 1

# capability bit numbers (usbredirproto.h)
CAP_BULK_STREAMS = 0
CAP_CONNECT_DEVICE_VERSION = 1
CAP_EP_INFO_MAX_PACKET_SIZE = 4
CAP_32BITS_BULK_LENGTH = 6

#: at most this many log lines are kept (the differential tests feed a lot)
_LOG_KEEP = 200


# --------------------------------------------------------------- protocol structs


def _packed(name: str, spec: list[tuple[str, Any]]) -> type[Structure]:
    return type(name, (Structure,), {"_pack_": 1, "_fields_": spec})


_A8 = c_uint8 * 32

#: type number -> (C struct name, field spec) of the type-specific header,
#: in the full (all caps) layout the library's callbacks and send_* use.
_HEADER_SPECS: dict[int, tuple[str, list[tuple[str, Any]]]] = {
    1: (
        "usb_redir_device_connect_header",
        [
            ("speed", c_uint8),
            ("device_class", c_uint8),
            ("device_subclass", c_uint8),
            ("device_protocol", c_uint8),
            ("vendor_id", c_uint16),
            ("product_id", c_uint16),
            ("device_version_bcd", c_uint16),
        ],
    ),
    4: (
        "usb_redir_interface_info_header",
        [
            ("interface_count", c_uint32),
            ("interface", _A8),
            ("interface_class", _A8),
            ("interface_subclass", _A8),
            ("interface_protocol", _A8),
        ],
    ),
    5: (
        "usb_redir_ep_info_header",
        [
            ("type", _A8),
            ("interval", _A8),
            ("interface", _A8),
            ("max_packet_size", c_uint16 * 32),
            ("max_streams", c_uint32 * 32),
        ],
    ),
    6: ("usb_redir_set_configuration_header", [("configuration", c_uint8)]),
    8: (
        "usb_redir_configuration_status_header",
        [("status", c_uint8), ("configuration", c_uint8)],
    ),
    9: ("usb_redir_set_alt_setting_header", [("interface", c_uint8), ("alt", c_uint8)]),
    10: ("usb_redir_get_alt_setting_header", [("interface", c_uint8)]),
    11: (
        "usb_redir_alt_setting_status_header",
        [("status", c_uint8), ("interface", c_uint8), ("alt", c_uint8)],
    ),
    12: (
        "usb_redir_start_iso_stream_header",
        [("endpoint", c_uint8), ("pkts_per_urb", c_uint8), ("no_urbs", c_uint8)],
    ),
    13: ("usb_redir_stop_iso_stream_header", [("endpoint", c_uint8)]),
    14: ("usb_redir_iso_stream_status_header", [("status", c_uint8), ("endpoint", c_uint8)]),
    15: ("usb_redir_start_interrupt_receiving_header", [("endpoint", c_uint8)]),
    16: ("usb_redir_stop_interrupt_receiving_header", [("endpoint", c_uint8)]),
    17: (
        "usb_redir_interrupt_receiving_status_header",
        [("status", c_uint8), ("endpoint", c_uint8)],
    ),
    18: (
        "usb_redir_alloc_bulk_streams_header",
        [("endpoints", c_uint32), ("no_streams", c_uint32)],
    ),
    19: ("usb_redir_free_bulk_streams_header", [("endpoints", c_uint32)]),
    20: (
        "usb_redir_bulk_streams_status_header",
        [("endpoints", c_uint32), ("no_streams", c_uint32), ("status", c_uint8)],
    ),
    25: (
        "usb_redir_start_bulk_receiving_header",
        [
            ("stream_id", c_uint32),
            ("bytes_per_transfer", c_uint32),
            ("endpoint", c_uint8),
            ("no_transfers", c_uint8),
        ],
    ),
    26: ("usb_redir_stop_bulk_receiving_header", [("stream_id", c_uint32), ("endpoint", c_uint8)]),
    27: (
        "usb_redir_bulk_receiving_status_header",
        [("stream_id", c_uint32), ("endpoint", c_uint8), ("status", c_uint8)],
    ),
    100: (
        "usb_redir_control_packet_header",
        [
            ("endpoint", c_uint8),
            ("request", c_uint8),
            ("requesttype", c_uint8),
            ("status", c_uint8),
            ("value", c_uint16),
            ("index", c_uint16),
            ("length", c_uint16),
        ],
    ),
    101: (
        "usb_redir_bulk_packet_header",
        [
            ("endpoint", c_uint8),
            ("status", c_uint8),
            ("length", c_uint16),
            ("stream_id", c_uint32),
            ("length_high", c_uint16),
        ],
    ),
    102: (
        "usb_redir_iso_packet_header",
        [("endpoint", c_uint8), ("status", c_uint8), ("length", c_uint16)],
    ),
    103: (
        "usb_redir_interrupt_packet_header",
        [("endpoint", c_uint8), ("status", c_uint8), ("length", c_uint16)],
    ),
    104: (
        "usb_redir_buffered_bulk_packet_header",
        [
            ("stream_id", c_uint32),
            ("length", c_uint32),
            ("endpoint", c_uint8),
            ("status", c_uint8),
        ],
    ),
}

HEADER_STRUCTS: dict[int, type[Structure]] = {
    number: _packed(name, spec) for number, (name, spec) in _HEADER_SPECS.items()
}

HelloHeader = _packed("usb_redir_hello_header", [("version", c_uint8 * 64)])


class FilterRule(Structure):
    """usbredirfilter.h `struct usbredirfilter_rule` (plain ints, not packed)."""

    _fields_ = [
        ("device_class", c_int),
        ("vendor_id", c_int),
        ("product_id", c_int),
        ("device_version_bcd", c_int),
        ("allow", c_int),
    ]


assert ctypes.sizeof(HEADER_STRUCTS[1]) == 10
assert ctypes.sizeof(HEADER_STRUCTS[5]) == 288
assert ctypes.sizeof(HEADER_STRUCTS[101]) == 10
assert ctypes.sizeof(HEADER_STRUCTS[104]) == 10

# --------------------------------------------------------------- callback types

_LOG = CFUNCTYPE(None, c_void_p, c_int, c_char_p)
_RW = CFUNCTYPE(c_int, c_void_p, c_void_p, c_int)
_ALLOC_LOCK = CFUNCTYPE(c_void_p)
_LOCK = CFUNCTYPE(None, c_void_p)
_PRIV = CFUNCTYPE(None, c_void_p)  # no-argument notifications
_HDR = CFUNCTYPE(None, c_void_p, c_void_p)  # priv, header (no id)
_ID = CFUNCTYPE(None, c_void_p, c_uint64)  # priv, id
_ID_HDR = CFUNCTYPE(None, c_void_p, c_uint64, c_void_p)
_FILTER = CFUNCTYPE(None, c_void_p, POINTER(FilterRule), c_int)
_DATA = CFUNCTYPE(None, c_void_p, c_uint64, c_void_p, c_void_p, c_int)

#: `struct usbredirparser`, field by field in usbredirparser.h order:
#: (field name, callback type, message type it reports or None).
_CALLBACKS: list[tuple[str, Any, int | None]] = [
    ("log_func", _LOG, None),
    ("read_func", _RW, None),
    ("write_func", _RW, None),
    # usb-redir-protocol v0.3 control packets
    ("device_connect_func", _HDR, 1),
    ("device_disconnect_func", _PRIV, 2),
    ("reset_func", _PRIV, 3),
    ("interface_info_func", _HDR, 4),
    ("ep_info_func", _HDR, 5),
    ("set_configuration_func", _ID_HDR, 6),
    ("get_configuration_func", _ID, 7),
    ("configuration_status_func", _ID_HDR, 8),
    ("set_alt_setting_func", _ID_HDR, 9),
    ("get_alt_setting_func", _ID_HDR, 10),
    ("alt_setting_status_func", _ID_HDR, 11),
    ("start_iso_stream_func", _ID_HDR, 12),
    ("stop_iso_stream_func", _ID_HDR, 13),
    ("iso_stream_status_func", _ID_HDR, 14),
    ("start_interrupt_receiving_func", _ID_HDR, 15),
    ("stop_interrupt_receiving_func", _ID_HDR, 16),
    ("interrupt_receiving_status_func", _ID_HDR, 17),
    ("alloc_bulk_streams_func", _ID_HDR, 18),
    ("free_bulk_streams_func", _ID_HDR, 19),
    ("bulk_streams_status_func", _ID_HDR, 20),
    ("cancel_data_packet_func", _ID, 21),
    # v0.3 data packets
    ("control_packet_func", _DATA, 100),
    ("bulk_packet_func", _DATA, 101),
    ("iso_packet_func", _DATA, 102),
    ("interrupt_packet_func", _DATA, 103),
    # 0.3.2 locking (left NULL: no lock is allocated then)
    ("alloc_lock_func", _ALLOC_LOCK, None),
    ("lock_func", _LOCK, None),
    ("unlock_func", _LOCK, None),
    ("free_lock_func", _LOCK, None),
    # 0.3.2
    ("hello_func", _HDR, 0),
    # 0.4
    ("filter_reject_func", _PRIV, 22),
    ("filter_filter_func", _FILTER, 23),
    ("device_disconnect_ack_func", _PRIV, 24),
    # 0.6
    ("start_bulk_receiving_func", _ID_HDR, 25),
    ("stop_bulk_receiving_func", _ID_HDR, 26),
    ("bulk_receiving_status_func", _ID_HDR, 27),
    ("buffered_bulk_packet_func", _DATA, 104),
]


class UsbredirParserStruct(Structure):
    """The public head of the library's parser object (never allocated here)."""

    _fields_ = [("priv", c_void_p)] + [(name, ftype) for name, ftype, _ in _CALLBACKS]


assert ctypes.sizeof(UsbredirParserStruct) == 8 * (1 + len(_CALLBACKS))

# --------------------------------------------------------------- the library

_LIB: ctypes.CDLL | None = None


def load_library(path: str | None = None) -> ctypes.CDLL:
    """Load libusbredirparser once and declare the prototypes we call."""
    global _LIB
    if _LIB is not None:
        return _LIB
    if path is None:
        from tests.support.system import libusbredirparser_path

        path = libusbredirparser_path()
        if path is None:
            raise OSError("libusbredirparser.so.1 not found")
    lib = ctypes.CDLL(path)
    P = c_void_p
    protos: dict[str, tuple[Any, list[Any]]] = {
        "usbredirparser_create": (P, []),
        "usbredirparser_init": (None, [P, c_char_p, POINTER(c_uint32), c_int, c_int]),
        "usbredirparser_destroy": (None, [P]),
        "usbredirparser_have_cap": (c_int, [P, c_int]),
        "usbredirparser_have_peer_caps": (c_int, [P]),
        "usbredirparser_peer_has_cap": (c_int, [P, c_int]),
        "usbredirparser_do_read": (c_int, [P]),
        "usbredirparser_has_data_to_write": (c_int, [P]),
        "usbredirparser_do_write": (c_int, [P]),
        "usbredirparser_free_packet_data": (None, [P, P]),
        "usbredirfilter_free": (None, [P]),
        "usbredirfilter_string_to_rules": (
            c_int,
            [c_char_p, c_char_p, c_char_p, POINTER(POINTER(FilterRule)), POINTER(c_int)],
        ),
        "usbredirparser_send_device_connect": (None, [P, P]),
        "usbredirparser_send_device_disconnect": (None, [P]),
        "usbredirparser_send_reset": (None, [P]),
        "usbredirparser_send_interface_info": (None, [P, P]),
        "usbredirparser_send_ep_info": (None, [P, P]),
        "usbredirparser_send_get_configuration": (None, [P, c_uint64]),
        "usbredirparser_send_cancel_data_packet": (None, [P, c_uint64]),
        "usbredirparser_send_filter_reject": (None, [P]),
        "usbredirparser_send_filter_filter": (None, [P, POINTER(FilterRule), c_int]),
    }
    for number in _SEND:
        name, kind = _SEND[number]
        if kind == "id_hdr":
            protos.setdefault(name, (None, [P, c_uint64, P]))
        elif kind == "data":
            protos.setdefault(name, (None, [P, c_uint64, P, P, c_int]))
    for name, (restype, argtypes) in protos.items():
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    _LIB = lib
    return lib


def reference_filter_rules(text: bytes) -> list[tuple[int, int, int, int, int]] | None:
    """What the reference's filter_filter handling makes of `text`: the rules
    of usbredirfilter_string_to_rules(text, ",", "|"), or None when it fails
    (the parser then drops the message without a callback or an error)."""
    lib = load_library()
    rules = POINTER(FilterRule)()
    count = c_int(0)
    result = lib.usbredirfilter_string_to_rules(
        text.split(b"\0", 1)[0], b",", b"|", ctypes.byref(rules), ctypes.byref(count)
    )
    if result != 0:
        return None
    try:
        return [
            (r.device_class, r.vendor_id, r.product_id, r.device_version_bcd, r.allow)
            for r in (rules[i] for i in range(count.value))
        ]
    finally:
        if rules:
            lib.usbredirfilter_free(ctypes.cast(rules, c_void_p))


#: type number -> (send function, calling convention)
_SEND: dict[int, tuple[str, str]] = {
    1: ("usbredirparser_send_device_connect", "hdr"),
    2: ("usbredirparser_send_device_disconnect", "none"),
    3: ("usbredirparser_send_reset", "none"),
    4: ("usbredirparser_send_interface_info", "hdr"),
    5: ("usbredirparser_send_ep_info", "hdr"),
    6: ("usbredirparser_send_set_configuration", "id_hdr"),
    7: ("usbredirparser_send_get_configuration", "id"),
    8: ("usbredirparser_send_configuration_status", "id_hdr"),
    9: ("usbredirparser_send_set_alt_setting", "id_hdr"),
    10: ("usbredirparser_send_get_alt_setting", "id_hdr"),
    11: ("usbredirparser_send_alt_setting_status", "id_hdr"),
    12: ("usbredirparser_send_start_iso_stream", "id_hdr"),
    13: ("usbredirparser_send_stop_iso_stream", "id_hdr"),
    14: ("usbredirparser_send_iso_stream_status", "id_hdr"),
    15: ("usbredirparser_send_start_interrupt_receiving", "id_hdr"),
    16: ("usbredirparser_send_stop_interrupt_receiving", "id_hdr"),
    17: ("usbredirparser_send_interrupt_receiving_status", "id_hdr"),
    18: ("usbredirparser_send_alloc_bulk_streams", "id_hdr"),
    19: ("usbredirparser_send_free_bulk_streams", "id_hdr"),
    20: ("usbredirparser_send_bulk_streams_status", "id_hdr"),
    21: ("usbredirparser_send_cancel_data_packet", "id"),
    22: ("usbredirparser_send_filter_reject", "none"),
    23: ("usbredirparser_send_filter_filter", "filter"),
    25: ("usbredirparser_send_start_bulk_receiving", "id_hdr"),
    26: ("usbredirparser_send_stop_bulk_receiving", "id_hdr"),
    27: ("usbredirparser_send_bulk_receiving_status", "id_hdr"),
    100: ("usbredirparser_send_control_packet", "data"),
    101: ("usbredirparser_send_bulk_packet", "data"),
    102: ("usbredirparser_send_iso_packet", "data"),
    103: ("usbredirparser_send_interrupt_packet", "data"),
    104: ("usbredirparser_send_buffered_bulk_packet", "data"),
}


# --------------------------------------------------------------- results


@dataclass(frozen=True)
class RefEvent:
    """One callback of the reference parser: a message it accepted."""

    type: int
    id: int
    fields: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""


@dataclass(frozen=True)
class ParseError:
    """`usbredirparser_do_read` returned -2 (usbredirparser_read_parse_error).

    `reason` is the last error the library logged while reading, if any."""

    reason: str = ""


class RefSendError(Exception):
    """The reference refused to queue a message (it logs and drops it)."""

    def __init__(self, msg_type: int, reason: str):
        self.msg_type = msg_type
        self.reason = reason
        super().__init__(f"reference parser refused to send type {msg_type}: {reason}")


# --------------------------------------------------------------- the parser


class RefParser:
    """One `struct usbredirparser` in role "host" (usbredirparser_fl_usb_host)
    or "guest".  `caps` is the first capability word passed to _init (the
    library adjusts it: a guest always gets device_disconnect_ack)."""

    def __init__(
        self,
        role: str,
        caps: int,
        version: str = "ref",
        no_hello: bool = False,
        library: str | None = None,
    ) -> None:
        if role not in ("host", "guest"):
            raise ValueError(f"role must be 'host' or 'guest', not {role!r}")
        self.role = role
        self._lib = load_library(library)
        self._ptr: int | None = None
        self._in = bytearray()
        self._in_pos = 0
        self._out = bytearray()
        self._events: list[RefEvent | ParseError] = []
        self._callback_error: BaseException | None = None
        #: (level, message) lines the library logged, newest last
        self.log: list[tuple[int, str]] = []
        self._last_error = ""

        ptr = self._lib.usbredirparser_create()
        if not ptr:
            raise MemoryError("usbredirparser_create returned NULL")
        self._ptr = ptr
        pub = UsbredirParserStruct.from_address(ptr)
        self._keep: list[Any] = []  # the ctypes thunks must outlive the parser
        for name, ftype, msg_type in _CALLBACKS:
            impl = self._callback_impl(name, msg_type)
            if impl is None:
                continue
            thunk = ftype(impl)
            self._keep.append(thunk)
            setattr(pub, name, thunk)
        caps_arr = (c_uint32 * 1)(caps & 0xFFFFFFFF)
        flags = (FLAG_USB_HOST if role == "host" else 0) | (FLAG_NO_HELLO if no_hello else 0)
        self._lib.usbredirparser_init(ptr, version.encode("latin-1"), caps_arr, 1, flags)

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr:
            self._lib.usbredirparser_destroy(ptr)

    def __del__(self) -> None:
        if getattr(self, "_ptr", None):
            self.close()

    def __enter__(self) -> RefParser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _p(self) -> int:
        if not self._ptr:
            raise RuntimeError("RefParser is closed")
        return self._ptr

    # -- caps -------------------------------------------------------------
    @property
    def have_peer_caps(self) -> bool:
        return bool(self._lib.usbredirparser_have_peer_caps(self._p()))

    @property
    def peer_caps(self) -> int:
        """The peer's capability word as the library keeps it (after its
        bulk_streams-without-ep_info_max_packet_size verification)."""
        p = self._p()
        return sum(1 << bit for bit in range(32) if self._lib.usbredirparser_peer_has_cap(p, bit))

    @property
    def our_caps(self) -> int:
        p = self._p()
        return sum(1 << bit for bit in range(32) if self._lib.usbredirparser_have_cap(p, bit))

    def _shared(self, cap: int) -> bool:
        p = self._p()
        return bool(self._lib.usbredirparser_have_cap(p, cap) and self._lib.usbredirparser_peer_has_cap(p, cap))

    # -- I/O ----------------------------------------------------------------
    def feed(self, data: bytes) -> list[RefEvent | ParseError]:
        """Give the parser `data` and read until all of it is consumed.

        Returns the accepted messages and parse errors in stream order."""
        p = self._p()
        self._in += data
        self._events = []
        while True:
            self._last_error = ""
            result = self._lib.usbredirparser_do_read(p)
            self._raise_callback_error()
            if result == READ_PARSE_ERROR:
                self._events.append(ParseError(self._last_error))
                continue
            if result != 0:
                raise RuntimeError(f"usbredirparser_do_read returned {result}: {self._last_error}")
            break
        assert self._in_pos == len(self._in), "reference stopped before the input ran out"
        self._in.clear()
        self._in_pos = 0
        events, self._events = self._events, []
        return events

    def output(self) -> bytes:
        """Everything the parser has queued (its hello, replies, sends)."""
        p = self._p()
        while self._lib.usbredirparser_has_data_to_write(p):
            if self._lib.usbredirparser_do_write(p) != 0:
                raise RuntimeError(f"usbredirparser_do_write failed: {self._last_error}")
            self._raise_callback_error()
        out = bytes(self._out)
        self._out.clear()
        return out

    def send(self, type_number: int, id: int, fields: dict[str, Any], data: bytes = b"") -> None:
        """Queue a message through the matching usbredirparser_send_* call.

        Hello is sent by _init and device_disconnect_ack by the library itself
        (a guest acks a device_disconnect when the peer has the cap), so those
        two have no send function.  Raises RefSendError when the library
        refuses the message (it logs "invalid params" and drops it)."""
        if type_number not in _SEND:
            raise ValueError(f"the reference has no send function for type {type_number}")
        name, kind = _SEND[type_number]
        func = getattr(self._lib, name)
        p = self._p()
        before = self._lib.usbredirparser_has_data_to_write(p)
        self._last_error = ""
        keep: Any = None
        if kind == "none":
            func(p)
        elif kind == "id":
            func(p, id)
        elif kind == "hdr":
            keep = self._build_header(type_number, fields)
            func(p, ctypes.byref(keep))
        elif kind == "id_hdr":
            keep = self._build_header(type_number, fields)
            func(p, id, ctypes.byref(keep))
        elif kind == "filter":
            rules = list(fields.get("rules", ()))
            arr = (FilterRule * max(1, len(rules)))(*(FilterRule(*rule) for rule in rules))
            func(p, arr, len(rules))
        else:  # data packet
            keep = self._build_header(type_number, fields)
            buf = (c_uint8 * max(1, len(data))).from_buffer_copy(data or b"\0")
            func(p, id, ctypes.byref(keep), buf if data else None, len(data))
        self._raise_callback_error()
        if self._lib.usbredirparser_has_data_to_write(p) <= before:
            raise RefSendError(type_number, self._last_error or "dropped")

    @staticmethod
    def _build_header(type_number: int, fields: dict[str, Any]) -> Structure:
        cls = HEADER_STRUCTS[type_number]
        header = cls()
        values = dict(fields)
        if type_number == 101:  # bulk: 32-bit length split over two fields
            length = int(values.pop("length", 0))
            values["length"] = length & 0xFFFF
            values["length_high"] = (length >> 16) & 0xFFFF
        for fname, ftype in cls._fields_:  # type: ignore[attr-defined]  # a ctypes.Structure subclass
            if fname not in values:
                continue
            value = values.pop(fname)
            if isinstance(value, (tuple, list)):
                setattr(header, fname, ftype(*value))
            else:
                setattr(header, fname, value)
        if values:
            raise KeyError(f"unknown fields for type {type_number}: {sorted(values)}")
        return header

    # -- callbacks ----------------------------------------------------------
    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise RuntimeError("exception inside a libusbredirparser callback") from err

    def _guard(self, fn: Callable[..., Any], default: Any = None) -> Callable[..., Any]:
        """Wrap a callback so that no Python exception crosses into C."""

        def wrapped(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:  # carried out of do_read by _raise_callback_error
                if self._callback_error is None:
                    self._callback_error = exc
                return default

        return wrapped

    def _callback_impl(self, name: str, msg_type: int | None) -> Callable[..., Any] | None:
        if name == "log_func":
            return self._guard(self._on_log)
        if name == "read_func":
            return self._guard(self._on_read, -1)
        if name == "write_func":
            return self._guard(self._on_write, -1)
        if msg_type is None:
            return None  # lock functions stay NULL
        if name == "hello_func":
            return self._guard(self._on_hello)
        if name == "filter_filter_func":
            return self._guard(self._on_filter)
        ftype = dict((n, t) for n, t, _ in _CALLBACKS)[name]
        if ftype is _PRIV:
            return self._guard(lambda priv: self._emit(msg_type, 0, {}))
        if ftype is _ID:
            return self._guard(lambda priv, id_: self._emit(msg_type, id_, {}))
        if ftype is _HDR:
            return self._guard(lambda priv, hdr: self._emit_header(msg_type, 0, hdr))
        if ftype is _ID_HDR:
            return self._guard(lambda priv, id_, hdr: self._emit_header(msg_type, id_, hdr))
        if ftype is _DATA:
            return self._guard(lambda priv, id_, hdr, data, data_len: self._on_data(msg_type, id_, hdr, data, data_len))
        raise AssertionError(name)

    def _on_log(self, priv: Any, level: int, msg: bytes | None) -> None:
        text = (msg or b"").decode("latin-1")
        if level == LOG_ERROR:
            self._last_error = text
        self.log.append((level, text))
        del self.log[:-_LOG_KEEP]

    def _on_read(self, priv: Any, dest: int, count: int) -> int:
        n = min(count, len(self._in) - self._in_pos)
        if n <= 0:
            return 0  # "would block": do_read returns 0
        ctypes.memmove(dest, bytes(self._in[self._in_pos : self._in_pos + n]), n)
        self._in_pos += n
        return n

    def _on_write(self, priv: Any, src: int, count: int) -> int:
        self._out += ctypes.string_at(src, count)
        return count

    def _emit(self, msg_type: int, id_: int, fields: dict[str, Any], data: bytes = b"") -> None:
        self._events.append(RefEvent(msg_type, int(id_), fields, data))

    def _header_fields(self, msg_type: int, hdr: int) -> dict[str, Any]:
        cls = HEADER_STRUCTS[msg_type]
        header = cls.from_buffer_copy(ctypes.string_at(hdr, ctypes.sizeof(cls)))
        fields: dict[str, Any] = {}
        for fname, _ in cls._fields_:  # type: ignore[attr-defined]  # a ctypes.Structure subclass
            value = getattr(header, fname)
            fields[fname] = tuple(value) if isinstance(value, ctypes.Array) else int(value)
        # fields the wire layout in force does not carry read as 0
        if msg_type == 1 and not self._shared(CAP_CONNECT_DEVICE_VERSION):
            fields["device_version_bcd"] = 0
        if msg_type == 5:
            if not self._shared(CAP_BULK_STREAMS):
                fields["max_streams"] = (0,) * 32
                if not self._shared(CAP_EP_INFO_MAX_PACKET_SIZE):
                    fields["max_packet_size"] = (0,) * 32
        if msg_type == 101:
            fields["length"] |= fields.pop("length_high") << 16
        return fields

    def _emit_header(self, msg_type: int, id_: int, hdr: int) -> None:
        self._emit(msg_type, id_, self._header_fields(msg_type, hdr))

    def _on_data(self, msg_type: int, id_: int, hdr: int, data: int | None, data_len: int) -> None:
        try:
            payload = ctypes.string_at(data, data_len) if data and data_len > 0 else b""
            self._emit(msg_type, id_, self._header_fields(msg_type, hdr), payload)
        finally:
            if data:
                self._lib.usbredirparser_free_packet_data(self._ptr, data)

    def _on_hello(self, priv: Any, hdr: int) -> None:
        raw = ctypes.string_at(hdr, 63)
        version = raw.split(b"\0", 1)[0].decode("latin-1")
        self._emit(0, 0, {"version": version})

    def _on_filter(self, priv: Any, rules: Any, count: int) -> None:
        try:
            found = (
                [
                    (r.device_class, r.vendor_id, r.product_id, r.device_version_bcd, r.allow)
                    for r in (rules[i] for i in range(max(0, count)))
                ]
                if rules
                else []
            )
            self._emit(23, 0, {"rules": found})
        finally:
            if rules:
                self._lib.usbredirfilter_free(ctypes.cast(rules, c_void_p))
