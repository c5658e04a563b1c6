"""The control connection's state table: who may send what, and when.

One `ControlState` is shared by both directions of a `TunnelConnection`.
`check(sender, message)` says whether `sender` may send `message` now and
`apply` records it; the connection calls both for every message it sends
(violations become LocalProtocolError) and every message it receives
(UnexpectedMessageError / VersionMismatchError).  The rules:

- The first message each way is that side's hello (or an `Error`); one hello.
- The hello's major version must equal ours; the lower minor is spoken.
- Nothing follows a side's `Error`.
- Only the client sends inventories; an `InventoryUpdate` needs an earlier
  `Inventory`.
- Each side's `Heartbeat.seq` strictly increases; a `HeartbeatAck` answers a
  seq the other side has sent.
- Only the gateway opens channels, with strictly increasing ids (so an id
  never names two channels), and at most `max_channels` live at once.
- `ChannelOpened` / `ChannelFailed` answer a channel at most once;
  `CloseChannel` (either side) ends it.  Messages about an id that was opened
  and has since ended are allowed: they cross a close on the wire.  Ids never
  opened are refused.
- With `RESUME_CAPABILITY` in both hellos (issue 16): `ChannelAck` may name
  any channel id, and `CloseChannel` one never opened on this connection: a
  resumable channel outlives the control connection that opened it, and its
  acks and its end travel on the next one.
- With `STREAM_DROPS_CAPABILITY` in both hellos: the client's `StreamDrops`
  names a channel opened on this connection (any id when resumable, like
  `ChannelAck`), and a live channel's counts never decrease.
"""

from __future__ import annotations

from enum import StrEnum

from redirgate.proto.tunnel.base import Role, TunnelMessage
from redirgate.proto.tunnel.drops import STREAM_DROPS_CAPABILITY, StreamDrops
from redirgate.proto.tunnel.messages import (
    RESUME_CAPABILITY,
    ChannelAck,
    ChannelFailed,
    ChannelOpened,
    ClientHello,
    CloseChannel,
    Error,
    GatewayHello,
    Heartbeat,
    HeartbeatAck,
    Inventory,
    InventoryUpdate,
    OpenChannel,
)

__all__ = ["ChannelState", "ControlState", "Violation"]

_HELLOS = {Role.CLIENT: ClientHello, Role.GATEWAY: GatewayHello}


class ChannelState(StrEnum):
    PENDING = "pending"  # OpenChannel sent, not answered yet
    OPEN = "open"  # ChannelOpened


class Violation(Exception):
    """A rule of the table; the connection turns it into its own error type.
    `theirs` is set when the violation is a major version mismatch."""

    def __init__(self, reason: str, theirs: tuple[int, int] | None = None) -> None:
        self.reason = reason
        self.theirs = theirs
        super().__init__(reason)


