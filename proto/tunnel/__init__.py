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
from redirgate.proto.tunnel.busy import BUSY_MAX_BYTES, busy_line, looks_like_tls, parse_busy
from redirgate.proto.tunnel.connection import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_MESSAGE_SIZE,
    Event,
    TunnelConnection,
)
from redirgate.proto.tunnel.drops import STREAM_DROPS_CAPABILITY, StreamDrops
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
from redirgate.proto.tunnel.handover import (
    HANDOVER_VERSION,
    HandedChannel,
    HandedListener,
    HandoverError,
    HandoverState,
)
from redirgate.proto.tunnel.heartbeat import HeartbeatTracker
from redirgate.proto.tunnel.inventory import MAX_DEVICES, DeviceEntry, DeviceKind, Inventory, InventoryUpdate
from redirgate.proto.tunnel.messages import (
    CLUSTER_CAPABILITY,
    CONTROL_MESSAGES,
    CRL_CAPABILITY,
    MAX_CRL_BYTES,
    PROTOCOL_VERSION,
    RESUME_CAPABILITY,
    TOKEN_MAX_BYTES,
    TOKEN_MIN_BYTES,
    ChannelAck,
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
    ResumeAnswer,
    ResumeChannel,
    Revocations,
)
from redirgate.proto.tunnel.opening import Opening, OpeningClassifier
from redirgate.proto.tunnel.resume import (
    DEFAULT_ACK_EVERY,
    DEFAULT_REPLAY_LIMIT,
    AckPolicy,
    ReplayBuffer,
    ResumableChannel,
    ResumeCredentials,
    ResumeError,
)
from redirgate.proto.tunnel.selectors import DeviceSelector, SelectorScheme, parse_selector
from redirgate.proto.tunnel.state import ChannelState

__all__ = [
    "ATTACH_MAX_MESSAGE_SIZE",
    "ATTACH_MESSAGES",
    "BUSY_MAX_BYTES",
    "CLOSED",
    "CLUSTER_CAPABILITY",
    "CONTROL_MESSAGES",
    "CRL_CAPABILITY",
    "DEFAULT_ACK_EVERY",
    "DEFAULT_MAX_CHANNELS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_REPLAY_LIMIT",
    "HANDOVER_VERSION",
    "MAX_CRL_BYTES",
    "MAX_DEVICES",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "RESUME_CAPABILITY",
    "STREAM_DROPS_CAPABILITY",
    "TOKEN_MAX_BYTES",
    "TOKEN_MIN_BYTES",
    "AckPolicy",
    "Attach",
    "AttachConnection",
    "AttachResult",
    "ChannelAck",
    "ChannelFailed",
    "ChannelOpened",
    "ChannelProtocol",
    "ChannelState",
    "ClientHello",
    "CloseChannel",
    "DecodeError",
    "DeviceEntry",
    "DeviceKind",
    "DeviceSelector",
    "Error",
    "ErrorCode",
    "Event",
    "FrameTooLargeError",
    "GatewayHello",
    "HandedChannel",
    "HandedListener",
    "HandoverError",
    "HandoverState",
    "Heartbeat",
    "HeartbeatAck",
    "HeartbeatTracker",
    "InvalidMessageError",
    "Inventory",
    "InventoryUpdate",
    "LocalProtocolError",
    "OpenChannel",
    "Opening",
    "OpeningClassifier",
    "RemoteProtocolError",
    "ReplayBuffer",
    "ResumableChannel",
    "ResumeAnswer",
    "ResumeChannel",
    "ResumeCredentials",
    "ResumeError",
    "Revocations",
    "Role",
    "SelectorError",
    "SelectorScheme",
    "StreamDrops",
    "TruncatedError",
    "TunnelConnection",
    "TunnelMessage",
    "TunnelProtocolError",
    "UnexpectedMessageError",
    "VersionMismatchError",
    "busy_line",
    "decode_message",
    "encode_message",
    "looks_like_tls",
    "parse_busy",
    "parse_selector",
]
