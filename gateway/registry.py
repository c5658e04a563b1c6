"""Who is online: client sessions, their inventories and their channels.

The registry is the one place where the tunnel side (control and data
connections from clients) meets the hypervisor side (route listeners).
A route handler waits here for its client and device, asks the client's
session for a channel, and gets the attached data stream back when the
client dials it.  All of it runs on one trio loop, so plain attributes and
`trio.Event`s are enough: there are no threads here.

Channel lifecycle: `ClientSession.new_channel()` registers a pending channel
with a fresh id and a random token; the route handler sends `OpenChannel`;
the control connection marks it opened or failed; the data connection's
attach hands over the stream (`Channel.attach`).  When the session ends,
every channel it holds fails (pending) or is cancelled (active), so QEMU's
socket closes and QEMU sees the device go - except an active resumable
channel (issue 16, `gateway/resume.py`): it outlives the control connection
(heartbeat loss means suspended, not gone), waits in the registry for the
client's next session, which adopts it, and ends only when its grace period
passes without the client resuming it, or when the client's next session
does not name it (the client restarted).  Channel ids count per client
identity, over its sessions, so an id never names two channels.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from redirgate.gateway.errors import ChannelError, ClientGone
from redirgate.gateway.limits import ClientLimits, Every, TokenBucket
from redirgate.proto.tunnel import DeviceEntry, DeviceKind, DeviceSelector, TunnelMessage
from redirgate.transport import ReceiveIntoStream, RelayStats

if TYPE_CHECKING:
    from redirgate.gateway.resume import ChannelResume

__all__ = ["TOKEN_BYTES", "Channel", "ClientSession", "Registry", "describe_device"]

TOKEN_BYTES = 32
#: ended channels a session remembers for the client's last drop counts
ENDED_KEPT = 16


def describe_device(entry: DeviceEntry) -> dict[str, Any]:
    """The device as the audit log names it: id, VID:PID, serial (None fields left out)."""
    described: dict[str, Any] = {"id": entry.id}
    if entry.vendor_id is not None and entry.product_id is not None:
        described["vid_pid"] = f"{entry.vendor_id:04x}:{entry.product_id:04x}"
    if entry.serial:
        described["serial"] = entry.serial
    return described


@dataclass(eq=False)
class Channel:
    """One device channel from the moment it is requested until it ends."""

    channel_id: int
    token: bytes = field(repr=False)
    route: str
    client: str
    device: str
    hypervisor: str
    state: str = "pending"  # pending -> opened -> active -> ended
    reason: str = ""
    stats: RelayStats = field(default_factory=RelayStats)
    started_at: float = field(default_factory=time.time)
    stream: ReceiveIntoStream | None = None
    trailing: bytes = b""
    ready: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: a data connection with the right token has it (see `claim`)
    claimed: bool = False
    #: set once the client answered (opened or failed) or the channel ended
    answered: trio.Event = field(default_factory=trio.Event)
    #: a cluster: the other node this channel's other half is on (the node
    #: holding the hypervisor's socket, on the client's node; the client's
    #: node, on the one holding the socket); "" when both are here
    remote: str = ""
    #: the route's grace period for resuming (0: not resumable)
    resume_grace_s: float = 0.0
    #: set once attached to a client that can resume it
    resume: ChannelResume | None = None
    #: a channel for a client on another node (`remote`): that node says the
    #: client's session can resume it (its answer sets `answered` here)
    client_resumes: bool = False
    #: the client's drop counts since the channel started (`StreamDrops`): iso OUT, to the guest
    drops: tuple[int, int] = (0, 0)
    #: told every increase of `drops` (the route server counts them over the route's life)
    on_drops: Callable[[int, int], None] | None = None

    @property
    def resumable(self) -> bool:
        """Active, and its data connection may be resumed: it outlives a control connection."""
        return self.resume is not None and self.state == "active"

    def dropped(self, counts: tuple[int, int]) -> tuple[int, int]:
        """The client's counts (`StreamDrops`, totals): the increase, also told to `on_drops`.
        A repeated or late report changes nothing."""
        iso_out, to_guest = (max(0, new - old) for new, old in zip(counts, self.drops, strict=True))
        self.drops = (self.drops[0] + iso_out, self.drops[1] + to_guest)
        if (iso_out or to_guest) and self.on_drops is not None:
            self.on_drops(iso_out, to_guest)
        return iso_out, to_guest

    def opened(self) -> None:
        if self.state == "pending":
            self.state = "opened"
        self.answered.set()

    def fail(self, reason: str) -> None:
        """The channel cannot (or can no longer) be served."""
        self.answered.set()
        if self.state in ("pending", "opened"):
            self.state = "ended"
            self.reason = reason
            self.ready.set()
        elif self.state == "active":
            self.reason = self.reason or reason
            self.cancel_scope.cancel()

    def claim(self) -> str:
        """A data connection with the right token wants this channel: "" if it
        may have it (then no other may), else why not.  Checked before the
        gateway answers the attach, so a replayed token is refused, not told ok."""
        if self.claimed or self.state == "active":
            return f"the attach token of channel {self.channel_id} was already used"
        if self.state not in ("pending", "opened"):
            return f"channel {self.channel_id} ended: {self.reason or 'gone'}"
        self.claimed = True
        return ""

    def attach(self, stream: ReceiveIntoStream, trailing: bytes) -> bool:
        """The client's data connection arrived; False if nobody waits anymore."""
        if self.state not in ("pending", "opened"):
            return False
        self.stream, self.trailing = stream, trailing
        self.state = "active"
        self.ready.set()
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.channel_id,
            "route": self.route,
            "client": self.client,
            "device": self.device,
            "hypervisor": self.hypervisor,
            "state": self.state,
            "since": self.started_at,
            "bytes_to_device": self.stats.a_to_b,
            "bytes_to_hypervisor": self.stats.b_to_a,
            **({"remote": self.remote} if self.remote else {}),
            "resumable": self.resume is not None,
            "suspended": self.resume is not None and self.resume.suspended,
            "resumes": 0 if self.resume is None or self.resume.stream is None else self.resume.stream.resumes,
            "iso_out_dropped": self.drops[0],
            "to_guest_dropped": self.drops[1],
        }


