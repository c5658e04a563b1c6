"""Telnet and RFC 2217 (Com Port Control), sans-IO: no sockets, no trio, no logging.

`TelnetConnection` turns bytes into events and commands into bytes; see
`redirgate.proto.telnet.connection` for the contract and the error model.
"""

from redirgate.proto.telnet.connection import (
    CLOSED,
    NEED_DATA,
    Command,
    ComPort,
    Data,
    Event,
    OptionChanged,
    Role,
    Subnegotiation,
    TelnetConnection,
    decode_comport_value,
    encode_comport,
    escape,
)
from redirgate.proto.telnet.constants import (
    MAX_SIGNATURE_BYTES,
    MAX_SUBNEGOTIATION_BYTES,
    SERVER_OFFSET,
    Cmd,
    ComPortCommand,
    Control,
    LineState,
    ModemState,
    Option,
    Parity,
    Purge,
    StopSize,
)
from redirgate.proto.telnet.errors import (
    ComPortValueError,
    LocalProtocolError,
    RemoteProtocolError,
    SubnegotiationError,
    TelnetError,
)

__all__ = [
    "CLOSED",
    "MAX_SIGNATURE_BYTES",
    "MAX_SUBNEGOTIATION_BYTES",
    "NEED_DATA",
    "SERVER_OFFSET",
    "Cmd",
    "ComPort",
    "ComPortCommand",
    "ComPortValueError",
    "Command",
    "Control",
    "Data",
    "Event",
    "LineState",
    "LocalProtocolError",
    "ModemState",
    "Option",
    "OptionChanged",
    "Parity",
    "Purge",
    "RemoteProtocolError",
    "Role",
    "StopSize",
    "Subnegotiation",
    "SubnegotiationError",
    "TelnetConnection",
    "TelnetError",
    "decode_comport_value",
    "encode_comport",
    "escape",
]
