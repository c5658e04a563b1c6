"""`gateway run` as systemd runs it: the notify protocol on a real datagram socket, SIGHUP reloads, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from redirgate.cli.lab import LabRoute, make_pki, write_gateway_config
from redirgate.cli.sdnotify import Notifier
from tests.support.gateway_procs import running_gateway


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(60)  # a safety net: each message is waited for
    try:
        yield sock, path
    finally:
        sock.close()


def messages(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if line)


def until(sock: socket.socket, key: str, timeout_s: float = 120.0) -> dict[str, str]:
    """Datagrams until one holds `key` (STATUS and WATCHDOG may come between); a safety net, not a budget."""
    deadline = time.monotonic() + timeout_s
    while True:
        fields = messages(sock)
        if key in fields:
            return fields
        assert time.monotonic() < deadline, f"no {key} from the gateway"


def test_notifier_speaks_to_a_path_and_an_abstract_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert notifier.ready("serving") and messages(sock) == {"READY": "1", "STATUS": "serving"}
    assert notifier.reloading()
    fields = messages(sock)
    assert fields["RELOADING"] == "1" and abs(int(fields["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 60e6
    assert notifier.watchdog() and messages(sock) == {"WATCHDOG": "1"}
    assert notifier.watchdog_interval_s == 2.0
    notifier.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        name = f"redirgate-test-{os.getpid()}"
        abstract.bind("\0" + name)
        abstract.settimeout(10)
        at = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert at.stopping() and messages(abstract) == {"STOPPING": "1"}
        at.close()
    assert not Notifier({}).ready() and not Notifier({}).enabled
    # a watchdog meant for another process is not ours to feed
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def status(config: Path) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "redirgate.cli",
            "gateway",
            "status",
            "--socket",
            str(config.parent / "gateway.sock"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def route_names(config: Path) -> list[str]:
    routes = status(config)["routes"]
    assert isinstance(routes, list)
    return [r["name"] for r in routes]


def test_ready_reloading_on_hup_stopping_on_term(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    make_pki(tmp_path)
    config = write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001")])
    with running_gateway(
        config, tmp_path / "gateway.log", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "120000000"}
    ) as gw:
        ready = until(sock, "READY")
        assert "0 client(s) online" in ready["STATUS"]
        until(sock, "WATCHDOG")
        assert route_names(config) == ["stick"]

        # a route added: RELOADING (with the monotonic clock), then READY again
        write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001"), LabRoute("kbd", "usb:1209:0002")])
        gw.process.send_signal(signal.SIGHUP)
        reloading = until(sock, "RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        until(sock, "READY")
        assert route_names(config) == ["stick", "kbd"]
        assert status(config)["reloads"] == 1

        # a broken config is refused with every problem logged, and the running one stays
        config.write_text(config.read_text().replace('device = "usb:1209:0002"', 'device = "usb:12"\nbogus = 1'))
        gw.process.send_signal(signal.SIGHUP)
        until(sock, "RELOADING")
        until(sock, "READY")
        log = gw.log()
        assert "reload refused" in log and "route[1].device" in log and "bogus" in log, log
        assert route_names(config) == ["stick", "kbd"] and gw.process.poll() is None

        gw.process.send_signal(signal.SIGTERM)
        until(sock, "STOPPING")
        assert gw.process.wait(30) == 0
    assert "Traceback" not in gw.log()
