"""What carrying USB through client + gateway costs, beside `serve-usb` alone, in the same run.

Two paths to the same emulated device (``virtual:loopback``), each a set of
real processes on 127.0.0.1, the VM side being our ``UsbredirGuest`` in this
process, driven as fast as it goes:

==================  ==========================================================
serve-usb alone     VM side → TCP → ``redirgate client serve-usb`` (the device)
through gateway     VM side → TCP → ``redirgate gateway run`` → TLS 1.3 data
                    connection → ``redirgate client run`` (the device)
stunnel4 pair       VM side → TCP → stunnel4 (client mode) → mutual TLS 1.3 →
                    stunnel4 (server mode) → TCP → ``serve-usb`` (the device):
                    what a user builds without us, a usbredirserver behind
                    two C relays, the same number of processes in line
==================  ==========================================================

Figures, each the median over several runs (full 5, quick 3) with min–max,
the paths interleaved run by run (rotated), and the ratios gateway ÷
serve-usb and gateway ÷ stunnel4 pair (control and bulk figures only on the
pair: it has no full-speed device for the audio-like iso stream):

* control round trip, GET_DESCRIPTOR(device) one at a time, p50 / p99 µs,
  unpinned and with every process (and each of its threads) pinned to one
  CPU, as bench/relay.py pins its round trips (unpinned, wake-ups that cross
  CPUs make the figure bimodal);
* bulk OUT (SINK mode) and IN (SOURCE mode) MB/s with 16 and 64 KiB
  transfers, 1 and 4 in flight;
* CPU µs per control transfer and per 64 KiB bulk transfer (4 in flight) of
  each process: the product processes from /proc/PID/task/*/schedstat
  (nanoseconds, every live thread), this VM side from ``process_time``; and
  the whole machine's busy share during the bulk figures (/proc/stat), since
  other work shares the two cores;
* isochronous IN, as QEMU's usb-redir starts an iso stream
  (hw/usb/redirect.c: pkts_per_urb = packets per 10 ms, at most 32; no_urbs
  for 60 ms of buffer): webcam-like on the high-speed loopback (3 × 1024
  bytes every 125 µs microframe, 24.6 MB/s) and audio-like on
  ``virtual:loopback@full`` (one packet per 1 ms frame).  The loopback's iso
  IN endpoint always returns max-size packets (client/virtual/loopback.py,
  ``handle_iso_in``), so the audio-like stream carries 1023-byte packets at
  the audio rate, not 192-byte ones.  Counted: packets received, packets
  the host dropped (gaps in the packet ids: usbredirhost's drop rule when
  the reader is slow), and the shortfall against the (micro)frame schedule
  (frames for which the device produced no packet because the host did not
  read in time: on real hardware, lost data);
* what the gateway adds to the control round trip's p50 (gateway minus
  serve-usb, per run), beside what the stunnel4 pair adds to the same
  control transfers (pair minus serve-usb), and what stunnel4 adds to a 64-byte TLS round
  trip in the same run (bench/relay.py's processes: stunnel minus direct
  TCP - the same work, one relay hop plus a TLS layer - and stunnel minus
  direct TLS), unpinned and pinned, and stunnel4's CPU per round trip.

    python bench/usb_gateway.py [--quick] [--runs N]

Every process started here is stopped by PID in a ``finally``; every wait
has a bound.  Nothing is asserted: a figure that cannot be measured is
reported as missing, with the reason.
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import gateway_lab as gl
from bench.relay_setup import LOOPBACK, RTT_CPU, Processes, machine, process_cpu_s
from bench.report import cell as _cell
from bench.report import emit, ratio, script_arguments
from bench.report import median as _med
from bench.usb_path import _bulk_seconds, _ctrl_latencies, _with_retry
from redirgate.client.virtual import LoopbackMode
from redirgate.proto.usbredir import messages as m
from redirgate.vmside.guest import GuestError, UsbredirGuest

VENDOR_SET_MODE = 0x01  # client/virtual/loopback.py
BULK_OUT, BULK_IN, ISO_IN = 0x01, 0x81, 0x82
SIZES_KIB = (16, 64)
DEPTHS = (1, 4)
LOOPBACK_ID = "usb:1209:0003"
CONNECT_TIMEOUT_S = 15.0
SESSION_TIMEOUT_S = 300.0
ISO_WARMUP_S = 0.3
BULK_FLOOR_MB_S = 200.0  # the brief's floor for 64 KiB transfers through client + gateway

PATHS: dict[str, str] = {
    "serve_usb": "serve-usb alone",
    "gateway": "client + gateway",
    "stunnel_pair": "serve-usb + stunnel4 pair",
    "gateway_noresume": "client + gateway, not resumable",
}
#: The A/B pair measured back to back in every run (its order alternating run by run):
#: what resumable channels (issue 16) cost.  The second path's route has
#: `resume_grace_s = 0` (its own client, the same device): neither side keeps a replay.
A_B: tuple[str, str] = ("gateway_noresume", "gateway")
RESUME_COST_KEYS: tuple[str, ...] = (
    "ctrl_p50",
    "ctrl_pin_p50",
    *(f"bulk_{d}_{kib}_{depth}" for d in ("OUT", "IN") for kib in SIZES_KIB for depth in DEPTHS),
)


@dataclass(frozen=True)
class IsoCase:
    key: str
    label: str
    packet_bytes: int
    period_s: float  # one packet per (micro)frame: bInterval 1
    pkts_per_urb: int
    no_urbs: int

    @property
    def rate(self) -> float:
        return 1.0 / self.period_s


def _qemu_iso_params(pkts_per_s: int) -> tuple[int, int]:
    """hw/usb/redirect.c usbredir_start_iso_stream: ~100 URBs a second, 60 ms buffered."""
    per_urb = max(1, min(32, pkts_per_s // 100))
    target = pkts_per_s * 60 // 1000
    return per_urb, min(16, -(-target // per_urb))


ISO_CASES: tuple[IsoCase, ...] = (
    IsoCase("webcam", "webcam-like: 3×1024 B / 125 µs (high speed)", 3072, 125e-6, *_qemu_iso_params(8000)),
    IsoCase("audio", "audio-like: 1023 B / 1 ms (full speed)", 1023, 1e-3, *_qemu_iso_params(1000)),
)


@dataclass(frozen=True)
class Plan:
    runs: int
    ctrl_count: int
    bulk_bytes: int  # per 64 KiB bulk figure
    iso_seconds: float
    rtt_count: int  # 64-byte round trips through stunnel4 and the direct ceilings
    small_bulk_bytes: int  # per 16 KiB bulk figure (the slowest: it sets the module's time)


QUICK = Plan(runs=3, ctrl_count=600, bulk_bytes=8 << 20, iso_seconds=0.3, rtt_count=1000, small_bulk_bytes=4 << 20)
FULL = Plan(runs=5, ctrl_count=3000, bulk_bytes=64 << 20, iso_seconds=3.0, rtt_count=5000, small_bulk_bytes=16 << 20)


# ------------------------------------------------------------------ VM side
Figures = dict[str, list[float]]


def _put(into: Figures, key: str, value: float) -> None:
    into.setdefault(key, []).append(value)


def _cpu(pids: list[int]) -> list[float]:
    """CPU seconds of each process: /proc/PID/stat (includes threads that ended)."""
    out = []
    for pid in pids:
        try:
            out.append(process_cpu_s(pid))
        except (OSError, ValueError, IndexError):
            out.append(float("nan"))
    return out


def _cpu_exact(pids: list[int]) -> list[float]:
    """CPU seconds of each process's live threads, from schedstat (ns resolution)."""
    return [(gl.cpu_ns(pid) or 0) / 1e9 for pid in pids]


