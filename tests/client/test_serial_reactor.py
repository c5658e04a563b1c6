"""A raw serial channel's bytes in the client's relay reactor (client/serial/raw.py, issue 13).

In-process gateway and client (`tests.support.tunnel_lab`: real mutual TLS
on real sockets), a pty standing in for the port (the test holds the
master), a TCP socket on the route as the VM.  While plain bytes flow the
client lends the tty's fd and the data connection's socket to its reactor
thread; the service's counters say which bytes the reactor moved.  Waits
are on the service's state and on bytes arriving, never on time.
"""

from __future__ import annotations

import logging
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import LabRoute
from redirgate.client.serial.service import PortService
from tests.support.serial_lab import Pty, both_ways, pty_pair, read_master, receive_exactly, write_master
from tests.support.tunnel_lab import Lab, proxied_lab, running_lab
from tests.support.waiting import until

ROUTES = [LabRoute("console", "serial:console")]


def _export(pty: Pty) -> str:
    return f'[[serial]]\nname = "console"\nport = "{pty.path}"\nsettings = "115200,8N1"\n'


def _service(lab: Lab) -> PortService:
    assert lab.client is not None and lab.client.serial is not None and lab.client.serial.serial is not None
    return lab.client.serial.serial.services["console"]


@asynccontextmanager
async def _vm(lab: Lab, pty: Pty) -> AsyncIterator[trio.SocketStream]:
    """The VM's socket on the route, once the channel's bytes pass (one echo each way)."""
    vm = await trio.open_tcp_stream("127.0.0.1", lab.route_port("console"))
    async with vm:
        await vm.send_all(b"hi")
        assert await read_master(pty, 2) == b"hi"
        await write_master(pty, b"ho")
        assert await receive_exactly(vm, 2) == b"ho"
        yield vm


async def _typed(vm: trio.SocketStream, pty: Pty, rounds: int) -> None:
    """`rounds` small messages each way, one at a time, as a console is used."""
    for i in range(rounds):
        line = b"%04d\r" % i
        await vm.send_all(line)
        assert await read_master(pty, len(line)) == line
        await write_master(pty, line)
        assert await receive_exactly(vm, len(line)) == line


async def _reactor_moved(service: PortService, before: tuple[int, ...], n: int) -> None:
    """The reactor counted `n` bytes each way since `before` (its thread counts
    a write just after making it: the last one may land after the bytes did)."""
    await until(lambda: service.lent_bytes_in - before[0] >= n and service.lent_bytes_out - before[1] >= n)
    assert (service.lent_bytes_in - before[0], service.lent_bytes_out - before[1]) == (n, n)


async def test_the_reactor_carries_a_raw_channels_bytes_both_ways(tmp_path: Path) -> None:
    with pty_pair() as pty:
        async with running_lab(tmp_path, ROUTES, client_extra_export=_export(pty)) as lab, _vm(lab, pty) as vm:
            service = _service(lab)
            await until(lambda: service.lent, "the port is lent to the reactor")
            before = (service.lent_bytes_in, service.lent_bytes_out, service.lends)
            await _typed(vm, pty, 50)
            # every byte of it went through the reactor, in the lend it was in (nothing congested)
            await _reactor_moved(service, before, 50 * 5)
            assert service.lends == before[2]


async def test_a_settings_change_takes_the_port_back_and_plain_bytes_go_to_the_reactor_again(tmp_path: Path) -> None:
    with pty_pair() as pty:
        async with running_lab(tmp_path, ROUTES, client_extra_export=_export(pty)) as lab, _vm(lab, pty) as vm:
            service = _service(lab)
            await until(lambda: service.lent, "the port is lent to the reactor")
            lends = service.lends
            session = service.session
            assert session is not None
            session.apply(baud=9600)  # what RFC 2217 or a route's settings do: not plain data
            assert pty.speed() == termios.B9600
            await until(lambda: service.lends > lends, "the port was given back and lent again")
            before = (service.lent_bytes_in, service.lent_bytes_out)
            await _typed(vm, pty, 10)
            await _reactor_moved(service, before, 50)


async def test_a_broken_data_connection_resumes_from_the_reactor_without_loss(tmp_path: Path) -> None:
    with pty_pair() as pty:
        async with proxied_lab(tmp_path, ROUTES, extra=_export(pty)) as (lab, proxy), _vm(lab, pty) as vm:
            service = _service(lab)
            await until(lambda: service.lent, "the port is lent to the reactor")
            lends = service.lends
            async with both_ways(vm, pty, 3000) as traffic:
                await traffic.send(0, 2)
                proxy.reset()  # RST both ways, the reactor's socket breaks under it
                await traffic.send(1, 2)
            assert bytes(traffic.got_device) == traffic.to_device  # every byte once, in order
            assert bytes(traffic.got_vm) == traffic.to_vm
            channel = next(r for r in lab.gateway.routes if r.name == "console").channel
            assert channel is not None and channel.resume is not None and channel.resume.stream is not None
            assert channel.resume.stream.resumes == 1
            # and the resumed channel's plain bytes are the reactor's again
            await until(lambda: service.lends > lends and service.lent, "lent again after the resume")
            before = (service.lent_bytes_in, service.lent_bytes_out)
            await _typed(vm, pty, 10)
            await _reactor_moved(service, before, 50)


async def test_a_port_that_hangs_up_while_lent_is_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pty_pair() as pty:
        async with running_lab(tmp_path, ROUTES, client_extra_export=_export(pty)) as lab, _vm(lab, pty):
            service = _service(lab)
            await until(lambda: service.lent, "the port is lent to the reactor")
            opened = service.opened_count
            with caplog.at_level(logging.DEBUG, logger="redirgate"):
                pty.close()  # the device goes away under the reactor
                await until(lambda: service.port is None, "the service closed the port")
            assert service.opened_count == opened and not service.lent
            lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert lines == [f"console: {pty.path} hung up; reopening when it returns"]
            assert not any(r.exc_info for r in caplog.records)


async def test_a_vm_that_stops_reading_gets_every_byte_after_the_reactor_hands_back(tmp_path: Path) -> None:
    """The data connection stops taking the port's bytes (the VM does not read,
    so the gateway stops reading the client): the reactor gives the channel back
    with what it read and could not write, the service's ring takes it, and once
    the VM reads again every byte arrives once, in order."""
    data = bytes(i * 7 % 251 for i in range(16 << 20))  # more than every socket buffer on the way holds
    with pty_pair() as pty:
        async with running_lab(tmp_path, ROUTES, client_extra_export=_export(pty)) as lab, _vm(lab, pty) as vm:
            service = _service(lab)
            await until(lambda: service.lent, "the port is lent to the reactor")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_master, pty, data)
                await until(
                    lambda: not service.lent and service.session is not None and service.session.rx_pending,
                    "handed back on congestion",
                )
                assert await receive_exactly(vm, len(data)) == data
            assert service.lent_bytes_out > 0  # the reactor moved some of them
