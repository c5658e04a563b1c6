"""Control-connection messages: hellos, heartbeats, channels, errors.

One frozen dataclass per message kind; `KIND` is the `"kind"` string on the
wire, `SENDERS` the roles that may send it.  Constructors validate every
field (LocalProtocolError), so a message that exists can be encoded; the
inventory messages live in `inventory.py`, `StreamDrops` in `drops.py`.  `CONTROL_MESSAGES` maps kinds to
classes for the decoder.  The hello carries no identity: the gateway takes
the client's identity from its TLS certificate, never from a message.

Attach tokens are random bytes the gateway generates (with `secrets`, outside
this package); here they are only carried and compared.

The resume messages (`ChannelAck`, `ResumeChannel`, `ResumeAnswer`, issue 16)
are in `RESUME_MESSAGES`; `ChannelAck` is also a control message (sent only
when both hellos name `RESUME_CAPABILITY`), the other two are the
alternative data-connection preamble (`attach.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final

from redirgate.proto.tunnel import validate as v
from redirgate.proto.tunnel.base import Role, TunnelMessage
from redirgate.proto.tunnel.drops import StreamDrops
from redirgate.proto.tunnel.errors import LocalProtocolError, SelectorError
from redirgate.proto.tunnel.inventory import DeviceEntry, Inventory, InventoryUpdate
from redirgate.proto.tunnel.selectors import DeviceSelector, parse_selector

__all__ = [
    "CLUSTER_CAPABILITY",
    "CONTROL_MESSAGES",
    "CRL_CAPABILITY",
    "MAX_CRL_BYTES",
    "MAX_GATEWAYS",
    "PROTOCOL_VERSION",
    "RESUME_CAPABILITY",
    "RESUME_CREDENTIAL_BYTES",
    "RESUME_MESSAGES",
    "TOKEN_MAX_BYTES",
    "TOKEN_MIN_BYTES",
    "ChannelAck",
    "ChannelFailed",
    "ChannelOpened",
    "ChannelProtocol",
    "ClientHello",
    "CloseChannel",
    "DeviceEntry",
    "Error",
    "ErrorCode",
    "GatewayHello",
    "Heartbeat",
    "HeartbeatAck",
    "Inventory",
    "InventoryUpdate",
    "OpenChannel",
    "ResumeAnswer",
    "ResumeChannel",
    "Revocations",
]

#: (major, minor) of the control protocol this code speaks.  A different
#: major is refused; the lower minor of both sides is what is spoken.
PROTOCOL_VERSION: Final = (1, 0)
#: Attach tokens: at least 128 random bits, at most 256.
TOKEN_MIN_BYTES: Final = 16
TOKEN_MAX_BYTES: Final = 32
MAX_SOFTWARE_LEN = 64
MAX_CAPABILITIES = 64
MAX_REASON_LEN = 256
MAX_ERROR_MESSAGE_LEN = 512
MAX_OPTIONS = 32
MAX_OPTION_TEXT_LEN = 256
#: Heartbeat sequence numbers stay within a signed 64-bit integer.
MAX_SEQ = 2**63 - 1
#: Heartbeat timing bounds the gateway may announce, in seconds.
MAX_HEARTBEAT_INTERVAL_S = 3600.0
MAX_HEARTBEAT_TIMEOUT_S = 86400.0
#: The capability both hellos name once a side speaks the resume messages;
#: they are sent only to a peer that advertised it.
RESUME_CAPABILITY: Final = "resume"
#: The capability a client names in its hello when it understands the cluster
#: fields (`OpenChannel.attach`, `GatewayHello.gateways`); a gateway sends them
#: only to such a client (issue 18).
CLUSTER_CAPABILITY: Final = "cluster"
#: At most this many other gateway addresses in a hello.
MAX_GATEWAYS: Final = 64
#: "HOST:PORT" of a gateway: a DNS name or an address, and a port.
MAX_ADDRESS_LEN: Final = 262
#: The capability a client's hello names when it wants the gateway's CRL
#: (`Revocations`); the gateway sends it only to such a client.
CRL_CAPABILITY: Final = "crl"
#: A CRL in one control message: DER, about 40 bytes per revoked certificate.
MAX_CRL_BYTES: Final = 512 * 1024
#: A resume credential is one HMAC-SHA256 digest.
RESUME_CREDENTIAL_BYTES: Final = 32

_BOTH = frozenset({Role.CLIENT, Role.GATEWAY})
_CLIENT = frozenset({Role.CLIENT})
_GATEWAY = frozenset({Role.GATEWAY})


class ChannelProtocol(StrEnum):
    """What travels on a channel's data connection after the attach preamble."""

    USBREDIR = "usbredir"
    RAW = "raw"
    RFC2217 = "rfc2217"