async def _connect(port: int, body: Callable[[UsbredirGuest], Awaitable[None]]) -> None:
    """One VM connection to `port` with the device announced and configured."""

    async def connect(announced: Callable[[], None]) -> None:
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        async with stream, UsbredirGuest(stream, peer=f"{LOOPBACK}:{port}", version="redirgate bench") as vm:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await vm.wait_device()
            announced()
            await vm.set_configuration(1)
            with trio.fail_after(SESSION_TIMEOUT_S):
                await body(vm)

    await _with_retry(connect)


async def _socket_figures(vm: UsbredirGuest, plan: Plan, pids: dict[str, int], into: Figures) -> None:
    """Control round trips (unpinned, pinned), then every bulk figure, on one connection."""
    cpu0, vm0 = _cpu_exact(list(pids.values())), time.process_time()
    lat = await _ctrl_latencies(vm, plan.ctrl_count)
    cpu1, vm1 = _cpu_exact(list(pids.values())), time.process_time()
    count = plan.ctrl_count + min(100, plan.ctrl_count)  # _ctrl_latencies warms up with 100 first
    for (name, _), a, b in zip(pids.items(), cpu0, cpu1, strict=True):
        _put(into, f"cpu_{name}_ctrl", (b - a) / count * 1e6)
    _put(into, "cpu_vm_ctrl", (vm1 - vm0) / count * 1e6)
    _put(into, "ctrl_p50", lat[len(lat) // 2] * 1e6)
    _put(into, "ctrl_p99", lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6)
    with gl.pinned_all(list(pids.values()), RTT_CPU):
        lat = await _ctrl_latencies(vm, plan.ctrl_count)
    _put(into, "ctrl_pin_p50", lat[len(lat) // 2] * 1e6)
    _put(into, "ctrl_pin_p99", lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6)
    machine0 = gl.machine_jiffies()
    for direction, endpoint, mode in (("OUT", BULK_OUT, LoopbackMode.SINK), ("IN", BULK_IN, LoopbackMode.SOURCE)):
        status, _ = await vm.control(0x40, VENDOR_SET_MODE, int(mode), 0, 0)
        if status != 0:
            raise GuestError(vm.peer, f"SET_MODE {mode.name} failed: status {status}")
        for kib in SIZES_KIB:
            for depth in DEPTHS:
                cpu0, vm0 = _cpu_exact(list(pids.values())), time.process_time()
                total = plan.bulk_bytes if kib == 64 else plan.small_bulk_bytes
                seconds = await _bulk_seconds(vm, endpoint, kib * 1024, total, depth)
                cpu1, vm1 = _cpu_exact(list(pids.values())), time.process_time()
                n = max(depth, total // (kib * 1024))
                _put(into, f"bulk_{direction}_{kib}_{depth}", n * kib * 1024 / 1e6 / seconds)
                if kib == 64 and depth == 4:
                    for (name, _), a, b in zip(pids.items(), cpu0, cpu1, strict=True):
                        _put(into, f"cpu_{name}_{direction}", (b - a) / n * 1e6)
                    _put(into, f"cpu_vm_{direction}", (vm1 - vm0) / n * 1e6)
    _put(into, "machine_busy_bulk", gl.busy_pct(machine0, gl.machine_jiffies()) or 0.0)


async def _iso_figures(vm: UsbredirGuest, case: IsoCase, seconds: float, pids: dict[str, int], into: Figures) -> None:
    """Start an iso IN stream as QEMU would, read it as fast as it comes, count what is missing."""
    alt = await vm.set_alt_setting(1, 1)
    if alt.status != 0:
        raise GuestError(vm.peer, f"SET_INTERFACE 1/1 failed: status {alt.status}")
    reply = await vm.request(m.StartIsoStream(ISO_IN, case.pkts_per_urb, case.no_urbs, id=vm.next_id()))
    if getattr(reply, "status", 1) != 0:
        raise GuestError(vm.peer, f"start_iso_stream failed: {reply}")
    ids: list[int] = []
    seqs: list[int] = []
    bad = 0
    nbytes = 0
    clock = trio.current_time
    start = clock()
    window_start = start + ISO_WARMUP_S
    end = window_start + seconds
    cpu0: list[float] = []
    while clock() < end:
        with trio.move_on_at(end):
            got = await vm.stream_packets(ISO_IN, 1)
            now = clock()
            if now < window_start:
                continue
            if not cpu0:
                cpu0 = _cpu(list(pids.values()))
            for pkt in got:
                if not isinstance(pkt, m.IsoPacket):
                    bad += 1  # a stream status in the middle: the host gave up for a while
                    continue
                ids.append(pkt.id)
                if pkt.status == 0 and len(pkt.data) >= 4:
                    seqs.append(struct.unpack_from("<I", pkt.data)[0])
                    nbytes += len(pkt.data)
                else:
                    bad += 1
    cpu1 = _cpu(list(pids.values()))
    with trio.move_on_after(5):
        await vm.request(m.StopIsoStream(ISO_IN, id=vm.next_id()))
    key = f"iso_{case.key}"
    expected = seconds * case.rate
    _put(into, f"{key}_received", float(len(ids)))
    _put(into, f"{key}_expected", expected)
    dropped = (ids[-1] - ids[0] + 1 - len(ids)) if ids else 0
    _put(into, f"{key}_dropped", float(dropped))
    produced = (seqs[-1] - seqs[0] + 1) if seqs else 0
    _put(into, f"{key}_shortfall", max(0.0, expected - produced))
    _put(into, f"{key}_bad_status", float(bad))
    _put(into, f"{key}_mb_s", nbytes / 1e6 / seconds)
    if cpu0:
        for (name, _), a, b in zip(pids.items(), cpu0, cpu1, strict=True):
            _put(into, f"cpu_{name}_{case.key}_pct", 100 * (b - a) / seconds)


# ----------------------------------------------------------- the processes
@dataclass
class Setup:
    procs: Processes
    lab: gl.Lab
    ports: dict[tuple[str, str], int]  # (path, "high"|"full") -> VM-side port
    pids: dict[str, dict[str, int]]  # path -> process role -> pid


def start_everything(workdir: Path) -> Setup:
    from redirgate.cli.lab import LabRoute

    procs = Processes(workdir)
    lab = gl.write_lab(
        workdir / "lab",
        [
            LabRoute("loop", LOOPBACK_ID, client="thin-hs"),
            LabRoute("loopfs", LOOPBACK_ID, client="thin-fs"),
            LabRoute("loopnr", LOOPBACK_ID, client="thin-nr", extra={"resume_grace_s": 0}),
        ],
        {"thin-hs": ["virtual:loopback"], "thin-fs": ["virtual:loopback@full"], "thin-nr": ["virtual:loopback"]},
    )
    setup = Setup(procs, lab, {}, {})
    try:
        serve = {}
        serve_ports = gl.free_ports(2)
        for port, (speed, spec) in zip(
            serve_ports, (("high", "virtual:loopback"), ("full", "virtual:loopback@full")), strict=True
        ):
            serve[speed] = procs.start(
                f"serve-usb-{speed}", [*gl.CLI, "client", "serve-usb", "--listen", f"{LOOPBACK}:{port}", spec], port
            )
            setup.ports[("serve_usb", speed)] = port
        gateway = gl.start_gateway(procs, lab)
        clients = {name: gl.start_client(procs, lab, name) for name in ("thin-hs", "thin-fs", "thin-nr")}
        gl.wait_online(lab, {"thin-hs": 1, "thin-fs": 1, "thin-nr": 1}, procs=list(clients.values()))
        setup.ports[("gateway", "high")] = lab.routes["loop"]
        setup.ports[("gateway", "full")] = lab.routes["loopfs"]
        setup.ports[("gateway_noresume", "high")] = lab.routes["loopnr"]
        setup.pids["gateway_noresume"] = {"gateway": gateway.pid, "client": clients["thin-nr"].pid}
        setup.pids["serve_usb"] = {"serve-usb": serve["high"].pid}
        setup.pids["serve_usb_full"] = {"serve-usb": serve["full"].pid}
        setup.pids["gateway"] = {"gateway": gateway.pid, "client": clients["thin-hs"].pid}
        setup.pids["gateway_full"] = {"gateway": gateway.pid, "client": clients["thin-fs"].pid}
    except BaseException:
        procs.stop_all()
        raise
    return setup


def start_stunnel_pair(setup: Setup, pki: Any, workdir: Path) -> None:
    """The path a user would build without us: serve-usb (a usbredirserver) behind a
    client-mode stunnel4 and a server-mode one, mutual TLS 1.3 between them: the same
    processes in line as through the gateway, the same messages, a C relay in each hop."""
    from bench.relay_setup import stunnel_client_config, stunnel_config

    directory = workdir / "stunnel-usb"
    directory.mkdir()
    serve_port, server_port, client_port = gl.free_ports(3)
    serve = setup.procs.start(
        "serve-usb-stunnel",
        [*gl.CLI, "client", "serve-usb", "--listen", f"{LOOPBACK}:{serve_port}", "virtual:loopback"],
        serve_port,
    )
    server_conf = stunnel_config(pki, server_port, serve_port, directory)
    server = setup.procs.start("stunnel-usb-server", ["stunnel4", str(server_conf)], server_port)
    client_conf = stunnel_client_config(pki, client_port, server_port, directory)
    client = setup.procs.start("stunnel-usb-client", ["stunnel4", str(client_conf)], client_port)
    setup.ports[("stunnel_pair", "high")] = client_port
    setup.pids["stunnel_pair"] = {"serve-usb": serve.pid, "stunnel-server": server.pid, "stunnel-client": client.pid}


def measure_path(setup: Setup, path: str, plan: Plan, into: Figures) -> None:
    """One run of every figure of one path (three VM connections; the stunnel4 pair
    path has no full-speed device, so it carries the control and bulk figures only,
    and so does the not-resumable gateway path: the A/B pair compares those)."""
    pids = setup.pids[path]

    async def sockets(vm: UsbredirGuest) -> None:
        await _socket_figures(vm, plan, pids, into)

    trio.run(_connect, setup.ports[(path, "high")], sockets)
    if path == "gateway":
        gl.wait_route_idle(setup.lab, "loop")
    if path == "gateway_noresume":
        gl.wait_route_idle(setup.lab, "loopnr")
    if path in ("stunnel_pair", "gateway_noresume"):
        return
    for case in ISO_CASES:
        speed = "high" if case.key == "webcam" else "full"
        case_pids = pids if speed == "high" else setup.pids[f"{path}_full"]

        async def iso(vm: UsbredirGuest, case: IsoCase = case, case_pids: dict[str, int] = case_pids) -> None:
            await _iso_figures(vm, case, plan.iso_seconds, case_pids, into)

        trio.run(_connect, setup.ports[(path, speed)], iso)
        if path == "gateway":
            gl.wait_route_idle(setup.lab, "loop" if speed == "high" else "loopfs")


# ---------------------------------------------------------- stunnel4 beside
REF_CASES = ("direct_plain", "direct_tls", "stunnel", "stunnel_pair")


def reference_round_trips(bench: Any, count: int, into: dict[str, Figures], errors: list[str]) -> None:
    """64-byte round trips through bench/relay.py's processes, unpinned and pinned."""
    from bench.relay import CASES, WARMUP
    from bench.relay import Figures as RelayFigures

    cases = {c.key: c for c in CASES}
    for key in REF_CASES:
        if key == "stunnel_pair":
            _stunnel_pair_round_trips(bench, count, into.setdefault(key, {}), errors)
            continue
        case = cases[key]
        fig = into.setdefault(key, {})
        with bench.endpoint(case) as (port, _relay, _oneshot):
            result = bench.source(port, case.tls, ["--rtt", str(count), "--warmup", str(WARMUP)], 30.0 + count * 0.01)
        if "error" in result or result.get("count", 0) < count:
            errors.append(f"{case.label}, unpinned: {result.get('error', 'connection ended early')}")
        else:
            _put(fig, "p50", float(result["p50_us"]))
            _put(fig, "p99", float(result["p99_us"]))
        pinned = RelayFigures(case.label)
        bench.round_trips(case, count, pinned)
        for a, b in zip(pinned.rtt_p50_us, pinned.rtt_p99_us, strict=True):
            _put(fig, "pin_p50", a)
            _put(fig, "pin_p99", b)
        for cpu in pinned.cpu_us_per_rtt:
            _put(fig, "relay_cpu_us", cpu)
        errors.extend(f"{case.label}, pinned: {err}" for err in pinned.errors)


def _stunnel_pair_round_trips(bench: Any, count: int, fig: Figures, errors: list[str]) -> None:
    """64-byte round trips, plain, through a client-mode stunnel4 and the server-mode one:
    the same shape as our path (plain from the VM, TLS between gateway and client, plain
    at the device), built from stunnel alone."""
    from bench.relay import CASES, WARMUP
    from bench.relay_setup import RTT_CPU, free_port, pinned, stunnel_client_config

    server = bench.relay_for(next(c for c in CASES if c.key == "stunnel"))
    port = free_port()
    conf = stunnel_client_config(bench.pki, port, server.port, bench.workdir)
    client = bench.procs.start("stunnel-client", ["stunnel4", str(conf)], port)
    try:
        timeout_s = 30.0 + count * 0.01
        for pin in (False, True):
            extra = ["--rtt", str(count), "--warmup", str(WARMUP)] + (["--cpu", str(RTT_CPU)] if pin else [])
            if pin:
                with pinned([bench.sink_plain, server, client]):
                    result = bench.source(port, False, extra, timeout_s)
            else:
                result = bench.source(port, False, extra, timeout_s)
            if "error" in result or result.get("count", 0) < count:
                errors.append(
                    f"stunnel pair, {'pinned' if pin else 'unpinned'}: {result.get('error', 'connection ended early')}"
                )
                continue
            prefix = "pin_" if pin else ""
            _put(fig, f"{prefix}p50", float(result["p50_us"]))
            _put(fig, f"{prefix}p99", float(result["p99_us"]))
    finally:
        bench.procs.stop(client)
        bench.procs.started.remove(client)


# -------------------------------------------------------------------- run
def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    """Measure both paths and the stunnel4 reference; JSON-ready per-run values."""
    from shutil import which

    plan = QUICK if quick else FULL
    if runs:
        plan = Plan(runs, plan.ctrl_count, plan.bulk_bytes, plan.iso_seconds, plan.rtt_count, plan.small_bulk_bytes)
    figures: dict[str, Figures] = {p: {} for p in PATHS}
    reference: dict[str, Figures] = {}
    resume_cost: Figures = {}
    errors: list[str] = []
    started = time.monotonic()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-usbgw-") as tmp:
        workdir = Path(tmp)
        setup = start_everything(workdir)
        try:
            relay_bench = None
            if which("stunnel4"):
                from bench.relay import Bench
                from bench.relay_setup import make_pki

                relay_bench = Bench(setup.procs, make_pki(workdir / "relay-pki"), workdir)
                start_stunnel_pair(setup, relay_bench.pki, workdir)
            else:
                errors.append("stunnel4 is not installed (tests/setup-system.sh installs it): no reference")
            # the A/B pair runs back to back (its order alternating), as one slot of the rotation
            order = [p for p in PATHS if p in setup.pids and p != A_B[1]]
            for i in range(plan.runs):
                turn = i % len(order)
                for slot in order[turn:] + order[:turn]:
                    group = [slot]
                    if slot == A_B[0]:
                        group = list(A_B if i % 2 == 0 else A_B[::-1])
                    before = {p: {k: len(figures[p].get(k, [])) for k in RESUME_COST_KEYS} for p in group}
                    for path in group:
                        try:
                            measure_path(setup, path, plan, figures[path])
                        except Exception as exc:  # report, keep the other figures
                            errors.append(f"run {i + 1}, {PATHS[path]}: {type(exc).__name__}: {exc}")
                    if len(group) == 2:
                        _pair(resume_cost, figures[A_B[1]], figures[A_B[0]], before[A_B[1]], before[A_B[0]])
                if relay_bench is not None:
                    try:
                        reference_round_trips(relay_bench, plan.rtt_count, reference, errors)
                    except (RuntimeError, OSError) as exc:
                        errors.append(f"run {i + 1}, stunnel4 reference: {exc}")
        finally:
            logs = {p.name: p.log_tail() for p in setup.procs.started if p.popen.poll() is not None}
            setup.procs.stop_all()
    for name, tail in logs.items():
        if tail:
            errors.append(f"{name} ended early: {tail[-300:]}")
    return {
        "what": "USB path through client + gateway vs serve-usb alone, virtual:loopback, VM side UsbredirGuest",
        "plan": vars(plan),
        "iso_cases": [vars(c) for c in ISO_CASES],
        "rtt_cpu": RTT_CPU,
        "machine": machine(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "paths": figures,
        "reference": reference,
        "added": added_rtt(figures, reference),
        "resume_cost": resume_cost,
        "errors": errors,
    }


def _pair(into: Figures, b: Figures, a: Figures, before_b: dict[str, int], before_a: dict[str, int]) -> None:
    """One run of the A/B pair: B ÷ A of each figure both measured in this run
    (key -> one ratio per run), and B − A of the control p50s, µs ("<key>_added")."""
    for key in RESUME_COST_KEYS:
        vb, va = b.get(key, []), a.get(key, [])
        if len(vb) > before_b[key] and len(va) > before_a[key] and va[-1]:
            _put(into, key, vb[-1] / va[-1])
            if key.startswith("ctrl_"):
                _put(into, f"{key}_added", vb[-1] - va[-1])


def _diffs(a: list[float], b: list[float]) -> list[float]:
    # the runs both sides completed (a failed run leaves one list shorter)
    return [x - y for x, y in zip(a, b, strict=False)]


def added_rtt(figures: dict[str, Figures], reference: dict[str, Figures]) -> dict[str, dict[str, list[float]]]:
    """Per-run differences: what the gateway adds to the control p50, what stunnel4 adds."""
    gw, su, pair = figures.get("gateway", {}), figures.get("serve_usb", {}), figures.get("stunnel_pair", {})
    st, tcp, tls = reference.get("stunnel", {}), reference.get("direct_plain", {}), reference.get("direct_tls", {})
    out: dict[str, dict[str, list[float]]] = {}
    for mode, key in (("unpinned", "p50"), ("pinned", "pin_p50")):
        out[mode] = {
            "gateway": _diffs(gw.get(f"ctrl_{key}", []), su.get(f"ctrl_{key}", [])),
            "stunnel_pair_usb": _diffs(pair.get(f"ctrl_{key}", []), su.get(f"ctrl_{key}", [])),
            "stunnel_vs_tcp": _diffs(st.get(key, []), tcp.get(key, [])),
            "stunnel_vs_tls": _diffs(st.get(key, []), tls.get(key, [])),
            "stunnel_pair_vs_tcp": _diffs(reference.get("stunnel_pair", {}).get(key, []), tcp.get(key, [])),
        }
    return out


# ------------------------------------------------------------------ report


def _ratio(a: list[float] | None, b: list[float] | None) -> str:
    r = ratio(a, b)
    return "—" if r is None else f"{r:.2f}"


def _rows() -> list[tuple[str, str, int]]:
    rows = [
        ("ctrl_p50", "control GET_DESCRIPTOR round trip p50, µs", 0),
        ("ctrl_p99", "control GET_DESCRIPTOR round trip p99, µs", 0),
        ("ctrl_pin_p50", "  same, all pinned to one CPU, p50, µs", 0),
        ("ctrl_pin_p99", "  same, all pinned to one CPU, p99, µs", 0),
    ]
    for direction, mode in (("OUT", "sink"), ("IN", "source")):
        for kib in SIZES_KIB:
            for depth in DEPTHS:
                label = f"bulk {direction} ({mode}) {kib} KiB × {depth} in flight, MB/s"
                rows.append((f"bulk_{direction}_{kib}_{depth}", label, 0))
    return rows


def table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run` result."""
    plan, mach = result["plan"], result["machine"]
    paths: dict[str, Figures] = result["paths"]
    su, gw, pair = paths.get("serve_usb", {}), paths.get("gateway", {}), paths.get("stunnel_pair", {})
    lines = [
        f"usb_gateway: {result['what']}",
        f"  {plan['runs']} runs, paths interleaved; per run: {plan['ctrl_count']} control transfers (×2: unpinned, "
        f"pinned to CPU {result['rtt_cpu']}), {plan['bulk_bytes'] >> 20} MiB per 64 KiB bulk figure "
        f"({plan['small_bulk_bytes'] >> 20} MiB per 16 KiB one), "
        f"{plan['iso_seconds']:g} s per iso stream; median [min–max]",
        f"  {mach['cpus']} × {mach['cpu']}, Linux {mach['kernel']}, Python {mach['python']}, {mach['openssl']}; "
        f"load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        "  every box a separate process on 127.0.0.1: serve-usb | gateway run + client run (mutual TLS 1.3 tunnel)"
        " | stunnel4 client + stunnel4 server + serve-usb (mutual TLS 1.3 between the two stunnels)",
        "",
    ]
    width = 50
    col = 22
    lines.append(
        f"{'measure':<{width}}{PATHS['serve_usb']:>{col}}{PATHS['gateway']:>{col}}"
        f"{PATHS['stunnel_pair']:>{col + 4}}{'gw/alone':>10}{'gw/pair':>9}"
    )
    for key, label, digits in _rows():
        lines.append(
            f"{label:<{width}}{_cell(su.get(key), digits):>{col}}{_cell(gw.get(key), digits):>{col}}"
            f"{_cell(pair.get(key), digits):>{col + 4}}{_ratio(gw.get(key), su.get(key)):>10}"
            f"{_ratio(gw.get(key), pair.get(key)):>9}"
        )
    lines.append(
        "  gw/alone = through gateway ÷ serve-usb alone, gw/pair = through gateway ÷ serve-usb behind "
        "the stunnel4 pair (MB/s: higher is better; µs: lower is better)"
    )
    lines += _resume_cost_lines(result, width, col)
    lines.append("")
    lines.append(
        f"{'CPU µs per transfer, by process':<{width}}{'control':>{col}}{'64 KiB OUT ×4':>{col}}{'64 KiB IN ×4':>{col}}"
    )
    for path, role in (
        ("serve_usb", "serve-usb"),
        ("serve_usb", "vm"),
        ("gateway", "gateway"),
        ("gateway", "client"),
        ("gateway", "vm"),
        ("gateway_noresume", "gateway"),
        ("gateway_noresume", "client"),
        ("stunnel_pair", "stunnel-client"),
        ("stunnel_pair", "stunnel-server"),
        ("stunnel_pair", "serve-usb"),
        ("stunnel_pair", "vm"),
    ):
        name = f"{role} ({PATHS[path]})" if role != "vm" else f"VM side (this process), {PATHS[path]}"
        f = paths.get(path, {})
        lines.append(
            f"  {name:<{width - 2}}{_cell(f.get(f'cpu_{role}_ctrl')):>{col}}"
            f"{_cell(f.get(f'cpu_{role}_OUT')):>{col}}{_cell(f.get(f'cpu_{role}_IN')):>{col}}"
        )
    busy_su, busy_gw = _cell(su.get("machine_busy_bulk")), _cell(gw.get("machine_busy_bulk"))
    lines.append(
        f"  whole machine busy % (both CPUs = 100, everyone's work) during the bulk figures: "
        f"serve-usb alone {busy_su}, through gateway {busy_gw}"
    )
    st_cpu = result["reference"].get("stunnel", {}).get("relay_cpu_us")
    lines.append(f"  {'stunnel4 process per 64 B round trip (pinned)':<{width - 2}}{_cell(st_cpu):>{col}}")
    lines.append("  control: unpinned loop; schedstat CPU of live threads; /proc ticks would be ±10 ms")
    lines.append("")
    lines.append("isochronous IN (start_iso_stream as QEMU's usb-redir asks), per stream window")
    for case in result["iso_cases"]:
        key = f"iso_{case['key']}"
        expected = _med(su.get(f"{key}_expected", []) or gw.get(f"{key}_expected", []))
        lines.append(
            f"  {case['label']}, {case['pkts_per_urb']} pkts/urb × {case['no_urbs']} urbs; "
            f"{expected or 0:.0f} (micro)frames per window"
        )
        for sub, label, digits in (
            ("received", "packets received", 0),
            ("dropped", "dropped by the host (id gaps)", 0),
            ("shortfall", "frames with no packet (host behind schedule)", 0),
            ("bad_status", "packets with an error status", 0),
            ("mb_s", "payload MB/s", 2),
        ):
            lines.append(
                f"    {label:<{width - 4}}{_cell(su.get(f'{key}_{sub}'), digits):>{col}}"
                f"{_cell(gw.get(f'{key}_{sub}'), digits):>{col}}"
            )
        ck = case["key"]
        cpu = " / ".join(
            f"{role} {_cell(f.get(f'cpu_{role}_{ck}_pct'))}%"
            for f, role in ((su, "serve-usb"), (gw, "gateway"), (gw, "client"))
        )
        lines.append(f"    CPU during the window: {cpu}")
    lines.append(
        "  the loopback's iso IN returns max-size packets, so the audio-like stream is 1023 B/ms, not 192 B/ms"
    )
    lines.append("")
    added = result["added"]
    ref = result["reference"]
    lines.append("added round trip, µs (per-run differences of p50)      unpinned                pinned")
    for key, label in (
        ("gateway", "gateway: control RTT via gateway − serve-usb alone"),
        ("stunnel_pair_usb", "stunnel4 pair: control RTT via the pair − serve-usb"),
        ("stunnel_vs_tcp", "stunnel4: 64 B TLS via stunnel − direct TCP"),
        ("stunnel_vs_tls", "stunnel4: 64 B TLS via stunnel − direct TLS"),
        ("stunnel_pair_vs_tcp", "stunnel4 pair: 64 B via client+server stunnel − TCP"),
    ):
        unpinned, pinned = _cell(added["unpinned"][key], 1), _cell(added["pinned"][key], 1)
        lines.append(f"  {label:<{width}}{unpinned:>{col}}{pinned:>{col}}")
    for key in REF_CASES:
        f = ref.get(key, {})
        lines.append(
            f"    {key} 64 B round trip p50 / p99: "
            f"unpinned {_cell(f.get('p50'), 1)} / {_cell(f.get('p99'), 1)}, "
            f"pinned {_cell(f.get('pin_p50'), 1)} / {_cell(f.get('pin_p99'), 1)}"
        )
    lines.append("")
    lines.append("floors (reported, not asserted)")
    for depth in DEPTHS:
        for direction in ("OUT", "IN"):
            v = _med(gw.get(f"bulk_{direction}_64_{depth}", []))
            verdict = "—" if v is None else ("meets" if v >= BULK_FLOOR_MB_S else "MISSES")
            lines.append(
                f"  bulk {direction} 64 KiB × {depth} through client + gateway "
                f"≥ {BULK_FLOOR_MB_S:.0f} MB/s: "
                f"{'—' if v is None else f'{v:.0f}'} MB/s, {verdict}"
            )
    for mode in ("unpinned", "pinned"):
        g, s = _med(added[mode]["gateway"]), _med(added[mode]["stunnel_vs_tcp"])
        verdict = "—" if g is None or s is None else ("meets" if g <= s else "MISSES")
        lines.append(
            f"  gateway's added p50 control RTT ≤ stunnel4's added RTT ({mode}): "
            f"{'—' if g is None else f'{g:.1f}'} vs {'—' if s is None else f'{s:.1f}'} µs, {verdict}"
        )
        pair = _med(added[mode]["stunnel_pair_vs_tcp"])
        if g is not None and pair is not None:
            lines.append(
                f"    beside a stunnel4 pair (the same tunnel shape built from stunnel, {mode}): "
                f"{g:.1f} vs {pair:.1f} µs, ratio {g / pair:.2f}"
            )
        usb_pair = _med(added[mode].get("stunnel_pair_usb", []))
        if g is not None and usb_pair:
            lines.append(
                f"    beside the same control transfers through serve-usb behind a stunnel4 pair ({mode}): "
                f"{g:.1f} vs {usb_pair:.1f} µs, ratio {g / usb_pair:.2f}"
            )
    for err in dict.fromkeys(result.get("errors", [])):
        lines.append(f"  error: {err}")
    return "\n".join(lines)


def _resume_cost_lines(result: dict[str, Any], width: int, col: int) -> list[str]:
    """Resumable ÷ not resumable, run by run (the pair back to back), with issue 16's floors."""
    cost: Figures = result.get("resume_cost", {})
    if not cost:
        return []
    paths: dict[str, Figures] = result["paths"]
    nr, gw = paths.get("gateway_noresume", {}), paths.get("gateway", {})
    labels = {k: label for k, label, _ in _rows()}
    lines = [
        "",
        f"{'resumable channels (issue 16): cost':<{width}}{'not resumable':>{col}}{'resumable':>{col}}"
        f"{'ratio per run':>{col}}{'added µs':>{col - 4}}",
    ]
    for key in RESUME_COST_KEYS:
        digits = 0 if key.startswith("bulk") else 1
        added = _cell(cost.get(f"{key}_added"), 1) if key.startswith("ctrl_") else ""
        lines.append(
            f"{labels[key]:<{width}}{_cell(nr.get(key), digits):>{col}}{_cell(gw.get(key), digits):>{col}}"
            f"{_cell(cost.get(key), 2):>{col}}{added:>{col - 4}}"
        )
    bulk = [statistics.median(v) for k in RESUME_COST_KEYS if k.startswith("bulk") and (v := cost.get(k))]
    ctrl = _med(cost.get("ctrl_p50_added", []))
    verdicts = []
    if bulk:
        worst = min(bulk)
        verdicts.append(
            f"bulk ≥ 0.95 of not resumable: worst median {worst:.3f}, {'meets' if worst >= 0.95 else 'MISSES'}"
        )
    if ctrl is not None:
        verdicts.append(f"control p50 ≤ 5 µs added: {ctrl:.1f} µs, {'meets' if ctrl <= 5.0 else 'MISSES'}")
    lines.append(
        "  both gateway paths in every run, back to back (order alternating), each its own client; "
        "ratio per run = resumable ÷ not resumable, median [min–max] over runs"
    )
    if verdicts:
        lines.append("  issue 16 floors (reported, not asserted): " + "; ".join(verdicts))
    return lines


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Bulk MB/s and control RTT, both paths (see bench/__main__.py for the shape)."""
    paths: dict[str, Figures] = result["paths"]

    def series(path: str, keys: list[str]) -> dict[str, Any]:
        f = paths.get(path, {})
        return {
            "name": PATHS[path],
            "values": [[statistics.median(v), min(v), max(v)] if (v := f.get(k)) else None for k in keys],
        }

    bulk = [k for k, _, _ in _rows() if k.startswith("bulk_")]
    ctrl = ["ctrl_p50", "ctrl_p99", "ctrl_pin_p50", "ctrl_pin_p99"]
    labels = {k: label for k, label, _ in _rows()}
    note = f"{result['plan']['runs']} runs, median with min–max; virtual:loopback on loopback TCP"
    return [
        {
            "id": "bulk",
            "title": "USB bulk through client + gateway vs serve-usb alone",
            "unit": "MB/s",
            "note": note,
            "categories": [labels[k].replace(", MB/s", "") for k in bulk],
            "series": [series(p, bulk) for p in PATHS],
        },
        {
            "id": "control",
            "title": "USB control round trip (GET_DESCRIPTOR)",
            "unit": "µs",
            "note": note,
            "categories": [labels[k].replace(", µs", "").strip() for k in ctrl],
            "series": [series(p, ctrl) for p in PATHS],
        },
    ]


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "3 short runs (under ~40 s)")
    args = parser.parse_args(argv)
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
