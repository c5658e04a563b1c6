"""`redirgate gateway run` and `redirgate client run` as real processes.

`running_gateway(config)` starts the gateway, reads the lines where it says
what it bound (`tunnel H:P`, `route NAME H:P`, `admin PATH`) and yields
them; `running_client(config)` starts a client.  Both end their process by
PID (SIGTERM, then SIGKILL) when the block exits, also on failure.  Logs go
to files so a chatty process can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.services import stop


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    log_path: Path
    tunnel_port: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    metrics_port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, *, nofile: int | None = None
) -> subprocess.Popen[str]:
    """`env`: added to this environment; `nofile`: the process's RLIMIT_NOFILE (open files), set before it runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path, "a") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "redirgate.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
            preexec_fn=limit if nofile is not None else None,
        )


@contextlib.contextmanager
def running_gateway(
    config: Path,
    log_path: Path,
    *,
    ready_timeout_s: float = 120.0,  # a safety net: a loaded machine takes seconds to import the CLI
    options: tuple[str, ...] = ("-vv",),
    env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> Iterator[GatewayProcess]:
    """`options` go after the subcommand (logging options are accepted there too)."""
    process = _spawn(["gateway", "run", "--config", str(config), *options], log_path, env, nofile=nofile)
    # A text pipe buffers several lines at once, so no select() here: read
    # lines until `admin`, with a timer that kills a gateway that never gets there.
    watchdog = threading.Timer(ready_timeout_s, process.kill)
    watchdog.start()
    try:
        gw = GatewayProcess(process, log_path)
        assert process.stdout is not None
        ready = False
        for line in process.stdout:
            words = line.split()
            if not words:
                continue
            if words[0] == "tunnel":
                gw.tunnel_port = int(words[1].rsplit(":", 1)[1])
            elif words[0] == "route":
                gw.routes[words[1]] = int(words[2].rsplit(":", 1)[1])
            elif words[0] == "metrics":
                gw.metrics_port = int(words[1].rsplit(":", 1)[1])
            elif words[0] == "admin":
                ready = True
                break
        watchdog.cancel()
        if not ready:
            raise RuntimeError(f"gateway did not start (exit {process.poll()}):\n{log_path.read_text()}")
        yield gw
    finally:
        stop(process)


def gateway_status(admin: Path) -> dict[str, Any]:
    """The running gateway's status document through its admin socket (OSError if nobody answers)."""
    from redirgate.gateway.admin import request

    return request(admin, {"command": "status"})


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, reaped by nobody yet, has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop_pid(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM by PID a process that is not our child (a restarted gateway), then SIGKILL if it lingers."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + grace_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return


async def restart_by_usr2(gw: GatewayProcess, admin: Path, successors: list[int]) -> int:
    """SIGUSR2 to the gateway; the new process's pid (also appended to
    `successors`, for `stop_pid`) once it answers on the admin socket and the
    old one exited."""
    import trio

    from tests.support.waiting import until_async

    old = gw.process.pid
    gw.process.send_signal(signal.SIGUSR2)
    new = 0

    async def answered() -> bool:
        nonlocal new
        try:
            new = (await trio.to_thread.run_sync(gateway_status, admin))["pid"]
        except OSError:
            # the admin socket changes hands: nobody answers for a moment (an answer the old
            # process took is finished before it exits: a torn one fails the test)
            return False
        return new != old

    await until_async(answered, "a new gateway process", poll_s=0.1)
    successors.append(new)
    await trio.to_thread.run_sync(gw.process.wait, 60)  # the old one exits
    return new


def stop_successors(gw: GatewayProcess, admin: Path, successors: list[int]) -> None:
    """Stop every gateway process a restart started (also one a failed test did not hear of)."""
    with contextlib.suppress(OSError, KeyError):
        pid = gateway_status(admin)["pid"]
        if pid != gw.process.pid and pid not in successors:
            successors.append(pid)
    for pid in successors:
        stop_pid(pid)


@contextlib.contextmanager
def running_client(config: Path, log_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = _spawn(["-vv", "client", "run", "--config", str(config)], log_path)
    try:
        yield process
    finally:
        stop(process)


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL by PID: the client dies without closing anything."""
    if process.poll() is None:
        process.kill()
        process.wait(10)
