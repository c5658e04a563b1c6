"""`redirgate gateway run` and `redirgate client run` as benchmark processes, on loopback.

Owns what :mod:`bench.usb_gateway`, :mod:`bench.fairness` and
:mod:`bench.scale` share about the product's own processes: writing a lab
(PKI, gateway.toml, client tomls through ``redirgate.cli.lab``, so the files
are the ones a user writes) with every port fixed in advance (a restarted
gateway comes back where it was), starting the gateway and clients through
:class:`bench.relay_setup.Processes` (stopped by PID, logs in files, no
``-v``: logging at debug would be part of what we measure), waiting on the
admin socket (``gateway.admin.read_status``) until clients and devices are
online, per-process memory from /proc, and pinning every thread of a
process to one CPU.  Never measures and never asserts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.relay_setup import LOOPBACK, Proc, Processes, threads

#: How long a gateway or client may take to come up before the run is given up.
READY_TIMEOUT_S = 30.0
CLI = [sys.executable, "-m", "redirgate.cli"]


@dataclass
class Lab:
    """The files of one lab; ports are fixed when it is written."""

    directory: Path
    gateway_config: Path
    tunnel_port: int
    admin: Path
    routes: dict[str, int]
    client_configs: dict[str, Path] = field(default_factory=dict)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (all bound at once, so
    the kernel cannot hand out the same one twice, as repeated free_port() may)."""
    import socket

    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def write_lab(
    directory: Path,
    routes: Sequence[Any],
    clients: dict[str, Sequence[str]],
    *,
    heartbeat_interval_s: float = 10.0,
    heartbeat_timeout_s: float = 30.0,
    extra_pki_clients: Sequence[str] = (),
    exports: dict[str, str] | None = None,
) -> Lab:
    """PKI, gateway.toml with fixed ports, one client toml per entry of `clients`
    (identity -> virtual device specs; `exports`: identity -> more TOML for its
    file, such as a ``[[serial]]`` table).  `routes` are ``redirgate.cli.lab.LabRoute``s
    whose ``listen`` is ignored (a free port is chosen for each)."""
    from redirgate.cli.lab import make_pki, write_client_config, write_gateway_config

    directory.mkdir(parents=True, exist_ok=True)
    make_pki(directory, clients=[*clients, *extra_pki_clients])
    tunnel_port, *ports = free_ports(1 + len(routes))
    fixed = [replace(r, listen=f"{LOOPBACK}:{port}") for r, port in zip(routes, ports, strict=True)]
    config = write_gateway_config(
        directory,
        fixed,
        tunnel_listen=f"{LOOPBACK}:{tunnel_port}",
        heartbeat_interval_s=heartbeat_interval_s,
        heartbeat_timeout_s=heartbeat_timeout_s,
    )
    lab = Lab(
        directory,
        config,
        tunnel_port,
        directory / "gateway.sock",
        {r.name: int(r.listen.rsplit(":", 1)[1]) for r in fixed},
    )
    for name, virtual in clients.items():
        lab.client_configs[name] = write_client_config(
            directory, tunnel_port, name=name, virtual=list(virtual), extra_export=(exports or {}).get(name, "")
        )
    return lab


def status(lab: Lab) -> dict[str, Any] | None:
    """The gateway's admin status, or None if nobody answers."""
    from redirgate.gateway.admin import read_status

    try:
        return read_status(lab.admin, timeout_s=5.0)
    except (OSError, ValueError):
        return None


def start_gateway(procs: Processes, lab: Lab, name: str = "gateway", *, timeout_s: float = READY_TIMEOUT_S) -> Proc:
    """`redirgate gateway run`; returns once its admin socket answers (within `timeout_s` of the start)."""
    deadline = time.monotonic() + timeout_s
    argv = [*CLI, "gateway", "run", "--config", str(lab.gateway_config)]
    proc = procs.start(name, argv, lab.tunnel_port, timeout_s=timeout_s)
    while status(lab) is None:
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} never answered on {lab.admin}: {proc.log_tail()}")
        time.sleep(0.02)
    return proc


def start_client(procs: Processes, lab: Lab, identity: str) -> Proc:
    """`redirgate client run` for `identity` (it dials the gateway by itself)."""
    argv = [*CLI, "client", "run", "--config", str(lab.client_configs[identity])]
    log = procs.workdir / f"client-{identity}.log"
    with open(log, "ab") as err:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=procs.workdir
        )
    proc = Proc(f"client-{identity}", popen, 0, log)
    procs.started.append(proc)
    return proc


def wait_online(lab: Lab, want: dict[str, int], timeout_s: float = READY_TIMEOUT_S, procs: Sequence[Proc] = ()) -> None:
    """Until every client in `want` is online with at least that many free devices."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = status(lab) or {"clients": []}
        free = {c["identity"]: sum(not d["busy"] for d in c["devices"]) for c in st["clients"]}
        if all(free.get(name, -1) >= count for name, count in want.items()):
            return
        dead = [p for p in procs if p.popen.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "; ".join(f"{p.name}: {p.log_tail()}" for p in (dead or procs))
            raise RuntimeError(f"clients not online in time (have {free}, want {want}): {logs}")
        time.sleep(0.05)


def wait_route_idle(lab: Lab, route: str, timeout_s: float = 10.0) -> None:
    """Until the gateway says `route` is idle and no client device is busy (the
    last channel is over on both sides); gives up quietly after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = status(lab)
        if st is not None:
            states = {r["name"]: r["state"] for r in st["routes"]}
            busy = {c["identity"]: any(d["busy"] for d in c["devices"]) for c in st["clients"]}
            if states.get(route) == "idle" and not any(busy.values()):
                return
        time.sleep(0.02)


def rss_kib(pid: int) -> int | None:
    """VmRSS of a live process, KiB (proc(5))."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ns(pid: int) -> int | None:
    """CPU time of every live thread of `pid`, ns: the first field of each
    /proc/PID/task/TID/schedstat (exact, unlike /proc/PID/stat's 10 ms ticks;
    threads that already ended are not counted)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended meanwhile
    except OSError:
        return None
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat's first line
    (idle and iowait are not busy): the share of the machine other work takes."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Machine-wide busy % (100 = every CPU busy) between two `machine_jiffies`."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return 100.0 * busy / total if total > 0 else None


@contextmanager
def pinned_all(pids: Sequence[int], cpu: int, *, this_thread: bool = True) -> Iterator[None]:
    """Every thread of `pids` (and this calling thread) on `cpu` only, then back.

    Like bench.relay_setup.pinned, every task under /proc/PID/task is moved
    (a client runs libusb calls in worker threads, the gateway relays in its
    reactor thread); this one also pins the calling thread.  Threads started meanwhile
    inherit the pinned mask, so on the way out every thread a process has
    then gets the process's original mask back."""
    saved: dict[int, set[int]] = {}
    own: set[int] | None = None
    try:
        if this_thread:
            own = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {cpu})
        for pid in pids:
            try:
                saved[pid] = os.sched_getaffinity(pid)
            except OSError:
                continue
            for tid in threads(pid):
                try:
                    os.sched_setaffinity(tid, {cpu})
                except OSError:
                    pass  # a thread that ended meanwhile
        yield
    finally:
        for pid, mask in saved.items():
            for tid in threads(pid):
                try:
                    os.sched_setaffinity(tid, mask)
                except OSError:
                    pass
        if own is not None:
            os.sched_setaffinity(0, own)
