"""Does a busy USB device delay a keyboard on the same client and gateway?

One gateway process and two client processes (``redirgate gateway run``,
``redirgate client run``, lab configs, 127.0.0.1):

* ``thin-01`` exports the emulated HID boot keyboard (``virtual:keyboard``)
  and a ``virtual:loopback``;
* ``thin-02`` exports another ``virtual:loopback`` (the neighbour that
  shares only the gateway).

The measured exchange is HID-like: a class GET_REPORT(Input) control
transfer to the keyboard (bmRequestType 0xA1, bRequest 0x01, 8 bytes; what a
host asks a boot keyboard for), one every 2 ms as a HID poll would, timed by
our ``UsbredirGuest`` in this process.  (Interrupt IN cannot be driven from
the VM side: the emulated keyboard only reports keys typed inside the
client process.)  Its round trip p50 / p99 in each phase:

==============  ===============================================================
idle            nothing else moves
busy IN, same   a neighbour process (another UsbredirGuest) reads bulk IN from
                thin-01's loopback flat out: 64 KiB transfers, 4 in flight
busy OUT, same  the same writing bulk OUT (SINK mode)
busy IN, other  the neighbour reads from thin-02's loopback: only the gateway
                is shared, which separates the gateway's share of any delay
                from the client's
==============  ===============================================================

Each figure is the median over runs (full 5, quick 3; phases rotated run by
run) with min–max; "added" is busy minus idle per run.  The neighbour's
MB/s and each process's CPU % during the phase are printed beside it: on a
2-core machine a flat-out neighbour keeps both cores busy, so part of any
delay is CPU contention that no relay design removes.

    python bench/fairness.py [--quick] [--runs N]

Every process started here is stopped by PID in a ``finally``; every wait
has a bound.  Nothing is asserted.
"""

from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
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
from bench.relay_setup import Proc, Processes, machine, process_cpu_s
from bench.report import cell as _cell
from bench.report import emit, script_arguments
from redirgate.vmside.guest import GuestError, UsbredirGuest

HID_GET_REPORT, REPORT_INPUT = 0x01, 0x01  # HID 1.11 7.2.1
KEYBOARD_ID, LOOPBACK_ID = "usb:1209:0002", "usb:1209:0003"
POLL_S = 0.002
WARMUP = 50
NEIGHBOUR_READY_S = 20.0
NEIGHBOUR_SETTLE_S = 0.3
NEIGHBOUR_MAX_S = 120.0
TARGET_ADDED_P99_US = 1000.0


@dataclass(frozen=True)
class Phase:
    key: str
    label: str
    route: str | None = None  # the neighbour's route, None: idle
    direction: str = "IN"


PHASES: tuple[Phase, ...] = (
    Phase("idle", "idle link"),
    Phase("busy_in_same", "bulk IN flat out, same client", "loop", "IN"),
    Phase("busy_out_same", "bulk OUT flat out, same client", "loop", "OUT"),
    Phase("busy_in_other", "bulk IN flat out, other client", "loop2", "IN"),
)


@dataclass(frozen=True)
class Plan:
    runs: int
    seconds: float  # of polling per phase


QUICK = Plan(runs=3, seconds=0.8)
FULL = Plan(runs=5, seconds=5.0)

Figures = dict[str, list[float]]


def _put(into: Figures, key: str, value: float) -> None:
    into.setdefault(key, []).append(value)


# --------------------------------------------------------------- VM sides
async def _hid_round_trips(port: int, seconds: float) -> list[float]:
    """GET_REPORT(Input) every POLL_S for `seconds` on one connection: sorted RTTs, s."""
    from bench.usb_gateway import _connect

    lat: list[float] = []

    async def body(vm: UsbredirGuest) -> None:
        clock = time.perf_counter
        for i in range(WARMUP + int(seconds / POLL_S)):
            start = clock()
            status, data = await vm.control(0xA1, HID_GET_REPORT, REPORT_INPUT << 8, 0, 8)
            if status != 0 or len(data) != 8:
                raise GuestError(vm.peer, f"GET_REPORT failed: status {status}, {len(data)} bytes")
            if i >= WARMUP:
                lat.append(clock() - start)
            await trio.sleep(max(0.0, POLL_S - (clock() - start)))

    await _connect(port, body)
    return sorted(lat)


