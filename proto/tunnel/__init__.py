"""The client <-> gateway tunnel, sans-IO: control messages and the attach preamble.

Wire format (both connections): a 4-byte big-endian length, then one msgpack
map with a `"kind"` string.  `TunnelConnection` is one end of the control
connection (hellos, inventory, heartbeats, channels, errors);
`AttachConnection` one end of a data connection's preamble;
`HeartbeatTracker` the heartbeat timing with the caller's clock.  Every error
is a `TunnelProtocolError`.
"""

from redirgate.proto.tunnel.attach import (
    ATTACH_MAX_MESSAGE_SIZE,
    ATTACH_MESSAGES,
    Attach,
    AttachConnection,
    AttachResult,
)
from redirgate.proto.tunnel.base import CLOSED, NEED_DATA, Role, TunnelMessage, decode_message, encode_message
from redirgate.proto.tunnel.connection import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_MESSAGE_SIZE,
    Event,
    TunnelConnection,
)
from redirgate.proto.tunnel.errors import (
    DecodeError,
    FrameTooLargeError,
    InvalidMessageError,
    LocalProtocolError,
    RemoteProtocolError,
    SelectorError,
    TruncatedError,
    TunnelProtocolError,
    UnexpectedMessageError,
    VersionMismatchError,
)
from redirgate.proto.tunnel.heartbeat import HeartbeatTracker
from redirgate.proto.tunnel.opening import Opening, OpeningClassifier
from redirgate.proto.tunnel.inventory import MAX_DEVICES, DeviceEntry, DeviceKind, Inventory, InventoryUpdate
from redirgate.proto.tunnel.messages import (
    CONTROL_MESSAGES,
    PROTOCOL_VERSION,
    TOKEN_MAX_BYTES,
    TOKEN_MIN_BYTES,
    ChannelFailed,
    ChannelOpened,
    ChannelProtocol,
    ClientHello,
    CloseChannel,
    Error,
    ErrorCode,
    GatewayHello,
    Heartbeat,
    HeartbeatAck,
    OpenChannel,
)
from redirgate.proto.tunnel.selectors import DeviceSelector, SelectorScheme, parse_selector
from redirgate.proto.tunnel.state import ChannelState

__all__ = [
    "TunnelConnection",
    "AttachConnection",
    "HeartbeatTracker",
    "Opening",
    "OpeningClassifier",
    "NEED_DATA",
    "CLOSED",
    "Event",
    "Role",
    "TunnelMessage",
    "encode_message",
    "decode_message",
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_CHANNELS",
    "ATTACH_MAX_MESSAGE_SIZE",
    "MAX_DEVICES",
    "TOKEN_MIN_BYTES",
    "TOKEN_MAX_BYTES",
    "CONTROL_MESSAGES",
    "ATTACH_MESSAGES",
    "ClientHello",
    "GatewayHello",
    "Inventory",
    "InventoryUpdate",
    "DeviceEntry",
    "DeviceKind",
    "Heartbeat",
    "HeartbeatAck",
    "OpenChannel",
    "ChannelOpened",
    "ChannelFailed",
    "CloseChannel",
    "Error",
    "ErrorCode",
    "ChannelProtocol",
    "ChannelState",
    "Attach",
    "AttachResult",
    "DeviceSelector",
    "SelectorScheme",
    "parse_selector",
    "TunnelProtocolError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "FrameTooLargeError",
    "TruncatedError",
    "DecodeError",
    "InvalidMessageError",
    "UnexpectedMessageError",
    "VersionMismatchError",
    "SelectorError",
]