class ErrorCode(StrEnum):
    """Error codes this code sends; any [a-z0-9_.-] word is accepted."""

    PROTOCOL = "protocol"
    VERSION = "version"
    UNAUTHORIZED = "unauthorized"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"


def _version(owner: str, value: Any) -> tuple[int, int]:
    items = v.sequence(owner, "protocol_version", value, 2)
    if len(items) != 2:
        raise LocalProtocolError(f"{owner}.protocol_version={value!r}: must be [major, minor]")
    return (v.uint(owner, "protocol_version", items[0], 0xFFFF), v.uint(owner, "protocol_version", items[1], 0xFFFF))


def _capabilities(owner: str, value: Any) -> frozenset[str]:
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    items = v.sequence(owner, "capabilities", value, MAX_CAPABILITIES)
    names = [v.token_text(owner, "capabilities", item) for item in items]
    if len(set(names)) != len(names):
        raise LocalProtocolError(f"{owner}.capabilities lists a capability twice")
    return frozenset(names)


def _hello_fields(self: Any, owner: str) -> None:
    object.__setattr__(self, "protocol_version", _version(owner, self.protocol_version))
    v.text(owner, "software", self.software, MAX_SOFTWARE_LEN)
    object.__setattr__(self, "capabilities", _capabilities(owner, self.capabilities))


@dataclass(frozen=True, slots=True)
class ClientHello(TunnelMessage):
    """The client's first message.  No identity field, by design."""

    KIND: ClassVar[str] = "client_hello"
    SENDERS: ClassVar[frozenset[Role]] = _CLIENT

    protocol_version: tuple[int, int] = PROTOCOL_VERSION
    software: str = ""
    capabilities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _hello_fields(self, "ClientHello")


@dataclass(frozen=True, slots=True)
class GatewayHello(TunnelMessage):
    """The gateway's first message; it sets the heartbeat timing both ways."""

    KIND: ClassVar[str] = "gateway_hello"
    SENDERS: ClassVar[frozenset[Role]] = _GATEWAY

    protocol_version: tuple[int, int] = PROTOCOL_VERSION
    software: str = ""
    capabilities: frozenset[str] = frozenset()
    heartbeat_interval_s: float = 15.0
    heartbeat_timeout_s: float = 45.0
    #: the tunnel addresses ("HOST:PORT") of the other gateways of a cluster,
    #: for a client that advertised CLUSTER_CAPABILITY (not on the wire when empty)
    gateways: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        owner = "GatewayHello"
        _hello_fields(self, owner)
        items = v.sequence(owner, "gateways", self.gateways, MAX_GATEWAYS)
        object.__setattr__(self, "gateways", tuple(_address(owner, "gateways", item) for item in items))
        interval = v.number(owner, "heartbeat_interval_s", self.heartbeat_interval_s, 0.0, MAX_HEARTBEAT_INTERVAL_S)
        timeout = v.number(owner, "heartbeat_timeout_s", self.heartbeat_timeout_s, 0.0, MAX_HEARTBEAT_TIMEOUT_S)
        if timeout <= interval:
            raise LocalProtocolError(
                f"{owner}: heartbeat_timeout_s {timeout} must exceed heartbeat_interval_s {interval}"
            )
        object.__setattr__(self, "heartbeat_interval_s", interval)
        object.__setattr__(self, "heartbeat_timeout_s", timeout)

    def to_wire(self) -> dict[str, Any]:
        wire = TunnelMessage.to_wire(self)
        if not self.gateways:
            del wire["gateways"]  # a peer without the cluster capability knows no such field
        return wire


@dataclass(frozen=True, slots=True)
class Heartbeat(TunnelMessage):
    """Liveness probe, either way; answered with `HeartbeatAck(seq)`.
    Each side's `seq` strictly increases."""

    KIND: ClassVar[str] = "heartbeat"
    SENDERS: ClassVar[frozenset[Role]] = _BOTH

    seq: int

    def __post_init__(self) -> None:
        v.uint("Heartbeat", "seq", self.seq, MAX_SEQ)


@dataclass(frozen=True, slots=True)
class HeartbeatAck(TunnelMessage):
    """Answer to the peer's `Heartbeat` with the same `seq`."""

    KIND: ClassVar[str] = "heartbeat_ack"
    SENDERS: ClassVar[frozenset[Role]] = _BOTH

    seq: int

    def __post_init__(self) -> None:
        v.uint("HeartbeatAck", "seq", self.seq, MAX_SEQ)


