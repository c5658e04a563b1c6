"""One end of a telnet connection with RFC 2217 Com Port Control, sans-IO.

`TelnetConnection` owns the byte stream in both directions: IAC escaping,
two-byte commands, option negotiation and subnegotiation parsing, and the
RFC 2217 command layer on top.  It never touches a socket and never logs.

Receiving
    `receive_data(bytes)` (`b""` = EOF), then `next_event()` until it returns
    `NEED_DATA` (or `CLOSED` after EOF).  Events: `Data` (payload bytes, IAC
    IAC already folded), `Command` (IAC BREAK, NOP, ...), `OptionChanged`
    (negotiation finished either way), `ComPort` (a decoded RFC 2217 command
    or answer) and `Subnegotiation` (any other option's payload).
    Replies the protocol itself requires (DO/DONT/WILL/WONT answers) collect
    in an outbox; send `data_to_send()` after draining events.

Negotiation
    RFC 1143's Q method without the queue bit: each side of each option is
    NO, YES, WANTNO or WANTYES, so the codec never answers an answer and
    never loops.  Which options we accept is fixed at construction.

Errors
    A malformed part (a subnegotiation longer than `max_subnegotiation_bytes`,
    one interrupted by another IAC command or cut by EOF, an RFC 2217 command
    with a bad code or value) raises a `RemoteProtocolError` subclass from
    `next_event()` *after* skipping it: the codec stays usable and the next
    call continues after the bad part.  A subnegotiation interrupted by
    `IAC <command>` gives the error and then that command is processed, so a
    missing `IAC SE` loses only the subnegotiation.

Not done: NVT CR-NUL stuffing (both sides negotiate BINARY, as ser2net and
pyserial do), go-ahead, and the urgent/synch mechanism.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redirgate.proto.sentinels import CLOSED, NEED_DATA, Sentinel
from redirgate.proto.telnet.constants import (
    DO,
    DONT,
    IAC,
    MAX_SIGNATURE_BYTES,
    MAX_SUBNEGOTIATION_BYTES,
    SB,
    SE,
    SERVER_OFFSET,
    WILL,
    WONT,
    ComPortCommand,
    Control,
    Option,
    Purge,
)
from redirgate.proto.telnet.errors import (
    ComPortValueError,
    LocalProtocolError,
    SubnegotiationError,
)

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "ComPort",
    "Command",
    "Data",
    "Event",
    "OptionChanged",
    "Role",
    "Subnegotiation",
    "TelnetConnection",
    "decode_comport_value",
    "encode_comport",
    "escape",
]


class Role(enum.Enum):
    """RFC 2217 role: the access server owns the port, the client drives it."""

    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Data:
    """Payload bytes from the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Command:
    """A two-byte telnet command (IAC BREAK, IAC NOP, ...)."""

    code: int


@dataclass(frozen=True, slots=True)
class OptionChanged:
    """Negotiation settled: `local` = our side (WILL/WONT), else the peer's (DO/DONT)."""

    option: int
    local: bool
    enabled: bool


@dataclass(frozen=True, slots=True)
class Subnegotiation:
    """`IAC SB option payload IAC SE` for an option other than COM-PORT."""

    option: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ComPort:
    """An RFC 2217 command (from a client) or answer/notification (from a server).

    `command` is the base code (0..12) in both directions.  `value` is an int
    for every command with a numeric value, `bytes` for SIGNATURE, None for
    FLOWCONTROL-SUSPEND/RESUME and for a NOTIFY-LINESTATE/-MODEMSTATE poll
    (sent without a value).
    """

    command: ComPortCommand
    value: int | bytes | None

    def __post_init__(self) -> None:
        check_comport_value(self.command, self.value, LocalProtocolError)


Event = Data | Command | OptionChanged | Subnegotiation | ComPort

