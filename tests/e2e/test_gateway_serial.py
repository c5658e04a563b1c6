"""A serial port through the gateway: `client run` exports a pty, a TCP consumer
(what QEMU's isa-serial chardev is) on the route gets its bytes both ways.

Real processes and real mutual TLS; the pty's far end is held by the test, so
it is the "device".  What the device printed before anyone connected is kept
in the client's ring and delivered first.
"""

from __future__ import annotations

import os
import socket
import termios
import tty
from pathlib import Path

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.serial_lab import read_fd_exactly, tty_unread
from tests.support.waiting import wait_for_text, wait_until


def _read_exactly(sock: socket.socket, n: int, timeout_s: float = 60.0) -> bytes:
    sock.settimeout(timeout_s)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"closed after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def test_serial_port_through_gateway_both_ways_with_ring_replay(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    try:
        make_pki(tmp_path)
        config = write_gateway_config(tmp_path, [LabRoute("console", "serial:console")])
        with running_gateway(config, tmp_path / "gateway.log") as gw:
            client_config = write_client_config(
                tmp_path,
                gw.tunnel_port,
                extra_export=f'\n[[serial]]\nname = "console"\nport = "{path}"\nsettings = "115200,8N1"\n',
            )
            with running_client(client_config, tmp_path / "client.log"):
                wait_for_text(tmp_path / "client.log", "console: opened")  # before that, bytes are the tty's
                os.write(master, b"boot messages nobody watched\r\n")
                # the client has read them (into its ring: no VM is connected yet)
                wait_until(
                    lambda: tty_unread(slave) == 0,
                    "the client read the tty empty",
                    detail=(tmp_path / "client.log").read_text,
                )
                with socket.create_connection(("127.0.0.1", gw.routes["console"]), timeout=60) as vm:
                    first = _read_exactly(vm, len(b"boot messages nobody watched\r\n"))
                    assert first == b"boot messages nobody watched\r\n", gw.log()
                    every = bytes(range(256)) * 64
                    vm.sendall(every)
                    assert read_fd_exactly(master, len(every)) == every
                    os.write(master, every)
                    assert _read_exactly(vm, len(every)) == every
                    attrs = termios.tcgetattr(slave)
                    assert attrs[4] == termios.B115200  # the configured settings are on the tty
    finally:
        os.close(master)
        os.close(slave)


def test_line_settings_from_the_gateway_route_reach_the_tty(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    try:
        make_pki(tmp_path)
        route = LabRoute("console", "serial:console", extra={"settings": "57600,8N1,rtscts"})
        config = write_gateway_config(tmp_path, [route])
        with running_gateway(config, tmp_path / "gateway.log") as gw:
            client_config = write_client_config(
                tmp_path,
                gw.tunnel_port,
                extra_export=f'\n[[serial]]\nname = "console"\nport = "{path}"\nsettings = "115200,8N1"\n',
            )
            with running_client(client_config, tmp_path / "client.log"):
                # the client's own settings first
                wait_until(
                    lambda: termios.tcgetattr(slave)[4] == termios.B115200,
                    "the tty at 115200 baud",
                    detail=(tmp_path / "client.log").read_text,
                )
                with socket.create_connection(("127.0.0.1", gw.routes["console"]), timeout=60) as vm:
                    vm.sendall(b"ping\n")
                    assert read_fd_exactly(master, 5) == b"ping\n"
                    attrs = termios.tcgetattr(slave)
                    assert attrs[4] == termios.B57600 and attrs[5] == termios.B57600, (
                        tmp_path / "client.log"
                    ).read_text()
                    assert attrs[2] & termios.CRTSCTS
        assert "asked for 57600,8N1 rtscts" in (tmp_path / "client.log").read_text()
    finally:
        os.close(master)
        os.close(slave)
