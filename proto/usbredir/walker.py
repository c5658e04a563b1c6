"""Check a usbredir byte stream as it passes, headers only: the gateway's guard.

QEMU aborts the whole VM when its usbredir parser meets a malformed message
from the host (protocol reference §1.6), so the gateway checks the
host -> guest direction of every USB channel before relaying it.
`HostStreamGuard` follows both hellos (the guest's is fed with
`observe_guest_bytes` until it is complete), knows the header and
type-header sizes in force, and walks each message from the host with the
same checks the guest's parser applies (`check_main_header`,
`check_type_header`) - without buffering or copying payloads: only a main
header and a type-specific header (at most 16 + 288 bytes) are ever kept,
and only when they straddle two chunks.

`feed(chunk)` returns normally when every complete or partial message in the
chunk is acceptable so far, or raises the `RemoteProtocolError` the guest
would report, with the stream offset.  After an error the guard refuses
further input: the channel must end.
"""

from __future__ import annotations

import struct

from redirgate.proto.usbredir import errors
from redirgate.proto.usbredir.connection import (
    _GATES,
    _fields_from_wire,
    check_main_header,
    check_type_header,
    verified_caps,
)
from redirgate.proto.usbredir.constants import (
    MAX_BULK_TRANSFER_SIZE,
    MAX_PACKET_SIZE,
    VERSION_LEN,
    Cap,
    MsgType,
    Role,
)
from redirgate.proto.usbredir.messages import MESSAGE_CLASSES

__all__ = ["HostStreamGuard"]

_HEADER_32 = struct.Struct("<III")
_HEADER_64 = struct.Struct("<IIQ")
_HELLO_LEN = _HEADER_32.size + VERSION_LEN

#: The data packets: the messages of a transfer, walked by `_walk`'s fast path.
_FAST_TYPES = (
    MsgType.CONTROL_PACKET,
    MsgType.BULK_PACKET,
    MsgType.ISO_PACKET,
    MsgType.INTERRUPT_PACKET,
    MsgType.BUFFERED_BULK_PACKET,
)
#: The reference rejects these from the host on an OUT endpoint (wrong direction).
_IN_ONLY = frozenset({MsgType.ISO_PACKET, MsgType.BUFFERED_BULK_PACKET})
#: Their stated length has the bulk limit.
_BULK_LIMITED = frozenset({MsgType.BULK_PACKET, MsgType.BUFFERED_BULK_PACKET})


