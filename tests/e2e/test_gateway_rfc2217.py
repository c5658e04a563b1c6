"""RFC 2217 through the gateway: pyserial's real rfc2217:// client on a route.

`gateway run` with a `protocol = "rfc2217"` route on `serial:console`, and
`client run` exporting a pty the test holds (its slave is the "device").
pyserial 3.5's `serial_for_url("rfc2217://...")` opens the route as any
RFC 2217 consumer would (telnet negotiation, then the line settings), sets
the baud rate, and the change is on the pty (termios ispeed/ospeed); bytes,
0xFF included (telnet-escaped on the wire), cross both ways; when the
consumer leaves, the configured settings come back on the tty.
"""

from __future__ import annotations

import os
import termios
import tty
from pathlib import Path

import pytest
import serial

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway.admin import read_status
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.serial_lab import read_fd_exactly
from tests.support.waiting import wait_until

#: pyserial 3.5's rfc2217 client calls Thread.setDaemon()/setName(), deprecated since 3.10.
pytestmark = pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")


def _speeds(fd: int) -> tuple[int, int]:
    attrs = termios.tcgetattr(fd)
    return attrs[4], attrs[5]  # ispeed, ospeed


def test_pyserial_rfc2217_client_sets_the_baud_rate_through_the_gateway(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    try:
        make_pki(tmp_path)
        config = write_gateway_config(tmp_path, [LabRoute("console", "serial:console", protocol="rfc2217")])
        with running_gateway(config, tmp_path / "gateway.log") as gw:
            client_config = write_client_config(
                tmp_path,
                gw.tunnel_port,
                extra_export=f'\n[[serial]]\nname = "console"\nport = "{path}"\nsettings = "115200,8N1"\n',
            )
            with running_client(client_config, tmp_path / "client.log"):

                def exported() -> bool:
                    clients = read_status(tmp_path / "gateway.sock")["clients"]
                    return any(d["id"] == "serial:console" for c in clients for d in c["devices"])

                wait_until(exported, "the client exporting serial:console", detail=gw.log)
                assert _speeds(slave) == (termios.B115200, termios.B115200)
                url = f"rfc2217://127.0.0.1:{gw.routes['console']}?timeout=10"
                remote = serial.serial_for_url(url, baudrate=9600, timeout=10)
                try:
                    assert _speeds(slave) == (termios.B9600, termios.B9600)  # set during pyserial's open
                    remote.baudrate = 57600
                    assert _speeds(slave) == (termios.B57600, termios.B57600), gw.log()[-2000:]
                    every = bytes(range(256)) * 16  # 0xFF is doubled on the wire and undone at each end
                    remote.write(every)
                    assert read_fd_exactly(master, len(every)) == every
                    os.write(master, every)
                    assert remote.read(len(every)) == every
                finally:
                    remote.close()
                # The consumer's settings last for its session only.
                wait_until(
                    lambda: _speeds(slave) == (termios.B115200, termios.B115200),
                    "the configured 115200 baud coming back",
                    detail=gw.log,
                )
                route = {r["name"]: r for r in read_status(tmp_path / "gateway.sock")["routes"]}["console"]
                assert route["protocol"] == "rfc2217" and route["channels_served"] == 1
                assert route["discarded_bytes"] == 0
    finally:
        os.close(master)
        os.close(slave)
