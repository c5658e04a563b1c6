"""How many thin clients one gateway process carries, and 200 channels moving data at once.

One ``redirgate gateway run`` process (lab config: 200 ``serial:bench`` raw
routes, heartbeat_interval_s = 10 s, the default; every port fixed so a
restarted gateway listens where it did) and the load generators of
:mod:`bench.scale_peers`, each its own process on 127.0.0.1:

* N simulated clients on one trio loop, each with its own ECDSA P-256
  certificate (issued once and cached under bench/results/.scale-pki/),
  its own mutual-TLS 1.3 control connection, hello, a two-entry inventory
  and heartbeats answered and sent by the control-session driver
  ``client/tunnel.py`` runs on (``redirgate.transport.ControlSession``); the first
  connection of each at most ``CONNECT_CONCURRENCY`` handshakes at a time,
  reconnections after a loss unpaced, with the real client's backoff;
* 200 hypervisor-side TCP connections, one per route, for the data part.

Figures, for N = 100 and 1000 (and 5000 in full), each cycle on a fresh
gateway (quick 2 cycles, full 3; median [min–max]):

* gateway RSS per idle client: VmRSS (/proc/PID/status) once all N are
  online and 1 s (quick 0.5 s) has passed, minus VmRSS before the first
  connection, divided by N;
* TLS handshakes per second while they connect: N ÷ the time from the
  first dial to the last completed handshake (load generator's clock), the
  time until the gateway's admin status (``gateway.admin.read_status``)
  lists all N, and the gateway's CPU ms per connected client;
* gateway CPU % at idle with heartbeats running: utime + stime over a 10 s
  window (one heartbeat interval) with all N online and nothing polled;
* time for all N to come back after a gateway restart: SIGKILL the gateway
  by PID, start it again on the same ports, and time until its admin status
  lists all N; the clients find it by themselves (backoff);
* with N = 1000 online, 200 channels at once: each route's hypervisor
  socket writes 64 KiB blocks flat out, the gateway relays each over its
  client's TLS data connection (the raw pump: no usbredir guard on this
  direction anyway), the simulated client counts what arrives; aggregate
  MB/s and the spread between channels over fixed windows.

    python bench/scale.py [--quick] [--sizes 100 1000]

The herd (issue 15), on its own: ``python bench/scale.py --herd 10000
[--rounds R]``.  N clients in HERD_PROCS load-generator processes (on the
same two cores as the gateway: they compete with it, so the figures are the
machine's, not the gateway's alone) connect to a fresh gateway; then the
gateway is SIGKILLed and started again on the same port, once with
``handshake_pacing_s = 0`` (pacing off: the fixed handshake limits only, as
before issue 15's pacing) and once with the default (paced, busy lines with
retry hints), interleaved.  Reported per arm: time from the kill until every
client is back (its own view: its hello answered), p50/p99 of the time back
per client, handshakes abandoned on both sides (the gateway's
``handshakes_abandoned``: started, then timed out or closed by the peer; the
clients': dials that timed out mid-way), connections turned away and hints,
attempts per client and the gateway's CPU; and paced ÷ off.

Every process started here is stopped by PID in a ``finally``; every wait
has a bound.  Nothing is asserted: what cannot be measured (a size beyond
the file-descriptor limit, a run that timed out) is reported with the reason.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import gateway_lab as gl
from bench.relay_setup import LOOPBACK, Proc, Processes, machine, process_cpu_s
from bench.report import cell, emit, script_arguments
from bench.scale_peers import client_name

PEERS = Path(__file__).resolve().with_name("scale_peers.py")
PKI_CACHE = Path(__file__).resolve().parent / "results" / ".scale-pki"
CHANNELS = 200
CHANNEL_SIZE = 1000  # the N at which the channel part runs (if measured)
CONNECT_CONCURRENCY = 64
HEARTBEAT_INTERVAL_S = 10.0  # gateway/config.py's default
SETTLE_S = 1.0  # after a gateway start or the last connection, before reading VmRSS
IDLE_WINDOW_S = 10.0
FD_MARGIN = 300  # listeners, admin, data connections, logs
MEMORY_FLOOR_KIB = 100.0


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    cycles: int
    idle_sizes: tuple[int, ...]
    idle_windows: int  # each followed by a restart where restarts remain
    restarts: int
    channel_window_s: float
    channel_windows: int
    settle_s: float = SETTLE_S  # before each VmRSS reading (quick: shorter)


QUICK = Plan(
    sizes=(100, 1000),
    cycles=2,
    idle_sizes=(1000,),
    idle_windows=1,
    restarts=1,
    channel_window_s=1.0,
    channel_windows=2,
    settle_s=0.5,
)
FULL = Plan(
    sizes=(100, 1000, 5000),
    cycles=3,
    idle_sizes=(100, 1000, 5000),
    idle_windows=3,
    restarts=3,
    channel_window_s=10.0,
    channel_windows=3,
)


# --------------------------------------------------------------- the PKI
def ensure_pki(count: int) -> tuple[Path, float, int]:
    """The cached PKI with clients sim-00000.. up to `count`: (folder, seconds spent, newly issued)."""
    from redirgate.cli.lab import GATEWAY_NAME
    from redirgate.gateway import pki

    base = PKI_CACHE / "pki"
    started = time.monotonic()
    issued = 0
    if not (base / "ca-cert.pem").exists():
        base.mkdir(parents=True, exist_ok=True)
        pki.init_ca(base, force=True)
        pki.issue_gateway(base, GATEWAY_NAME, ips=["127.0.0.1", "::1"], dns_names=["localhost"], force=True)
    missing = [client_name(i) for i in range(count)]
    missing = [name for name in missing if not (pki.client_dir(base, name) / "client-cert.pem").exists()]
    pki.issue_clients(base, missing, force=True)  # the CA loaded once for all of them
    issued = len(missing)
    return base, time.monotonic() - started, issued


# ------------------------------------------------------ the line-driven peers
class Peer:
    """A scale_peers.py process: a line to its stdin, one JSON line back."""

    def __init__(self, procs: Processes, name: str, argv: list[str]) -> None:
        log = procs.workdir / f"{name}.log"
        with open(log, "ab") as err:
            popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=procs.workdir)
        self.proc = Proc(name, popen, 0, log)
        procs.started.append(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout_s: float) -> dict[str, Any]:
        popen = self.proc.popen
        assert popen.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(popen.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise RuntimeError(f"{self.proc.name}: no answer within {timeout_s:.0f} s: {self.proc.log_tail()}")
        line = popen.stdout.readline().decode(errors="replace").strip()
        try:
            result: dict[str, Any] = json.loads(line)
        except ValueError:
            raise RuntimeError(f"{self.proc.name}: {line!r} {self.proc.log_tail()}") from None
        return result

    def ask(self, line: str, timeout_s: float) -> dict[str, Any]:
        popen = self.proc.popen
        assert popen.stdin is not None
        popen.stdin.write(line.encode() + b"\n")
        popen.stdin.flush()
        return self.read(timeout_s)


# ------------------------------------------------------------- measuring
Figures = dict[str, list[float]]


def _put(into: Figures, key: str, value: float | None) -> None:
    if value is not None:
        into.setdefault(key, []).append(float(value))


def _status_counts(lab: gl.Lab) -> tuple[int, dict[str, int]]:
    st = gl.status(lab)
    if st is None:
        return -1, {}
    states: dict[str, int] = {}
    for r in st["routes"]:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return len(st["clients"]), states


def wait_clients(lab: gl.Lab, n: int, timeout_s: float, poll_s: float) -> float | None:
    """Seconds until the admin status lists `n` clients, None if not within `timeout_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if _status_counts(lab)[0] >= n:
            return time.monotonic() - t0
        time.sleep(poll_s)
    return None


def nofile_of(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except OSError:
        pass
    return "?"


class ScaleBench:
    """The processes of one scale run and the measurements over them."""

    def __init__(self, workdir: Path, pki_base: Path, plan: Plan) -> None:
        from redirgate.cli.lab import LabRoute

        self.workdir, self.plan = workdir, plan
        self.procs = Processes(workdir)
        lab_dir = workdir / "lab"
        lab_dir.mkdir()
        (lab_dir / "pki").symlink_to(pki_base)
        from redirgate.cli.lab import write_gateway_config

        tunnel_port, *ports = gl.free_ports(1 + CHANNELS)
        routes = [
            LabRoute(f"ch{i:03d}", "serial:bench", client=client_name(i), listen=f"{LOOPBACK}:{port}", protocol="raw")
            for i, port in enumerate(ports)
        ]
        config = write_gateway_config(
            lab_dir, routes, tunnel_listen=f"{LOOPBACK}:{tunnel_port}", heartbeat_interval_s=HEARTBEAT_INTERVAL_S
        )
        self.lab = gl.Lab(
            lab_dir,
            config,
            tunnel_port,
            lab_dir / "gateway.sock",
            {r.name: int(r.listen.rsplit(":", 1)[1]) for r in routes},
        )
        self.gateway: Proc | None = None
        self.loadgen: Peer | None = None
        #: the N at which the channel part runs: CHANNEL_SIZE, else the first N with a client per route
        big = [n for n in plan.sizes if n >= CHANNELS]
        self.channel_size = CHANNEL_SIZE if CHANNEL_SIZE in plan.sizes else (big[0] if big else 0)

    def start_gateway(self) -> Proc:
        self.gateway = gl.start_gateway(self.procs, self.lab)
        return self.gateway

    def stop_gateway(self, *, kill: bool = False) -> None:
        if self.gateway is None:
            return
        if kill:
            self.gateway.popen.kill()  # SIGKILL to this PID: a crash, nothing closed gracefully
            self.gateway.popen.wait(10)
        else:
            self.procs.stop(self.gateway)
        self.procs.started.remove(self.gateway)
        self.gateway = None

    def start_loadgen(self, count: int) -> dict[str, Any]:
        argv = [
            sys.executable,
            str(PEERS),
            "clients",
            "--port",
            str(self.lab.tunnel_port),
            "--pki",
            str(self.lab.directory / "pki"),
            "--count",
            str(count),
            "--connect-concurrency",
            str(CONNECT_CONCURRENCY),
            "--connect-timeout-s",
            str(self.connect_timeout(count)),
        ]
        self.loadgen = Peer(self.procs, "loadgen", argv)
        return self.loadgen.read(60.0 + count * 0.01)

    @staticmethod
    def connect_timeout(n: int) -> float:
        return 30.0 + n * 0.05

    # ------------------------------------------------------------ one size
    def measure_size(self, n: int, into: Figures, channels: Figures, notes: list[str]) -> None:
        assert self.loadgen is not None
        poll_s = 0.1 if n <= 100 else 0.5  # the status JSON grows with N; do not load the gateway
        for cycle in range(self.plan.cycles):
            gw = self.start_gateway()
            try:
                time.sleep(self.plan.settle_s)
                rss0, cpu0 = gl.rss_kib(gw.pid), process_cpu_s(gw.pid)
                gen0, machine0 = process_cpu_s(self.loadgen.pid), gl.machine_jiffies()
                t0 = time.monotonic()
                answer = self.loadgen.ask(f"connect {n}", self.connect_timeout(n) + 30)
                online_s = wait_clients(self.lab, n, self.connect_timeout(n), poll_s)
                elapsed = time.monotonic() - t0
                cpu1, gen1 = process_cpu_s(gw.pid), process_cpu_s(self.loadgen.pid)
                _put(into, "machine_busy_pct_connect", gl.busy_pct(machine0, gl.machine_jiffies()))
                if answer["online"] < n or online_s is None:
                    notes.append(
                        f"N={n} cycle {cycle + 1}: {answer['online']} of {n} online in time "
                        f"({'; '.join(answer.get('errors', []))})"
                    )
                    continue
                _put(into, "online_s", online_s)
                _put(into, "handshakes_per_s", n / answer["last_tls_s"] if answer.get("last_tls_s") else None)
                _put(into, "tls_p50_ms", answer.get("tls_p50_ms"))
                _put(into, "tls_p99_ms", answer.get("tls_p99_ms"))
                _put(into, "gateway_cpu_ms_per_client", (cpu1 - cpu0) * 1e3 / n)
                _put(into, "loadgen_cpu_pct_connect", 100 * (gen1 - gen0) / elapsed)
                _put(into, "gateway_cpu_pct_connect", 100 * (cpu1 - cpu0) / elapsed)
                time.sleep(self.plan.settle_s)
                rss1 = gl.rss_kib(gw.pid)
                if rss0 is not None and rss1 is not None:
                    _put(into, "rss_per_client_kib", (rss1 - rss0) / n)
                    _put(into, "rss_before_mib", rss0 / 1024)
                    _put(into, "rss_after_mib", rss1 / 1024)
                if cycle == self.plan.cycles - 1:
                    notes.append(f"N={n}: gateway RLIMIT_NOFILE {nofile_of(gw.pid)} (soft/hard)")
                    if n == self.channel_size:
                        self.measure_channels(channels, notes)
                    self.idle_and_restarts(n, into, notes, poll_s)
            finally:
                self.loadgen.ask("disconnect", 60)
                self.stop_gateway()

    def idle_and_restarts(self, n: int, into: Figures, notes: list[str], poll_s: float) -> None:
        assert self.loadgen is not None
        windows = self.plan.idle_windows if n in self.plan.idle_sizes else 0
        restarts = self.plan.restarts
        for i in range(max(windows, restarts)):
            if i < windows:
                assert self.gateway is not None
                pid = self.gateway.pid
                cpu0, gen0, t0 = process_cpu_s(pid), process_cpu_s(self.loadgen.pid), time.monotonic()
                time.sleep(IDLE_WINDOW_S)
                dt = time.monotonic() - t0
                _put(into, "idle_cpu_pct", 100 * (process_cpu_s(pid) - cpu0) / dt)
                _put(into, "idle_loadgen_cpu_pct", 100 * (process_cpu_s(self.loadgen.pid) - gen0) / dt)
            elif i > 0:
                time.sleep(11.0)  # a session must last 10 s to reset the backoff (client/tunnel.py)
            if i < restarts:
                before = self.loadgen.ask("mark", 10)
                t0 = time.monotonic()
                self.stop_gateway(kill=True)
                self.start_gateway()
                up_s = time.monotonic() - t0
                back = wait_clients(self.lab, n, 60.0 + n * 0.02, poll_s)
                after = self.loadgen.ask("mark", 10)
                if back is None:
                    notes.append(
                        f"N={n}: not all clients back within {60 + n * 0.02:.0f} s after the restart "
                        f"({'; '.join(after.get('errors', []))})"
                    )
                    continue
                _put(into, "restart_s", up_s + back)
                _put(into, "restart_gateway_up_s", up_s)
                _put(into, "restart_attempts_per_client", (after["attempts"] - before["attempts"]) / n)

    def measure_channels(self, into: Figures, notes: list[str]) -> None:
        assert self.loadgen is not None and self.gateway is not None
        ports = self.workdir / "route-ports.txt"
        ports.write_text(" ".join(str(self.lab.routes[f"ch{i:03d}"]) for i in range(CHANNELS)))
        hv = Peer(
            self.procs,
            "hypervisors",
            [
                sys.executable,
                str(PEERS),
                "hypervisors",
                "--ports",
                str(ports),
                "--max-s",
                str(60 + self.plan.channel_window_s * 4),
            ],
        )
        try:
            hv.read(30)
            t0 = time.monotonic()
            states: dict[str, int] = {}
            while time.monotonic() - t0 < 60:
                _, states = _status_counts(self.lab)
                if states.get("active", 0) >= CHANNELS:
                    break
                time.sleep(0.2)
            else:
                notes.append(f"channels: only {states.get('active', 0)} of {CHANNELS} routes active within 60 s")
                return
            _put(into, "setup_s", time.monotonic() - t0)
            assert hv.proc.popen.stdin is not None
            hv.proc.popen.stdin.write(b"go\n")
            hv.proc.popen.stdin.flush()
            time.sleep(0.5)  # warm-up: every writer running, socket buffers filled
            gw_pid, gen_pid, hv_pid = self.gateway.pid, self.loadgen.pid, hv.pid
            mark = self.loadgen.ask(f"mark {CHANNELS}", 10)
            for _ in range(self.plan.channel_windows):
                cpus0, machine0 = [process_cpu_s(p) for p in (gw_pid, gen_pid, hv_pid)], gl.machine_jiffies()
                time.sleep(self.plan.channel_window_s)
                nxt = self.loadgen.ask(f"mark {CHANNELS}", 10)
                cpus1 = [process_cpu_s(p) for p in (gw_pid, gen_pid, hv_pid)]
                _put(into, "machine_busy_pct", gl.busy_pct(machine0, gl.machine_jiffies()))
                dt = nxt["t"] - mark["t"]
                rates = sorted((b - a) / 1e6 / dt for a, b in zip(mark["bytes"], nxt["bytes"], strict=True))
                total = sum(rates)
                _put(into, "aggregate_mb_s", total)
                _put(into, "channel_min_mb_s", rates[0])
                _put(into, "channel_p10_mb_s", rates[len(rates) // 10])
                _put(into, "channel_median_mb_s", statistics.median(rates))
                _put(into, "channel_p90_mb_s", rates[len(rates) * 9 // 10])
                _put(into, "channel_max_mb_s", rates[-1])
                _put(into, "stalled_channels", float(sum(r == 0 for r in rates)))
                sq = sum(r * r for r in rates)
                _put(into, "jain_index", total * total / (len(rates) * sq) if sq else None)
                for key, a, b in zip(("gateway", "loadgen", "hypervisors"), cpus0, cpus1, strict=True):
                    _put(into, f"cpu_{key}_pct", 100 * (b - a) / dt)
                mark = nxt
        finally:
            try:
                result = hv.ask("stop", 30)
                if result.get("failed"):
                    notes.append(f"channels: writers failed: {result['failed']}")
            except (RuntimeError, OSError) as exc:
                notes.append(f"channels: {exc}")
            self.procs.stop(hv.proc)
            self.procs.started.remove(hv.proc)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30 and _status_counts(self.lab)[1].get("active", 0):
                time.sleep(0.2)


def run(quick: bool, *, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Every size, then the channel part at N = 1000; JSON-ready per-cycle values."""
    plan = QUICK if quick else FULL
    if sizes:
        plan = Plan(
            sizes,
            plan.cycles,
            tuple(s for s in sizes if s in plan.idle_sizes) or sizes[-1:],
            plan.idle_windows,
            plan.restarts,
            plan.channel_window_s,
            plan.channel_windows,
            plan.settle_s,
        )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # inherited by the gateway process; scale_peers raises its own
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    notes: list[str] = [f"RLIMIT_NOFILE raised to the hard limit: {soft}/{hard} (soft/hard), inherited by the gateway"]
    usable = [n for n in plan.sizes if n + CHANNELS + FD_MARGIN <= soft]
    for n in plan.sizes:
        if n not in usable:
            notes.append(f"N={n} skipped: needs ~{n + CHANNELS + FD_MARGIN} descriptors, the hard limit is {hard}")
    started = time.monotonic()
    load0 = os.getloadavg()
    pki_base, pki_s, issued = ensure_pki(max(usable, default=0))
    notes.append(f"PKI cache {PKI_CACHE}: {issued} certificate(s) issued now ({pki_s:.1f} s)")
    sizes_out: dict[str, Figures] = {}
    channels: Figures = {}
    errors: list[str] = []
    loadgen_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-scale-") as tmp:
        bench = ScaleBench(Path(tmp), pki_base, plan)
        try:
            loadgen_info = bench.start_loadgen(max(usable, default=1))
            for n in usable:
                fig = sizes_out.setdefault(str(n), {})
                try:
                    bench.measure_size(n, fig, channels, notes)
                except (RuntimeError, OSError, KeyError) as exc:
                    errors.append(f"N={n}: {type(exc).__name__}: {exc}")
        finally:
            if bench.loadgen is not None:
                try:
                    bench.loadgen.ask("quit", 5)
                except (RuntimeError, OSError, ValueError):
                    pass
            bench.procs.stop_all()
    return {
        "what": "one gateway process: N simulated mutual-TLS clients (control connections), restart, 200 channels",
        "plan": vars(plan),
        "connect_concurrency": CONNECT_CONCURRENCY,
        "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
        "idle_window_s": IDLE_WINDOW_S,
        "channels": CHANNELS,
        "channel_size": bench.channel_size,
        "loadgen": loadgen_info,
        "machine": machine(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "sizes": sizes_out,
        "channel_figures": channels,
        "notes": notes,
        "errors": errors,
    }


# ------------------------------------------------------------------ report


SIZE_ROWS: tuple[tuple[str, str, int], ...] = (
    ("rss_per_client_kib", "gateway RSS per idle client, KiB", 1),
    ("rss_before_mib", "  gateway RSS before / MiB", 1),
    ("rss_after_mib", "  gateway RSS with N online / MiB", 1),
    ("handshakes_per_s", "TLS handshakes per second while connecting", 0),
    ("tls_p50_ms", "  dial + handshake p50, ms (load generator)", 1),
    ("tls_p99_ms", "  dial + handshake p99, ms", 1),
    ("online_s", "  until admin status lists all N, s", 2),
    ("gateway_cpu_ms_per_client", "  gateway CPU per connected client, ms", 2),
    ("gateway_cpu_pct_connect", "  gateway CPU % while connecting", 0),
    ("loadgen_cpu_pct_connect", "  load generator CPU % while connecting", 0),
    ("machine_busy_pct_connect", "  whole machine busy % while connecting", 0),
    ("idle_cpu_pct", "gateway CPU % idle, heartbeats every 10 s", 2),
    ("idle_loadgen_cpu_pct", "  load generator CPU % idle", 2),
    ("restart_s", "all N back after SIGKILL + restart, s", 2),
    ("restart_gateway_up_s", "  of which the new gateway starting, s", 2),
    ("restart_attempts_per_client", "  connection attempts per client to get back", 2),
)
CHANNEL_ROWS: tuple[tuple[str, str, int], ...] = (
    ("aggregate_mb_s", "aggregate MB/s, hypervisors → clients", 0),
    ("channel_min_mb_s", "per channel MB/s: min", 2),
    ("channel_p10_mb_s", "  p10", 2),
    ("channel_median_mb_s", "  median", 2),
    ("channel_p90_mb_s", "  p90", 2),
    ("channel_max_mb_s", "  max", 2),
    ("stalled_channels", "channels that moved nothing in a window", 0),
    ("jain_index", "Jain's fairness index (1 = equal shares)", 3),
    ("cpu_gateway_pct", "gateway CPU %", 0),
    ("cpu_loadgen_pct", "simulated clients' process CPU %", 0),
    ("cpu_hypervisors_pct", "hypervisor sockets' process CPU %", 0),
    ("machine_busy_pct", "whole machine busy % (both CPUs = 100)", 0),
    ("setup_s", "until all 200 routes were active, s", 2),
)


def table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run` result."""
    plan, mach = result["plan"], result["machine"]
    sizes: dict[str, Figures] = result["sizes"]
    lines = [
        f"scale: {result['what']}",
        f"  {plan['cycles']} cycles per N, each on a fresh gateway process; "
        f"idle CPU over {result['idle_window_s']:g} s window(s); {plan['restarts']} restart(s) per N; "
        f"VmRSS read {plan.get('settle_s', 1.0):g} s after the gateway start and after the last connection; "
        f"first connections ≤ {result['connect_concurrency']} handshakes in flight; median [min–max]",
        f"  {mach['cpus']} × {mach['cpu']}, Linux {mach['kernel']}, Python {mach['python']}, {mach['openssl']}; "
        f"load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        f"  load generator: one trio process for all clients ({result['loadgen'].get('contexts_s', 0):.1f} s to load "
        f"{result['plan']['sizes'][-1]} certificates); "
        f"gateway heartbeat_interval_s = {result['heartbeat_interval_s']:g}",
        "",
    ]
    width, col = 48, 26
    lines.append(f"{'measure':<{width}}" + "".join(f"{'N = ' + n:>{col}}" for n in sizes))
    for key, label, digits in SIZE_ROWS:
        lines.append(
            f"{label:<{width}}"
            + "".join(f"{cell(f.get(key), digits, single=' (1 run)'):>{col}}" for f in sizes.values())
        )
    ch = result["channel_figures"]
    lines += [
        "",
        f"{result['channels']} channels at once, {result['channel_size']} clients online; "
        f"{plan['channel_windows']} windows of {plan['channel_window_s']:g} s",
    ]
    for key, label, digits in CHANNEL_ROWS:
        lines.append(f"  {label:<{width - 2}}{cell(ch.get(key), digits, single=' (1 run)'):>{col}}")
    lines += ["", "floors (reported, not asserted)"]
    for n, f in sizes.items():
        v = f.get("rss_per_client_kib")
        if v:
            med = statistics.median(v)
            lines.append(
                f"  gateway memory ≤ {MEMORY_FLOOR_KIB:.0f} KiB per idle client, N = {n}: {med:.1f} KiB, "
                f"{'meets' if med <= MEMORY_FLOOR_KIB else 'MISSES'}"
            )
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    for err in result.get("errors", []):
        lines.append(f"  error: {err}")
    return "\n".join(lines)


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    sizes: dict[str, Figures] = result["sizes"]

    def one(key: str) -> dict[str, Any]:
        return {
            "name": key,
            "values": [[statistics.median(v), min(v), max(v)] if (v := f.get(key)) else None for f in sizes.values()],
        }

    cats = [f"N = {n}" for n in sizes]
    note = f"{result['plan']['cycles']} cycles, median with min–max; one gateway process, loopback"
    return [
        {
            "id": "memory",
            "title": "Gateway RSS per idle client",
            "unit": "KiB",
            "note": note,
            "categories": cats,
            "series": [one("rss_per_client_kib")],
        },
        {
            "id": "handshakes",
            "title": "TLS handshakes per second while N clients connect",
            "unit": "handshakes/s",
            "note": note,
            "categories": cats,
            "series": [one("handshakes_per_s")],
        },
        {
            "id": "restart",
            "title": "All clients back after a gateway restart",
            "unit": "s",
            "note": note,
            "categories": cats,
            "series": [one("restart_s")],
        },
    ]


# ------------------------------------- the herd: a restart with thousands of clients, pacing off and on
#: simulated-client processes of the herd run: they share the 2 cores with the gateway
HERD_PROCS = 2
#: (label, [gateway] handshake_pacing_s: 0 = off, today's behaviour before issue 15's pacing; None = the default)
HERD_ARMS: tuple[tuple[str, float | None], ...] = (("pacing off", 0.0), ("paced, retry hints", None))
HERD_FLOOR_S = 15.0
HERD_SETTLE_S = 2.0


class Herd:
    """N simulated clients in HERD_PROCS processes against one gateway; `restart` SIGKILLs the
    gateway, starts it again on the same port and times every client's return."""

    def __init__(self, workdir: Path, pki_base: Path, n: int, pacing_s: float | None, procs: int) -> None:
        from redirgate.cli.lab import write_gateway_config

        self.n = n
        self.procs = Processes(workdir)
        lab_dir = workdir / "lab"
        lab_dir.mkdir()
        (lab_dir / "pki").symlink_to(pki_base)
        (tunnel_port,) = gl.free_ports(1)

        def config(pacing_s: float | None) -> Path:
            # every simulated client dials from 127.0.0.1: the per-source cap (16) would be the whole
            # gateway's; thin clients have an address each, so it is max_handshakes here
            extra: dict[str, float] = {"max_handshakes_per_source": 256}
            if pacing_s is not None:
                extra["handshake_pacing_s"] = pacing_s
            return write_gateway_config(
                lab_dir,
                [],
                tunnel_listen=f"{LOOPBACK}:{tunnel_port}",
                heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
                **extra,
            )

        # the first connections of all N go to a paced gateway in every arm (they are not measured: only
        # the restart is, and it runs with the arm's setting)
        self.lab = gl.Lab(lab_dir, config(None), tunnel_port, lab_dir / "gateway.sock", {})
        self.config, self.pacing_s = config, pacing_s
        self.gateway = gl.start_gateway(self.procs, self.lab)
        share = [n // procs + (i < n % procs) for i in range(procs)]
        #: the first connections of all N, on a machine shared with others: generous
        self.connect_timeout_s = 120.0 + n * 0.1
        self.peers: list[Peer] = []
        first = 0
        for i, count in enumerate(share):
            argv = [
                sys.executable,
                str(PEERS),
                "clients",
                "--port",
                str(tunnel_port),
                "--pki",
                str(lab_dir / "pki"),
                "--first",
                str(first),
                "--count",
                str(count),
                "--connect-concurrency",
                str(CONNECT_CONCURRENCY // procs),
                "--connect-timeout-s",
                str(self.connect_timeout_s),
            ]
            self.peers.append(Peer(self.procs, f"loadgen{i}", argv))
            first += count
        self.counts = share
        for peer in self.peers:
            peer.read(60.0 + n * 0.01)

    def all(self, line: str, timeout_s: float) -> list[dict[str, Any]]:
        """`line` to every load generator at once, then their answers."""
        for peer in self.peers:
            self.tell(peer, line)
        return [peer.read(timeout_s) for peer in self.peers]

    @staticmethod
    def tell(peer: Peer, line: str) -> None:
        stdin = peer.proc.popen.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()

    def connect_all(self) -> int:
        for peer, count in zip(self.peers, self.counts, strict=True):
            self.tell(peer, f"connect {count}")
        timeout = self.connect_timeout_s + 30
        return sum(peer.read(timeout)["online"] for peer in self.peers)

    def restart(self, into: Figures, notes: list[str], label: str) -> None:
        """SIGKILL the gateway, start it again, until every client is back (the clients' own view)."""
        self.config(self.pacing_s)  # the arm's setting, read by the gateway started below
        marks = self.all("restart-mark", 30)
        marked = sum(m["marked"] for m in marks)
        gen0, machine0 = sum(process_cpu_s(p.pid) for p in self.peers), gl.machine_jiffies()
        t0 = time.monotonic()
        self.gateway.popen.kill()  # SIGKILL to this PID: nothing closed gracefully
        self.gateway.popen.wait(10)
        self.procs.started.remove(self.gateway)
        self.gateway = gl.start_gateway(self.procs, self.lab)
        up_s = time.monotonic() - t0
        cpu0 = process_cpu_s(self.gateway.pid)
        limit_s = 120.0 + self.n * 0.03
        while True:
            time.sleep(1.0)
            answers = self.all("back", 60)
            back = sorted(b for a in answers for b in a["back"])
            if len(back) >= marked or time.monotonic() - t0 > limit_s:
                break
        cpu_s = process_cpu_s(self.gateway.pid) - cpu0
        gen_s, busy = sum(process_cpu_s(p.pid) for p in self.peers) - gen0, gl.busy_pct(machine0, gl.machine_jiffies())
        st = gl.status(self.lab) or {}
        counters = st.get("counters", {})
        if len(back) < marked:
            errors = sorted({e for a in answers for e in a.get("errors", [])})[:3]
            notes.append(f"{label}: only {len(back)} of {marked} back within {limit_s:.0f} s ({'; '.join(errors)})")
            notes.append(f"{label}: back per second from the kill: {timeline(back)}")
            _put(into, "herd_machine_busy_pct", busy)
            _put(into, "herd_gateway_cpu_ms_per_client", 1e3 * cpu_s / max(1, len(back)))
            return
        _put(into, "herd_all_back_s", back[-1])
        _put(into, "herd_p50_s", back[len(back) // 2])
        _put(into, "herd_p99_s", back[min(len(back) - 1, len(back) * 99 // 100)])
        _put(into, "herd_gateway_up_s", up_s)
        _put(into, "herd_listed", len(st.get("clients", [])) + int(st.get("clients_more", 0)))
        _put(into, "herd_abandoned_gateway", counters.get("handshakes_abandoned", 0))
        _put(into, "herd_abandoned_clients", sum(a["abandoned"] for a in answers))
        _put(into, "herd_hints", sum(a["hints"] for a in answers))
        _put(into, "herd_refused_gateway", counters.get("handshakes_refused", 0))
        _put(into, "herd_admitted_at_place", counters.get("handshakes_admitted_at_place", 0))
        _put(into, "herd_attempts_per_client", sum(a["attempts"] for a in answers) / marked)
        _put(into, "herd_gateway_cpu_s", cpu_s)
        _put(into, "herd_loadgen_cpu_s", gen_s)
        _put(into, "herd_machine_busy_pct", busy)
        _put(into, "herd_gateway_cpu_ms_per_client", 1e3 * cpu_s / marked)
        _put(into, "herd_loadgen_cpu_ms_per_client", 1e3 * gen_s / marked)
        hints = sorted(h for a in answers for h in a.get("hint_values", []))
        if hints:
            _put(into, "herd_hint_p50_s", hints[len(hints) // 2])
            _put(into, "herd_hint_max_s", hints[-1])
        notes.append(f"{label}: back per second from the kill: {timeline(back)}")

    def close(self) -> None:
        try:
            self.all("quit", 5)
        except (RuntimeError, OSError, ValueError):
            pass
        self.procs.stop_all()


def timeline(back: list[float], buckets: int = 30) -> str:
    """How many came back in each of up to `buckets` equal spans from the kill, compact."""
    if not back:
        return "none"
    span = max(1.0, back[-1] / buckets)
    counts = [0] * (int(back[-1] / span) + 1)
    for b in back:
        counts[int(b / span)] += 1
    return f"per {span:.1f} s: " + " ".join(str(c) for c in counts)


def run_herd(n: int, rounds: int, procs: int = HERD_PROCS, arms: str = "both") -> dict[str, Any]:
    """For each round and arm (interleaved): a fresh gateway, N clients connected, then one SIGKILL +
    restart timed; the figures per arm."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started, load0 = time.monotonic(), os.getloadavg()
    pki_base, pki_s, issued = ensure_pki(n)
    notes = [f"PKI cache {PKI_CACHE}: {issued} certificate(s) issued now ({pki_s:.1f} s)"]
    chosen = [(label, pacing) for label, pacing in HERD_ARMS if arms == "both" or (arms == "off") == (pacing == 0.0)]
    figures: dict[str, Figures] = {label: {} for label, _ in chosen}
    errors: list[str] = []
    for _ in range(rounds):
        for label, pacing in chosen:
            with tempfile.TemporaryDirectory(prefix="redirgate-bench-herd-") as tmp:
                herd = None
                try:
                    herd = Herd(Path(tmp), pki_base, n, pacing, procs)
                    online = herd.connect_all()
                    if online < n:
                        notes.append(f"{label}: only {online} of {n} online before the restart")
                        continue
                    time.sleep(HERD_SETTLE_S)
                    herd.restart(figures[label], notes, label)
                    print(f"herd {label}: {json.dumps(figures[label])}", file=sys.stderr, flush=True)  # progress
                except (RuntimeError, OSError, KeyError) as exc:
                    errors.append(f"{label}: {type(exc).__name__}: {exc}")
                finally:
                    if herd is not None:
                        herd.close()
    return {
        "what": f"{n} simulated clients, gateway SIGKILL + restart, handshake pacing off vs on",
        "n": n,
        "rounds": rounds,
        "procs": procs,
        "arms": figures,
        "machine": machine(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "notes": notes,
        "errors": errors,
    }


HERD_ROWS: tuple[tuple[str, str, int], ...] = (
    ("herd_all_back_s", "all N back after SIGKILL + restart, s (from the kill)", 1),
    ("herd_p50_s", "  time back per client p50, s", 1),
    ("herd_p99_s", "  time back per client p99, s", 1),
    ("herd_gateway_up_s", "  of which the new gateway starting, s", 1),
    ("herd_listed", "  clients the gateway's status lists then", 0),
    ("herd_abandoned_gateway", "handshakes abandoned, gateway (started, not finished)", 0),
    ("herd_abandoned_clients", "handshakes abandoned, clients (dial timed out mid-way)", 0),
    ("herd_refused_gateway", "connections turned away before any handshake", 0),
    ("herd_hints", "  of which with a retry hint (clients' count)", 0),
    ("herd_admitted_at_place", "admitted at their place in the queue (ticket due)", 0),
    ("herd_attempts_per_client", "connection attempts per client to get back", 2),
    ("herd_gateway_cpu_s", "gateway CPU s from its start to all back", 1),
    ("herd_loadgen_cpu_s", "simulated clients' CPU s from the kill to all back", 1),
    ("herd_machine_busy_pct", "whole machine busy % meanwhile (both CPUs = 100)", 0),
    ("herd_gateway_cpu_ms_per_client", "gateway CPU ms per returning client", 2),
    ("herd_loadgen_cpu_ms_per_client", "simulated clients' CPU ms per returning client", 2),
    ("herd_hint_p50_s", "retry hints p50, s", 2),
    ("herd_hint_max_s", "retry hints max, s", 1),
)


def herd_table(result: dict[str, Any]) -> str:
    mach, arms = result["machine"], result["arms"]
    labels = list(arms)
    lines = [
        f"scale herd: {result['what']}",
        f"  {result['rounds']} round(s), arms interleaved, each on a fresh gateway (max_handshakes_per_source = 256: "
        "all clients dial from 127.0.0.1); the first connections go to a paced gateway in both arms, the restart "
        f"runs with the arm's setting; clients in {result['procs']} "
        f"processes on the same {mach['cpus']} cores as the gateway (they compete with it for CPU: the figures are "
        f"this whole machine's, not the gateway's alone); {mach['cpu']}, Python {mach['python']}, {mach['openssl']}; "
        f"load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        "",
    ]
    width, col = 56, 22
    lines.append(f"{'measure':<{width}}" + "".join(f"{label:>{col}}" for label in labels) + f"{'on ÷ off':>{col}}")
    for key, label, digits in HERD_ROWS:
        values = [arms[a].get(key) for a in labels]
        ratio = ""
        if all(values) and len(values) == 2:
            off, on = statistics.median(values[0]), statistics.median(values[1])
            ratio = f"{on / off:.2f}" if off else ""
        lines.append(
            f"{label:<{width}}" + "".join(f"{cell(v, digits, single=''):>{col}}" for v in values) + f"{ratio:>{col}}"
        )
    paced = arms[labels[-1]].get("herd_all_back_s")
    if paced:
        med = statistics.median(paced)
        lines += [
            "",
            f"floor: all {result['n']} back within {HERD_FLOOR_S:g} s of the kill, none abandoned: {med:.1f} s, "
            + (
                "meets"
                if med <= HERD_FLOOR_S
                and not any(
                    arms[labels[-1]].get(k, [0])[-1] for k in ("herd_abandoned_gateway", "herd_abandoned_clients")
                )
                else "MISSES"
            ),
        ]
    for note in result["notes"]:
        lines.append(f"  note: {note}")
    for err in result["errors"]:
        lines.append(f"  error: {err}")
    return "\n".join(lines)


# ------------------------------- idle: N idle clients, what their heartbeats cost (issue 18's floor)
IDLE_PROCS = 3
IDLE_FLOOR_PCT = 25.0
#: (label, [gateway] heartbeat_rtt_every): 1 = the gateway's own heartbeat every interval, as before
IDLE_ARMS: tuple[tuple[str, int], ...] = (("own heartbeat every interval (before)", 1), ("quiet, RTT every 6th", 6))
IDLE_WINDOW_INTERVALS = 2


def _raise_nofile(n: int) -> str:
    """RLIMIT_NOFILE for N connections in the gateway (inherited): up to the hard limit, and the hard
    limit itself where we may (root); a note saying what it is."""
    want = n + FD_MARGIN + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"RLIMIT_NOFILE {soft}/{hard} (soft/hard), inherited by the gateway and the load generators"


def _set_rtt_every(herd: Herd, every: int) -> None:
    """Rewrite the gateway's config with `heartbeat_rtt_every` and reload it (SIGHUP); until it took it."""
    from redirgate.cli.lab import write_gateway_config

    before = (gl.status(herd.lab) or {}).get("reloads", 0)
    write_gateway_config(
        herd.lab.directory,
        [],
        tunnel_listen=f"{LOOPBACK}:{herd.lab.tunnel_port}",
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        heartbeat_rtt_every=every,
    )
    os.kill(herd.gateway.pid, signal.SIGHUP)
    t0 = time.monotonic()
    while (gl.status(herd.lab) or {}).get("reloads", 0) <= before:
        if time.monotonic() - t0 > 60:
            raise RuntimeError(f"the gateway did not reload heartbeat_rtt_every = {every} within 60 s")
        time.sleep(0.5)


def run_idle(n: int, windows: int, procs: int = IDLE_PROCS) -> dict[str, Any]:
    """N idle clients on one gateway; its CPU over windows of IDLE_WINDOW_INTERVALS heartbeat
    intervals, with the gateway's own heartbeats every interval and quiet, interleaved (a reload
    between windows: the same sessions, the same process)."""
    started, load0 = time.monotonic(), os.getloadavg()
    notes = [_raise_nofile(n)]
    pki_base, pki_s, issued = ensure_pki(n)
    notes.append(f"PKI cache {PKI_CACHE}: {issued} certificate(s) issued now ({pki_s:.1f} s)")
    arms: dict[str, Figures] = {label: {} for label, _ in IDLE_ARMS}
    errors: list[str] = []
    online = 0
    window_s = IDLE_WINDOW_INTERVALS * HEARTBEAT_INTERVAL_S
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-idle-") as tmp:
        herd = None
        try:
            herd = Herd(Path(tmp), pki_base, n, None, procs)
            t0 = time.monotonic()
            online = herd.connect_all()
            notes.append(f"{online} of {n} online {time.monotonic() - t0:.0f} s after the first dial")
            notes.append(f"gateway RLIMIT_NOFILE {nofile_of(herd.gateway.pid)}")
            rss = gl.rss_kib(herd.gateway.pid)
            if rss is not None:
                notes.append(f"gateway RSS with {online} clients online: {rss / 1024:.0f} MiB")
            time.sleep(window_s)  # the connections' own work is over
            loadgens = [p.pid for p in herd.peers]
            for _ in range(windows):
                for label, every in IDLE_ARMS:
                    _set_rtt_every(herd, every)
                    time.sleep(HEARTBEAT_INTERVAL_S)  # one whole interval in this mode first
                    beats0 = sum(m["heartbeats"] for m in herd.all("mark", 30))
                    gw0 = process_cpu_s(herd.gateway.pid)
                    gen0, w0 = sum(process_cpu_s(p) for p in loadgens), time.monotonic()
                    time.sleep(window_s)
                    dt = time.monotonic() - w0
                    pct = 100 * (process_cpu_s(herd.gateway.pid) - gw0) / dt
                    beats = sum(m["heartbeats"] for m in herd.all("mark", 30)) - beats0
                    # the clients kept up (1.0: each sent one heartbeat per interval), so the gateway had
                    # the whole load to answer: the figure is its CPU, not the load generators' limit
                    _put(arms[label], "idle_beats_per_interval", beats * HEARTBEAT_INTERVAL_S / dt / max(online, 1))
                    _put(arms[label], "idle_gateway_pct", pct)
                    _put(arms[label], "idle_gateway_pct_per_1000", pct * 1000 / max(online, 1))
                    _put(arms[label], "idle_loadgen_pct", 100 * (sum(process_cpu_s(p) for p in loadgens) - gen0) / dt)
            st = gl.status(herd.lab) or {}
            listed = len(st.get("clients", [])) + int(st.get("clients_more", 0))
            notes.append(f"the gateway's status lists {listed} clients after the windows")
        except (RuntimeError, OSError, KeyError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if herd is not None:
                herd.close()
    return {
        "what": f"{n} idle simulated clients on one gateway, heartbeat_interval_s = {HEARTBEAT_INTERVAL_S:g}",
        "n": n,
        "online": online,
        "windows": windows,
        "window_s": window_s,
        "procs": procs,
        "arms": arms,
        "machine": machine(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "notes": notes,
        "errors": errors,
    }


IDLE_ROWS: tuple[tuple[str, str, int], ...] = (
    ("idle_gateway_pct", "gateway CPU, % of one core", 1),
    ("idle_gateway_pct_per_1000", "  per 1,000 clients", 2),
    ("idle_loadgen_pct", "simulated clients' processes CPU, %", 1),
    ("idle_beats_per_interval", "client heartbeats per client per interval", 2),
)


def idle_table(result: dict[str, Any]) -> str:
    mach, arms = result["machine"], result["arms"]
    labels = list(arms)
    lines = [
        f"scale idle: {result['what']}",
        f"  {result['windows']} window(s) of {result['window_s']:g} s per arm, arms interleaved by a reload of "
        f"heartbeat_rtt_every (same process, same sessions); clients in {result['procs']} processes on the same "
        f"{mach['cpus']} cores; {mach['cpu']}, Python {mach['python']}, {mach['openssl']}; load average "
        f"{result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        "",
    ]
    width, col = 44, 40
    lines.append(f"{'measure':<{width}}" + "".join(f"{label:>{col}}" for label in labels) + f"{'now ÷ before':>14}")
    for key, label, digits in IDLE_ROWS:
        values = [arms[a].get(key) for a in labels]
        ratio = ""
        if all(values):
            before, now = statistics.median(values[0]), statistics.median(values[-1])
            ratio = f"{now / before:.2f}" if before else ""
        lines.append(
            f"{label:<{width}}" + "".join(f"{cell(v, digits, single=''):>{col}}" for v in values) + f"{ratio:>14}"
        )
    now = arms[labels[-1]].get("idle_gateway_pct")
    if now:
        med = statistics.median(now)
        lines += [
            "",
            f"floor: {result['n']} idle clients' heartbeats cost ≤ {IDLE_FLOOR_PCT:g} % of one core: {med:.1f} % "
            f"({result['online']} online), "
            + ("meets" if med <= IDLE_FLOOR_PCT and result["online"] >= result["n"] else "MISSES"),
        ]
    for note in result["notes"]:
        lines.append(f"  note: {note}")
    for err in result["errors"]:
        lines.append(f"  error: {err}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "N = 100 and 1000, short windows (under ~40 s)", runs=False)
    parser.add_argument("--sizes", type=int, nargs="+", help="override the client counts")
    parser.add_argument(
        "--herd",
        type=int,
        metavar="N",
        help="instead: N clients (e.g. 10000), a gateway SIGKILL + restart with handshake pacing off and on",
    )
    parser.add_argument("--rounds", type=int, default=1, help="--herd: rounds of both arms, interleaved")
    parser.add_argument(
        "--arms", choices=["both", "off", "paced"], default="both", help="--herd: pacing off, paced or both (default)"
    )
    parser.add_argument(
        "--idle",
        type=int,
        metavar="N",
        help="instead: N idle clients (e.g. 20000), the gateway's heartbeat CPU, own heartbeats every interval vs quiet",
    )
    parser.add_argument("--windows", type=int, default=2, help="--idle: windows per arm, interleaved")
    args = parser.parse_args(argv)
    if args.idle:
        emit(run_idle(args.idle, args.windows), idle_table, args.json)
        return
    if args.herd:
        emit(run_herd(args.herd, args.rounds, arms=args.arms), herd_table, args.json)
        return
    emit(run(args.quick, sizes=tuple(args.sizes) if args.sizes else None), table, args.json)


if __name__ == "__main__":
    main()