def _address(owner: str, name: str, value: Any) -> str:
    """A gateway's "HOST:PORT" (a name, an IPv4 address or a [bracketed] IPv6 one)."""
    address = v.text(owner, name, value, MAX_ADDRESS_LEN, empty=False)
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise LocalProtocolError(f"{owner}.{name}={address[:40]!r}: must be HOST:PORT")
    return address


def _channel_id(owner: str, value: Any) -> None:
    v.uint(owner, "channel_id", value, v.U32, low=1)


def _option_value(key: str, value: Any) -> Any:
    owner = "OpenChannel"
    if type(value) is bool:
        return value
    if type(value) is int:
        return v.uint(owner, f"options[{key!r}]", value, v.U64, low=-(2**63))
    if type(value) is float:
        return v.number(owner, f"options[{key!r}]", value, float("-inf"), float("inf"))
    if isinstance(value, str):
        return v.text(owner, f"options[{key!r}]", value, MAX_OPTION_TEXT_LEN)
    raise LocalProtocolError(f"{owner}.options[{key!r}] is a {type(value).__name__}: only str, int, float, bool")


@dataclass(frozen=True, slots=True)
class OpenChannel(TunnelMessage):
    """The gateway asks the client to open a device for a new channel.

    The client answers `ChannelOpened` or `ChannelFailed`, then dials a data
    connection and attaches with `channel_id` and `token`.  Channel ids
    strictly increase over a control connection.
    """

    KIND: ClassVar[str] = "open_channel"
    SENDERS: ClassVar[frozenset[Role]] = _GATEWAY

    channel_id: int
    device_selector: str
    token: bytes = field(repr=False)
    protocol: ChannelProtocol = ChannelProtocol.USBREDIR
    #: protocol options (e.g. baud rate): word keys, str/int/float/bool values
    options: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    #: "HOST:PORT" of the gateway the data connection goes to, when it is not
    #: the one holding this control connection (a cluster: the node that holds
    #: the hypervisor's socket).  Sent only to a client that advertised
    #: CLUSTER_CAPABILITY; not on the wire when empty.
    attach: str = ""

    def __post_init__(self) -> None:
        owner = "OpenChannel"
        if self.attach:
            object.__setattr__(self, "attach", _address(owner, "attach", self.attach))
        else:
            v.text(owner, "attach", self.attach, 0)
        _channel_id(owner, self.channel_id)
        try:
            parse_selector(self.device_selector)
        except SelectorError as exc:
            raise LocalProtocolError(f"{owner}.device_selector: {exc.reason}") from exc
        object.__setattr__(self, "device_selector", str.__str__(self.device_selector))
        object.__setattr__(self, "token", v.blob(owner, "token", self.token, TOKEN_MIN_BYTES, TOKEN_MAX_BYTES))
        object.__setattr__(self, "protocol", v.enum_value(owner, "protocol", self.protocol, ChannelProtocol))
        options = v.mapping(owner, "options", self.options, MAX_OPTIONS)
        clean = {v.token_text(owner, "options", k): _option_value(k, val) for k, val in options.items()}
        object.__setattr__(self, "options", MappingProxyType(clean))

    def to_wire(self) -> dict[str, Any]:
        wire = TunnelMessage.to_wire(self)
        if not self.attach:
            del wire["attach"]
        return wire

    @property
    def selector(self) -> DeviceSelector:
        return parse_selector(self.device_selector)


@dataclass(frozen=True, slots=True)
class ChannelOpened(TunnelMessage):
    """The client opened the device; a data connection follows."""

    KIND: ClassVar[str] = "channel_opened"
    SENDERS: ClassVar[frozenset[Role]] = _CLIENT

    channel_id: int

    def __post_init__(self) -> None:
        _channel_id("ChannelOpened", self.channel_id)


@dataclass(frozen=True, slots=True)
class ChannelFailed(TunnelMessage):
    """The client could not open the device; the channel is gone."""

    KIND: ClassVar[str] = "channel_failed"
    SENDERS: ClassVar[frozenset[Role]] = _CLIENT

    channel_id: int
    reason: str = ""

    def __post_init__(self) -> None:
        _channel_id("ChannelFailed", self.channel_id)
        object.__setattr__(self, "reason", v.text("ChannelFailed", "reason", self.reason, MAX_REASON_LEN))