async def _neighbour(port: int, direction: str, kib: int, depth: int) -> dict[str, Any]:
    """Bulk flat out until stdin closes: print GO once moving, then a JSON line."""
    from bench.usb_gateway import BULK_IN, BULK_OUT, VENDOR_SET_MODE, _connect
    from redirgate.client.virtual import LoopbackMode

    out: dict[str, Any] = {}

    async def body(vm: UsbredirGuest) -> None:
        mode = LoopbackMode.SOURCE if direction == "IN" else LoopbackMode.SINK
        status, _ = await vm.control(0x40, VENDOR_SET_MODE, int(mode), 0, 0)
        if status != 0:
            raise GuestError(vm.peer, f"SET_MODE failed: {status}")
        size = kib * 1024
        payload = bytes(size)
        moved = 0
        marks: list[tuple[float, int]] = []
        stop = trio.Event()

        async def worker() -> None:
            nonlocal moved
            while not stop.is_set():
                if direction == "IN":
                    st, got = await vm.bulk(BULK_IN, size)
                    n = len(got)  # type: ignore[arg-type]  # IN: the payload
                else:
                    st, got = await vm.bulk(BULK_OUT, data=payload)
                    n = int(got)
                if st != 0:
                    raise GuestError(vm.peer, f"bulk status {st}")
                moved += n
                if not marks and moved >= 16 * size:
                    marks.append((time.perf_counter(), moved))
                    print("GO", flush=True)

        async def watch_stdin() -> None:
            with trio.move_on_after(NEIGHBOUR_MAX_S):
                stdin = trio.lowlevel.FdStream(os.dup(0))
                async with stdin:
                    while await stdin.receive_some(4096):
                        pass
            marks.append((time.perf_counter(), moved))
            stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_stdin)
            for _ in range(depth):
                nursery.start_soon(worker)
        if len(marks) >= 2:
            (t0, b0), (t1, b1) = marks[0], marks[-1]
            out.update(mb_s=(b1 - b0) / 1e6 / (t1 - t0), seconds=t1 - t0, bytes=b1 - b0)

    await _connect(port, body)
    return out


# ---------------------------------------------------------------- processes
@dataclass
class Setup:
    procs: Processes
    lab: gl.Lab
    pids: dict[str, int]


def start_everything(workdir: Path) -> Setup:
    from redirgate.cli.lab import LabRoute

    procs = Processes(workdir)
    try:
        lab = gl.write_lab(
            workdir / "lab",
            [
                LabRoute("kbd", KEYBOARD_ID, client="thin-01"),
                LabRoute("loop", LOOPBACK_ID, client="thin-01"),
                LabRoute("loop2", LOOPBACK_ID, client="thin-02"),
            ],
            {"thin-01": ["virtual:keyboard", "virtual:loopback"], "thin-02": ["virtual:loopback"]},
        )
        gateway = gl.start_gateway(procs, lab)
        clients = {name: gl.start_client(procs, lab, name) for name in ("thin-01", "thin-02")}
        gl.wait_online(lab, {"thin-01": 2, "thin-02": 1}, procs=list(clients.values()))
    except BaseException:
        procs.stop_all()
        raise
    return Setup(
        procs, lab, {"gateway": gateway.pid, "thin-01": clients["thin-01"].pid, "thin-02": clients["thin-02"].pid}
    )


