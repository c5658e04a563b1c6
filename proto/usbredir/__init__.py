"""usbredir protocol, sans-IO: messages, framing and negotiation, filter rules.

The protocol is usbredir revision 0.7 as implemented by usbredir 0.13
(Debian 12).  `UsbredirConnection` is one end of a connection in either role;
`messages` holds one class per message type; `HelloGate` judges the first
bytes of a connection (a valid hello, or why not).
"""

from redirgate.proto.usbredir import filter, messages
from redirgate.proto.usbredir.connection import CLOSED, NEED_DATA, Event, UsbredirConnection
from redirgate.proto.usbredir.constants import (
    MAX_BULK_TRANSFER_SIZE,
    MAX_PACKET_SIZE,
    Cap,
    EndpointType,
    MsgType,
    Role,
    Speed,
    Status,
    endpoint_slot,
    slot_endpoint,
)
from redirgate.proto.usbredir.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from redirgate.proto.usbredir.hello_gate import HELLO_GATE_LIMIT, HelloGate, HelloVerdict

__all__ = [
    "CLOSED",
    "HELLO_GATE_LIMIT",
    "MAX_BULK_TRANSFER_SIZE",
    "MAX_PACKET_SIZE",
    "NEED_DATA",
    "Cap",
    "EndpointType",
    "Event",
    "HelloGate",
    "HelloVerdict",
    "LocalProtocolError",
    "MsgType",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "Speed",
    "Status",
    "UsbredirConnection",
    "endpoint_slot",
    "filter",
    "messages",
    "slot_endpoint",
]
