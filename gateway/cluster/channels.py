"""Channels across nodes: the hypervisor's socket on one node, the client's control connection on another.

Node A holds QEMU's connection on a route port; client X's control
connection is on node C.  A (`open_for_route`):

1. finds X's node in Redis (`ClusterNode.locate`);
2. makes a pending channel *here* with a fresh random token
   (`Registry.expect_remote`) and asks C, over Redis, to have X open the
   device with that token and this node's advertised tunnel address;
3. C (`serve_open`) checks X is there, exports the device and can attach
   elsewhere, and sends X an `OpenChannel` whose `attach` names A; X answers
   C (`ChannelOpened`), and C answers A;
4. X dials A with its own certificate and attaches with the channel id and
   the token; A finds the channel by X's identity (from X's certificate,
   checked like every tunnel connection) and the token it issued, single use;
5. A relays QEMU <-> X's data connection: one process, one hop.

The channel is resumable as on one node when X's session on C can resume
(C's answer says so; A waits for it before it answers X's attach): A issues
the credential and X resumes a broken data connection against A, whichever
node holds X's control connection by then (C died, X is on B or on A now).
Its acks travel through Redis (`cluster.acks`).

The token passes through Redis, but alone it attaches nothing: A takes it
only on a data connection whose certificate is X's, once, within the open
timeout.  When the relay ends A closes the data connection; X's channel ends
and X tells C (`CloseChannel`), which forgets it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from redirgate.gateway.cluster.acks import RemoteAcks
from redirgate.gateway.cluster.node import ClusterDown, ClusterError, ClusterNode
from redirgate.gateway.config import Route
from redirgate.gateway.registry import Channel, Registry, describe_device
from redirgate.proto import tunnel as t
from redirgate.transport import PeerGone

__all__ = ["RemoteChannels"]

log = logging.getLogger(__name__)

#: A route waiting for a client on no node, or a device that is not there, looks again this often
#: even when no change is announced (a change announced while Redis was away is not replayed).
RECHECK_S = 5.0


class RemoteChannels:
    """Both halves of a channel across nodes (see the module docstring)."""

    def __init__(self, node: ClusterNode, registry: Registry, *, open_timeout_s: float = 15.0) -> None:
        self.node = node
        self.registry = registry
        self.open_timeout_s = open_timeout_s
        self.acks = RemoteAcks(node, registry)
        node.handlers["open"] = self.serve_open

    # ------------------------------------------------------------ node A: the hypervisor's side
    async def open_for_route(
        self, route: Route, peer: str, options: dict[str, Any], note: Callable[[str], None], *, grace_s: float = 0.0
    ) -> tuple[Channel, dict[str, Any]] | None:
        """Until a channel for `route` is attached here through the client's node: the channel and
        the device; None as soon as the client's control connection is on this node instead.
        `note(why)` says why it waits (for the route's log and status); `grace_s`: the route's
        `resume_grace_s` (0: not resumable)."""
        while not self.registry.online(route.client):
            result = await self.open_once(route, peer, options, grace_s=grace_s)
            if not isinstance(result, str):
                return result
            note(result)
            await self.node.wait_changed(RECHECK_S)
        return None

    async def open_once(
        self, route: Route, peer: str, options: dict[str, Any], *, grace_s: float = 0.0
    ) -> tuple[Channel, dict[str, Any]] | str:
        """One try: the attached channel and its device, or why not."""
        node = self.node
        try:
            where = await node.locate(route.client)
        except ClusterDown as exc:
            return self._refused_down(route, exc)
        if where is None:
            return f"client {route.client!r} is offline (on no node of the cluster)"
        channel = self.registry.expect_remote(
            client=route.client, route=route.name, device=route.device.text, hypervisor=peer, node=where
        )
        channel.resume_grace_s = grace_s
        attached = False
        try:
            try:
                answer = await node.request(
                    where,
                    {
                        "type": "open",
                        "client": route.client,
                        "route": route.name,
                        "device": route.device.text,
                        "protocol": route.protocol,
                        "options": options,
                        "token": channel.token.hex(),
                        "attach": node.advertise,
                        "hypervisor": peer,
                    },
                    timeout_s=self.open_timeout_s + node.config.heartbeat_s,
                )
            except ClusterDown as exc:
                return self._refused_down(route, exc)
            except ClusterError as exc:
                node.counters["attaches_failed_remote"] += 1
                return f"node {exc.peer} holds client {route.client!r} but {exc.reason}"
            if answer.get("ok") is not True:
                return f"on node {where}: {answer.get('why') or 'refused'}"
            device = answer.get("device")
            device = device if isinstance(device, dict) else {"id": route.device.text}
            channel.device = str(device.get("id", route.device.text))
            if channel.channel_id == 0 and isinstance(answer.get("channel_id"), int):
                channel.channel_id = answer["channel_id"]
            channel.client_resumes = answer.get("resumable") is True
            channel.opened()  # the data connection's attach waits for this answer
            with trio.move_on_after(self.open_timeout_s):
                await channel.ready.wait()
            if channel.state != "active":
                return channel.reason or f"no data connection from {route.client!r} within {self.open_timeout_s:g} s"
            attached = True
            node.counters["remote_attaches"] += 1
            log.info(
                "cluster: route %s: client %s (on node %s) attached channel %d here; relayed on this node",
                route.name,
                route.client,
                where,
                channel.channel_id,
            )
            return channel, device
        finally:
            self.registry.forget_remote(channel)
            if not attached:
                channel.fail("the route stopped waiting")  # a late data connection is refused

    def _refused_down(self, route: Route, exc: ClusterDown) -> str:
        self.node.counters["attaches_refused_redis_down"] += 1
        return (
            f"client {route.client!r} is not on this node and Redis is unreachable ({exc.reason}): "
            "attach refused until Redis is back"
        )

    # ------------------------------------------------------------ node C: the client's side
    async def serve_open(self, message: dict[str, Any]) -> dict[str, Any]:
        """Another node asks: have our client open a device and attach to it there."""
        identity, asker = str(message["client"]), str(message["from"])
        session = self.registry.clients.get(identity)
        if session is None or session.closed:
            return {"ok": False, "why": f"client {identity!r} is not on node {self.node.name} (any more)"}
        if t.CLUSTER_CAPABILITY not in session.capabilities:
            return {
                "ok": False,
                "why": f"client {identity!r} runs software that cannot attach to another gateway; "
                f"upgrade it or point the hypervisor at node {self.node.name}",
            }
        selector = t.parse_selector(str(message["device"]))
        entry = session.find(selector)
        if entry is None:
            return {"ok": False, "why": f"client {identity!r} does not export {selector.text}"}
        if entry.busy:
            return {"ok": False, "why": f"{entry.id} on client {identity!r} is busy"}
        token = bytes.fromhex(str(message["token"]))
        channel = session.new_channel(
            route=str(message["route"]),
            device=entry.id,
            hypervisor=f"{message['hypervisor']} on node {asker}",
            token=token,
            remote=asker,
        )
        try:
            await session.send(
                t.OpenChannel(
                    channel.channel_id,
                    entry.id,
                    token,
                    protocol=t.ChannelProtocol(message["protocol"]),
                    options=message.get("options") or {},
                    attach=str(message["attach"]),
                )
            )
            with trio.move_on_after(self.open_timeout_s):
                await channel.answered.wait()
        except (PeerGone, t.LocalProtocolError) as exc:
            session.forget(channel)
            return {"ok": False, "why": f"client {identity!r}: control connection failed: {exc}"}
        if channel.state != "opened":
            session.forget(channel)
            return {"ok": False, "why": channel.reason or f"client {identity!r} did not answer in time"}
        log.info(
            "cluster: client %s opened %s (channel %d) for node %s; its data connection goes to %s",
            identity,
            entry.id,
            channel.channel_id,
            asker,
            message["attach"],
        )
        return {
            "ok": True,
            "channel_id": channel.channel_id,
            "device": describe_device(entry),
            "resumable": session.resumable,
        }