def _no_ack_task() -> None:
    """`ClientSession.start_acks` until a control session sets its own (one function for all: no memory per client)."""


def _no_rtt() -> float | None:
    return None


class ClientSession:
    """One client's live control connection, as the rest of the gateway sees it.

    Its inventory is bounded by `limits` (`set_inventory`/`update_inventory`
    keep at most `max_devices` USB entries and `max_ports` serial + parallel
    ones; a new id past the bound is refused and counted, a known id is
    always replaced), and the bucket paces how often its changes wake the
    routes and reach the log (`tunnel_server.ClientControl`).
    """

    def __init__(
        self,
        identity: str,
        peer: str,
        send: Callable[[TunnelMessage], Awaitable[None]],
        limits: ClientLimits | None = None,
    ) -> None:
        self.identity = identity
        self.peer = peer
        self.send = send
        self.connected_at = time.time()
        self.limits = limits or ClientLimits()
        self.inventory: dict[str, DeviceEntry] = {}
        self._usb_count = 0
        #: devices refused by the bounds, and inventory updates coalesced by the bucket, over the session
        self.devices_refused = 0
        self.updates_coalesced = 0
        now = trio.current_time()
        self.bucket = TokenBucket(self.limits.updates_per_s, self.limits.update_burst, now)
        self.refused_log = Every(self.limits.log_interval_s)
        self.coalesced_log = Every(self.limits.log_interval_s)
        #: a flush of coalesced updates is scheduled
        self.flush_scheduled = False
        #: when (trio clock) the client was last heard from (its control session sets it)
        self.last_heard: Callable[[], float] = lambda: now
        self.channels: dict[int, Channel] = {}
        self.closed = False
        self._next_id = 1
        #: the round trip of the gateway's latest answered heartbeat, seconds (its control session sets it)
        self.rtt_s: Callable[[], float | None] = _no_rtt
        #: what the client's hello advertised (t.CLUSTER_CAPABILITY: it can attach to another node)
        self.capabilities: frozenset[str] = frozenset()
        #: the scope of the task that reads the control connection
        self.scope = trio.CancelScope()
        #: both hellos named RESUME_CAPABILITY
        self.resumable = False
        #: channels adopted from an earlier session that the client has not named yet (by an ack)
        self.adopted: set[int] = set()
        #: the channels the client named by an ack before its first inventory (the ones it still
        #: serves), and whether that inventory came (`tunnel_server`; a cluster tells the other nodes)
        self.named: set[int] = set()
        self.inventoried = False
        #: the last channels that ended, for the client's final drop counts (sent as its side ends)
        #: (made at the first end: no memory for a client that never had a channel)
        self.ended: dict[int, Channel] | None = None
        #: packets the client's channels dropped over this session (`StreamDrops`): iso OUT, to the guest
        self.drops = (0, 0)
        #: the session's ack task waits on this (a resumable channel has an ack due)
        self.acks_wanted = trio.Event()
        #: starts the ack task if it is not running (the control session sets it): only
        #: a session with resumable channels has one, an idle client costs no task
        self.start_acks: Callable[[], None] = _no_ack_task

    def wake_acks(self) -> None:
        self.start_acks()
        self.acks_wanted.set()

    def skip_ids(self, channel_id: int) -> None:
        """The client still serves channel `channel_id`, opened through another
        node of a cluster: ids from here on start above it (never two channels with one id)."""
        self._next_id = max(self._next_id, channel_id + 1)

    def new_channel(
        self, *, route: str, device: str, hypervisor: str, token: bytes | None = None, remote: str = ""
    ) -> Channel:
        """A pending channel with a fresh id; `token` and `remote`: a channel
        whose data connection goes to another node, which issued the token."""
        if self.closed:
            raise ClientGone(self.identity, "the client went offline")
        token = secrets.token_bytes(TOKEN_BYTES) if token is None else token
        channel = Channel(self._next_id, token, route, self.identity, device, hypervisor, remote=remote)
        self._next_id += 1
        self.channels[channel.channel_id] = channel
        return channel

    # ----------------------------------------------------------- inventory
    def set_inventory(self, entries: Iterable[DeviceEntry]) -> int:
        """Replace the inventory (bounded); returns how many entries were refused."""
        self.inventory.clear()
        self._usb_count = 0
        return self._add(entries)

    def update_inventory(self, added: Iterable[DeviceEntry], removed: Iterable[str]) -> int:
        """Apply a hotplug update (bounded); returns how many entries were refused."""
        for device_id in removed:
            gone = self.inventory.pop(device_id, None)
            if gone is not None and gone.kind is DeviceKind.USB:
                self._usb_count -= 1
        return self._add(added)

    def _add(self, entries: Iterable[DeviceEntry]) -> int:
        inventory, limits = self.inventory, self.limits
        refused = 0
        for entry in entries:
            old = inventory.get(entry.id)
            usb = entry.kind is DeviceKind.USB
            if old is None:
                if usb and self._usb_count >= limits.max_devices:
                    refused += 1
                    continue
                if not usb and len(inventory) - self._usb_count >= limits.max_ports:
                    refused += 1
                    continue
                self._usb_count += usb
            inventory[entry.id] = entry
        self.devices_refused += refused
        return refused

    def forget(self, channel: Channel) -> None:
        self.channels.pop(channel.channel_id, None)
        if self.ended is None:
            self.ended = {}
        self.ended[channel.channel_id] = channel
        if len(self.ended) > ENDED_KEPT:
            del self.ended[next(iter(self.ended))]  # the oldest

    def stream_drops(self, channel_id: int, counts: tuple[int, int]) -> None:
        """The client's `StreamDrops` for one of its channels (live or just ended); others are ignored
        (a channel another node of a cluster opened, or one ended long ago)."""
        channel = self.channels.get(channel_id) or (self.ended or {}).get(channel_id)
        if channel is None:
            return
        iso_out, to_guest = channel.dropped(counts)
        self.drops = (self.drops[0] + iso_out, self.drops[1] + to_guest)

    def find(self, selector: DeviceSelector) -> DeviceEntry | None:
        """The inventory entry a route's selector picks (busy or not)."""
        exact = self.inventory.get(selector.text)
        if exact is not None:
            return exact
        for entry in self.inventory.values():
            if selector.matches(entry):
                return entry
        return None

    def close(self, reason: str) -> None:
        self.closed = True
        self.scope.cancel()
        for channel in list(self.channels.values()):
            channel.fail(reason)
        self.channels.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "peer": self.peer,
            "since": self.connected_at,
            "rtt_ms": None if (rtt := self.rtt_s()) is None else round(rtt * 1000, 3),
            "devices_refused": self.devices_refused,
            "inventory_updates_coalesced": self.updates_coalesced,
            "iso_out_dropped": self.drops[0],
            "to_guest_dropped": self.drops[1],
            "devices": [
                {"id": e.id, "kind": e.kind.value, "description": e.description, "busy": e.busy}
                for e in self.inventory.values()
            ],
        }


