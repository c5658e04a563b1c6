"""Resumable channels under network faults (issue 16): real TLS, real sockets, the fault proxy.

In-process gateway and client (`tests.support.tunnel_lab`); the client dials
the gateway through `tests.support.fault_proxy`, which pauses or resets
(RST both ways) every tunnel connection on command.  The VM side is our
`UsbredirGuest` on a USB route (the emulated loopback device, checked byte
by byte) or a plain TCP socket on a serial route (a pty stands in for the
port).  Waits are on events (transfers done, counters moved); the only
sleeps are the faults' own durations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from redirgate.cli.gateway_commands import format_status
from redirgate.cli.lab import LabRoute
from redirgate.gateway.route_server import RouteServer
from redirgate.vmside.guest import UsbredirGuest
from tests.support.loopback import Loopback
from tests.support.serial_lab import both_ways, pty_pair, read_master
from tests.support.tunnel_lab import Lab, proxied_lab
from tests.support.waiting import until

LOOP = "usb:1209:0003"
#: fast heartbeats, so a pause of a few seconds is a heartbeat loss on both sides
FAST_HEARTBEATS = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 1.5}


def route(lab: Lab, name: str) -> RouteServer:
    return next(r for r in lab.gateway.routes if r.name == name)


def gateway_resumes(lab: Lab, name: str) -> int:
    channel = route(lab, name).channel
    assert channel is not None and channel.resume is not None and channel.resume.stream is not None
    return channel.resume.stream.resumes


@asynccontextmanager
async def loopback_vm(lab: Lab) -> AsyncIterator[Loopback]:
    tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("loop"))
    async with tcp, UsbredirGuest(tcp, peer="vm") as vm:
        await vm.wait_device()
        status = await vm.set_configuration(1)
        assert status.status == 0
        loop = Loopback(vm)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.run)
            await loop.progress()
            yield loop
            loop.stop = True
        assert vm.disconnects == 0, "the VM saw its device unplugged"


async def test_bulk_loopback_survives_ten_resets(tmp_path: Path) -> None:
    async with proxied_lab(tmp_path, [LabRoute("loop", LOOP)], virtual=["virtual:loopback"]) as (lab, proxy):
        assert lab.client is not None
        async with loopback_vm(lab) as loop:
            for _ in range(10):
                assert proxy.reset() >= 1  # the data connection at least (the control one may be redialling)
                await loop.progress()
            assert gateway_resumes(lab, "loop") == 10
            reactor = route(lab, "loop").reactor
            assert reactor is not None and reactor.channels == 1  # the bytes move in the relay reactor thread
            assert [s.resumes for s in lab.client.resumer.streams.values()] == [10]
        assert route(lab, "loop").channels_served == 1  # one channel all along: no unplug, no new attach


async def test_acks_flow_on_the_next_control_connection(tmp_path: Path) -> None:
    """After a reset the channel's acks go out on the client's new control
    connection: 24 MiB each way then pass a 4 MiB replay buffer (without
    acks both senders would wait for room for ever); once the channel is
    quiet, the acks sent when idle leave both replay buffers empty."""
    async with proxied_lab(tmp_path, [LabRoute("loop", LOOP)], virtual=["virtual:loopback"]) as (lab, proxy):
        async with loopback_vm(lab) as loop:
            proxy.reset()
            await loop.progress()
            loop.size = 256 * 1024
            await loop.progress(96)
            assert gateway_resumes(lab, "loop") == 1
            # quiet: the idle acks empty both replay buffers, which then hold no storage
            loop.stop = True
            assert lab.client is not None
            client_side = lab.client.resumer.streams[1].channel.outgoing
            channel = route(lab, "loop").channel
            assert channel is not None and channel.resume is not None and channel.resume.stream is not None
            gateway_side = channel.resume.stream.channel.outgoing
            await until(lambda: not client_side.allocated and not gateway_side.allocated, "idle acks")


async def test_bulk_loopback_survives_pauses_past_the_heartbeat_timeout(tmp_path: Path) -> None:
    routes = [LabRoute("loop", LOOP)]
    async with proxied_lab(tmp_path, routes, virtual=["virtual:loopback"], **FAST_HEARTBEATS) as (lab, proxy):
        assert lab.client is not None
        client = lab.client
        async with loopback_vm(lab) as loop:
            for pause_s in (0.3, 2.5):
                sessions = client.sessions
                proxy.pause()
                await trio.sleep(pause_s)  # the fault itself (2.5 s: both sides lose the heartbeat)
                proxy.resume()
                await loop.progress()
            # the long pause ended the control session on both sides: suspended, not gone
            await until(lambda: client.sessions > sessions and client.online, "a new control session")
            await loop.progress()
        assert route(lab, "loop").channels_served == 1


async def test_the_client_comes_back_from_another_address(tmp_path: Path) -> None:
    async with proxied_lab(tmp_path, [LabRoute("loop", LOOP)], virtual=["virtual:loopback"]) as (lab, proxy):
        async with loopback_vm(lab) as loop:
            proxy.pause()
            proxy.reset()  # the old address is gone; the new one not there yet
            channel = route(lab, "loop").channel
            assert channel is not None and channel.resume is not None
            await until(lambda: channel.resume is not None and channel.resume.suspended, "the channel suspended")
            assert "SUSPENDED, waiting for the client to resume it" in format_status(lab.gateway.snapshot())
            proxy.source = "127.0.0.2"
            proxy.resume()
            await loop.progress()
            assert "resumable (resumed 1 time(s))" in format_status(lab.gateway.snapshot())
            assert gateway_resumes(lab, "loop") == 1
            clients = lab.gateway.registry.clients
            await until(lambda: "thin-01" in clients and clients["thin-01"].peer.startswith("127.0.0.2:"))
        assert route(lab, "loop").channels_served == 1


async def test_a_serial_route_loses_and_repeats_nothing_across_a_reset(tmp_path: Path) -> None:
    with pty_pair() as pty:
        extra = f'[[serial]]\nname = "console"\nport = "{pty.path}"\nsettings = "115200,8N1"\n'
        routes = [LabRoute("console", "serial:console")]
        async with proxied_lab(tmp_path, routes, extra=extra) as (lab, proxy):
            vm = await trio.open_tcp_stream("127.0.0.1", lab.route_port("console"))
            async with vm:
                await vm.send_all(b"hello")
                assert await read_master(pty, 5) == b"hello"
                async with both_ways(vm, pty, 4000) as traffic:  # 28 000 bytes each way
                    await traffic.send(0, 2)
                    proxy.reset()
                    await traffic.send(1, 2)
                assert bytes(traffic.got_device) == traffic.to_device  # every byte once, in order
                assert bytes(traffic.got_vm) == traffic.to_vm
                assert gateway_resumes(lab, "console") == 1
                assert route(lab, "console").discarded_bytes == 0


async def test_an_outage_past_the_grace_period_unplugs_cleanly_and_the_device_comes_back(tmp_path: Path) -> None:
    routes = [LabRoute("loop", LOOP, extra={"resume_grace_s": 1.0})]
    async with proxied_lab(tmp_path, routes, virtual=["virtual:loopback"], **FAST_HEARTBEATS) as (lab, proxy):
        tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("loop"))
        async with tcp, UsbredirGuest(tcp, peer="vm") as vm:
            await vm.wait_device()
            proxy.pause()
            proxy.reset()  # broken, and nothing gets through until resume()
            await until(lambda: vm.closed_reason is not None, "the gateway closes the VM's socket")
            await until(lambda: "resume_grace_s" in route(lab, "loop").last_end, "the channel's end is recorded")
            proxy.resume()
        # the client gives the channel up (the gateway refuses to resume it) and the device is free again
        tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("loop"))
        async with tcp, UsbredirGuest(tcp, peer="vm again") as vm:
            await vm.wait_device()
        assert route(lab, "loop").channels_served == 2


async def test_without_the_capability_on_either_side_a_reset_unplugs_as_before(tmp_path: Path) -> None:
    for old in ("client", "gateway"):
        (tmp_path / old).mkdir()
        async with proxied_lab(tmp_path / old, [LabRoute("loop", LOOP)], virtual=["virtual:loopback"]) as (lab, proxy):
            assert lab.client is not None
            if old == "client":
                lab.client.capabilities = frozenset()
            else:
                lab.gateway.tunnel.capabilities = frozenset()
            client, sessions = lab.client, lab.client.sessions
            proxy.reset()  # the next control connection is an old-style one
            await until(lambda c=client, n=sessions: c.sessions > n and c.online, "an old-style session")
            tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("loop"))
            async with tcp, UsbredirGuest(tcp, peer="vm") as vm:
                await vm.wait_device()
                channel = route(lab, "loop").channel
                assert channel is not None and channel.resume is None
                assert client.resumer.streams == {}
                proxy.reset()
                await until(lambda: vm.closed_reason is not None, "the channel ends with its connection")