_BAUD = struct.Struct(">I")
#: Allowed value ranges for the one-byte commands (RFC 2217 section 3).
_RANGES: dict[ComPortCommand, range] = {
    ComPortCommand.SET_DATASIZE: range(0, 9),
    ComPortCommand.SET_PARITY: range(0, 6),
    ComPortCommand.SET_STOPSIZE: range(0, 4),
    ComPortCommand.SET_CONTROL: range(0, max(Control) + 1),
    ComPortCommand.NOTIFY_LINESTATE: range(0, 256),
    ComPortCommand.NOTIFY_MODEMSTATE: range(0, 256),
    ComPortCommand.SET_LINESTATE_MASK: range(0, 256),
    ComPortCommand.SET_MODEMSTATE_MASK: range(0, 256),
    ComPortCommand.PURGE_DATA: range(min(Purge), max(Purge) + 1),
}
_NO_VALUE = frozenset({ComPortCommand.FLOWCONTROL_SUSPEND, ComPortCommand.FLOWCONTROL_RESUME})
#: Sent without a value, these are a poll: pyserial 3.5's client sends
#: `IAC SB 44 7 IAC SE` (poll_modem) and its PortManager answers with the state.
_POLLABLE = frozenset({ComPortCommand.NOTIFY_LINESTATE, ComPortCommand.NOTIFY_MODEMSTATE})


def check_comport_value(command: ComPortCommand, value: object, error: Callable[[str], Exception]) -> None:
    """Raise `error(reason)` unless `value` is valid for `command`."""
    if command == ComPortCommand.SIGNATURE:
        if not isinstance(value, bytes) or len(value) > MAX_SIGNATURE_BYTES:
            raise error(f"signature must be bytes of at most {MAX_SIGNATURE_BYTES}")
    elif command in _NO_VALUE:
        if value is not None:
            raise error(f"{command.name} carries no value")
    elif command in _POLLABLE and value is None:
        pass
    elif command == ComPortCommand.SET_BAUDRATE:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            raise error(f"baud rate {value!r} does not fit 32 bits")
    else:
        allowed = _RANGES[command]
        if not isinstance(value, int) or value not in allowed:
            raise error(f"{command.name} value {value!r} not in {allowed.start}..{allowed.stop - 1}")
    if command == ComPortCommand.SET_DATASIZE and value in (1, 2, 3, 4):
        raise error(f"SET_DATASIZE value {value} (allowed: 0 query, 5..8)")


def decode_comport_value(command: ComPortCommand, raw: bytes) -> int | bytes | None:
    """Decode a COM-PORT subnegotiation value; ComPortValueError when malformed."""
    if command == ComPortCommand.SIGNATURE:
        value: int | bytes | None = raw
    elif command in _NO_VALUE:
        if raw:
            raise ComPortValueError(f"{command.name} with {len(raw)} value bytes", command, raw)
        value = None
    elif command in _POLLABLE and not raw:
        value = None
    elif command == ComPortCommand.SET_BAUDRATE:
        if len(raw) != 4:
            raise ComPortValueError(f"SET_BAUDRATE with {len(raw)} value bytes (need 4)", command, raw)
        value = _BAUD.unpack(raw)[0]
    else:
        if len(raw) != 1:
            raise ComPortValueError(f"{command.name} with {len(raw)} value bytes (need 1)", command, raw)
        value = raw[0]
    check_comport_value(command, value, lambda reason: ComPortValueError(reason, command, raw))
    return value


def escape(data: bytes | bytearray | memoryview) -> bytes:
    """Double every 0xFF (RFC 854)."""
    return bytes(data).replace(b"\xff", b"\xff\xff")


def encode_comport(role: Role, command: ComPortCommand, value: int | bytes | None) -> bytes:
    """`IAC SB COM-PORT code value IAC SE` for `role` (a server adds 100)."""
    check_comport_value(command, value, LocalProtocolError)
    if value is None:
        raw = b""
    elif isinstance(value, bytes):
        raw = value
    elif command == ComPortCommand.SET_BAUDRATE:
        raw = _BAUD.pack(value)
    else:
        raw = bytes((value,))
    code = command + (SERVER_OFFSET if role is Role.SERVER else 0)
    return bytes((IAC, SB, Option.COM_PORT, code)) + escape(raw) + bytes((IAC, SE))


class _Q(enum.Enum):
    NO = 0
    YES = 1
    WANTNO = 2
    WANTYES = 3


class _State(enum.Enum):
    DATA = 0
    IAC = 1
    NEGOTIATE = 2  # after IAC WILL/WONT/DO/DONT
    SB_OPTION = 3  # after IAC SB
    SB = 4
    SB_IAC = 5


