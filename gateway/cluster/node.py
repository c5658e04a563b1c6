"""This gateway's part in a cluster: its presence in Redis, and requests between nodes.

What Redis holds (all under `redirgate:`), each key with an expiry that this
node's heartbeat refreshes every `heartbeat_s`, so nothing outlives a dead
node by more than `node_timeout_s`:

    redirgate:node:NAME      JSON: advertised tunnel address, pid, start time, live counters, routes
    redirgate:clients:NAME   a hash: client ID -> when its session on node NAME began (wall clock), for
                             every client whose control connection NAME holds

Presence costs per node, not per client: the heartbeat is two commands
whatever the number of clients (the node key, and the hash's expiry), and
a client's entry is written only when it comes or goes (with the hash's
expiry, in one MULTI/EXEC, so no entry is ever left without one).  A
reader (`holders`, `locate`) counts a client as on node NAME only while
NAME is live - its key is there and it listens on its inbox (a node that
died or lost Redis does not, at once; a whole machine lost only by its
key's expiry) - and, when two live nodes name it (it moved while the old
node still holds its silent session), the newest session.

and two pub/sub channels:

    redirgate:inbox:NAME     requests to node NAME and the answers to its own requests (JSON)
    redirgate:changed        "a client came, went or changed its exports" (payload: the node)
    redirgate:acks           resumable channels' acks between a client's node and the node that
                             relays the channel (`cluster.acks`; JSON)

A request is `{"type", "id", "from", ...}`; its answer goes to the asker's
inbox as `{"reply_to": id, ...}`.  Handlers (`handlers[type]`) are given by
the code that serves them (`cluster.channels`).  Nothing here is a secret:
the attach tokens that pass through are useless without the client's own
certificate (README "More than one gateway").

Redis down: `up` is False, `request` and `locate` raise `ClusterDown` at once
(the routes count and log it); what is attached keeps moving (the relay
never touches Redis); `run` redials with a backoff and, once back, registers
this node and every client it holds again and wakes the routes that wait.

Threads: everything runs on the gateway's trio loop; `run` owns the two
Redis connections (commands, subscription) and the tasks that use them.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from redirgate.gateway.cluster.config import ClusterConfig
from redirgate.gateway.cluster.redis import (
    RedisConnection,
    RedisError,
    Subscription,
    open_redis,
    open_subscription,
    seconds,
    tls_context,
)
from redirgate.gateway.errors import GatewayError
from redirgate.gateway.registry import Registry
from redirgate.transport import ClientContext

__all__ = ["PREFIX", "ClusterDown", "ClusterError", "ClusterNode"]

log = logging.getLogger(__name__)

PREFIX = "redirgate:"
CHANGED = f"{PREFIX}changed"
ACKS = f"{PREFIX}acks"
#: Longest wait between two tries to reach Redis.
MAX_BACKOFF_S = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def node_key(name: str) -> str:
    return f"{PREFIX}node:{name}"


def clients_key(name: str) -> str:
    """Node `name`'s hash of the clients it holds (client ID -> when the session began)."""
    return f"{PREFIX}clients:{name}"


def inbox(name: str) -> str:
    return f"{PREFIX}inbox:{name}"


class ClusterError(GatewayError):
    """Another node did not answer, or answered nonsense; `peer` is that node."""


class ClusterDown(ClusterError):
    """Redis cannot be reached now: nothing that needs another node can be done."""


class _Lost(Exception):
    def __init__(self, error: RedisError) -> None:
        self.error = error


