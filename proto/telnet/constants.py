"""Telnet (RFC 854/855) and Com Port Control (RFC 2217) numbers.

Owns the wire constants only: command bytes, option numbers, the RFC 2217
command codes and their value enumerations, and the codec's default limits.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "DO",
    "DONT",
    "IAC",
    "MAX_SIGNATURE_BYTES",
    "MAX_SUBNEGOTIATION_BYTES",
    "SB",
    "SE",
    "SERVER_OFFSET",
    "WILL",
    "WONT",
    "Cmd",
    "ComPortCommand",
    "Control",
    "LineState",
    "ModemState",
    "Option",
    "Parity",
    "Purge",
    "StopSize",
]

# RFC 854 "TELNET COMMAND STRUCTURE".
IAC: Final = 255
DONT: Final = 254
DO: Final = 253
WONT: Final = 252
WILL: Final = 251
SB: Final = 250
SE: Final = 240


class Cmd(enum.IntEnum):
    """Two-byte telnet commands (IAC <cmd>), RFC 854."""

    SE = 240
    NOP = 241
    DATA_MARK = 242
    BREAK = 243
    INTERRUPT_PROCESS = 244
    ABORT_OUTPUT = 245
    ARE_YOU_THERE = 246
    ERASE_CHARACTER = 247
    ERASE_LINE = 248
    GO_AHEAD = 249


class Option(enum.IntEnum):
    """Option numbers this codec knows by name (any 0..255 is accepted on the wire)."""

    BINARY = 0  # RFC 856
    ECHO = 1  # RFC 857
    SGA = 3  # RFC 858, suppress go-ahead
    COM_PORT = 44  # RFC 2217


#: RFC 2217: the access server answers command N with N + 100.
SERVER_OFFSET: Final = 100


class ComPortCommand(enum.IntEnum):
    """RFC 2217 client-to-server command codes (the server's answers add 100)."""

    SIGNATURE = 0
    SET_BAUDRATE = 1
    SET_DATASIZE = 2
    SET_PARITY = 3
    SET_STOPSIZE = 4
    SET_CONTROL = 5
    NOTIFY_LINESTATE = 6
    NOTIFY_MODEMSTATE = 7
    FLOWCONTROL_SUSPEND = 8
    FLOWCONTROL_RESUME = 9
    SET_LINESTATE_MASK = 10
    SET_MODEMSTATE_MASK = 11
    PURGE_DATA = 12


class Parity(enum.IntEnum):
    """SET-PARITY values (0 = query)."""

    QUERY = 0
    NONE = 1
    ODD = 2
    EVEN = 3
    MARK = 4
    SPACE = 5


class StopSize(enum.IntEnum):
    """SET-STOPSIZE values (0 = query)."""

    QUERY = 0
    ONE = 1
    TWO = 2
    ONE_AND_HALF = 3


class Control(enum.IntEnum):
    """SET-CONTROL values, RFC 2217 section 3."""

    QUERY_FLOW = 0
    FLOW_NONE = 1
    FLOW_XONXOFF = 2
    FLOW_HARDWARE = 3
    QUERY_BREAK = 4
    BREAK_ON = 5
    BREAK_OFF = 6
    QUERY_DTR = 7
    DTR_ON = 8
    DTR_OFF = 9
    QUERY_RTS = 10
    RTS_ON = 11
    RTS_OFF = 12
    QUERY_INBOUND_FLOW = 13
    INBOUND_FLOW_NONE = 14
    INBOUND_FLOW_XONXOFF = 15
    INBOUND_FLOW_HARDWARE = 16
    FLOW_DCD = 17
    INBOUND_FLOW_DTR = 18
    FLOW_DSR = 19


class LineState(enum.IntFlag):
    """NOTIFY-LINESTATE bits."""

    DATA_READY = 1
    OVERRUN_ERROR = 2
    PARITY_ERROR = 4
    FRAMING_ERROR = 8
    BREAK_DETECT = 16
    TX_HOLDING_EMPTY = 32
    TX_SHIFT_EMPTY = 64
    TIMEOUT_ERROR = 128


class ModemState(enum.IntFlag):
    """NOTIFY-MODEMSTATE bits."""

    DELTA_CTS = 1
    DELTA_DSR = 2
    TRAILING_RI = 4
    DELTA_CD = 8
    CTS = 16
    DSR = 32
    RI = 64
    CD = 128


class Purge(enum.IntEnum):
    """PURGE-DATA values."""

    RX = 1
    TX = 2
    BOTH = 3


#: Longest subnegotiation payload we buffer (after IAC unescaping).  RFC 2217
#: commands are at most 5 bytes; a signature is free text, bounded here.
MAX_SUBNEGOTIATION_BYTES: Final = 256
MAX_SIGNATURE_BYTES: Final = 200