class Registry:
    """Clients online by identity, and a wake-up for whoever waits on them.

    In a cluster it also holds the channels this node expects a data
    connection for while the client's control connection is on another node
    (`expect_remote`): found at attach by the client's identity and the token
    this node issued.  `watchers` are told of every change (the identity
    that came or went, None for an inventory change): the cluster node keeps
    Redis up to date from them.
    """

    def __init__(self) -> None:
        self.clients: dict[str, ClientSession] = {}
        self._changed = trio.Event()
        self.remote: dict[str, list[Channel]] = {}
        self.watchers: list[Callable[[str | None], None]] = []
        #: resumable channels whose client has no session now, by identity and id
        self.orphans: dict[str, dict[int, Channel]] = {}
        #: the next channel id per identity (ids never repeat for a client over its sessions)
        self._next_ids: dict[str, int] = {}
        #: resumable channels relayed here whose client's control connection is on
        #: another node (or was: they outlive it), by (identity, channel id)
        self.remote_resumable: dict[tuple[str, int], Channel] = {}

    def changed(self, identity: str | None = None) -> None:
        """Something about a client or its inventory changed: wake waiters."""
        self._changed.set()
        self._changed = trio.Event()
        for watcher in self.watchers:
            watcher(identity)

    async def wait_changed(self) -> None:
        """Until the next change."""
        await self._changed.wait()

    def add(self, session: ClientSession) -> ClientSession | None:
        """Register a session; returns the session it replaces, if any.  The
        new session adopts the resumable channels of the old one and those
        waiting without a session (`adopted` until the client names them)."""
        identity = session.identity
        old = self.clients.get(identity)
        self.clients[identity] = session
        session._next_id = max(session._next_id, self._next_ids.get(identity, 1))
        if old is not None:
            session._next_id = max(session._next_id, old._next_id)
            self._keep_resumable(old)
        adopted = self.orphans.pop(identity, {})
        if adopted:
            session.channels.update(adopted)
            session.adopted.update(adopted)
            for channel in adopted.values():
                if channel.resume is not None:
                    channel.resume.adopt()
        self.changed(identity)
        return old

    def remove(self, session: ClientSession, reason: str) -> None:
        self._keep_resumable(session)
        session.close(reason)
        if self.clients.get(session.identity) is session:
            del self.clients[session.identity]
        self.changed(session.identity)

    def online(self, identity: str) -> bool:
        """The client's control connection is on this node."""
        session = self.clients.get(identity)
        return session is not None and not session.closed

    # ------------------------------------------------------------ cluster
    def expect_remote(self, *, client: str, route: str, device: str, hypervisor: str, node: str) -> Channel:
        """A channel whose client is on `node`: its data connection comes here, with the token made here."""
        channel = Channel(0, secrets.token_bytes(TOKEN_BYTES), route, client, device, hypervisor, remote=node)
        self.remote.setdefault(client, []).append(channel)
        return channel

    def forget_remote(self, channel: Channel) -> None:
        waiting = self.remote.get(channel.client, [])
        if channel in waiting:
            waiting.remove(channel)
        if not waiting:
            self.remote.pop(channel.client, None)

    def remote_for_attach(self, identity: str, channel_id: int, matches: Callable[[bytes], bool]) -> Channel | None:
        """The expected remote channel of `identity` whose token this is (compared in constant time)."""
        for channel in self.remote.get(identity, []):
            if matches(channel.token):
                if channel.channel_id == 0:
                    channel.channel_id = channel_id
                return channel
        return None

    def _keep_resumable(self, session: ClientSession) -> None:
        """Move `session`'s live resumable channels out of it (it is ending) to wait for the next one."""
        identity = session.identity
        self._next_ids[identity] = max(self._next_ids.get(identity, 1), session._next_id)
        kept = {cid: ch for cid, ch in session.channels.items() if ch.resumable}
        for cid, channel in kept.items():
            del session.channels[cid]
            if channel.resume is not None:
                channel.resume.orphan()
        if kept:
            self.orphans.setdefault(identity, {}).update(kept)

    def take_over(self, channels: Iterable[Channel], next_ids: dict[str, int]) -> None:
        """Channels handed over by the process before a restart: they wait as
        orphans for their client's next session (or their grace period to end)."""
        for identity, next_id in next_ids.items():
            self._next_ids[identity] = max(self._next_ids.get(identity, 1), next_id)
        for channel in channels:
            self.orphans.setdefault(channel.client, {})[channel.channel_id] = channel
            self._next_ids[channel.client] = max(self._next_ids.get(channel.client, 1), channel.channel_id + 1)
            if channel.resume is not None:
                channel.resume.orphan()

    def next_ids(self) -> dict[str, int]:
        """The next channel id of every client this gateway has seen (a restart hands them over)."""
        ids = dict(self._next_ids)
        for identity, session in self.clients.items():
            ids[identity] = max(ids.get(identity, 1), session._next_id)
        return ids

    def release(self, channel: Channel) -> ClientSession | None:
        """The channel ended: forget it; the live session to tell, if one holds it."""
        if self.remote_resumable.get((channel.client, channel.channel_id)) is channel:
            del self.remote_resumable[(channel.client, channel.channel_id)]
        orphans = self.orphans.get(channel.client)
        if orphans is not None and orphans.get(channel.channel_id) is channel:
            del orphans[channel.channel_id]
            if not orphans:
                del self.orphans[channel.client]
        session = self.clients.get(channel.client)
        if session is None or session.channels.get(channel.channel_id) is not channel:
            return None
        session.forget(channel)
        session.adopted.discard(channel.channel_id)
        return session

    def wake_acks(self, identity: str) -> None:
        """A resumable channel of `identity` has an ack due: wake its session's ack task, if it has a session."""
        session = self.clients.get(identity)
        if session is not None:
            session.wake_acks()

    def channel_for_resume(self, identity: str, channel_id: int) -> Channel | None:
        """`identity`'s resumable channel `channel_id`, with or without a session."""
        session = self.clients.get(identity)
        channel = session.channels.get(channel_id) if session is not None else None
        if channel is None:
            channel = self.orphans.get(identity, {}).get(channel_id)
        if channel is None:
            channel = self.remote_resumable.get((identity, channel_id))
        return channel if channel is not None and channel.resumable else None

    async def wait_for_device(self, client: str, selector: DeviceSelector) -> tuple[ClientSession, DeviceEntry]:
        """Block until `client` is online and exports a free device for `selector`."""
        while True:
            session = self.clients.get(client)
            if session is not None and not session.closed:
                entry = session.find(selector)
                if entry is not None and not entry.busy:
                    return session, entry
            await self._changed.wait()

    def describe_wait(self, client: str, selector: DeviceSelector) -> str:
        """Why a route is not live now, for logs and status."""
        session = self.clients.get(client)
        if session is None:
            return f"client {client!r} is offline"
        entry = session.find(selector)
        if entry is None:
            return f"client {client!r} does not export {selector.text}"
        if entry.busy:
            return f"{entry.id} on client {client!r} is busy"
        return "ready"

    def channel_for_attach(self, identity: str, channel_id: int) -> Channel:
        session = self.clients.get(identity)
        if session is None:
            raise ChannelError(identity, "attach from a client with no control connection")
        channel = session.channels.get(channel_id)
        if channel is None:
            raise ChannelError(identity, f"attach for channel {channel_id}, which is not pending")
        return channel