class _HelloReader:
    """Collects the first message of a direction, which must be a hello
    (both real peers send it first), and yields its first caps word."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.caps: Cap | None = None
        self.needed = _HEADER_32.size

    def feed(self, chunk: memoryview) -> int:
        """Consume up to the end of the hello; returns bytes consumed."""
        take = min(len(chunk), self.needed - len(self.buf))
        self.buf += chunk[:take]
        if len(self.buf) == _HEADER_32.size and self.needed == _HEADER_32.size:
            msg_type, length, _ = _HEADER_32.unpack_from(self.buf)
            if msg_type != MsgType.HELLO or not VERSION_LEN <= length <= VERSION_LEN + 4 * 64:
                raise errors.RemoteProtocolError("the stream does not start with a hello", msg_type=msg_type, offset=0)
            self.needed = _HEADER_32.size + length
            rest = self.feed(chunk[take:])
            return take + rest
        if len(self.buf) == self.needed and self.caps is None:
            data = self.buf[_HELLO_LEN:]
            word = struct.unpack_from("<I", data)[0] if len(data) >= 4 else 0
            self.caps = verified_caps(word)
        return take


class HostStreamGuard:
    """Walks the host -> guest direction of one usbredir connection."""

    def __init__(self, *, max_message_size: int | None = None) -> None:
        self._guest_hello = _HelloReader()
        self._host_hello = _HelloReader()
        self._guest_caps: Cap | None = None
        self._shared = Cap(0)
        self._header = _HEADER_32
        self._offset = 0  # host stream offset of the next byte fed
        self._pending = bytearray()  # a straddling main + type header
        self._msg_start = 0  # stream offset of the message being walked
        self._need_header = _HEADER_32.size  # header bytes wanted: main, or main + type
        self._thsize = 0
        self._msg_type = 0
        self._length = 0
        self._body_left = 0  # payload bytes still to pass
        self._filter_last = -1  # last data byte of a filter_filter, for the NUL check
        self._failed: errors.RemoteProtocolError | None = None
        self._max = max_message_size
        self._limit = MAX_PACKET_SIZE if max_message_size is None else max_message_size
        #: msg_type -> (type header size, OUT endpoint allowed, bulk limit
        #: applies) for the data packets the host may send under the layout in force
        self._fast: dict[int, tuple[int, bool, bool]] = {}
        self._bulk_32 = False
        self.messages = 0

    #: the walk's position, as `export` names it (the rest follows from the hellos)
    _POSITION = ("offset", "msg_start", "need_header", "thsize", "msg_type", "length", "body_left", "filter_last")

    def export(self) -> dict[str, object]:
        """Where the walk is, as plain data: a gateway restart hands a live
        channel's guard to its successor (`restored`), mid-message or not."""
        return {
            "guest_hello": bytes(self._guest_hello.buf),
            "host_hello": bytes(self._host_hello.buf),
            "pending": bytes(self._pending),
            "messages": self.messages,
            **{name: getattr(self, "_" + name) for name in self._POSITION},
        }

    @classmethod
    def restored(cls, state: dict[str, object], *, max_message_size: int | None = None) -> HostStreamGuard:
        """The guard `export` described: both hellos are walked again (their
        checks with them), then the position is taken over.  ValueError if
        `state` is not an export."""
        guard = cls(max_message_size=max_message_size)
        guest, host, pending = state.get("guest_hello"), state.get("host_hello"), state.get("pending")
        if not (isinstance(guest, bytes) and isinstance(host, bytes) and isinstance(pending, bytes)):
            raise ValueError("a guard's state needs its hellos and pending header as bytes")
        try:
            guard.observe_guest_bytes(guest)
            if host:
                guard._host_hello.feed(memoryview(host))
                guard._update_layout()
        except errors.RemoteProtocolError as exc:
            raise ValueError(f"a guard's state holds a hello that does not pass: {exc}") from exc
        for name in ("messages", *cls._POSITION):
            value = state.get(name)
            if type(value) is not int:
                raise ValueError(f"a guard's state needs an integer {name}, not {value!r}")
            setattr(guard, "_" + name if name != "messages" else name, value)
        guard._pending = bytearray(pending)
        return guard

    @property
    def ready(self) -> bool:
        """Both hellos seen: the layout in force is known."""
        return self._guest_caps is not None and self._host_hello.caps is not None

    @property
    def guest_hello_seen(self) -> bool:
        """The guest's hello is complete: `observe_guest_bytes` needs no more."""
        return self._guest_caps is not None

    def observe_guest_bytes(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed the guest -> host direction until its hello is complete."""
        if self._guest_hello.caps is None:
            self._guest_hello.feed(memoryview(chunk))
            if self._guest_hello.caps is not None:
                # the guest's parser adds this cap itself (usbredirparser_init)
                self._guest_caps = self._guest_hello.caps | Cap.DEVICE_DISCONNECT_ACK
                self._update_layout()

    def _update_layout(self) -> None:
        if self._guest_caps is None or self._host_hello.caps is None:
            return
        self._shared = self._guest_caps & self._host_hello.caps
        self._header = _HEADER_64 if Cap.IDS_64BIT in self._shared else _HEADER_32
        if not self._pending and self._body_left == 0:
            self._need_header = self._header.size
        self._bulk_32 = Cap.BULK_LENGTH_32BIT in self._shared
        self._fast = {}
        for msg_type in _FAST_TYPES:
            thsize = MESSAGE_CLASSES[msg_type].header_size(self._shared)
            try:
                check_main_header(Role.GUEST, self._shared, msg_type, thsize)
            except errors.RemoteProtocolError:
                continue  # never accepted from the host: the full check says why
            gate = _GATES.get(msg_type)
            if gate is None or gate in self._guest_caps:
                self._fast[int(msg_type)] = (thsize, msg_type not in _IN_ONLY, msg_type in _BULK_LIMITED)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Check the next bytes from the host; raise if the guest would reject them."""
        if self._failed is not None:
            raise self._failed
        view = chunk if type(chunk) is memoryview else memoryview(chunk)
        try:
            self._walk(view)
        except errors.RemoteProtocolError as error:
            if error.offset is None:
                error.at_offset(self._msg_start)
            self._failed = error
            raise

    def _walk(self, view: memoryview) -> None:
        pos = 0
        if self._host_hello.caps is None:
            used = self._host_hello.feed(view)
            pos += used
            self._offset += used
            if self._host_hello.caps is None:
                return
            self.messages += 1
            self._update_layout()
        size = len(view)
        fast = self._fast
        hsize = self._header.size
        while pos < size:
            if fast and not self._body_left and not self._pending and size - pos >= hsize:
                step = self._fast_header(view, pos, size, hsize)
                if step:
                    pos += step
                    continue
            if self._body_left:
                step = min(self._body_left, size - pos)
                if self._msg_type == MsgType.FILTER_FILTER:
                    self._filter_last = view[pos + step - 1]
                pos += step
                self._offset += step
                self._body_left -= step
                if self._body_left == 0:
                    self._finish_message()
                continue
            if not self.ready:
                raise errors.RemoteProtocolError(
                    "the host sent a message before the guest's hello was seen", offset=self._offset
                )
            want = self._need_header
            have = len(self._pending)
            if have == 0:
                self._msg_start = self._offset
            if have == 0 and size - pos >= want:
                header = view[pos : pos + want]  # the common case: no copy
                step = want
            else:
                step = min(want - have, size - pos)
                self._pending += view[pos : pos + step]
                header = memoryview(self._pending)
            pos += step
            self._offset += step
            if len(header) < want:
                continue
            if want == self._header.size:
                thsize = self._check_main(header)
                if thsize and not self._pending and size - pos >= thsize:
                    # main and type header both in this chunk: still no copy
                    header = view[pos - want : pos + thsize]
                    pos += thsize
                    self._offset += thsize
                elif thsize:
                    self._pending = bytearray(header)
                    self._need_header = want + thsize
                    continue
            self._start_body(header)

    def _fast_header(self, view: memoryview, pos: int, size: int, hsize: int) -> int:
        """Accept the headers of a data packet at view[pos:] in one go: the
        bytes taken, or 0 to leave it to the full check (which accepts the
        same messages, one check at a time, and names what is wrong).

        The conditions are those of check_main_header and
        _semantic_problem for a data packet travelling to the guest, with
        what depends only on the layout settled in `_update_layout`."""
        msg_type, length, _ = self._header.unpack_from(view, pos)
        entry = self._fast.get(msg_type)
        if entry is None:
            return 0
        thsize, out_ok, bulk_limited = entry
        at = pos + hsize
        if not thsize <= length <= self._limit or size - at < thsize:
            return 0
        endpoint, stated, _ = _fields_from_wire(msg_type, view, at, self._bulk_32)
        if bulk_limited and stated > MAX_BULK_TRANSFER_SIZE:
            return 0
        data_len = length - thsize
        if endpoint & 0x80:
            if data_len != stated:
                return 0
        elif data_len or not out_ok:
            return 0
        self._msg_start = self._offset
        step = hsize + thsize
        self._offset += step
        self._msg_type, self._length, self._thsize = msg_type, length, thsize
        if data_len:
            self._body_left = data_len
        else:
            self.messages += 1
        return step

    def _check_main(self, header: memoryview) -> int:
        msg_type, length, _ = self._header.unpack_from(header)
        kwargs = {} if self._max is None else {"max_message_size": self._max}
        _, thsize = check_main_header(Role.GUEST, self._shared, msg_type, length, **kwargs)
        self._msg_type, self._length, self._thsize = msg_type, length, thsize
        return thsize

    def _start_body(self, header: memoryview) -> None:
        hsize = self._header.size
        data_len = self._length - self._thsize
        check_type_header(Role.GUEST, self._shared, self._guest_caps or Cap(0), self._msg_type, header, hsize, data_len)
        self._pending = bytearray()
        self._need_header = hsize
        self._body_left = data_len
        self._filter_last = -1
        if data_len == 0:
            self._finish_message()

    def _finish_message(self) -> None:
        if self._msg_type == MsgType.FILTER_FILTER and self._filter_last != 0:
            reason = "without data" if self._length == 0 else "not NUL-terminated"
            raise errors.InvalidFieldError(
                f"filter string {reason}", msg_type=MsgType.FILTER_FILTER, offset=self._msg_start
            )
        self.messages += 1