def _start_neighbour(setup: Setup, phase: Phase) -> Proc:
    assert phase.route is not None
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "neighbour",
        "--port",
        str(setup.lab.routes[phase.route]),
        "--direction",
        phase.direction,
    ]
    log = setup.procs.workdir / "neighbour.log"
    with open(log, "ab") as err:
        popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=setup.procs.workdir
        )
    proc = Proc("neighbour", popen, 0, log)
    setup.procs.started.append(proc)
    line = _read_line(popen, NEIGHBOUR_READY_S)
    if line != "GO":
        raise RuntimeError(f"the neighbour did not start moving: {line!r} {proc.log_tail()}")
    return proc


def _read_line(popen: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert popen.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(popen.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return "(no output in time)"
    return popen.stdout.readline().decode(errors="replace").strip()


def _stop_neighbour(setup: Setup, proc: Proc) -> dict[str, Any]:
    assert proc.popen.stdin is not None
    proc.popen.stdin.close()  # its cue to stop and report
    line = _read_line(proc.popen, 15.0)
    setup.procs.stop(proc)
    setup.procs.started.remove(proc)
    try:
        result: dict[str, Any] = json.loads(line)
    except ValueError:
        return {"error": f"no result from the neighbour: {line!r} {proc.log_tail()}"}
    return result


def measure_phase(setup: Setup, phase: Phase, plan: Plan, into: Figures) -> None:
    proc = _start_neighbour(setup, phase) if phase.route else None
    try:
        if proc is not None:
            time.sleep(NEIGHBOUR_SETTLE_S)
        roles = dict(setup.pids, **({"neighbour": proc.pid} if proc else {}))
        cpu0, machine0 = {k: process_cpu_s(p) for k, p in roles.items()}, gl.machine_jiffies()
        t0 = time.monotonic()
        lat = trio.run(_hid_round_trips, setup.lab.routes["kbd"], plan.seconds)
        elapsed = time.monotonic() - t0
        cpu1 = {k: process_cpu_s(p) for k, p in roles.items()}
        _put(into, "cpu_machine", gl.busy_pct(machine0, gl.machine_jiffies()) or 0.0)
    finally:
        result = _stop_neighbour(setup, proc) if proc is not None else {}
    _put(into, "p50", lat[len(lat) // 2] * 1e6)
    _put(into, "p99", lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6)
    _put(into, "max", lat[-1] * 1e6)
    _put(into, "samples", float(len(lat)))
    for k in roles:
        _put(into, f"cpu_{k}", 100 * (cpu1[k] - cpu0[k]) / elapsed)
    if "mb_s" in result:
        _put(into, "neighbour_mb_s", float(result["mb_s"]))
    elif "error" in result:
        raise RuntimeError(result["error"])
    gl.wait_route_idle(setup.lab, "kbd")


def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    """Every phase, interleaved run by run; JSON-ready per-run values."""
    plan = QUICK if quick else FULL
    if runs:
        plan = Plan(runs, plan.seconds)
    figures: dict[str, Figures] = {p.key: {} for p in PHASES}
    errors: list[str] = []
    started = time.monotonic()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-fair-") as tmp:
        setup = start_everything(Path(tmp))
        try:
            for i in range(plan.runs):
                busy = list(PHASES[1:])
                order = [PHASES[0], *busy[i % len(busy) :], *busy[: i % len(busy)]]
                for phase in order:
                    try:
                        measure_phase(setup, phase, plan, figures[phase.key])
                    except Exception as exc:  # report, keep the other phases
                        errors.append(f"run {i + 1}, {phase.label}: {type(exc).__name__}: {exc}")
        finally:
            setup.procs.stop_all()
    idle = figures["idle"]
    added = {
        p.key: {
            q: [b - a for a, b in zip(idle.get(q, []), figures[p.key].get(q, []), strict=False)] for q in ("p50", "p99")
        }
        for p in PHASES[1:]
    }
    return {
        "what": "HID GET_REPORT round trip on a keyboard while a neighbour USB device moves bulk flat out",
        "plan": vars(plan),
        "poll_s": POLL_S,
        "phases": [vars(p) for p in PHASES],
        "machine": machine(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "figures": figures,
        "added": added,
        "errors": errors,
    }


# ------------------------------------------------------------------ report


def table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run` result."""
    plan, mach = result["plan"], result["machine"]
    figs, added = result["figures"], result["added"]
    samples = figs.get("idle", {}).get("samples") or [0]
    lines = [
        f"fairness: {result['what']}",
        f"  {plan['runs']} runs, phases rotated; per phase {plan['seconds']:g} s of polling, one GET_REPORT every "
        f"{result['poll_s'] * 1000:g} ms (~{statistics.median(samples):.0f} samples); median [min–max]",
        f"  {mach['cpus']} × {mach['cpu']}, Linux {mach['kernel']}, Python {mach['python']}; "
        f"load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        "  processes: gateway run, client run thin-01 (keyboard + loopback), client run thin-02 (loopback), "
        "the neighbour's VM side, this VM side",
        "",
    ]
    col = 20
    lines.append(
        f"{'phase':<32}{'RTT p50 µs':>{col}}{'RTT p99 µs':>{col}}{'added p50 µs':>{col}}"
        f"{'added p99 µs':>{col}}{'neighbour MB/s':>{col}}"
    )
    for p in result["phases"]:
        f = figs.get(p["key"], {})
        a = added.get(p["key"], {})
        lines.append(
            f"{p['label']:<32}{_cell(f.get('p50')):>{col}}{_cell(f.get('p99')):>{col}}"
            f"{_cell(a.get('p50')):>{col}}{_cell(a.get('p99')):>{col}}{_cell(f.get('neighbour_mb_s')):>{col}}"
        )
    lines.append("")
    roles = ("gateway", "thin-01", "thin-02", "neighbour", "machine")
    lines.append(f"{'CPU % of one core during the phase':<32}" + "".join(f"{r:>{col}}" for r in roles))
    for p in result["phases"]:
        f = figs.get(p["key"], {})
        lines.append(f"{p['label']:<32}" + "".join(f"{_cell(f.get(f'cpu_{r}')):>{col}}" for r in roles))
    lines.append("  machine: every process on the machine, % of both CPUs (other engineers' work included)")
    lines.append("")
    for p in result["phases"][1:]:
        a = added.get(p["key"], {}).get("p99")
        if a:
            med = statistics.median(a)
            verdict = "meets" if med < TARGET_ADDED_P99_US else "MISSES"
            lines.append(f"  target: {p['label']} adds < {TARGET_ADDED_P99_US:.0f} µs at p99: {med:.0f} µs, {verdict}")
    for err in dict.fromkeys(result.get("errors", [])):
        lines.append(f"  error: {err}")
    return "\n".join(lines)


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    figs = result["figures"]

    def series(name: str, key: str) -> dict[str, Any]:
        cells = [figs.get(p["key"], {}).get(key) for p in result["phases"]]
        return {"name": name, "values": [[statistics.median(v), min(v), max(v)] if v else None for v in cells]}

    return [
        {
            "id": "hid-rtt",
            "title": "Keyboard GET_REPORT round trip beside a busy USB neighbour",
            "unit": "µs",
            "note": f"{result['plan']['runs']} runs, median with min–max; through gateway run + client run",
            "categories": [p["label"] for p in result["phases"]],
            "series": [series("p50", "p50"), series("p99", "p99")],
        }
    ]


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "3 short runs (under ~40 s)")
    parser.add_argument("role", nargs="?", choices=["neighbour"], help="(internal) the bulk neighbour process")
    parser.add_argument("--port", type=int, help="neighbour: the route to dial")
    parser.add_argument("--direction", choices=["IN", "OUT"], default="IN")
    parser.add_argument("--kib", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args(argv)
    if args.role == "neighbour":
        result = trio.run(_neighbour, args.port, args.direction, args.kib, args.depth)
        print(json.dumps(result), flush=True)
        return
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
