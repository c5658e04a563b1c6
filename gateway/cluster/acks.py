"""Acks of resumable channels whose two halves are on two nodes (issue 18 on top of issue 16).

A channel relayed on node A (QEMU's socket and the client's data connection
are there) for a client whose control connection is on node C is resumable
like any other: A holds the channel's `ChannelResume` and answers the
client's `ResumeChannel` on a new data connection to A.  What differs is
where the acks travel.  Acks go on the client's control connection, which is
on C - or, once C died, on whichever node the client reached next (perhaps A
itself).  So each node relays them over one Redis pub/sub channel
(`node.ACKS`, JSON `{"to": "node"|"client", "client", "channel", "received",
"from"}`) that every node reads:

- the client's ack of channel N reaches its control node; a channel that
  node does not relay itself is published `to: node`, and the node that
  relays (client, N) hands it to the channel: one opened through another
  node (`Registry.remote_resumable`), or one opened here whose client's
  control connection left this node (`Registry.orphans`: acks coming
  through another node adopt it, so its grace period does not end it);
- A's acks for what it received go to the client: on the client's session
  if it is on A, else published `to: client`, and the node holding the
  client's session sends them on it.

No node needs to know where the other half is: one broadcast, every node
keeps what is its own.  The same channel carries one more message: a
client's new session names, before its first inventory, the channels it
still serves; the node holding it publishes that list (`to: relays`,
`client_serves`) and every node ends that client's resumable channels not
on it (the client restarted: its device state is gone), as a single
gateway does, instead of holding them for their grace period.  An ack lost on the way (Redis away, the client
between two nodes) is repeated: the client repeats its counts on each new
control connection and every `REPEAT_S` for channels attached elsewhere;
A repeats its counts every `REPEAT_S` and at once when the client's acks
start coming through another node (it moved).  Repeating a count is
harmless (an ack never goes back), so no more is needed.

Owner: the gateway's trio loop; `run` is the one task that sends.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import trio

from redirgate.gateway.cluster.node import ACKS, ClusterDown, ClusterNode
from redirgate.gateway.registry import Channel, Registry
from redirgate.proto import tunnel as t
from redirgate.transport import PeerGone

__all__ = ["REPEAT_S", "RemoteAcks"]

log = logging.getLogger(__name__)

#: Unacknowledged bytes below `ack_every` are acknowledged after this long (as on one node).
ACK_IDLE_S = 0.5
#: Counts of channels across nodes are repeated this often (an ack lost between nodes).
REPEAT_S = 2.0


class RemoteAcks:
    """See the module docstring."""

    def __init__(self, node: ClusterNode, registry: Registry) -> None:
        self.node = node
        self.registry = registry
        #: acks waiting for `run`: (client, ack, to) with to "node" or "client"
        self._outgoing: list[tuple[str, t.ChannelAck, str]] = []
        self._wanted = trio.Event()
        #: the node the client's acks of each remote channel came through last
        self._via: dict[tuple[str, int], str] = {}
        #: acks relayed between nodes, by direction (for status and tests)
        self.counters: collections.Counter[str] = collections.Counter()
        node.on_ack = self._received
        registry.watchers.append(self._client_changed)

    def _client_changed(self, identity: str | None) -> None:
        """A client came or went here: its channels may be ours to ack now (no I/O: a registry watcher)."""
        if identity is not None:
            self._wanted.set()

    def wake(self) -> None:
        """A channel relayed here has an ack due (its `ChannelResume` calls this)."""
        self._wanted.set()

    def relayed(self, identity: str, channel_id: int) -> Channel | None:
        """The resumable channel relayed here for a client whose session is not here (or was not)."""
        channel = self.registry.remote_resumable.get((identity, channel_id))
        if channel is None:
            channel = self.registry.orphans.get(identity, {}).get(channel_id)
        return channel if channel is not None and channel.resume is not None else None

    def _channels(self) -> list[tuple[str, Channel]]:
        found = [(identity, ch) for (identity, _), ch in self.registry.remote_resumable.items()]
        for identity, orphans in self.registry.orphans.items():
            found += [(identity, ch) for ch in orphans.values() if ch.resume is not None]
        return found

    def from_client(self, identity: str, ack: t.ChannelAck, *, via: str | None = None) -> None:
        """The client's ack of a channel its session here does not relay: ours, or another node's."""
        key = (identity, ack.channel_id)
        channel = self.relayed(identity, ack.channel_id)
        if channel is None:
            if via is None:  # from our own client: the relaying node is elsewhere
                self._outgoing.append((identity, ack, "node"))
                self._wanted.set()
            return
        via = via or self.node.name
        if channel.resume is not None and channel.resume.orphaned:
            channel.resume.adopt()  # the client is on another node: not away, its grace period does not run
        if self._via.setdefault(key, via) != via:
            # the client moved: our acks to its old node may be lost, repeat our count now
            self._via[key] = via
            if channel.resume is not None and channel.resume.stream is not None:
                channel.resume.stream.channel.acks_lost()
            self._wanted.set()
        if channel.resume is None or channel.resume.stream is None:
            return
        try:
            channel.resume.stream.acked(ack)
        except t.ResumeError as exc:
            log.warning("cluster: client %s acked channel %d wrongly: %s; ignored", identity, ack.channel_id, exc)

    async def client_serves(self, identity: str, named: set[int]) -> None:
        """A new session of `identity` here named `named` (its acks before its first inventory):
        the resumable channels relayed anywhere in the cluster for it that it did not name were
        its instance's before a restart, whose device state is gone.  They end now, on this node
        and (one message on `ACKS`) on the others, rather than when their grace period runs out.

        Awaited before the session's inventory counts: an attach for the new session needs that
        inventory, so its answer reaches every node after this message (one Redis, one order)
        and a channel opened for the new session is never taken for an old one.  Redis away:
        the other nodes' channels end with their grace period, as before."""
        self._end_unnamed(identity, named, "here")
        # "channel" 1 and "received" 0: a node from before this message reads it as an ack to nobody (ignored)
        message = {"to": "relays", "client": identity, "serves": sorted(named), "channel": 1, "received": 0}
        try:
            await self.node.publish(ACKS, [message])
        except ClusterDown:
            log.info("cluster: Redis is away; other nodes end client %s's old channels after their grace", identity)

    def _end_unnamed(self, identity: str, named: set[int], where: str) -> None:
        for owner, channel in self._channels():
            if owner == identity and channel.channel_id not in named:
                log.info(
                    "cluster: client %s restarted (its new session %s does not name channel %d); ending it",
                    identity,
                    where,
                    channel.channel_id,
                )
                self.counters["ended_for_restart"] += 1
                channel.fail("the client restarted")

    def _received(self, message: dict[str, Any]) -> None:
        """A message on `node.ACKS` from another node (no I/O here)."""
        if message.get("to") == "relays":
            try:
                identity, named = str(message["client"]), {int(c) for c in message["serves"]}
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("cluster: a restart message from another node that makes no sense (%s); ignored", exc)
                return
            self._end_unnamed(identity, named, f"on node {message.get('from', '?')}")
            return
        try:
            identity, to, via = str(message["client"]), message["to"], str(message["from"])
            ack = t.ChannelAck(int(message["channel"]), int(message["received"]))
        except (KeyError, TypeError, ValueError, t.TunnelProtocolError) as exc:
            log.warning("cluster: an ack message from another node that makes no sense (%s); ignored", exc)
            return
        if to == "node":
            self.counters["from_clients_elsewhere"] += 1
            self.from_client(identity, ack, via=via)
        elif to == "client" and self.registry.online(identity):
            self.counters["to_clients_here"] += 1
            self._outgoing.append((identity, ack, "client"))
            self._wanted.set()

    async def run(self) -> None:
        """Send what is due, until cancelled: the acks of the channels relayed here (every
        `ack_every` bytes, after ACK_IDLE_S of quiet, every REPEAT_S again), and those
        other nodes handed us for our clients or for channels relayed elsewhere."""
        repeat_at = trio.current_time() + REPEAT_S
        while True:
            relayed = self._channels()
            live = bool(relayed)
            with trio.move_on_after(ACK_IDLE_S if live else float("inf")):
                await self._wanted.wait()
            self._wanted = trio.Event()
            now = trio.current_time()
            repeat = now >= repeat_at
            if repeat:
                repeat_at = now + REPEAT_S
            outgoing, self._outgoing = self._outgoing, []
            for identity, channel in self._channels():
                resume = channel.resume
                if resume is None:
                    continue
                if repeat and resume.stream is not None:
                    resume.stream.channel.acks_lost()
                ack = resume.take_ack()
                if ack is not None:
                    outgoing.append((identity, ack, "client"))
            for key in [k for k in self._via if self.relayed(*k) is None]:
                del self._via[key]
            await self._send(outgoing)

    async def _send(self, outgoing: list[tuple[str, t.ChannelAck, str]]) -> None:
        published: list[dict[str, Any]] = []
        for identity, ack, to in outgoing:
            session = self.registry.clients.get(identity) if to == "client" else None
            if session is not None and not session.closed:
                try:
                    await session.send(ack)
                    continue
                except (PeerGone, t.LocalProtocolError):
                    pass  # the session is ending: another node may have the client by now
            if to == "client" and self.relayed(identity, ack.channel_id) is None:
                continue  # another node's ack for our client, who is gone: its next count will do
            published.append({"to": to, "client": identity, "channel": ack.channel_id, "received": ack.received})
        if not published:
            return
        try:
            await self.node.publish(ACKS, published)
            self.counters["published"] += len(published)
        except ClusterDown:
            self._lost(published)

    def _lost(self, published: list[dict[str, Any]]) -> None:
        """Acks that did not leave: our own counts go again (REPEAT_S repeats the client's too)."""
        for message in published:
            channel = self.relayed(message["client"], message["channel"])
            if channel is not None and channel.resume is not None and channel.resume.stream is not None:
                channel.resume.stream.channel.acks_lost()
