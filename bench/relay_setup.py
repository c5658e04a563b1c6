"""The processes of the relay benchmark: starting, accounting, stopping; and their configuration.

Owns what :mod:`bench.relay` needs to run socat, stunnel4, haproxy and the
``bench/relay_peers.py`` roles on 127.0.0.1: free ports, waiting for a
listener without connecting to it (/proc/net/tcp), CPU accounting from
/proc/PID/stat and ``wait4``, CPU pinning, stopping every started process by
PID, the benchmark's PKI (built with ``redirgate.gateway.pki``) and the
reference programs' configuration files.  Never measures and never asserts.
"""

from __future__ import annotations

import os
import platform
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
SERVER_NAME = "gateway.bench"  # relay_peers.SERVER_NAME
CLK_TCK = os.sysconf("SC_CLK_TCK")
RELAY_BUFFER_BYTES = 256 * 1024  # redirgate's DEFAULT_BUFFER_BYTES; socat gets the same
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
#: Round trips run with sender, relay and receiver all on this CPU (see bench/relay.py).
RTT_CPU = max(os.sched_getaffinity(0))


# ------------------------------------------------------------- processes
def process_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime (proc(5) fields 14–17) of a live process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def free_port() -> int:
    """A port that was free a moment ago (for programs that cannot report theirs)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, from /proc/net/tcp (no probe connection)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in list(f)[1:])


@dataclass
class Proc:
    """A process started by this benchmark, the port it serves, and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-600:].strip()
        except OSError:
            return ""

    def cpu_s(self) -> float | None:
        try:
            return process_cpu_s(self.pid)
        except (OSError, ValueError, IndexError):
            return None

    def wait_exit_cpu_s(self, timeout_s: float) -> float | None:
        """Reap a process that ends by itself; its whole CPU time from wait4, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                return usage.ru_utime + usage.ru_stime
            time.sleep(0.01)
        return None


class Processes:
    """Starts the benchmark's processes and stops every one of them by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def start(self, name: str, argv: list[str], port: int | None = None, *, timeout_s: float = START_TIMEOUT_S) -> Proc:
        """Start `argv`; wait (up to `timeout_s`) until it listens on `port`, or for its "LISTEN port" line."""
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as err:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if port is None else subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
            )
        proc = Proc(name, popen, port or 0, log)
        self.started.append(proc)
        deadline = time.monotonic() + timeout_s
        if port is None:
            line = self._read_line(popen, deadline)
            if not line.startswith("LISTEN "):
                raise RuntimeError(f"{name} did not start: {line!r} {proc.log_tail()}")
            proc.port = int(line.split()[1])
            return proc
        while not listening(port):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} is not listening on {port}: {proc.log_tail()}")
            time.sleep(0.01)
        return proc

    @staticmethod
    def _read_line(popen: subprocess.Popen[bytes], deadline: float) -> str:
        import selectors

        if popen.stdout is None:
            return "(no stdout)"
        with selectors.DefaultSelector() as sel:
            sel.register(popen.stdout, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                return "(no output in time)"
        return popen.stdout.readline().decode(errors="replace").strip()

    def stop(self, proc: Proc) -> None:
        if proc.popen.returncode is None and proc.popen.poll() is None:
            proc.popen.terminate()  # SIGTERM to this PID
            try:
                proc.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(STOP_TIMEOUT_S)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            try:
                self.stop(proc)
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"could not stop {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)
        self.started.clear()


# ----------------------------------------------------------------- setup
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    server_combined: Path  # cert + key, as haproxy's crt wants
    client_cert: Path
    client_key: Path

    def server_args(self) -> list[str]:
        return ["--tls", str(self.server_cert), str(self.server_key), str(self.ca)]

    def client_args(self) -> list[str]:
        return ["--tls", str(self.client_cert), str(self.client_key), str(self.ca)]


def make_pki(directory: Path) -> Pki:
    from redirgate.gateway.pki import client_dir, gateway_dir, init_ca, issue_client, issue_gateway

    init_ca(directory)
    issue_gateway(directory, SERVER_NAME, ips=[LOOPBACK])
    issue_client(directory, "bench-client")
    gw, cl = gateway_dir(directory, SERVER_NAME), client_dir(directory, "bench-client")
    combined = directory / "haproxy.pem"
    combined.write_bytes((gw / "server-cert.pem").read_bytes() + (gw / "server-key.pem").read_bytes())
    combined.chmod(0o600)
    return Pki(
        directory / "ca-cert.pem",
        gw / "server-cert.pem",
        gw / "server-key.pem",
        combined,
        cl / "client-cert.pem",
        cl / "client-key.pem",
    )


def _stunnel_file(
    workdir: Path,
    name: str,
    pki: Pki,
    port: int,
    connect: int,
    role: list[str],
    *,
    accept_host: str = LOOPBACK,
    connect_host: str = LOOPBACK,
) -> Path:
    """One stunnel4 service `name`: `accept` on `port`, `connect` to `connect`, TLS 1.3 with
    the chain checked and TCP_NODELAY both ways; `role` says which end of the TLS it is."""
    path = workdir / f"{name}.conf"
    lines = [
        "foreground = yes",
        "pid =",
        f"output = {workdir / (name + '.log')}",
        "debug = warning",
        "[tunnel]",
        f"accept = {accept_host}:{port}",
        f"connect = {connect_host}:{connect}",
        *role,
        f"CAfile = {pki.ca}",
        "verifyChain = yes",
        "sslVersionMin = TLSv1.3",
        "socket = l:TCP_NODELAY=1",
        "socket = r:TCP_NODELAY=1",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def stunnel_config(pki: Pki, port: int, sink_port: int, workdir: Path) -> Path:
    """stunnel4 as the TLS-terminating relay: mutual TLS on `port`, plain to `sink_port`."""
    role = [f"cert = {pki.server_cert}", f"key = {pki.server_key}", "requireCert = yes"]
    return _stunnel_file(workdir, "stunnel", pki, port, sink_port, role)


def stunnel_client_config(
    pki: Pki, port: int, server_port: int, workdir: Path, *, accept_host: str = LOOPBACK, connect_host: str = LOOPBACK
) -> Path:
    """stunnel4 in client mode: plain on `port`, mutual TLS 1.3 to the stunnel on `server_port`
    (with :func:`stunnel_config` behind it, the two make a TLS tunnel between two plain ends);
    `connect_host`: where that server is (10.0.2.2 from a guest on QEMU's user network)."""
    role = ["client = yes", f"cert = {pki.client_cert}", f"key = {pki.client_key}", f"checkHost = {SERVER_NAME}"]
    return _stunnel_file(
        workdir, "stunnel-client", pki, port, server_port, role, accept_host=accept_host, connect_host=connect_host
    )


def haproxy_config(pki: Pki, port: int, sink_port: int, workdir: Path) -> Path:
    path = workdir / "haproxy.cfg"
    path.write_text(
        f"""global
    nbthread 1
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend tunnel
    bind {LOOPBACK}:{port} ssl crt {pki.server_combined} ca-file {pki.ca} verify required ssl-min-ver TLSv1.3
    default_backend qemu
backend qemu
    server sink {LOOPBACK}:{sink_port}
"""
    )
    return path


def socat_argv(port: int, sink_port: int) -> list[str]:
    return [
        "socat",
        "-b",
        str(RELAY_BUFFER_BYTES),
        f"TCP-LISTEN:{port},bind={LOOPBACK},reuseaddr,nodelay",
        f"TCP:{LOOPBACK}:{sink_port},nodelay",
    ]


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=10, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout + out.stderr).splitlines()
    for line in text:
        for word in ("socat version", "stunnel ", "HAProxy version"):
            if line.startswith(word):
                return " ".join(line.split()[:3])
    return text[0] if text else "?"


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "socat": tool_version(["socat", "-V"]),
        "stunnel": tool_version(["stunnel4", "-version"]),
        "haproxy": tool_version(["haproxy", "-v"]),
    }


def threads(pid: int) -> list[int]:
    """Every thread of a process (affinity is per thread on Linux); [] once it is gone."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


@contextmanager
def pinned(procs: list[Proc]) -> Iterator[None]:
    """Run `procs` (all their threads, and threads they start meanwhile) on RTT_CPU only."""
    saved = []
    try:
        for proc in procs:
            for tid in threads(proc.pid):
                try:
                    saved.append((tid, os.sched_getaffinity(tid)))
                    os.sched_setaffinity(tid, {RTT_CPU})
                except OSError:
                    pass  # the thread ended meanwhile
        yield
    finally:
        for pid, mask in saved:
            try:
                os.sched_setaffinity(pid, mask)
            except OSError:
                pass  # it ended meanwhile (socat)