class ControlState:
    """Both directions' protocol state (see the module docstring)."""

    def __init__(self, protocol_version: tuple[int, int], max_channels: int) -> None:
        self.protocol_version = protocol_version
        self.max_channels = max_channels
        self.hellos: dict[Role, ClientHello | GatewayHello] = {}
        self.error_sent: dict[Role, Error] = {}
        self.inventory_sent = False
        self.last_channel_id = 0
        self.channels: dict[int, ChannelState] = {}
        self.last_heartbeat: dict[Role, int] = {}
        #: the last `StreamDrops` counts of each live channel (gone with the channel)
        self.drops: dict[int, tuple[int, int]] = {}

    @property
    def negotiated_version(self) -> tuple[int, int] | None:
        if len(self.hellos) < 2:
            return None
        minor = min(h.protocol_version[1] for h in self.hellos.values())
        return (self.protocol_version[0], minor)

    @property
    def resumable(self) -> bool:
        """Both hellos name `RESUME_CAPABILITY` (channels may outlive this connection)."""
        return len(self.hellos) == 2 and all(RESUME_CAPABILITY in h.capabilities for h in self.hellos.values())

    def shared(self, capability: str) -> bool:
        """Both hellos name `capability`."""
        return len(self.hellos) == 2 and all(capability in h.capabilities for h in self.hellos.values())

    def check(self, sender: Role, message: TunnelMessage, *, local: bool) -> None:
        """Raise Violation unless `sender` may send `message` now.  `local`:
        we are the sender (our hello must carry exactly our version)."""
        kind = message.KIND
        if sender in self.error_sent:
            raise Violation(f"{kind!r} after the {sender.value}'s error message")
        if sender not in message.SENDERS:
            raise Violation(f"a {sender.value} may not send {kind!r}")
        hello_cls = _HELLOS[sender]
        if isinstance(message, Error):
            return
        if sender not in self.hellos:
            if not isinstance(message, (ClientHello, GatewayHello)) or not isinstance(message, hello_cls):
                raise Violation(f"{kind!r} before the {sender.value}'s hello")
            self._check_version(message, local)
            return
        if isinstance(message, hello_cls):
            raise Violation(f"a second {kind!r}")
        if isinstance(message, InventoryUpdate) and not self.inventory_sent:
            raise Violation("'inventory_update' before any 'inventory'")
        elif isinstance(message, Heartbeat):
            last = self.last_heartbeat.get(sender)
            if last is not None and message.seq <= last:
                raise Violation(f"heartbeat seq {message.seq} does not increase (last {last})")
        elif isinstance(message, HeartbeatAck):
            sent = self.last_heartbeat.get(sender.peer)
            if sent is None or message.seq > sent:
                raise Violation(f"heartbeat_ack for seq {message.seq}, which the {sender.peer.value} never sent")
        elif isinstance(message, OpenChannel):
            if message.channel_id <= self.last_channel_id:
                raise Violation(f"channel id {message.channel_id} does not increase (last {self.last_channel_id})")
            if len(self.channels) >= self.max_channels:
                raise Violation(f"more than {self.max_channels} live channels")
        elif isinstance(message, ChannelAck):
            if not self.resumable:
                raise Violation(f"{kind!r} without {RESUME_CAPABILITY!r} in both hellos")
        elif isinstance(message, StreamDrops):
            self._check_drops(message)
        elif isinstance(message, (ChannelOpened, ChannelFailed, CloseChannel)):
            earlier = isinstance(message, CloseChannel) and self.resumable
            if message.channel_id > self.last_channel_id and not earlier:
                raise Violation(f"{kind!r} for channel {message.channel_id}, which was never opened")
            if not isinstance(message, CloseChannel) and self.channels.get(message.channel_id) is ChannelState.OPEN:
                raise Violation(f"{kind!r} for channel {message.channel_id}, which was already answered")

    def _check_drops(self, message: StreamDrops) -> None:
        if not self.shared(STREAM_DROPS_CAPABILITY):
            raise Violation(f"{message.KIND!r} without {STREAM_DROPS_CAPABILITY!r} in both hellos")
        cid = message.channel_id
        if cid > self.last_channel_id and not self.resumable:
            raise Violation(f"{message.KIND!r} for channel {cid}, which was never opened")
        last = self.drops.get(cid)
        if last is not None and any(now < before for now, before in zip(message.counts, last, strict=True)):
            raise Violation(f"{message.KIND!r} for channel {cid}: counts {message.counts} below the last {last}")

    def _check_version(self, hello: ClientHello | GatewayHello, local: bool) -> None:
        theirs = hello.protocol_version
        ours = self.protocol_version
        if local and theirs != ours:
            raise Violation(f"our hello says version {theirs} but this connection speaks {ours}")
        if theirs[0] != ours[0]:
            raise Violation(
                f"protocol version {theirs[0]}.{theirs[1]} is not spoken here (major {ours[0]} only)",
                theirs=theirs,
            )

    def apply(self, sender: Role, message: TunnelMessage) -> None:
        """Record a message `check` accepted."""
        if isinstance(message, Error):
            self.error_sent[sender] = message
        elif isinstance(message, (ClientHello, GatewayHello)):
            self.hellos[sender] = message
        elif isinstance(message, Inventory):
            self.inventory_sent = True
        elif isinstance(message, Heartbeat):
            self.last_heartbeat[sender] = message.seq
        elif isinstance(message, OpenChannel):
            self.last_channel_id = message.channel_id
            self.channels[message.channel_id] = ChannelState.PENDING
        elif isinstance(message, ChannelOpened):
            if message.channel_id in self.channels:
                self.channels[message.channel_id] = ChannelState.OPEN
        elif isinstance(message, StreamDrops):
            if message.channel_id in self.channels:
                self.drops[message.channel_id] = message.counts
        elif isinstance(message, (ChannelFailed, CloseChannel)):
            self.channels.pop(message.channel_id, None)
            self.drops.pop(message.channel_id, None)
