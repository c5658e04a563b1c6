"""A gateway restart without an unplug (issue 16 step 3): SIGUSR2 hands everything to a new process.

Real processes: `redirgate gateway run` and `redirgate client run` (the
emulated loopback device, and a pty as a serial port).  The VM side is
this test: our `UsbredirGuest` on the USB route, checking every loopback
round byte by byte, and a plain TCP socket on the serial route.  The
gateway is sent SIGUSR2 while both carry data; the new process (another
pid) must take over QEMU's sockets and the channels, the old one must
exit, and the VM side must see every byte once, in order, with no unplug.
Waits are on events (status through the admin socket, bytes arriving).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.vmside.guest import UsbredirGuest
from tests.support.gateway_procs import (
    GatewayProcess,
    gateway_status,
    pid_alive,
    restart_by_usr2,
    running_client,
    running_gateway,
    stop_successors,
)
from tests.support.loopback import Loopback
from tests.support.serial_lab import Pty, pty_pair, read_master, receive_exactly, write_master
from tests.support.waiting import until, until_async

LOOP = "usb:1209:0003"  # the emulated loopback device
ROUTES = [LabRoute("loop", LOOP), LabRoute("console", "serial:console")]


async def status(admin: Path) -> dict[str, Any]:
    return await trio.to_thread.run_sync(gateway_status, admin)


def channel_of(document: dict[str, Any], route: str) -> dict[str, Any] | None:
    return next(r["channel"] for r in document["routes"] if r["name"] == route)


@contextmanager
def lab(tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path, Pty, list[int]]]:
    """Gateway and client processes; yields (gateway, admin socket, the serial port's pty, pids to stop)."""
    make_pki(tmp_path)
    config = write_gateway_config(tmp_path, ROUTES)
    successors: list[int] = []
    with pty_pair() as pty, running_gateway(config, tmp_path / "gateway.log") as gw:
        extra = f'[[serial]]\nname = "console"\nport = "{pty.path}"\nsettings = "115200,8N1"\n'
        client = write_client_config(tmp_path, gw.tunnel_port, virtual=["virtual:loopback"], extra_export=extra)
        try:
            with running_client(client, tmp_path / "client.log"):
                yield gw, tmp_path / "gateway.sock", pty, successors
        finally:
            stop_successors(gw, tmp_path / "gateway.sock", successors)


async def test_a_usr2_restart_hands_live_usb_and_serial_channels_to_a_new_process(tmp_path: Path) -> None:
    with lab(tmp_path) as (gw, admin, pty, successors):
        tcp = await trio.open_tcp_stream("127.0.0.1", gw.routes["loop"])
        serial = await trio.open_tcp_stream("127.0.0.1", gw.routes["console"])
        async with tcp, serial, UsbredirGuest(tcp, peer="vm") as vm:
            await vm.wait_device()
            assert (await vm.set_configuration(1)).status == 0
            await serial.send_all(b"hello")
            assert await read_master(pty, 5) == b"hello"
            before = await status(admin)
            usb_before, serial_before = channel_of(before, "loop"), channel_of(before, "console")
            assert usb_before is not None and serial_before is not None

            to_device = b"".join(b"%06d\n" % i for i in range(4000))  # 28 000 bytes each way
            to_vm = b"".join(b"%06d\r" % i for i in range(4000))
            half = len(to_device) // 2
            got_device, got_vm = bytearray(), bytearray()
            loop = Loopback(vm)

            async def device_reader() -> None:
                got_device.extend(await read_master(pty, len(to_device)))

            async def vm_reader() -> None:
                got_vm.extend(await receive_exactly(serial, len(to_vm)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop.run)
                nursery.start_soon(device_reader)
                nursery.start_soon(vm_reader)
                await loop.progress()
                await serial.send_all(to_device[:half])
                await write_master(pty, to_vm[:half])
                new_pid = await restart_by_usr2(gw, admin, successors)
                await serial.send_all(to_device[half:])
                await write_master(pty, to_vm[half:])
                await loop.progress(5)  # the loopback goes on through the new process
                await until(lambda: len(got_device) == len(to_device) and len(got_vm) == len(to_vm), "serial bytes")
                loop.stop = True
            assert bytes(got_device) == to_device  # every byte once, in order
            assert bytes(got_vm) == to_vm
            assert vm.disconnects == 0, "the VM saw its device unplugged"

            assert new_pid != gw.process.pid and not pid_alive(gw.process.pid)
            after = await status(admin)
            assert after["pid"] == new_pid
            usb_after, serial_after = channel_of(after, "loop"), channel_of(after, "console")
            assert usb_after is not None and serial_after is not None
            assert (usb_after["id"], serial_after["id"]) == (usb_before["id"], serial_before["id"])  # never ended
            assert usb_after["resumes"] >= 1 and serial_after["resumes"] >= 1
            assert "handed over" in gw.log()
            log = gw.log()  # the old process says why its channels let go of their client connections
            assert "the gateway is restarting" in log and "came back on a new connection" not in log


async def test_a_restart_whose_new_process_cannot_start_leaves_the_old_one_serving(tmp_path: Path) -> None:
    with lab(tmp_path) as (gw, admin, _pty, successors):
        tcp = await trio.open_tcp_stream("127.0.0.1", gw.routes["loop"])
        async with tcp, UsbredirGuest(tcp, peer="vm") as vm:
            await vm.wait_device()
            assert (await vm.set_configuration(1)).status == 0
            loop = Loopback(vm)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop.run)
                await loop.progress()
                (tmp_path / "gateway.toml").write_text("[gateway]\ntunnel_listen = 'nonsense'\n")  # broken config
                gw.process.send_signal(signal.SIGUSR2)
                await until(lambda: "restart called off" in gw.log(), "the restart called off")
                await loop.progress(3)  # still served by the old process
                loop.stop = True
            assert vm.disconnects == 0
        document = await status(admin)
        assert document["pid"] == gw.process.pid and document["restart_failures"] == 1
        assert gw.process.poll() is None
        lines = [line for line in gw.log().splitlines() if "restart called off" in line]
        assert len(lines) == 1 and "exit code" in lines[0], lines
        assert successors == []  # no new process serves


async def test_an_admin_answer_under_way_when_the_restart_completes_is_finished_before_the_old_process_exits(
    tmp_path: Path,
) -> None:
    """`gateway status` during a restart reads a whole answer: the old process stops taking
    admin connections once the new one serves (they wait in the backlog for it) and
    finishes the answers it is writing before it exits.  Here an answer is held open by
    its reader (the request line not yet complete) across the moment the new process
    serves; the old process must still answer it, from its own pid, in full.  The new
    process is held stopped (SIGSTOP) until the held connection is surely the old one's."""
    import json
    import socket

    make_pki(tmp_path)
    config = write_gateway_config(tmp_path, [LabRoute("loop", LOOP)])
    admin = tmp_path / "gateway.sock"
    successors: list[int] = []
    # the held answer outlives the admin socket's 5 s budget on a loaded machine: a longer one
    env = {"REDIRGATE_ADMIN_TIMEOUT_S": "300"}
    with running_gateway(config, tmp_path / "gateway.log", env=env) as gw:
        try:
            old = gw.process.pid
            gw.process.send_signal(signal.SIGUSR2)
            await until(lambda: bool(children_of(old)), "the new process started")
            new = children_of(old)[0]
            successors.append(new)
            os.kill(new, signal.SIGSTOP)  # it accepts nothing meanwhile: only the old process answers
            held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with held:
                held.connect(str(admin))
                held.sendall(b'{"command": "status"}')  # no newline yet: the answer waits for it
                assert (await status(admin))["pid"] == old  # the held one was accepted first, by the old process
                os.kill(new, signal.SIGCONT)

                async def serving() -> bool:
                    return (await status(admin))["pid"] == new

                await until_async(serving, "the new process serving", poll_s=0.1)
                held.sendall(b"\n")
                held.shutdown(socket.SHUT_WR)
                held.settimeout(60)
                answer = b""
                while chunk := await trio.to_thread.run_sync(held.recv, 65536):
                    answer += chunk
            assert json.loads(answer)["pid"] == old  # whole, and from the process that took the request
            await trio.to_thread.run_sync(gw.process.wait, 60)  # then it leaves
        finally:
            for pid in successors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            stop_successors(gw, admin, successors)


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found
