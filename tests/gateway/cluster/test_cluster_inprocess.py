"""Three gateways as one, in one process, on a real redis-server: the attach through another node."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import trio
from prometheus_client import generate_latest

from redirgate.cli.gateway_commands import format_status
from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway.cluster.redis import RedisConnection, RedisUrl, open_redis, open_subscription
from redirgate.gateway.config import load_config
from redirgate.gateway.service import Gateway
from redirgate.vmside.guest import UsbredirGuest
from redirgate.vmside.probe import probe
from tests.support.cluster_lab import cluster_config
from tests.support.gateway_procs import kill, running_client
from tests.support.redis_server import RedisServer, free_port
from tests.support.tunnel_lab import running_lab, start_client, start_gateway
from tests.support.waiting import until, until_async

KBD = (0x1209, 0x0002)


async def test_attach_through_a_node_that_is_not_the_clients(tmp_path: Path, redis_server: RedisServer) -> None:
    make_pki(tmp_path)
    routes = [LabRoute("kbd", "usb:1209:0002")]
    async with trio.open_nursery() as nursery:
        nodes = {}
        for name in ("a", "b", "c"):
            config = load_config(cluster_config(tmp_path, routes, name, redis_server.url))
            nodes[name] = await start_gateway(nursery, config)
        a, c = nodes["a"][0], nodes["c"][0]
        client_config = write_client_config(tmp_path, nodes["c"][1].tunnel[1], virtual=["virtual:keyboard"])
        client, _ = await start_client(nursery, client_config)
        assert a.cluster is not None and c.cluster is not None
        await until(lambda: len(a.cluster.peers) == 2 and "thin-01" in c.registry.clients)
        result = await probe("127.0.0.1", nodes["a"][1].routes["kbd"][1], timeout_s=20)
        assert (result.vendor_id, result.product_id) == KBD
        assert a.cluster.counters["remote_attaches"] == 1
        assert c.cluster.counters["requests_served"] >= 1
        assert "thin-01" not in a.registry.clients
        # the client learned the other nodes from the hello
        assert len(client.learned) == 2
        # `gateway status` on any node shows every node and its clients
        await until(lambda: a.cluster.peers["c"]["clients"] == 1)
        text = format_status(a.snapshot())
        assert "cluster: node a, Redis redis://:***@127.0.0.1:" in text and "3 node(s) live" in text
        assert "  a (this node) at 127.0.0.1:" in text
        assert f"  c at 127.0.0.1:{nodes['c'][1].tunnel[1]}: 1 client(s)" in text
        assert "attaches here for clients on other nodes: 1" in text
        nursery.cancel_scope.cancel()


async def test_a_client_is_on_the_live_node_with_its_newest_session(tmp_path: Path, redis_server: RedisServer) -> None:
    """What another node reads: a client named by two live nodes' hashes is on the one with the newest
    session (it moved while the old node still holds its silent session); a node counts only while its
    key lives and it listens on its inbox (a dead node stops listening at once)."""
    make_pki(tmp_path)
    async with trio.open_nursery() as nursery, open_redis(RedisUrl.parse(redis_server.url)) as redis:
        nodes = {}
        for name in ("a", "c"):
            # keys that outlive a heartbeat delayed by a loaded machine: nothing here expires but what the test says
            config = cluster_config(tmp_path, [], name, redis_server.url, node_timeout_s=60)
            nodes[name] = await start_gateway(nursery, load_config(config))
        a, c = nodes["a"][0], nodes["c"][0]
        assert a.cluster is not None
        await start_client(nursery, write_client_config(tmp_path, nodes["c"][1].tunnel[1]))
        await until_async(lambda: _held(redis, "c"), poll_s=0.05)
        assert await a.cluster.locate("thin-01") == "c"
        since = c.registry.clients["thin-01"].connected_at
        # node "x": a live key, a newer session of thin-01 in its hash, and a listener on its inbox
        await redis.command("SET", "redirgate:node:x", json.dumps({"advertise": "127.0.0.1:1"}), "EX", 60)
        await redis.command("HSET", "redirgate:clients:x", "thin-01", since + 1)
        async with open_subscription(RedisUrl.parse(redis_server.url), ["redirgate:inbox:x"]):
            await redis.command("PUBLISH", "redirgate:changed", "x")  # as a node that joined says
            await until_async(lambda: _located(a, "thin-01", "x"), poll_s=0.05)
            await redis.command("HSET", "redirgate:clients:x", "thin-01", since - 1)  # older than c's
            assert await a.cluster.locate("thin-01") == "c"
            await redis.command("HSET", "redirgate:clients:x", "thin-01", since + 1)
            assert await a.cluster.locate("thin-01") == "x"
            await redis.command("DEL", "redirgate:node:x")  # its heartbeat stopped: its key expired
            assert await a.cluster.locate("thin-01") == "c"
            await redis.command("SET", "redirgate:node:x", json.dumps({"advertise": "127.0.0.1:1"}), "EX", 60)
            assert await a.cluster.locate("thin-01") == "x"
        # x stopped listening (its process died: Redis drops its subscription at once); its key still lives
        assert await a.cluster.locate("thin-01") == "c"
        nursery.cancel_scope.cancel()


async def test_idle_clients_cost_no_redis_command_of_their_own(tmp_path: Path, redis_server: RedisServer) -> None:
    """Presence costs per node, not per client: with five idle clients a node's heartbeats are its own
    key and its hash's expiry (and the look at the other nodes), never a command per client; and all it
    wrote has an expiry (nothing outlives it in Redis)."""
    names = [f"thin-0{i}" for i in range(1, 6)]
    make_pki(tmp_path, clients=names)
    async with trio.open_nursery() as nursery, open_redis(RedisUrl.parse(redis_server.url)) as redis:
        await redis.command("FLUSHDB")
        # a heartbeat delayed past node_timeout_s by a loaded machine would find its hash expired and write it
        # again (correctly, but not idle): the keys here outlive any such delay
        config = load_config(cluster_config(tmp_path, [], "c", redis_server.url, node_timeout_s=60))
        _, addresses, _, _ = await start_gateway(nursery, config)
        for name in names:
            await start_client(nursery, write_client_config(tmp_path, addresses.tunnel[1], name=name, file_name=name))
        await until_async(lambda: _hlen(redis, "redirgate:clients:c", len(names)), poll_s=0.05)
        await redis.command("CONFIG", "RESETSTAT")
        heartbeats = 3
        for _ in range(heartbeats):  # the node key's "seen" changes at each heartbeat
            seen = json.loads(await redis.command("GET", "redirgate:node:c"))["seen"]  # type: ignore[arg-type]
            await until_async(lambda seen=seen: _seen_after(redis, seen), poll_s=0.05)
        calls = await _command_calls(redis)
        calls = {name: n for name, n in calls.items() if name.split("|")[0] not in ("get", "info", "config")}
        # per heartbeat, and "something changed" (a client's first inventory rescan may still come)
        per_heartbeat = {"set", "expire", "scan", "mget", "publish"}
        assert not {name: n for name, n in calls.items() if name not in per_heartbeat}, calls
        assert calls["set"] <= heartbeats + 1 and calls["expire"] <= heartbeats + 1, calls
        keys = await redis.command("KEYS", "redirgate:*")
        assert isinstance(keys, list) and len(keys) == 2, keys  # the node key and its hash
        for key in keys:
            assert isinstance(key, bytes) and await redis.command("TTL", key) > 0, key
        nursery.cancel_scope.cancel()


async def _held(redis: RedisConnection, node: str) -> bool:
    return await redis.command("HGET", f"redirgate:clients:{node}", "thin-01") is not None


async def _hlen(redis: RedisConnection, key: str, want: int) -> bool:
    return await redis.command("HLEN", key) == want


async def _located(gateway: Gateway, identity: str, want: str) -> bool:
    assert gateway.cluster is not None
    return await gateway.cluster.locate(identity) == want


async def _command_calls(redis: RedisConnection) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (INFO commandstats)."""
    info = await redis.command("INFO", "commandstats")
    assert isinstance(info, bytes)
    calls = {}
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_") :].partition(":")
            calls[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    return calls


@pytest.mark.parametrize("lands_on", ["c", "a"])
async def test_a_restarted_client_ends_its_old_channels_on_every_node(
    tmp_path: Path, redis_server: RedisServer, lands_on: str
) -> None:
    """The client (a process, on node c) serves a channel relayed on node a, and is killed: its
    device state is gone, so once it is back the channel ends when its new session names no
    channel (landing on c: a message through Redis; on a itself: at once), not after the grace
    period (300 s here: the test's timeout ends first)."""
    make_pki(tmp_path)
    routes = [LabRoute("kbd", "usb:1209:0002")]
    async with trio.open_nursery() as nursery:
        nodes = {}
        for name in ("a", "c"):
            config = load_config(cluster_config(tmp_path, routes, name, redis_server.url, resume_grace_s=300))
            nodes[name] = await start_gateway(nursery, config)
        a, c = nodes["a"][0], nodes["c"][0]
        assert a.cluster is not None and a.remote is not None
        with contextlib.ExitStack() as stack:
            first = write_client_config(tmp_path, nodes["c"][1].tunnel[1], virtual=["virtual:keyboard"])
            process = stack.enter_context(running_client(first, tmp_path / "first.log"))
            await until(lambda: len(a.cluster.peers) == 1 and c.registry.online("thin-01"))
            tcp = await trio.open_tcp_stream("127.0.0.1", nodes["a"][1].routes["kbd"][1])
            async with tcp, UsbredirGuest(tcp, peer="vm on a") as vm:
                device = await vm.wait_device()
                assert (device.connect.vendor_id, device.connect.product_id) == KBD
                assert len(a.registry.remote_resumable) == 1  # relayed on a, the client's session on c

                kill(process)  # SIGKILL: nothing closed cleanly, like a crash or a power cut
                await until(lambda: not c.registry.online("thin-01"))
                assert len(a.registry.remote_resumable) == 1  # suspended: waiting for a resume
                again = write_client_config(
                    tmp_path, nodes[lands_on][1].tunnel[1], virtual=["virtual:keyboard"], file_name="again.toml"
                )
                stack.enter_context(running_client(again, tmp_path / "again.log"))
                await until(lambda: not a.registry.remote_resumable)
                assert a.remote.acks.counters["ended_for_restart"] == 1
        nursery.cancel_scope.cancel()


async def _seen_after(redis: RedisConnection, seen: float) -> bool:
    raw = await redis.command("GET", "redirgate:node:c")
    return isinstance(raw, bytes) and json.loads(raw)["seen"] > seen


async def test_a_hello_without_nodes_keeps_the_ones_the_client_knew(tmp_path: Path) -> None:
    """A node that has not seen the others yet (Redis just came back) names none: the client keeps
    what it learned, else it would be left with only its configured, perhaps dead, gateway."""
    async with running_lab(tmp_path, [], virtual=["virtual:keyboard"]) as lab:
        client = lab.client
        assert client is not None and client.learned == ()
        client.learned = (f"127.0.0.1:{free_port()}",)  # as a cluster's hello would have said
        await lab.stop_gateway()
        await until(lambda: not client.online)
        await lab.start_gateway()  # a gateway alone: its hello names no other node
        await until(lambda: client.online and client.sessions == 2)
        assert len(client.addresses()) == 2 and client.learned != ()


async def test_after_a_loss_a_dead_gateway_is_skipped_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`gateway` lists three; the client's gateway stops: the first redial is jittered as always,
    then each address that refuses (the dead one, if the random order put it first) is followed by
    the next one right away: one wait in all before the client is on the live one."""
    caplog.set_level(logging.INFO, "redirgate.client.tunnel")
    make_pki(tmp_path)
    (tmp_path / "two").mkdir()
    shutil.copytree(tmp_path / "pki", tmp_path / "two" / "pki")
    async with trio.open_nursery() as nursery:
        one = await start_gateway(nursery, load_config(write_gateway_config(tmp_path, [])))
        two = await start_gateway(nursery, load_config(write_gateway_config(tmp_path / "two", [])))
        dead = free_port()
        path = write_client_config(tmp_path, one[1].tunnel[1])
        listed = f'["127.0.0.1:{one[1].tunnel[1]}", "127.0.0.1:{dead}", "127.0.0.1:{two[1].tunnel[1]}"]'
        path.write_text(path.read_text().replace(f'"127.0.0.1:{one[1].tunnel[1]}"', listed))
        await start_client(nursery, path)
        before = len(caplog.records)
        one[2].cancel()
        await until(lambda: "thin-01" in two[0].registry.clients)
        lines = [r.getMessage() for r in caplog.records[before:] if "lost:" in r.getMessage()]
        assert len([line for line in lines if "reconnecting" in line]) == 1, lines
        assert all("reconnecting" in line or "at once" in line for line in lines), lines
        nursery.cancel_scope.cancel()


def _duplicate_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "two clients with one certificate" in r.getMessage()]


async def test_one_identity_on_two_nodes_the_live_session_stays(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The single gateway's rule across nodes: a clone (the same certificate) dialling node b while
    the client is alive on node c is refused, counted and logged once per interval with both
    addresses and both nodes; two sessions accepted while Redis was away are found when it is back,
    and the older live one stays."""
    caplog.set_level(logging.INFO, "redirgate.gateway")
    make_pki(tmp_path)
    async with trio.open_nursery() as nursery, open_redis(RedisUrl.parse(redis_server.url)) as redis:
        nodes = {}
        for name in ("b", "c"):
            config = load_config(cluster_config(tmp_path, [], name, redis_server.url))
            nodes[name] = await start_gateway(nursery, config)
        b, c = nodes["b"][0], nodes["c"][0]
        first, _ = await start_client(nursery, write_client_config(tmp_path, nodes["c"][1].tunnel[1]))
        await until_async(lambda: _held(redis, "c"), poll_s=0.05)
        live_peer = c.registry.clients["thin-01"].peer

        clone_config = write_client_config(tmp_path, nodes["b"][1].tunnel[1], file_name="clone.toml")
        clone_config.write_text(clone_config.read_text().replace("[client]\n", "[client]\nreconnect_max_s = 1\n"))
        clone, clone_scope = await start_client(nursery, clone_config, wait=False)
        await until(lambda: b.tunnel.counters["duplicate_identity_refused"] >= 2)
        lines = _duplicate_lines(caplog)
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING  # once per interval
        text = lines[0].getMessage()
        assert "on node b while its session from" in text and f"{live_peer} on node c is alive" in text
        assert "thin-01" not in b.registry.clients and first.online and clone.sessions == 0  # never let in
        assert b'redirgate_refusals_total{node="b",reason="duplicate_identity"}' in generate_latest(b.events.registry)

        # both let in while Redis is away (no node can ask another); once it is back, the older stays
        redis_server.stop()
        await until(lambda: "thin-01" in b.registry.clients and clone.online)
        refused = b.tunnel.counters["duplicate_identity_refused"]
        redis_server.start()
        await until(lambda: b.tunnel.counters["duplicate_identity_refused"] > refused)
        await until(lambda: "thin-01" not in b.registry.clients or b.registry.clients["thin-01"].closed)
        assert c.registry.online("thin-01") and c.registry.clients["thin-01"].peer == live_peer and first.online
        clone_scope.cancel()
        nursery.cancel_scope.cancel()
