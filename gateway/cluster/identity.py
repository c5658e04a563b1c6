"""One live session per client identity across the nodes of a cluster (the single gateway's rule).

The rule (`tunnel_server`, README "Security model"): the live session
stays; a second connection with the same certificate while the first was
heard from within 1.5 heartbeat intervals is refused, counted
(`duplicate_identity_refused`) and logged at WARNING with both addresses
once per interval; a session silent for longer is presumed dead and
replaced.  Across nodes:

- At a hello (`live_elsewhere`): the node finds in Redis which node holds
  the identity and asks it (a `presence` request); a live session there
  means the newcomer is refused, its log line naming both addresses and
  both nodes.  No answer (that node is dead, Redis is away) means no
  duplicate: a client coming back after its node died is never kept out.
  The lookups of all hellos waiting at once go to Redis as one MGET
  (`run`): a thousand clients failing over from a dead node cost a few
  round trips, not a thousand in a row on the node's one connection.
- Afterwards (`conflicts`): two connections accepted at once, or while
  Redis was away, are found by a node that writes its new clients to Redis
  and then finds one of them held by another live node too (of two nodes
  that write then look, the later one sees the other).  That node asks the
  other: if its own session is the silent one it ends it (replaced); if the
  other's is silent it asks that node to look (`settle`), which then ends
  it; if both are alive the older session stays and the newer one's node
  closes it, after telling its client why (`duplicate_identity`, the same
  error a refused hello gets).  Conflicts are settled in a task of their
  own: a thousand clients failing over never wait behind them.

Owner: the gateway's trio loop; `run` is the task that settles conflicts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from redirgate.gateway.cluster.node import ClusterError, ClusterNode
from redirgate.gateway.registry import Registry
from redirgate.proto import tunnel as t
from redirgate.transport import PeerGone

if TYPE_CHECKING:
    from redirgate.gateway.tunnel_server import TunnelServer

__all__ = ["ClusterIdentity"]

log = logging.getLogger(__name__)


class ClusterIdentity:
    """See the module docstring."""

    def __init__(self, node: ClusterNode, registry: Registry, tunnel: TunnelServer) -> None:
        self.node = node
        self.registry = registry
        self.tunnel = tunnel
        self._conflicts: set[str] = set()
        self._wanted = trio.Event()
        #: hellos waiting for their lookup: identity -> (done, [the node named, or None])
        self._lookups: dict[str, tuple[trio.Event, list[str | None]]] = {}
        node.handlers["presence"] = self._presence
        node.handlers["duplicate"] = self._duplicate
        node.handlers["settle"] = self._settle_request
        self._settle_wanted = trio.Event()
        node.on_elsewhere = self.conflicts

    @property
    def timeout_s(self) -> float:
        """How long a node's answer may take (a node too slow to answer does not keep a client out)."""
        return self.node.config.heartbeat_s

    async def live_elsewhere(self, identity: str) -> tuple[str, str] | None:
        """(node, address) of a live session of `identity` on another node, or None."""
        if not self.node.up:
            return None  # without Redis a node serves as if alone
        waiting = self._lookups.get(identity)
        if waiting is None:
            waiting = self._lookups[identity] = (trio.Event(), [None])
            self._wanted.set()
        with trio.move_on_after(self.timeout_s):
            await waiting[0].wait()
        where = waiting[1][0]
        if where is None or where == self.node.name:
            return None
        try:
            answer = await self.node.request(where, {"type": "presence", "client": identity}, timeout_s=self.timeout_s)
        except ClusterError:  # ClusterDown too
            return None
        if answer.get("alive") is True:
            return where, str(answer.get("peer", "?"))
        return None

    def conflicts(self, identities: list[str]) -> None:
        """Our clients that another live node holds too (found after writing them; no I/O here)."""
        self._conflicts.update(identities)
        self._settle_wanted.set()

    async def run(self) -> None:
        """Look up the identities of the hellos waiting (one round trip for all of them), and
        settle the conflicts found, in a task of its own, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._settle_all)
            while True:
                await self._wanted.wait()
                self._wanted = trio.Event()
                lookups, self._lookups = self._lookups, {}
                if lookups:
                    await self._look_up(lookups)

    async def _settle_all(self) -> None:
        while True:
            await self._settle_wanted.wait()
            self._settle_wanted = trio.Event()
            found, self._conflicts = self._conflicts, set()
            for identity in sorted(found):
                await self._settle(identity)

    async def _look_up(self, lookups: dict[str, tuple[trio.Event, list[str | None]]]) -> None:
        """Which node each identity's key names, where that node is live (None otherwise, or when
        Redis does not answer): the waiting hellos are told."""
        try:
            names = await self.node.holders(list(lookups))
        except ClusterError:
            names = {}
        for identity, (done, result) in lookups.items():
            result[0] = names.get(identity)
            done.set()

    async def _settle(self, identity: str) -> None:
        ours = self.registry.clients.get(identity)
        if ours is None or ours.closed:
            return
        try:
            where = await self.node.locate(identity)
            if where is None:
                return  # the other node is gone: our heartbeat takes the key back once it expires
            answer = await self.node.request(where, {"type": "presence", "client": identity}, timeout_s=self.timeout_s)
        except ClusterError:
            return
        if answer.get("online") is not True:
            return
        theirs_peer = str(answer.get("peer", "?"))
        if not self.tunnel.alive(ours):
            log.info(
                "cluster: client %s reconnected from %s on node %s; its silent session from %s here ends",
                identity,
                theirs_peer,
                where,
                ours.peer,
            )
            self.registry.remove(ours, f"replaced by a connection on node {where}")
            return
        if answer.get("alive") is not True:
            # theirs is the silent one (the client moved here): its node ends it once it looks
            with contextlib.suppress(ClusterError):
                await self.node.request(where, {"type": "settle", "client": identity}, timeout_s=self.timeout_s)
            return
        since = answer.get("since")
        if isinstance(since, (int, float)) and ours.connected_at > since:
            await self._close(identity, theirs_peer, where)  # ours is the newer one
            return
        try:
            await self.node.request(
                where,
                {"type": "duplicate", "client": identity, "since": since, "peer": ours.peer},
                timeout_s=self.timeout_s,
            )
        except ClusterError as exc:
            log.info("cluster: node %s did not settle client %s's second session: %s", where, identity, exc.reason)

    async def _close(self, identity: str, live_peer: str, live_node: str) -> None:
        """Close our session of `identity`: the one from `live_peer` on `live_node` is older and alive."""
        ours = self.registry.clients.get(identity)
        if ours is None or ours.closed:
            return
        message = self.tunnel.duplicate(identity, ours.peer, live_peer, node=self.node.name, live_node=live_node)
        with trio.move_on_after(1.0):
            try:
                await ours.send(t.Error(code="duplicate_identity", message=message))
            except (PeerGone, t.LocalProtocolError):
                pass
        self.registry.remove(ours, f"a second session: the one from {live_peer} on node {live_node} stays")

    # ------------------------------------------------------------ requests from other nodes
    async def _presence(self, message: dict[str, Any]) -> dict[str, Any]:
        session = self.registry.clients.get(str(message["client"]))
        if session is None or session.closed:
            return {"ok": True, "online": False}
        return {
            "ok": True,
            "online": True,
            "alive": self.tunnel.alive(session),
            "peer": session.peer,
            "since": session.connected_at,
            "silent_s": round(trio.current_time() - session.last_heard(), 3),
            "now": time.time(),
        }

    async def _settle_request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Another node holds a live session of a client whose session here it found silent: look."""
        self.conflicts([str(message["client"])])
        return {"ok": True}

    async def _duplicate(self, message: dict[str, Any]) -> dict[str, Any]:
        """Another node holds an older live session of this identity: close ours if it is the one asked about."""
        identity = str(message["client"])
        ours = self.registry.clients.get(identity)
        if ours is None or ours.closed or ours.connected_at != message.get("since"):
            return {"ok": True, "closed": False}
        await self._close(identity, str(message.get("peer", "?")), str(message["from"]))
        return {"ok": True, "closed": True}