class TelnetConnection:
    """One end of a telnet stream (see the module docstring)."""

    def __init__(
        self,
        role: Role,
        *,
        accept_local: Iterable[int] = (),
        accept_remote: Iterable[int] = (),
        max_subnegotiation_bytes: int = MAX_SUBNEGOTIATION_BYTES,
    ) -> None:
        if max_subnegotiation_bytes < 8:
            raise ValueError("max_subnegotiation_bytes must be at least 8")
        self.role = role
        self._accept_local = frozenset(accept_local)
        self._accept_remote = frozenset(accept_remote)
        self._max_sb = max_subnegotiation_bytes
        self._us: dict[int, _Q] = {}
        self._him: dict[int, _Q] = {}
        self._buffer = bytearray()
        self._state = _State.DATA
        self._verb = 0
        self._sb_option = 0
        self._sb_payload = bytearray()
        self._sb_overflow = False
        self._eof = False
        self._outbox = bytearray()

    # -- state -------------------------------------------------------------

    def local_enabled(self, option: int) -> bool:
        """True when we agreed to perform `option` (we sent or confirmed WILL)."""
        return self._us.get(option, _Q.NO) is _Q.YES

    def remote_enabled(self, option: int) -> bool:
        """True when the peer performs `option` (it sent or confirmed WILL)."""
        return self._him.get(option, _Q.NO) is _Q.YES

    @property
    def comport_active(self) -> bool:
        """RFC 2217 is on when either side agreed to COM-PORT (pyserial offers both)."""
        return self.local_enabled(Option.COM_PORT) or self.remote_enabled(Option.COM_PORT)

    # -- sending -----------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes the protocol produced by itself (negotiation answers); drains them."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def send_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Payload bytes ready for the wire (0xFF doubled)."""
        return escape(data)

    def send_command(self, code: int) -> bytes:
        """`IAC code` for a two-byte command (BREAK, NOP, ...)."""
        if not 241 <= code <= 249:
            raise LocalProtocolError(f"{code} is not a two-byte telnet command")
        return bytes((IAC, code))

    def send_comport(self, command: ComPortCommand, value: int | bytes | None) -> bytes:
        """An RFC 2217 command (client) or answer/notification (server)."""
        return encode_comport(self.role, ComPortCommand(command), value)

    def request(self, option: int, *, local: bool, enable: bool = True) -> bytes:
        """Ask to enable/disable an option on our side (WILL/WONT) or the peer's (DO/DONT)."""
        if not 0 <= option <= 255:
            raise LocalProtocolError(f"option {option} out of range")
        table = self._us if local else self._him
        state = table.get(option, _Q.NO)
        if enable and state is _Q.NO:
            table[option] = _Q.WANTYES
            return bytes((IAC, WILL if local else DO, option))
        if not enable and state is _Q.YES:
            table[option] = _Q.WANTNO
            return bytes((IAC, WONT if local else DONT, option))
        return b""

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; `b""` means EOF."""
        if self._eof:
            raise LocalProtocolError("data after EOF")
        if len(data) == 0:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> Event | Sentinel:
        """The next event, `NEED_DATA`, or `CLOSED` once EOF is reached."""
        buf = self._buffer
        pos = 0
        try:
            while pos < len(buf):
                state = self._state
                if state is _State.DATA:
                    end = buf.find(IAC, pos)
                    if end < 0:
                        end = len(buf)
                    if end > pos:
                        data = bytes(buf[pos:end])
                        pos = end
                        return Data(data)
                    self._state = _State.IAC
                    pos += 1
                elif state is _State.IAC:
                    byte = buf[pos]
                    pos += 1
                    if byte == IAC:
                        self._state = _State.DATA
                        return Data(b"\xff")
                    if byte in (WILL, WONT, DO, DONT):
                        self._verb = byte
                        self._state = _State.NEGOTIATE
                    elif byte == SB:
                        self._state = _State.SB_OPTION
                    else:
                        self._state = _State.DATA
                        if byte != SE:  # a stray SE is ignored
                            return Command(byte)
                elif state is _State.NEGOTIATE:
                    option = buf[pos]
                    pos += 1
                    self._state = _State.DATA
                    event = self._negotiate(self._verb, option)
                    if event is not None:
                        return event
                elif state is _State.SB_OPTION:
                    self._sb_option = buf[pos]
                    pos += 1
                    self._sb_payload.clear()
                    self._sb_overflow = False
                    self._state = _State.SB
                elif state is _State.SB:
                    end = buf.find(IAC, pos)
                    if end < 0:
                        end = len(buf)
                    self._sb_append(buf, pos, end)
                    pos = end
                    if pos < len(buf):
                        self._state = _State.SB_IAC
                        pos += 1
                else:  # SB_IAC
                    byte = buf[pos]
                    if byte == IAC:
                        pos += 1
                        self._state = _State.SB
                        self._sb_append(b"\xff", 0, 1)
                    elif byte == SE:
                        pos += 1
                        self._state = _State.DATA
                        event = self._finish_subnegotiation()
                        if event is not None:
                            return event
                    else:
                        # IAC <cmd> inside SB: the SE never came.  Report the
                        # lost subnegotiation, then handle <cmd> normally.
                        self._state = _State.IAC
                        raise SubnegotiationError(
                            f"subnegotiation of option {self._sb_option} interrupted by IAC {byte}",
                            self._sb_option,
                        )
        finally:
            del buf[:pos]
        if self._eof:
            if self._state in (_State.SB, _State.SB_IAC, _State.SB_OPTION):
                self._state = _State.DATA
                raise SubnegotiationError("EOF inside a subnegotiation", self._sb_option)
            return CLOSED
        return NEED_DATA

    # -- internals ---------------------------------------------------------

    def _sb_append(self, source: bytes | bytearray, start: int, end: int) -> None:
        if self._sb_overflow:
            return
        if len(self._sb_payload) + (end - start) > self._max_sb:
            self._sb_overflow = True
            self._sb_payload.clear()
            return
        self._sb_payload += source[start:end]

    def _finish_subnegotiation(self) -> Event | None:
        option = self._sb_option
        if self._sb_overflow:
            raise SubnegotiationError(f"subnegotiation of option {option} longer than {self._max_sb} bytes", option)
        payload = bytes(self._sb_payload)
        self._sb_payload.clear()
        if option != Option.COM_PORT:
            return Subnegotiation(option, payload)
        if not self.comport_active:
            raise SubnegotiationError("COM-PORT subnegotiation before the option was agreed", option)
        if not payload:
            raise ComPortValueError("empty COM-PORT subnegotiation", None, payload)
        code = payload[0]
        base = code - SERVER_OFFSET if self.role is Role.CLIENT else code
        if not 0 <= base <= max(ComPortCommand):
            expected = "100..112" if self.role is Role.CLIENT else "0..12"
            raise ComPortValueError(f"unknown COM-PORT command {code} (expected {expected})", None, payload)
        command = ComPortCommand(base)
        value = decode_comport_value(command, payload[1:])
        return ComPort(command, value)

    def _negotiate(self, verb: int, option: int) -> Event | None:
        """RFC 1143 section 7 (without the queue bit)."""
        local = verb in (DO, DONT)
        table = self._us if local else self._him
        accept = option in (self._accept_local if local else self._accept_remote)
        yes_verb, no_verb = (WILL, WONT) if local else (DO, DONT)
        state = table.get(option, _Q.NO)
        if verb in (WILL, DO):
            if state is _Q.NO:
                if accept:
                    table[option] = _Q.YES
                    self._outbox += bytes((IAC, yes_verb, option))
                    return OptionChanged(option, local, True)
                self._outbox += bytes((IAC, no_verb, option))
            elif state is _Q.WANTYES:
                table[option] = _Q.YES
                return OptionChanged(option, local, True)
            elif state is _Q.WANTNO:
                table[option] = _Q.NO  # "DONT answered by WILL": RFC 1143 says error, settle NO
            return None
        # WONT / DONT
        if state is _Q.YES:
            table[option] = _Q.NO
            self._outbox += bytes((IAC, no_verb, option))
            return OptionChanged(option, local, False)
        if state in (_Q.WANTNO, _Q.WANTYES):
            table[option] = _Q.NO
            return OptionChanged(option, local, False)
        return None
