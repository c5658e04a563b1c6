"""One end of a usbredir connection, sans-IO: framing, negotiation, checks.

`UsbredirConnection` owns the capability negotiation and the byte stream in
both directions: it turns received bytes into message objects and message
objects into bytes, with the header layout in force at that moment, exactly
as usbredirparser.c decides it.  It never touches a socket, never logs and
never allocates according to a length it has not checked.

Receiving
    Bytes go into one reusable buffer (`receive_data`, or `get_receive_buffer`
    + `commit_received` to `recv_into` it directly).  `next_event()` returns a
    message, `NEED_DATA`, or `CLOSED` after EOF.  Payloads are memoryviews
    into that buffer, valid until the next `receive_data`/`get_receive_buffer`.
    The buffer is never resized while views may exist: it is compacted with
    equal-length moves or replaced by a larger one.

Errors
    Checks run in the reference's order (type and direction, total length,
    type-specific header size, then the semantic checks).  A failed check
    raises a `RemoteProtocolError` subclass naming the type and the stream
    offset, and - like the reference's -2 return - the bad message is skipped,
    so the caller may go on reading or close the connection.  Semantic checks
    run as soon as the type-specific header is in, so a message that can only
    be rejected is never buffered whole.

Sending
    `send_parts` returns `(header, payload)` so data is never copied to be
    framed; `write_header_into` writes the header into the caller's buffer.
    Anything the peer's parser would reject raises `LocalProtocolError`
    first: QEMU aborts on a malformed host message.
"""

from __future__ import annotations

import struct
from typing import Final

from redirgate.proto.sentinels import CLOSED, NEED_DATA, Sentinel
from redirgate.proto.usbredir import errors
from redirgate.proto.usbredir.constants import (
    MAX_BULK_TRANSFER_SIZE,
    MAX_INTERFACES,
    MAX_PACKET_SIZE,
    Cap,
    MsgType,
    Role,
)
from redirgate.proto.usbredir.messages import (
    MESSAGE_CLASSES,
    Buffer,
    BulkPacket,
    BulkReceivingStatus,
    DataMessage,
    Hello,
    InterfaceInfo,
    InterruptReceivingStatus,
    Message,
    Sender,
    StartBulkReceiving,
    StartInterruptReceiving,
    StopBulkReceiving,
    StopInterruptReceiving,
)

__all__ = [
    "CLOSED",
    "DEFAULT_CAPS",
    "NEED_DATA",
    "Event",
    "UsbredirConnection",
    "check_main_header",
    "check_type_header",
    "verified_caps",
]


Event = Message | Sentinel

_HEADER_32 = struct.Struct("<III")
_HEADER_64 = struct.Struct("<IIQ")
_U16_AT = struct.Struct("<H")
_U32_AT = struct.Struct("<I")

#: Types that may carry data after the type-specific header at all
#: (usbredirparser_expect_extra_data).
_DATA_TYPES = frozenset(
    {
        MsgType.HELLO,
        MsgType.FILTER_FILTER,
        MsgType.CONTROL_PACKET,
        MsgType.BULK_PACKET,
        MsgType.ISO_PACKET,
        MsgType.INTERRUPT_PACKET,
        MsgType.BUFFERED_BULK_PACKET,
    }
)
_BULK_RECEIVING_TYPES = frozenset(
    {
        MsgType.START_BULK_RECEIVING,
        MsgType.STOP_BULK_RECEIVING,
        MsgType.BULK_RECEIVING_STATUS,
        MsgType.BUFFERED_BULK_PACKET,
    }
)
#: Cap-gated types and their cap (usbredirparser_verify_type_header).
_GATES: dict[int, Cap] = {
    MsgType.FILTER_REJECT: Cap.FILTER,
    MsgType.FILTER_FILTER: Cap.FILTER,
    MsgType.DEVICE_DISCONNECT_ACK: Cap.DEVICE_DISCONNECT_ACK,
    **{t: Cap.BULK_RECEIVING for t in _BULK_RECEIVING_TYPES},
}
#: Where the endpoint byte sits in type-specific headers whose endpoint the
#: reference checks for the IN direction.
_IN_ONLY_ENDPOINT_AT: dict[int, int] = {
    MsgType.START_INTERRUPT_RECEIVING: 0,
    MsgType.STOP_INTERRUPT_RECEIVING: 0,
    MsgType.INTERRUPT_RECEIVING_STATUS: 1,
    MsgType.START_BULK_RECEIVING: 8,
    MsgType.STOP_BULK_RECEIVING: 4,
    MsgType.BULK_RECEIVING_STATUS: 4,
}
#: The classes of those types, for messages being sent.
_IN_ONLY_ENDPOINT_CLASSES = (
    StartInterruptReceiving,
    StopInterruptReceiving,
    InterruptReceivingStatus,
    StartBulkReceiving,
    StopBulkReceiving,
    BulkReceivingStatus,
)
assert {cls.TYPE for cls in _IN_ONLY_ENDPOINT_CLASSES} == set(_IN_ONLY_ENDPOINT_AT)

