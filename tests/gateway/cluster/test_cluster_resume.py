"""Channels that outlive their client's node (issue 18 with issue 16's resumable channels).

Three `gateway run` processes on a real redis-server and one `client run`.
The client lists nodes c and b (in that order) and learns a; the VM side
holds a USB route (the emulated loopback device, every round checked byte
by byte) and a serial route (a pty stands in for the port) on node a, so
both channels are relayed on a while the client's control connection is on
c.  Node a advertises a fault proxy in front of its tunnel port, so the
test can break the client's data connections to a.

1. c is killed: the client's control connection moves to b; the channels on
   a never stop (their data connections to a are intact).
2. The data connections to a are reset and b is killed at the same time:
   the client resumes both channels against a while its control connection
   moves again (to a).

Throughout: every byte once, in order, the VM never sees its device go.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import LabRoute, make_pki, write_client_config
from redirgate.vmside.guest import UsbredirGuest
from tests.support.cluster_lab import cluster_config
from tests.support.fault_proxy import fault_proxy
from tests.support.gateway_procs import GatewayProcess, kill, running_client, running_gateway
from tests.support.loopback import Loopback
from tests.support.redis_server import RedisServer
from tests.support.serial_lab import both_ways, pty_pair, read_master
from tests.support.waiting import until, wait_for_text

ROUTES = [LabRoute("loop", "usb:1209:0003"), LabRoute("console", "serial:console")]
#: logs are files other processes write: looked at less often than a counter
LOG_POLL_S = 0.05


def _online(node: GatewayProcess) -> bool:
    return "client thin-01 online" in node.log()


@pytest.mark.trio_timeout(240)
async def test_channels_live_on_while_the_clients_node_dies_and_its_data_connections_break(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    make_pki(tmp_path)
    async with fault_proxy(("127.0.0.1", 1)) as proxy:  # the target is a's tunnel port, once a runs
        with contextlib.ExitStack() as stack, pty_pair() as pty:
            nodes: dict[str, GatewayProcess] = {}
            for name in ("a", "b", "c"):
                advertise = f"127.0.0.1:{proxy.port}" if name == "a" else "127.0.0.1:0"
                config = cluster_config(tmp_path, ROUTES, name, redis_server.url, advertise=advertise)
                nodes[name] = stack.enter_context(running_gateway(config, tmp_path / f"{name}.log"))
            a, b, c = nodes["a"], nodes["b"], nodes["c"]
            proxy.target = ("127.0.0.1", a.tunnel_port)
            extra = f'\n[[serial]]\nname = "console"\nport = "{pty.path}"\n'
            path = write_client_config(tmp_path, c.tunnel_port, virtual=["virtual:loopback"], extra_export=extra)
            listed = f'["127.0.0.1:{c.tunnel_port}", "127.0.0.1:{b.tunnel_port}"]'
            path.write_text(path.read_text().replace(f'"127.0.0.1:{c.tunnel_port}"', listed))
            client_log = tmp_path / "client.log"
            stack.enter_context(running_client(path, client_log))
            wait_for_text(client_log, "cluster has 2 other node")

            tcp = await trio.open_tcp_stream("127.0.0.1", a.routes["loop"])
            serial_vm = await trio.open_tcp_stream("127.0.0.1", a.routes["console"])
            async with tcp, serial_vm, UsbredirGuest(tcp, peer="vm on a") as vm, trio.open_nursery() as nursery:
                await vm.wait_device()
                assert (await vm.set_configuration(1)).status == 0
                loop = Loopback(vm)
                loop.size = 65536
                nursery.start_soon(loop.run)
                await loop.progress()
                await serial_vm.send_all(b"hello")
                assert await read_master(pty, 5) == b"hello"
                assert _online(c) and not _online(a) and not _online(b)
                assert re.search(r"route loop: client thin-01 \(on node c\) attached channel", a.log())
                assert re.search(r"route console: client thin-01 \(on node c\) attached channel", a.log())

                async with both_ways(serial_vm, pty, 6000) as traffic:  # 42 000 bytes each way
                    await traffic.send(0, 3)

                    # 1. the client's node dies; the channels on a do not notice
                    kill(c.process)
                    await until(lambda: _online(b), "the client on node b", poll_s=LOG_POLL_S)
                    await loop.progress(80)  # past the replay limit (4 MiB each way): acks pass through Redis
                    await traffic.send(1, 3)

                    # 2. the data connections to a break while the control connection moves again
                    assert proxy.reset() >= 2
                    kill(b.process)
                    await until(lambda: _online(a), "the client on node a", poll_s=LOG_POLL_S)
                    await traffic.send(2, 3)
                await until(lambda: len(re.findall(r"channel \d+ of thin-01 resumed", a.log())) >= 2, poll_s=LOG_POLL_S)
                await loop.progress(80)  # the acks on a's own session now
                loop.stop = True
                log = a.log()  # before the VM's sockets close (that ends the channels)
            assert bytes(traffic.got_device) == traffic.to_device  # every byte once, in order
            assert bytes(traffic.got_vm) == traffic.to_vm
            assert vm.disconnects == 0, "the VM saw its device unplugged"
            assert "route console: channel" not in log and "route loop: channel" not in log  # no channel ended
            assert "discarded" not in log
