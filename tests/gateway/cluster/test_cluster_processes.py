"""Three `gateway run` processes as one cluster on a real redis-server, and one `client run`.

The client's control connection is on node c; the VM side (the usbredir
guest helper, a plain socket for the serial route) connects to node a's route
ports.  Then Redis is stopped and started again while a channel moves data,
then node c is killed: the client must come back on a or b by itself;
last node a, which holds a VM's socket, is killed: the VM gets its device
back through b.
The tests run in this order on one set of processes (module fixture).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import LabRoute, make_pki, write_client_config
from redirgate.vmside.guest import GuestError, UsbredirGuest
from tests.support.cluster_lab import cluster_config
from tests.support.gateway_procs import GatewayProcess, kill, running_client, running_gateway
from tests.support.redis_server import RedisServer
from tests.support.services import redirgate
from tests.support.waiting import until, wait_for_text, wait_until

ROUTES = [
    LabRoute("kbd", "usb:1209:0002"),
    LabRoute("loop", "usb:1209:0003"),
    LabRoute("console", "serial:console"),
]


#: logs are files other processes write: looked at less often than a counter
LOG_POLL_S = 0.05


@dataclass
class Cluster:
    directory: Path
    nodes: dict[str, GatewayProcess]
    client_log: Path
    master: int


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cluster")
    make_pki(directory)
    master, slave = os.openpty()
    tty.setraw(master)
    try:
        with contextlib.ExitStack() as stack:
            nodes = {}
            for name in ("a", "b", "c"):
                config = cluster_config(directory, ROUTES, name, redis_server.url, metrics=True)
                nodes[name] = stack.enter_context(running_gateway(config, directory / f"{name}.log"))
            client_config = write_client_config(
                directory,
                nodes["c"].tunnel_port,
                virtual=["virtual:keyboard", "virtual:loopback"],
                extra_export=f'\n[[serial]]\nname = "console"\nport = "{os.ttyname(slave)}"\n',
            )
            client_log = directory / "client.log"
            stack.enter_context(running_client(client_config, client_log))
            wait_for_text(client_log, "cluster has 2 other node")
            wait_for_text(directory / "c.log", "client thin-01 online")
            yield Cluster(directory, nodes, client_log, master)
    finally:
        os.close(master)
        os.close(slave)


def _log(cluster: Cluster, node: str) -> str:
    return cluster.nodes[node].log()


async def _metrics(node: GatewayProcess) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", node.metrics_port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := await stream.receive_some(65536):
            body += chunk
    return body.decode()


async def _descriptor(guest: UsbredirGuest) -> bytes:
    status, data = await guest.control(0x80, 6, 0x100, 0, 18)
    assert status == 0 and isinstance(data, bytes) and len(data) == 18
    return data


async def test_usb_channel_relayed_on_the_node_that_holds_the_vm(cluster: Cluster) -> None:
    a = cluster.nodes["a"]
    tcp = await trio.open_tcp_stream("127.0.0.1", a.routes["kbd"])
    async with tcp, UsbredirGuest(tcp, peer="vm on a") as guest:
        await guest.wait_device()
        descriptor = await _descriptor(guest)
        assert descriptor[8:12] == bytes([0x09, 0x12, 0x02, 0x00])  # 1209:0002, the keyboard on the client
    assert re.search(r"route kbd: client thin-01 \(on node c\) attached channel \d+ here", _log(cluster, "a"))
    assert f"for node a; its data connection goes to 127.0.0.1:{a.tunnel_port}" in _log(cluster, "c")
    assert "client thin-01 online" not in _log(cluster, "a")  # the client's control connection stayed on c


def test_gateway_status_on_any_node_shows_the_whole_cluster(cluster: Cluster) -> None:
    def status() -> str:
        out = redirgate("gateway", "status", "--config", str(cluster.directory / "b.toml"))
        assert out.returncode == 0, out.stderr
        return out.stdout if "3 node(s) live" in out.stdout and "1 client(s)" in out.stdout else ""

    text = wait_until(status, "node b's status lists three nodes and the client on c")
    assert "cluster: node b, Redis redis://:***@127.0.0.1:" in text and " up, " in text
    assert f"  c at 127.0.0.1:{cluster.nodes['c'].tunnel_port}: 1 client(s)" in text
    assert f"  b (this node) at 127.0.0.1:{cluster.nodes['b'].tunnel_port}: 0 client(s)" in text


def test_serial_route_through_another_node(cluster: Cluster) -> None:
    a = cluster.nodes["a"]
    with socket.create_connection(("127.0.0.1", a.routes["console"]), timeout=60) as vm:
        wait_for_text(a.log_path, r"route console: client thin-01 \(on node c\) attached channel")
        vm.sendall(b"ping from the vm\n")
        got = b""
        while len(got) < 17:
            ready, _, _ = select.select([cluster.master], [], [], 60)
            assert ready, f"only {got!r} reached the device"
            got += os.read(cluster.master, 64)
        assert got == b"ping from the vm\n"
        os.write(cluster.master, b"pong from the device\n")
        vm.settimeout(60)
        back = b""
        while len(back) < 21:
            chunk = vm.recv(64)
            assert chunk
            back += chunk
        assert back == b"pong from the device\n"


@pytest.mark.trio_timeout(180)
async def test_redis_outage_keeps_channels_and_refuses_new_attaches_until_back(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    a = cluster.nodes["a"]
    moved = 0
    failures: list[str] = []
    tcp = await trio.open_tcp_stream("127.0.0.1", a.routes["kbd"])
    async with tcp, UsbredirGuest(tcp, peer="vm on a") as guest, trio.open_nursery() as nursery:
        await guest.wait_device()

        async def keep_moving() -> None:
            nonlocal moved
            while True:
                data = await _descriptor(guest)
                if data[8:12] != bytes([0x09, 0x12, 0x02, 0x00]):
                    failures.append(data.hex())
                moved += 1

        nursery.start_soon(keep_moving)
        await until(lambda: moved >= 20)
        redis_server.stop()
        await until(
            lambda: "cluster: Redis at" in _log(cluster, "a") and "unreachable" in _log(cluster, "a"), poll_s=LOG_POLL_S
        )
        before = moved
        await until(lambda: moved >= before + 50)  # the established channel keeps moving

        # a new attach through a now needs c, found through Redis: refused while it is down
        second = await trio.open_tcp_stream("127.0.0.1", a.routes["loop"])
        async with second, UsbredirGuest(second, peer="second vm on a") as waiting:
            await until(
                lambda: "Redis is unreachable" in _log(cluster, "a") and "attach refused" in _log(cluster, "a"),
                poll_s=LOG_POLL_S,
            )
            metrics = await _metrics(a)
            assert 'redirgate_cluster_redis_up{node="a"} 0.0' in metrics
            refused = re.search(
                r'redirgate_cluster_attaches_refused_total\{node="a",reason="redis_down"\} (\S+)', metrics
            )
            assert refused and float(refused.group(1)) >= 1, metrics
            assert 'redirgate_clients_online{node="a"}' in metrics  # every metric carries the node
            assert waiting.device is None and not waiting.hello_received  # held: no device while Redis is down

            redis_server.start()
            await waiting.wait_device()  # attaches work again, by themselves
            status, data = await waiting.control(0x80, 6, 0x100, 0, 18)
            assert status == 0 and data[8:12] == bytes([0x09, 0x12, 0x03, 0x00])
        assert "is back after" in _log(cluster, "a")
        after = moved
        await until(lambda: moved >= after + 20)
        nursery.cancel_scope.cancel()
    assert failures == []


@pytest.mark.trio_timeout(120)
async def test_node_killed_its_client_comes_back_on_another(cluster: Cluster) -> None:
    c = cluster.nodes["c"]
    killed = time.monotonic()
    kill(c.process)
    await until(lambda: any("client thin-01 online" in _log(cluster, n) for n in ("a", "b")), poll_s=LOG_POLL_S)
    back_s = time.monotonic() - killed
    where = "a" if "client thin-01 online" in _log(cluster, "a") else "b"
    print(f"client back on node {where} {back_s:.2f} s after node c was killed")
    # through both survivors: one now holds the client (a channel of its own), the other asks it
    for node in ("a", "b"):
        tcp = await trio.open_tcp_stream("127.0.0.1", cluster.nodes[node].routes["kbd"])
        async with tcp, UsbredirGuest(tcp, peer=f"vm on {node}") as guest:
            await guest.wait_device()
            await _descriptor(guest)


@pytest.mark.trio_timeout(120)
async def test_node_holding_the_vm_killed_the_vm_comes_back_through_another(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    tcp = await trio.open_tcp_stream("127.0.0.1", a.routes["kbd"])
    async with tcp, UsbredirGuest(tcp, peer="vm on a") as guest:
        await guest.wait_device()
        kill(a.process)
        with pytest.raises(GuestError):  # its socket was on a: the device unplugs
            while True:
                await _descriptor(guest)
    # QEMU reconnects, here through b: the client is on b now, or comes there from a
    tcp = await trio.open_tcp_stream("127.0.0.1", b.routes["kbd"])
    async with tcp, UsbredirGuest(tcp, peer="vm on b") as guest:
        await guest.wait_device()
        await _descriptor(guest)