#: A connection's caps unless told otherwise: every capability but bulk
#: streams, which a host built on pyusb cannot drive (protocol ref §2.2).
DEFAULT_CAPS: Final = Cap.all_known() & ~Cap.BULK_STREAMS

_INITIAL_BUFFER = 64 * 1024


def _layouts(shared: Cap) -> dict[int, tuple[type[Message], int]]:
    """Every message type's class and type-header size under `shared`.

    A connection keeps this table for the caps in force (they change once,
    at the peer's hello), so the per-message paths look a size up instead
    of asking the class, which for some types tests a cap each time
    (``Cap.X in shared`` is Python code in `enum.Flag`)."""
    return {msg_type: (cls, cls.header_size(shared)) for msg_type, cls in MESSAGE_CLASSES.items()}


def verified_caps(caps: int) -> Cap:
    """Caps as the reference keeps them: bulk_streams needs ep_info_max_packet_size
    (usbredirparser_verify_caps strips it otherwise)."""
    value = caps & 0xFFFFFFFF
    if value & Cap.BULK_STREAMS and not value & Cap.EP_INFO_MAX_PACKET_SIZE:
        value &= ~int(Cap.BULK_STREAMS)  # int maths: unknown bits are kept
    return Cap(value)


class UsbredirConnection:
    """One end of a usbredir byte stream (see the module docstring)."""

    def __init__(
        self,
        role: Role,
        caps: Cap | int = DEFAULT_CAPS,
        version: str = "redirgate",
        *,
        max_message_size: int = MAX_PACKET_SIZE,
    ) -> None:
        self.role = role
        our = verified_caps(int(caps))
        if role is Role.GUEST:
            # libusbredirparser handles the disconnect ack itself and always
            # advertises it in guest mode; so do we.
            our |= Cap.DEVICE_DISCONNECT_ACK
        self.our_caps: Cap = our
        self.peer_caps: Cap | None = None
        self.peer_version: str | None = None
        self.version = version
        self.max_message_size = min(max_message_size, MAX_PACKET_SIZE)
        self.duplicate_hellos = 0
        self._hello_sent = False
        self._shared = Cap(0)
        self._header = _HEADER_32
        self._layout = _layouts(self._shared)
        #: both sides have 32bits_bulk_length (read by the receive checks)
        self._bulk_32 = False
        #: the `Sender` values a message we send may have
        self._may_send = (Sender.BOTH, role.value)
        #: messages we receive travel towards a host / messages we send do
        self._receive_to_host = role is Role.HOST
        self._send_to_host = role is Role.GUEST
        # receive side
        self._buf = bytearray(_INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._offset = 0  # stream offset of self._buf[self._start]
        self._to_skip = 0
        self._eof = False
        # the main header of the message being assembled: (type, length, id, cls, type_header_size)
        self._pending: tuple[int, int, int, type[Message], int] | None = None
        self._pending_checked = False

    # ------------------------------------------------------------ state
    @property
    def shared_caps(self) -> Cap:
        """Caps both sides advertised (nothing before the peer's hello)."""
        return self._shared

    @property
    def header_size(self) -> int:
        """Main header size in force now: 16 once both have 64-bit ids, else 12."""
        return self._header.size

    @property
    def have_peer_hello(self) -> bool:
        return self.peer_caps is not None

    def _set_peer_hello(self, hello: Hello) -> None:
        self.peer_caps = verified_caps(int(hello.caps))
        self.peer_version = hello.version
        self._shared = self.our_caps & self.peer_caps
        self._header = _HEADER_64 if Cap.IDS_64BIT in self._shared else _HEADER_32
        self._layout = _layouts(self._shared)
        self._bulk_32 = Cap.BULK_LENGTH_32BIT in self._shared

    # ---------------------------------------------------------- receive
    def receive_data(self, data: Buffer) -> None:
        """Add received bytes; `b""` means the peer closed the stream."""
        size = len(data)
        if size == 0:
            self._eof = True
            return
        if self._eof:
            raise errors.LocalProtocolError("receive_data after EOF")
        if self._to_skip and self._start == self._end:
            dropped = min(self._to_skip, size)
            self._to_skip -= dropped
            self._offset += dropped
            if dropped == size:
                return
            data = memoryview(data)[dropped:]
            size -= dropped
        self._reserve(size)
        self._buf[self._end : self._end + size] = data
        self._end += size

    def get_receive_buffer(self, size: int) -> memoryview:
        """A writable view of at least `size` free bytes to `recv_into`;
        follow with `commit_received(n)`."""
        if self._eof:
            raise errors.LocalProtocolError("get_receive_buffer after EOF")
        self._reserve(size)
        return self._view[self._end :]

    def commit_received(self, size: int) -> None:
        """Account for `size` bytes written into the last receive buffer."""
        if size == 0:
            self._eof = True
            return
        if not 0 < size <= len(self._buf) - self._end:
            raise errors.LocalProtocolError(f"commit_received({size}) beyond the buffer")
        self._end += size

    def _reserve(self, size: int) -> None:
        """Make room for `size` more bytes without resizing the buffer in place
        (payload views handed out earlier may still point into it)."""
        capacity = len(self._buf)
        if self._end + size <= capacity:
            return
        pending = self._end - self._start
        if pending + size <= capacity and self._start >= capacity // 2:
            # equal-length move: allowed while views are exported
            self._buf[0:pending] = self._view[self._start : self._end]
        else:
            new_capacity = max(capacity * 2, pending + size)
            new = bytearray(new_capacity)
            new[0:pending] = self._view[self._start : self._end]
            self._buf = new
            self._view = memoryview(new)
        self._start, self._end = 0, pending

    def _consume(self, size: int) -> None:
        self._start += size
        self._offset += size
        if self._start == self._end:
            self._start = self._end = 0

    def _skip_rest(self, remaining: int) -> None:
        """Skip `remaining` bytes of the current message, buffered or not."""
        buffered = min(remaining, self._end - self._start)
        self._consume(buffered)
        self._to_skip = remaining - buffered
        self._pending = None
        self._pending_checked = False

    def next_event(self) -> Event:
        """The next complete message, `NEED_DATA`, or `CLOSED`."""
        # One method, not a loop around a helper: it runs twice per message
        # (the message, then NEED_DATA), on every transfer.
        while True:
            if self._to_skip:
                dropped = min(self._to_skip, self._end - self._start)
                self._consume(dropped)
                self._to_skip -= dropped
                if self._to_skip:
                    return self._need_data(True)
            available = self._end - self._start
            header = self._header
            hsize = header.size
            if self._pending is None:
                if available < hsize:
                    return NEED_DATA if not self._eof else self._need_data(available > 0)
                msg_type, length, msg_id = header.unpack_from(self._buf, self._start)
                self._pending = self._check_main_header(msg_type, length, msg_id, hsize)
            msg_type, length, msg_id, cls, thsize = self._pending
            if not self._pending_checked:
                if available < hsize + thsize:
                    return self._need_data(True)
                self._check_type_header(msg_type, length - thsize, hsize)
                self._pending_checked = True
            total = hsize + length
            if available < total:
                return self._need_data(True)
            start = self._start + hsize
            view = self._view
            if msg_type == MsgType.FILTER_FILTER:
                self._check_filter_data(view[start : start + length], hsize)
            message = cls.unpack_from(
                view[start : start + thsize], self._shared, msg_id, view[start + thsize : start + length]
            )
            self._pending = None
            self._pending_checked = False
            self._consume(total)
            if msg_type == MsgType.HELLO:
                if self.peer_caps is not None:
                    # usbredirparser: "Received second hello message, ignoring"
                    self.duplicate_hellos += 1
                    continue
                assert isinstance(message, Hello)
                self._set_peer_hello(message)
            return message

    def _need_data(self, mid_message: bool) -> Sentinel:
        if not self._eof:
            return NEED_DATA
        if mid_message or self._to_skip:
            # reset so that a further call reports CLOSED instead of looping
            offset = self._offset
            self._start = self._end = 0
            self._pending = None
            self._to_skip = 0
            raise errors.RemoteProtocolError("connection closed in the middle of a message", offset=offset)
        return CLOSED

    def _check_main_header(
        self, msg_type: int, length: int, msg_id: int, hsize: int
    ) -> tuple[int, int, int, type[Message], int]:
        """Checks 1-3 of the reference, on the main header alone."""
        try:
            entry = self._layout.get(msg_type)
            if entry is None:
                raise errors.UnknownTypeError("unknown message type", msg_type=msg_type)
            cls, thsize = entry
            _check_sizes(self.role, cls, thsize, msg_type, length, self.max_message_size)
        except errors.RemoteProtocolError as error:
            error.at_offset(self._offset)
            self._consume(hsize)
            # usbredirparser keeps the bytes to skip in a C int: a length of
            # 2**31 or more skips nothing and parsing resumes after the header
            self._skip_rest(length if length < 2**31 else 0)
            raise
        return msg_type, length, msg_id, cls, thsize

    def _check_type_header(self, msg_type: int, data_len: int, hsize: int) -> None:
        """The reference's semantic checks, run once the type header is in
        (`check_type_header` with what it derives from the caps kept)."""
        try:
            _raise_problem(
                msg_type,
                _fields_from_wire(msg_type, self._view, self._start + hsize, self._bulk_32),
                data_len,
                to_host=self._receive_to_host,
                gate_caps=self.our_caps,
            )
        except errors.RemoteProtocolError as error:
            length = self._pending[1] if self._pending else 0
            error.at_offset(self._offset)
            self._consume(hsize)
            self._skip_rest(length)
            raise

    def _check_filter_data(self, data: memoryview, hsize: int) -> None:
        if len(data) < 1 or data[-1] != 0:
            offset = self._offset
            self._skip_rest(hsize + len(data))
            reason = "without data" if len(data) < 1 else "not NUL-terminated"
            raise errors.InvalidFieldError(f"filter string {reason}", msg_type=MsgType.FILTER_FILTER, offset=offset)

    # ------------------------------------------------------------- send
    def hello_bytes(self) -> bytes:
        """Our hello, always framed with the 12-byte header; send it first."""
        if self._hello_sent:
            raise errors.LocalProtocolError("hello already sent", msg_type=MsgType.HELLO)
        hello = Hello(self.version[:63], self.our_caps)
        self._hello_sent = True
        header, payload = self._frame(hello, self._layout[MsgType.HELLO][1])
        return header + bytes(payload)

    def write_header_into(self, buf: Buffer, offset: int, message: Message) -> int:
        """Write `message`'s main and type-specific headers into `buf` at
        `offset`; the payload (`message.payload`) goes after it, unframed."""
        payload_len = len(message.payload)
        thsize = self._check_send(message, type(message), payload_len)
        return self._write_header(buf, offset, message, payload_len, thsize)

    def send_parts(self, message: Message) -> tuple[bytes, Buffer]:
        """`(header, payload)` for `message`: the payload object is the
        caller's own, never copied."""
        payload = message.payload
        # the check gives the type-header size: looked up once per message
        thsize = self._check_send(message, type(message), len(payload))
        return self._frame(message, thsize)

    def send(self, message: Message) -> bytes:
        header, payload = self.send_parts(message)
        return header + bytes(payload) if len(payload) else header

    def _frame(self, message: Message, thsize: int) -> tuple[bytes, Buffer]:
        payload = message.payload
        buf = bytearray(self._header.size + thsize)
        self._write_header(buf, 0, message, len(payload), thsize)
        return bytes(buf), payload

    def _write_header(self, buf: Buffer, offset: int, message: Message, data_len: int, thsize: int) -> int:
        cls = type(message)
        header = self._header
        msg_id = message.id if header is _HEADER_64 else message.id & 0xFFFFFFFF
        header.pack_into(buf, offset, cls.TYPE, thsize + data_len, msg_id)
        message.pack_into(buf, offset + header.size, self._shared)
        return header.size + thsize

    def _check_send(self, message: Message, cls: type[Message], payload_len: int) -> int:
        """What the peer's parser would reject, as LocalProtocolError; the
        message's type-header size otherwise."""
        if cls is Hello:
            raise errors.LocalProtocolError("the hello is sent once, with hello_bytes()", msg_type=cls.TYPE)
        if not self._hello_sent:
            raise errors.LocalProtocolError("send hello_bytes() first", msg_type=cls.TYPE)
        if cls.SENDER not in self._may_send:
            raise errors.LocalProtocolError(f"a usbredir {self.role.value} may not send this", msg_type=cls.TYPE)
        thsize = self._layout[cls.TYPE][1]
        if thsize + payload_len > MAX_PACKET_SIZE:
            raise errors.LocalProtocolError(
                f"message of {thsize + payload_len} bytes exceeds {MAX_PACKET_SIZE}",
                msg_type=cls.TYPE,
            )
        problem = _semantic_problem(
            cls.TYPE,
            _fields_from_message(message),
            payload_len,
            to_host=self._send_to_host,
            gate_caps=self.peer_caps or Cap(0),
        )
        if problem is not None:
            raise errors.LocalProtocolError(problem[1], msg_type=cls.TYPE)
        if not self._bulk_32 and isinstance(message, BulkPacket) and message.length > 0xFFFF:
            raise errors.LocalProtocolError(
                "bulk length over 65535 needs 32bits_bulk_length on both sides",
                msg_type=cls.TYPE,
            )
        return thsize


def check_main_header(
    receiver: Role, shared: Cap, msg_type: int, length: int, max_message_size: int = MAX_PACKET_SIZE
) -> tuple[type[Message], int]:
    """Checks 1-3 of usbredirparser_do_read on a main header arriving at
    `receiver`: the message class and its type-header size, or a
    RemoteProtocolError (without an offset: the caller knows it)."""
    cls = MESSAGE_CLASSES.get(msg_type)
    if cls is None:
        raise errors.UnknownTypeError("unknown message type", msg_type=msg_type)
    thsize = cls.header_size(shared)
    _check_sizes(receiver, cls, thsize, msg_type, length, max_message_size)
    return cls, thsize


def _check_sizes(
    receiver: Role, cls: type[Message], thsize: int, msg_type: int, length: int, max_message_size: int
) -> None:
    """Checks 2-3 of `check_main_header`, the type known (its class and
    type-header size under the shared caps)."""
    if cls.SENDER == (Sender.GUEST if receiver is Role.GUEST else Sender.HOST):
        raise errors.WrongDirectionError(f"may not be sent to a usbredir {receiver.value}", msg_type=msg_type)
    if length > max_message_size:
        raise errors.LengthLimitError(f"length {length} exceeds the limit of {max_message_size}", msg_type=msg_type)
    if length < thsize:
        raise errors.HeaderSizeError(
            f"length {length} is shorter than the {thsize}-byte type header", msg_type=msg_type
        )
    if length > thsize and msg_type not in _DATA_TYPES:
        raise errors.UnexpectedDataError(
            f"{length - thsize} data bytes on a message that carries none", msg_type=msg_type
        )


def check_type_header(
    receiver: Role, shared: Cap, own_caps: Cap, msg_type: int, view: memoryview, start: int, data_len: int
) -> None:
    """The reference's semantic checks on a type header at view[start:] that
    arrived at `receiver`; raises the RemoteProtocolError it would report."""
    _raise_problem(
        msg_type,
        _fields_from_wire(msg_type, view, start, Cap.BULK_LENGTH_32BIT in shared),
        data_len,
        to_host=receiver is Role.HOST,
        gate_caps=own_caps,
    )


def _raise_problem(msg_type: int, fields: _Fields, data_len: int, *, to_host: bool, gate_caps: Cap) -> None:
    """Raise the RemoteProtocolError `_semantic_problem` finds, if any."""
    problem = _semantic_problem(msg_type, fields, data_len, to_host=to_host, gate_caps=gate_caps)
    if problem is not None:
        kind, reason = problem
        raise kind(reason, msg_type=msg_type)


# The semantic checks of usbredirparser_verify_type_header, shared by the
# receive path (fields read off the wire, RemoteProtocolError) and the send
# path (fields of a message object, LocalProtocolError).

_Fields = tuple[int, int, int]  # (endpoint or -1, stated data length, extra)


def _fields_from_wire(msg_type: int, view: memoryview, start: int, bulk_32: bool) -> _Fields:
    """Endpoint, stated length and one extra value, read from a type header
    (`bulk_32`: both sides have 32bits_bulk_length)."""
    if msg_type == MsgType.INTERFACE_INFO:
        return -1, 0, _U32_AT.unpack_from(view, start)[0]
    at = _IN_ONLY_ENDPOINT_AT.get(msg_type)
    if at is not None:
        extra = _U32_AT.unpack_from(view, start + 4)[0] if msg_type == MsgType.START_BULK_RECEIVING else 0
        return view[start + at], 0, extra
    if msg_type == MsgType.CONTROL_PACKET:
        return view[start], _U16_AT.unpack_from(view, start + 8)[0], 0
    if msg_type == MsgType.BULK_PACKET:
        length = _U16_AT.unpack_from(view, start + 2)[0]
        if bulk_32:
            length |= _U16_AT.unpack_from(view, start + 8)[0] << 16
        return view[start], length, 0
    if msg_type in (MsgType.ISO_PACKET, MsgType.INTERRUPT_PACKET):
        return view[start], _U16_AT.unpack_from(view, start + 2)[0], 0
    if msg_type == MsgType.BUFFERED_BULK_PACKET:
        return view[start + 8], _U32_AT.unpack_from(view, start + 4)[0], 0
    return -1, 0, 0


def _fields_from_message(message: Message) -> _Fields:
    if isinstance(message, InterfaceInfo):
        return -1, 0, int(message.interface_count)
    if isinstance(message, StartBulkReceiving):
        return int(message.endpoint), 0, int(message.bytes_per_transfer)
    if isinstance(message, _IN_ONLY_ENDPOINT_CLASSES):
        return int(message.endpoint), 0, 0
    if isinstance(message, DataMessage):
        return message.endpoint_address, message.transfer_length, 0
    return -1, 0, 0


def _semantic_problem(
    msg_type: int, fields: _Fields, data_len: int, *, to_host: bool, gate_caps: Cap
) -> tuple[type[errors.RemoteProtocolError], str] | None:
    """What the reference would reject in this message, or None.

    `to_host`: the message travels towards the host.  `gate_caps`: the caps a
    gated message needs (our own when receiving, the peer's when sending).
    """
    endpoint, length, extra = fields
    gate = _GATES.get(msg_type)
    if gate is not None and gate not in gate_caps:
        return errors.CapabilityError, f"needs the {str(gate.name).lower()} capability"
    if msg_type == MsgType.INTERFACE_INFO and extra > MAX_INTERFACES:
        return errors.InvalidFieldError, f"interface_count {extra} > {MAX_INTERFACES}"
    if msg_type in _IN_ONLY_ENDPOINT_AT:
        if msg_type == MsgType.START_BULK_RECEIVING and extra > MAX_BULK_TRANSFER_SIZE:
            return errors.LengthLimitError, f"bytes_per_transfer {extra} > {MAX_BULK_TRANSFER_SIZE}"
        if not endpoint & 0x80:
            return errors.InvalidFieldError, f"endpoint {endpoint:#04x} is not an IN endpoint"
        return None
    if endpoint < 0:
        return None
    if msg_type in (MsgType.BULK_PACKET, MsgType.BUFFERED_BULK_PACKET) and length > MAX_BULK_TRANSFER_SIZE:
        return errors.LengthLimitError, f"bulk length {length} > {MAX_BULK_TRANSFER_SIZE}"
    expect_data = bool(endpoint & 0x80) != to_host
    if expect_data:
        if data_len != length:
            return errors.DataLengthError, (
                f"{data_len} data bytes but the header says {length} (endpoint {endpoint:#04x})"
            )
        return None
    if data_len:
        return errors.UnexpectedDataError, f"data on endpoint {endpoint:#04x} in this direction"
    if msg_type in (MsgType.ISO_PACKET, MsgType.BUFFERED_BULK_PACKET) or (
        msg_type == MsgType.INTERRUPT_PACKET and to_host
    ):
        return errors.InvalidFieldError, f"endpoint {endpoint:#04x} sent in the wrong direction"
    return None