@dataclass(frozen=True, slots=True)
class CloseChannel(TunnelMessage):
    """Either side ends a channel (pending or open); no answer is expected."""

    KIND: ClassVar[str] = "close_channel"
    SENDERS: ClassVar[frozenset[Role]] = _BOTH

    channel_id: int
    reason: str = ""

    def __post_init__(self) -> None:
        _channel_id("CloseChannel", self.channel_id)
        object.__setattr__(self, "reason", v.text("CloseChannel", "reason", self.reason, MAX_REASON_LEN))


@dataclass(frozen=True, slots=True)
class Error(TunnelMessage):
    """The sender's last message before it closes the connection; it may be
    the very first one (e.g. a version it cannot speak)."""

    KIND: ClassVar[str] = "error"
    SENDERS: ClassVar[frozenset[Role]] = _BOTH

    code: str
    message: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", v.token_text("Error", "code", self.code, 32))
        object.__setattr__(self, "message", v.text("Error", "message", self.message, MAX_ERROR_MESSAGE_LEN))


@dataclass(frozen=True, slots=True)
class Revocations(TunnelMessage):
    """The gateway's current CRL (DER), after its hello and again whenever it
    changes, to a client whose hello named `CRL_CAPABILITY`.  The channel
    adds no trust: the client accepts the CRL only if its CA signed it, and
    only if it is newer than the one it holds."""

    KIND: ClassVar[str] = "revocations"
    SENDERS: ClassVar[frozenset[Role]] = _GATEWAY

    crl: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "crl", v.blob("Revocations", "crl", self.crl, 1, MAX_CRL_BYTES))


@dataclass(frozen=True, slots=True)
class ChannelAck(TunnelMessage):
    """Either side: "of channel `channel_id` I have received `received` bytes
    from you" (a count from the channel's first byte, never decreasing).  The
    peer drops what it kept for replay up to there."""

    KIND: ClassVar[str] = "channel_ack"
    SENDERS: ClassVar[frozenset[Role]] = _BOTH

    channel_id: int
    received: int

    def __post_init__(self) -> None:
        _channel_id("ChannelAck", self.channel_id)
        v.uint("ChannelAck", "received", self.received, v.U64)


@dataclass(frozen=True, slots=True)
class ResumeChannel(TunnelMessage):
    """The client's first frame on a data connection that resumes a channel
    (instead of `Attach`): the credential from the gateway's last answer and
    how many bytes the client has received from the gateway."""

    KIND: ClassVar[str] = "resume_channel"
    SENDERS: ClassVar[frozenset[Role]] = _CLIENT

    channel_id: int
    credential: bytes = field(repr=False)
    received: int = 0

    def __post_init__(self) -> None:
        owner = "ResumeChannel"
        _channel_id(owner, self.channel_id)
        n = RESUME_CREDENTIAL_BYTES
        object.__setattr__(self, "credential", v.blob(owner, "credential", self.credential, n, n))
        v.uint(owner, "received", self.received, v.U64)


@dataclass(frozen=True, slots=True)
class ResumeAnswer(TunnelMessage):
    """The gateway's answer to `ResumeChannel`.  `ok=True`: how many bytes the
    gateway has received from the client, and the next (single-use)
    credential; raw bytes follow.  `ok=False`: a reason, no credential; the
    gateway closes and the channel is gone."""

    KIND: ClassVar[str] = "resume_answer"
    SENDERS: ClassVar[frozenset[Role]] = _GATEWAY

    ok: bool
    received: int = 0
    credential: bytes = field(default=b"", repr=False)
    reason: str = ""

    def __post_init__(self) -> None:
        owner = "ResumeAnswer"
        v.boolean(owner, "ok", self.ok)
        v.uint(owner, "received", self.received, v.U64)
        n = RESUME_CREDENTIAL_BYTES if self.ok else 0
        object.__setattr__(self, "credential", v.blob(owner, "credential", self.credential, n, n))
        object.__setattr__(self, "reason", v.text(owner, "reason", self.reason, MAX_REASON_LEN))


#: The resume messages by wire kind (see the module docstring).
RESUME_MESSAGES: Final[Mapping[str, type[TunnelMessage]]] = MappingProxyType(
    {cls.KIND: cls for cls in (ChannelAck, ResumeChannel, ResumeAnswer)}
)


#: Every control message class by its wire kind.
CONTROL_MESSAGES: Final[Mapping[str, type[TunnelMessage]]] = MappingProxyType(
    {
        cls.KIND: cls
        for cls in (
            ClientHello,
            GatewayHello,
            Inventory,
            InventoryUpdate,
            Heartbeat,
            HeartbeatAck,
            OpenChannel,
            ChannelOpened,
            ChannelFailed,
            CloseChannel,
            Error,
            Revocations,
            ChannelAck,
            StreamDrops,
        )
    }
)
