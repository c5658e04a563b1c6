"""`redirgate client serve-serial` and the serial section of `client devices`,
as real processes; a pty stands in for the device (the test holds the master)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from tests.support.serial_lab import Pty, read_fd_exactly
from tests.support.services import running
from tests.support.waiting import wait_until

#: pyserial 3.5's rfc2217 client calls Thread.setDaemon()/setName(), deprecated since 3.10.
pytestmark = pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")


def redirgate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def pty_master() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, False)
    yield master, path
    os.close(master)


def test_serve_serial_raw_settings_ring_and_busy(pty_master: tuple[int, str], tmp_path: Path) -> None:
    master, path = pty_master
    argv = [
        "client",
        "serve-serial",
        "--listen",
        "127.0.0.1:0",
        "--settings",
        "19200,8N2,rtscts",
        "--ring-bytes",
        "8",
        path,
    ]
    with running(argv, tmp_path / "serve.log") as service:
        assert termios.tcgetattr(master)[4] == termios.B19200
        assert termios.tcgetattr(master)[2] & termios.CSTOPB and termios.tcgetattr(master)[2] & termios.CRTSCTS
        os.write(master, b"0123456789")  # nobody connected: the 8-byte ring keeps the newest
        # The service read them into its ring: it said the ring overflowed, and the
        # tty holds nothing more (one write reaches the reader's queue at once).
        wait_until(
            lambda: "dropped the oldest bytes" in service.log() and Pty(master, path).unread_by_device() == 0,
            "the service reading the tty into its ring",
            detail=service.log,
        )
        with socket.create_connection((service.host, service.port), timeout=10) as sock:
            sock.settimeout(10)
            got = b""
            while len(got) < 8:
                got += sock.recv(100)
            assert got == b"23456789"
            sock.sendall(bytes(range(256)))
            assert read_fd_exactly(master, 256) == bytes(range(256))
            with socket.create_connection((service.host, service.port), timeout=10) as second:
                second.settimeout(10)
                assert b"already in use" in second.recv(200)
    assert "ring is full" in service.log()


def test_serve_serial_rfc2217_with_pyserial(pty_master: tuple[int, str], tmp_path: Path) -> None:
    master, path = pty_master
    argv = ["client", "serve-serial", "--listen", "127.0.0.1:0", "--baud", "9600", "--rfc2217", path]
    with running(argv, tmp_path / "serve.log") as service:
        client = serial.serial_for_url(f"rfc2217://{service.host}:{service.port}", baudrate=115200, timeout=5)
        try:
            assert termios.tcgetattr(master)[4] == termios.B115200
            client.write(b"\xff\x00\xff")
            assert read_fd_exactly(master, 3) == b"\xff\x00\xff"
            os.write(master, b"pong\xff")
            assert client.read(5) == b"pong\xff"
        finally:
            client.close()


def test_serve_serial_refuses_bad_arguments() -> None:
    bad_port = redirgate("client", "serve-serial", "--listen", "127.0.0.1:0", "not a port")
    assert bad_port.returncode == 2 and "expected a /dev path" in bad_port.stderr
    bad_settings = redirgate("client", "serve-serial", "--listen", "127.0.0.1:0", "--settings", "9600,9X1", "/dev/null")
    assert bad_settings.returncode == 2 and "flag='9X1'" in bad_settings.stderr
    absurd = redirgate("client", "serve-serial", "--listen", "127.0.0.1:0", "--baud", "99999999", "/dev/null")
    assert absurd.returncode == 2 and "baud" in absurd.stderr


def test_devices_lists_serial_ports() -> None:
    out = redirgate("client", "devices")
    assert out.returncode == 0, out.stderr
    assert "SERIAL PORTS" in out.stdout and "DEVICE" in out.stdout
