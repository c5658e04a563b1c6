"""`gateway run` with systemd's file-descriptor store, the protocol emulated on real sockets.

This machine runs no systemd manager (PID 1 is not systemd, no user manager), so the
test plays the manager: it binds the `$NOTIFY_SOCKET` datagram socket, keeps what the
gateway stores there (`FDSTORE=1`, `FDNAME=`, the descriptors as SCM_RIGHTS; and drops
what `FDSTOREREMOVE=1` names), stops the gateway, and starts the next one with those
descriptors from 3 on and `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, as systemd does
after `systemctl restart` or a crash with `Restart=`.  Meanwhile the listening sockets
stay open (held here, as systemd holds them): a hypervisor or client that connects in
between waits in the backlog and is served by the new process, never refused.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from redirgate.cli.lab import LabRoute, make_pki, write_gateway_config
from tests.support.gateway_procs import running_gateway
from tests.support.services import stop


class FdStore:
    """The manager's side: the notify socket and the descriptors stored by name."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(120)  # a safety net: each message is waited for
        self.path = path
        self.fds: dict[str, list[int]] = {}
        self.stores = 0

    def until_ready(self) -> None:
        """Take messages (storing and removing descriptors) until READY=1."""
        while True:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
            fds = array.array("i")
            for level, kind, blob in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(blob[: len(blob) - len(blob) % fds.itemsize])
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            if fields.get("FDSTOREREMOVE") == "1":
                for fd in self.fds.pop(fields["FDNAME"], []):
                    os.close(fd)
            if fields.get("FDSTORE") == "1":
                self.fds.setdefault(fields["FDNAME"], []).extend(fds)
                self.stores += 1
            elif fds:
                for fd in fds:
                    os.close(fd)
            if fields.get("READY") == "1":
                return

    def close(self) -> None:
        for fds in self.fds.values():
            for fd in fds:
                os.close(fd)
        self.sock.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FdStore]:
    manager = FdStore(str(tmp_path / "notify.sock"))
    try:
        yield manager
    finally:
        manager.close()


def start_with_stored(config: Path, log_path: Path, store: FdStore, env: dict[str, str]) -> subprocess.Popen[str]:
    """`gateway run` as systemd starts it with its fd store: descriptors 3.. and LISTEN_*."""
    names, fds = [], []
    for name, held in store.fds.items():
        for fd in held:
            names.append(name)
            fds.append(fd)

    def place() -> None:  # in the child: the stored descriptors become 3, 4, ...
        high = [os.dup(fd) for fd in fds]
        for index, fd in enumerate(high):
            os.dup2(fd, 3 + index)

    wrapper = 'LISTEN_PID=$$ exec "$@"'  # the pid systemd would name: the shell's, which exec keeps
    argv = ["sh", "-c", wrapper, "sh", sys.executable, "-m", "redirgate.cli", "-vv"]
    argv += ["gateway", "run", "--config", str(config)]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "LISTEN_FDS": str(len(fds))}
    full_env["LISTEN_FDNAMES"] = ":".join(names)
    with open(log_path, "a") as log_file:
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=full_env,
            preexec_fn=place,
            pass_fds=tuple(range(3, 3 + len(fds))),
        )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "crash"])
def test_a_stop_and_start_keeps_the_listeners_in_systemds_fd_store(
    tmp_path: Path, store: FdStore, signum: signal.Signals
) -> None:
    """`systemctl restart` (SIGTERM, then a new process) and a crash (SIGKILL, then
    `Restart=`): the new process serves on the stored sockets, and what connected in
    between is answered by it."""
    make_pki(tmp_path)
    config = write_gateway_config(tmp_path, [LabRoute("loop", "usb:1209:0003")])
    admin = tmp_path / "gateway.sock"
    env = {"NOTIFY_SOCKET": store.path, "FDSTORE": "64"}
    with running_gateway(config, tmp_path / "gateway.log", env=env) as first:
        store.until_ready()
        ports = {"tunnel": first.tunnel_port, "loop": first.routes["loop"]}
        assert set(store.fds) == {"tunnel", "route.loop", "admin"}, store.fds
        first.process.send_signal(signum)  # the stop of `systemctl restart`, or a crash
        first.process.wait(60)
    assert admin.is_socket()  # its listener lives on in the store: the file stays for it

    # between the two processes: connections wait in the backlogs, none is refused
    waiting_tcp = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in ports.values()]
    asking = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    asking.settimeout(120)
    asking.connect(str(admin))
    asking.sendall(json.dumps({"command": "status"}).encode() + b"\n")
    asking.shutdown(socket.SHUT_WR)

    second = start_with_stored(config, tmp_path / "gateway2.log", store, env)
    try:
        answer = b""
        while chunk := asking.recv(65536):
            answer += chunk
        assert json.loads(answer)["pid"] == second.pid  # the new process took the waiting request
        store.stores = 0
        store.until_ready()
        assert store.stores == 3 and set(store.fds) == {"tunnel", "route.loop", "admin"}  # stored again
        assert second.stdout is not None
        printed = second.stdout.readline() + second.stdout.readline()
        assert f":{ports['tunnel']}\n" in printed and f":{ports['loop']}\n" in printed  # the same sockets
        log = (tmp_path / "gateway2.log").read_text()
        assert "back from systemd's file-descriptor store" in log
    finally:
        stop(second)
        asking.close()
        for sock in waiting_tcp:
            sock.close()