class ClusterNode:
    """This node (see the module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        registry: Registry,
        *,
        describe: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.config = config
        self.name = config.node
        self.registry = registry
        #: this node's tunnel address as clients dial it (port 0 in the config: set once bound)
        self.advertise = config.advertise
        #: what this node's key says about it besides its address (live counters, routes)
        self.describe = describe
        self.context: ClientContext | None = tls_context(config.redis, config.redis_ca) if config.redis.tls else None
        self.started_at = time.time()
        #: Redis answers now
        self.up = False
        self.down_since: float | None = None
        #: redis_outages, requests_served, requests_sent, attaches_refused_redis_down, ...
        self.counters: collections.Counter[str] = collections.Counter()
        #: the other live nodes as their keys said at the last heartbeat
        self.peers: dict[str, dict[str, Any]] = {}
        self.handlers: dict[str, Handler] = {}
        #: a message on ACKS from another node (no I/O in it: `cluster.acks` queues and wakes its task)
        self.on_ack: Callable[[dict[str, Any]], None] | None = None
        #: clients of ours that another live node holds too (found after writing them; `cluster.identity`)
        self.on_elsewhere: Callable[[list[str]], None] | None = None
        self._command: RedisConnection | None = None
        #: what our hash in Redis holds (identity -> session start), as far as we wrote it
        self._written: dict[str, float] = {}
        #: write our whole hash again (joined or rejoined Redis, or found it gone)
        self._rewrite = True
        #: other nodes heard of (their "changed" messages) since the heartbeat last listed the live ones
        self._announced: set[str] = set()
        self._replies: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        #: nodes that had no listener on their inbox, and when (trio clock)
        self._deaf: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._publish = False
        self._flush_wanted = trio.Event()
        self._changed = trio.Event()
        registry.watchers.append(self._watch)

    # ------------------------------------------------------------ what others use
    def peer_addresses(self) -> tuple[str, ...]:
        """The other live nodes' tunnel addresses (told to clients in the hello)."""
        return tuple(sorted(str(p["advertise"]) for p in self.peers.values() if p.get("advertise")))

    async def locate(self, identity: str) -> str | None:
        """The live node (not this one) that holds `identity`'s control connection, or None."""
        return (await self.holders([identity])).get(identity)

    async def holders(self, identities: list[str]) -> dict[str, str]:
        """The live node other than this one that holds each identity (the newest session when
        several do), for those that one holds: one round trip for all of them.  ClusterDown when
        Redis is away."""
        command = self._connection()
        try:
            return await self._holders(command, identities)
        except RedisError as exc:
            raise ClusterDown(self.config.redis.address, exc.reason) from None

    async def _holders(self, command: RedisConnection, identities: list[str]) -> dict[str, str]:
        nodes = sorted((set(self.peers) | self._announced) - {self.name})
        if not nodes or not identities:
            return {}
        commands: list[tuple[str | bytes | int, ...]] = [
            ("PUBSUB", "NUMSUB", *(inbox(name) for name in nodes)),
            *(("EXISTS", node_key(name)) for name in nodes),
            *(("HMGET", clients_key(name), *identities) for name in nodes),
        ]
        replies = await command.pipeline(commands)
        numsub = replies[0] if isinstance(replies[0], list) else []
        listening = {
            name for name, count in zip(nodes, numsub[1::2], strict=False) if isinstance(count, int) and count > 0
        }
        newest: dict[str, tuple[float, str]] = {}
        for i, name in enumerate(nodes):
            values = replies[1 + len(nodes) + i]
            if replies[1 + i] != 1 or name not in listening or not isinstance(values, list):
                continue  # gone (its key expired), or not listening: dead, or cut off from Redis
            for identity, value in zip(identities, values, strict=False):
                since = _since(value)
                if since is not None and (identity not in newest or since > newest[identity][0]):
                    newest[identity] = (since, name)
        return {identity: name for identity, (_, name) in newest.items()}

    async def request(self, node: str, message: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Send `message` to `node` and return its answer; ClusterDown / ClusterError when there is none."""
        command = self._connection()
        deaf_at = self._deaf.get(node)
        if deaf_at is not None and trio.current_time() - deaf_at < self.config.heartbeat_s:
            # it did not listen a moment ago (dead, its key not expired yet): a thousand clients
            # failing over from it must not each pay a round trip to learn that again
            raise ClusterError(node, "the node does not listen on Redis (stopped or cut off)")
        rid = secrets.token_hex(8)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[rid] = send
        try:
            payload = json.dumps({**message, "id": rid, "from": self.name})
            try:
                listeners = await command.command("PUBLISH", inbox(node), payload)
            except RedisError as exc:
                raise ClusterDown(self.config.redis.address, exc.reason) from None
            self.counters["requests_sent"] += 1
            if listeners == 0:
                self._deaf[node] = trio.current_time()
                raise ClusterError(node, "the node does not listen on Redis (stopped or cut off)")
            self._deaf.pop(node, None)
            with trio.move_on_after(timeout_s):
                try:
                    return await receive.receive()
                except trio.EndOfChannel:
                    raise ClusterDown(self.config.redis.address, "lost while waiting for an answer") from None
            raise ClusterError(node, f"no answer within {timeout_s:g} s")
        finally:
            self._replies.pop(rid, None)

    async def publish(self, channel: str, messages: list[dict[str, Any]]) -> None:
        """Publish each of `messages` (JSON, with "from": this node) on `channel`, in one
        write; ClusterDown when Redis is away."""
        command = self._connection()
        try:
            await command.pipeline([("PUBLISH", channel, json.dumps({**m, "from": self.name})) for m in messages])
        except RedisError as exc:
            raise ClusterDown(self.config.redis.address, exc.reason) from None

    async def wait_changed(self, timeout_s: float) -> None:
        """Until a client comes, goes or changes anywhere in the cluster (or Redis is back), at most `timeout_s`."""
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:

                async def cluster() -> None:
                    await self._changed.wait()
                    nursery.cancel_scope.cancel()

                async def local() -> None:
                    await self.registry.wait_changed()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cluster)
                nursery.start_soon(local)

    def snapshot(self) -> dict[str, Any]:
        """The cluster as this node sees it (for `gateway status`)."""
        me = {**self._description(), "name": self.name, "self": True}
        nodes = [me] + [{**p, "name": name} for name, p in sorted(self.peers.items())]
        return {
            "node": self.name,
            "redis": str(self.config.redis),
            "redis_up": self.up,
            "down_since": self.down_since,
            "counters": dict(self.counters),
            "nodes": nodes,
        }

    # ------------------------------------------------------------ the loop
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep this node in the cluster until cancelled (see the module docstring).

        `task_status.started()` comes after the first try, whether Redis
        answered or not: a gateway serves its own clients without Redis.
        """
        started = False
        delay = 0.25
        url = self.config.redis
        while True:
            try:
                async with (
                    open_redis(url, context=self.context) as command,
                    open_subscription(url, [inbox(self.name), CHANGED, ACKS], context=self.context) as subscription,
                ):
                    self._rewrite = True  # a new connection: Redis may have restarted empty
                    await self._refresh(command)
                    self._command = command
                    self._joined()
                    self._publish = True  # the other nodes' held routes look again: our clients are back
                    self._flush_wanted.set()
                    delay = 0.25
                    if not started:
                        task_status.started()
                        started = True
                    await self._serve(command, subscription)
            except RedisError as exc:
                self._left(exc.reason)
            finally:
                self._command = None
                self.up = False
                for reply in self._replies.values():
                    reply.close()
            if not started:
                task_status.started()
                started = True
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    def _joined(self) -> None:
        self.up = True
        clients = len(self.registry.clients)
        if self.down_since is not None:
            log.warning(
                "cluster: Redis at %s is back after %.1f s; node %s registered again with %d client(s); "
                "attaches through other nodes work again",
                self.config.redis.address,
                time.time() - self.down_since,
                self.name,
                clients,
            )
        else:
            log.info(
                "cluster: node %s joined through Redis at %s as %s (%d other node(s) live)",
                self.name,
                self.config.redis.address,
                self.advertise,
                len(self.peers),
            )
        self.down_since = None
        self._wake()  # routes that waited for the cluster try again now

    def _left(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            self.counters["redis_outages"] += 1
            log.error(
                "cluster: Redis at %s unreachable: %s; node %s goes on serving what is attached, but attaches "
                "that need another node are refused until Redis is back (retrying every %g s or less)",
                self.config.redis.address,
                reason,
                self.name,
                MAX_BACKOFF_S,
            )

    async def _serve(self, command: RedisConnection, subscription: Subscription) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guarded, self._heartbeat, command)
                nursery.start_soon(self._guarded, self._flush, command)
                nursery.start_soon(self._guarded, self._listen, subscription, nursery)
        except* _Lost as group:
            first = group.exceptions[0]
            assert isinstance(first, _Lost)
            raise first.error from None

    async def _guarded(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await task(*args)
        except RedisError as exc:
            raise _Lost(exc) from None

    def _description(self) -> dict[str, Any]:
        return {
            "advertise": self.advertise,
            "pid": os.getpid(),
            "started": self.started_at,
            "seen": time.time(),
            "clients": len(self.registry.clients),
            **self.describe(),
        }

    async def _refresh(self, command: RedisConnection) -> None:
        """This node's key and its clients' hash, with a fresh expiry (two commands, whatever the
        number of clients); the other nodes as they are."""
        ttl = seconds(self.config.node_timeout_s)
        replies = await command.pipeline(
            [
                ("SET", node_key(self.name), json.dumps(self._description()), "EX", ttl),
                ("EXPIRE", clients_key(self.name), ttl),
            ]
        )
        for reply in replies:
            if not isinstance(reply, (str, int)):
                raise RedisError(command.peer, f"refreshing this node's keys: {reply!r}")
        if replies[1] == 0 and self._written and not self._rewrite:
            # our hash is gone while we hold clients (we were stalled past its expiry, or Redis lost
            # it): write it again, and look again for the same clients on other nodes
            log.warning("cluster: node %s found its clients gone from Redis; registering them again", self.name)
            self._rewrite = True
            self._flush_wanted.set()
        names: list[bytes] = []
        cursor: bytes | int = b"0"
        while True:
            reply = await command.command("SCAN", cursor, "MATCH", f"{PREFIX}node:*", "COUNT", 1000)
            if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], list):
                raise RedisError(command.peer, "SCAN: an answer that is not [cursor, keys]")
            cursor = reply[0] if isinstance(reply[0], bytes) else b"0"
            names += [k for k in reply[1] if isinstance(k, bytes)]
            if cursor == b"0":
                break
        peers: dict[str, dict[str, Any]] = {}
        if names:
            values = await command.command("MGET", *names)
            for raw_key, value in zip(names, values if isinstance(values, list) else [], strict=False):
                name = raw_key.decode(errors="replace")[len(node_key("")) :]
                if name == self.name or not isinstance(value, bytes):
                    continue
                try:
                    described = json.loads(value)
                except ValueError:
                    continue
                if isinstance(described, dict):
                    peers[name] = described
        self._announced.clear()
        # a node whose key is missing now but was seen within node_timeout_s stays: after Redis
        # restarts empty, the others register again one by one (each at its own backoff)
        now = time.time()
        for name, described in self.peers.items():
            seen = described.get("seen")
            if name not in peers and isinstance(seen, (int, float)) and now - seen < self.config.node_timeout_s:
                peers[name] = described
        self.peers = peers

    async def _heartbeat(self, command: RedisConnection) -> None:
        while True:
            await trio.sleep(self.config.heartbeat_s)
            await self._refresh(command)

    def _watch(self, identity: str | None) -> None:
        """The registry changed (runs inside its `changed`: no I/O here, the flush task does it)."""
        if identity is not None:
            self._dirty.add(identity)
        self._publish = True
        self._flush_wanted.set()

    async def _flush(self, command: RedisConnection) -> None:
        """Clients that came or went, and "something changed", to Redis as soon as they happen;
        then the clients just written that another live node holds too go to `on_elsewhere`."""
        ttl = seconds(self.config.node_timeout_s)
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            dirty, self._dirty = self._dirty, set()
            publish, self._publish = self._publish, False
            rewrite, self._rewrite = self._rewrite, False
            now = {i: s.connected_at for i, s in self.registry.clients.items() if self.registry.online(i)}
            if rewrite:
                written, gone = now, []
            else:
                written = {i: now[i] for i in dirty if i in now and self._written.get(i) != now[i]}
                gone = [i for i in dirty if i not in now and i in self._written]
            commands: list[tuple[str | bytes | int | float, ...]] = []
            if rewrite or written or gone:
                key = clients_key(self.name)
                commands.append(("MULTI",))
                if rewrite:
                    commands.append(("DEL", key))
                if written:
                    commands.append(("HSET", key, *(x for i, since in sorted(written.items()) for x in (i, since))))
                if gone:
                    commands.append(("HDEL", key, *sorted(gone)))
                commands += [("EXPIRE", key, ttl), ("EXEC",)]
            if publish:
                commands.append(("PUBLISH", CHANGED, self.name))
            replies = await command.pipeline(commands)
            if commands and commands[0] == ("MULTI",):
                done = replies[len(commands) - (2 if publish else 1)]
                if not isinstance(done, list):
                    self._rewrite = True  # the transaction did not run: write everything at the next flush
                    raise RedisError(command.peer, f"writing this node's clients: {done!r}")
            if rewrite:
                self._written = dict(written)
            else:
                self._written.update(written)
                for identity in gone:
                    self._written.pop(identity, None)
            if written and self.on_elsewhere is not None:
                # two sessions of one client let in at once on two nodes, or while Redis was away: of two
                # nodes that write then look, the later one sees the other's entry
                elsewhere = await self._holders(command, sorted(written))
                if elsewhere:
                    self.on_elsewhere(sorted(elsewhere))

    async def _listen(self, subscription: Subscription, nursery: trio.Nursery) -> None:
        while True:
            channel, payload = await subscription.receive()
            if channel == CHANGED:
                sender = payload.decode(errors="replace")
                if sender != self.name:
                    self._announced.add(sender)  # a node that joined since our last heartbeat is looked in too
                    self._wake()
                continue
            try:
                message = json.loads(payload)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                log.warning("cluster: node %s: a message on its inbox that is not JSON (%s); ignored", self.name, exc)
                continue
            if channel == ACKS:
                if self.on_ack is not None and message.get("from") != self.name:
                    self.on_ack(message)
                continue
            reply_to = message.get("reply_to")
            if isinstance(reply_to, str):
                waiting = self._replies.get(reply_to)
                if waiting is not None:
                    try:
                        waiting.send_nowait(message)
                    except (trio.WouldBlock, trio.ClosedResourceError):
                        pass  # a second answer to one request: the first one counts
                continue
            nursery.start_soon(self._answer, message)

    async def _answer(self, message: dict[str, Any]) -> None:
        """Serve one request from another node and send the answer to its inbox."""
        kind, asker, rid = message.get("type"), message.get("from"), message.get("id")
        if not isinstance(asker, str) or not isinstance(rid, str):
            log.warning("cluster: node %s: a request without from/id; ignored", self.name)
            return
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            answer: dict[str, Any] = {"ok": False, "why": f"node {self.name} does not serve {kind!r} requests"}
        else:
            self.counters["requests_served"] += 1
            try:
                answer = await handler(message)
            except (GatewayError, KeyError, TypeError, ValueError) as exc:
                answer = {"ok": False, "why": f"node {self.name}: {exc}"}
            except Exception:  # one request's bug must not take the node out of the cluster
                log.exception("cluster: node %s: internal error serving a %r request from %s", self.name, kind, asker)
                answer = {"ok": False, "why": f"node {self.name}: internal error"}
        command = self._command
        if command is None:
            return  # Redis went away meanwhile; the asker gives up by its own timeout
        with trio.move_on_after(self.config.heartbeat_s * 2):
            try:
                await command.command("PUBLISH", inbox(asker), json.dumps({**answer, "reply_to": rid}))
            except RedisError as exc:
                log.warning("cluster: node %s could not answer node %s: %s", self.name, asker, exc.reason)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _connection(self) -> RedisConnection:
        command = self._command
        if command is None or not self.up:
            raise ClusterDown(self.config.redis.address, "Redis is unreachable")
        return command


def _since(value: object) -> float | None:
    """A hash entry's session start, None when absent or not a number."""
    if not isinstance(value, bytes):
        return None
    try:
        return float(value)
    except ValueError:
        return None
