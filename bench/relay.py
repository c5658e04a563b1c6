"""What the gateway's relay costs, beside socat, stunnel4 and haproxy, on loopback.

The layout is the gateway's: a TLS 1.3 sender with a client certificate
(the "thin client") dials the relay, which terminates TLS and forwards in
plain TCP to a receiver (the "QEMU" chardev socket).  Every relay runs as
its own process on 127.0.0.1 with the same certificates and mutual
authentication:

==========================  ======================================================
direct TCP / direct TLS     sender straight to receiver: the ceilings
socat                       plain TCP relay (``-b 262144``: our buffer size)
redirgate plain             ``relay()`` with PlainSocketStream on both sides
stunnel4                    server mode, TLS 1.3 only, ``verifyChain``
haproxy                     ``mode tcp``, ``bind ... ssl verify required``, 1 thread
redirgate TLS               ``relay()`` with ZeroCopyTLSStream (``accept_tls``)
redirgate TLS, resumable    the same, the TLS side a resumable channel's stream
                            (issue 16: replay buffer and counts in the reactor)
==========================  ======================================================

Figures, each the median over several runs (full 5, quick 3) with min–max,
cases interleaved run by run (rotated) so that load from other work on the
machine spreads over all of them:

* throughput, MB/s (10^6 bytes): N bytes sender → receiver (full 2 GiB,
  quick 128 MiB), timed by the sender from its first write to the
  receiver's one-byte acknowledgement of the last byte;
* 64-byte ping-pong round trip p50 / p99, µs (full 5000, quick 2000
  iterations per run after 200 of warm-up), with sender, relay and
  receiver pinned to one CPU.  Unpinned, round trips on this kind of VM are
  bimodal (a direct loopback ping-pong takes about 6 µs when both ends
  share a vCPU and 75 µs when a wake-up crosses to an idle one), so the
  scheduler's placement, not the relay, would decide the figure; pinned,
  it is the CPU path length of a round trip, which is what the relay
  controls.  Throughput runs are not pinned;
* CPU seconds per GB (10^9 bytes) of the relay process during the
  throughput run: utime + stime (+ reaped children) from /proc/PID/stat,
  for socat (one process per connection) from ``wait4``'s rusage;
* CPU µs per round trip of the relay process during the round-trip run
  (same accounting; /proc's 10 ms tick makes it coarse in --quick);
* the load generator's own CPU (% of one core) during the throughput run,
  to show it was not the bottleneck.

The sender, receiver and redirgate relay are ``bench/relay_peers.py``
processes, started and accounted by :mod:`bench.relay_setup`.  Handshakes
are outside every timed interval.

    python bench/relay.py [--quick]

Every process started here is stopped by PID in a ``finally``; every wait
has a bound.  Nothing is asserted: a figure that cannot be measured is
reported as missing, with the reason.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.relay_setup import (
    RELAY_BUFFER_BYTES,
    RTT_CPU,
    STOP_TIMEOUT_S,
    Pki,
    Proc,
    Processes,
    free_port,
    haproxy_config,
    machine,
    make_pki,
    pinned,
    socat_argv,
    stunnel_config,
)
from bench.report import cell as _cell
from bench.report import emit, script_arguments
from bench.report import median as _median

PEERS = Path(__file__).resolve().with_name("relay_peers.py")
WARMUP = 200
FLOOR_MB_S = 20.0  # a throughput run slower than this is cut off (bounds the run time)


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    tls: bool  # the sender speaks TLS
    relay: str | None  # None: sender straight to receiver


CASES: tuple[Case, ...] = (
    Case("direct_plain", "direct TCP (ceiling)", False, None),
    Case("socat", "socat TCP relay", False, "socat"),
    Case("redirgate_plain", "redirgate relay, plain", False, "redirgate"),
    Case("direct_tls", "direct TLS 1.3 (ceiling)", True, None),
    Case("stunnel", "stunnel4 TLS→TCP", True, "stunnel"),
    Case("haproxy", "haproxy TLS→TCP", True, "haproxy"),
    Case("redirgate_tls", "redirgate relay, TLS→TCP", True, "redirgate"),
    Case("redirgate_tls_resume", "redirgate relay, TLS→TCP, resumable", True, "redirgate-resume"),
)
#: The A/B pair measured back to back in every run (its order alternating run by run):
#: what resumability (issue 16) costs the relay.
A_B: tuple[str, str] = ("redirgate_tls", "redirgate_tls_resume")
#: Issue 16's floors for that cost: throughput within 5 %, round trip p50 within 5 µs.
RESUME_MB_S_FLOOR = 0.95
RESUME_RTT_ADDED_US = 5.0
#: The ratio rows: ours, reference, label.
RATIOS: tuple[tuple[str, str, str], ...] = (
    ("redirgate_tls", "stunnel", "redirgate TLS ÷ stunnel4"),
    ("redirgate_tls", "haproxy", "redirgate TLS ÷ haproxy"),
    ("redirgate_plain", "socat", "redirgate plain ÷ socat"),
    ("redirgate_tls_resume", "redirgate_tls", "resumable ÷ not resumable"),
)
METRICS: tuple[tuple[str, str, int], ...] = (  # key, heading, digits
    ("mb_s", "MB/s", 0),
    ("rtt_p50_us", "RTT p50 µs", 1),
    ("rtt_p99_us", "RTT p99 µs", 1),
    ("cpu_s_per_gb", "relay CPU s/GB", 2),
    ("cpu_us_per_rtt", "relay CPU µs/RTT", 1),
)


# ----------------------------------------------------------- measurement
@dataclass
class Figures:
    label: str
    mb_s: list[float] = field(default_factory=list)
    rtt_p50_us: list[float] = field(default_factory=list)
    rtt_p99_us: list[float] = field(default_factory=list)
    cpu_s_per_gb: list[float] = field(default_factory=list)
    cpu_us_per_rtt: list[float] = field(default_factory=list)
    sender_cpu_pct: list[float] = field(default_factory=list)
    sink_cpu_pct: list[float] = field(default_factory=list)
    tls: str = ""
    errors: list[str] = field(default_factory=list)


class Bench:
    """The processes of one benchmark run and the measurements over them."""

    def __init__(self, procs: Processes, pki: Pki, workdir: Path) -> None:
        self.procs, self.pki, self.workdir = procs, pki, workdir
        py = [sys.executable, str(PEERS)]
        self.py = py
        self.sink_plain = procs.start("sink-plain", [*py, "sink"])
        self.sink_tls = procs.start("sink-tls", [*py, "sink", *pki.server_args()])
        self.persistent: dict[str, Proc] = {}

    def relay_for(self, case: Case) -> Proc:
        """The persistent relay of `case`, started on first use (socat: see oneshot)."""
        name = f"{case.relay}-{'tls' if case.tls else 'plain'}"
        proc = self.persistent.get(name)
        if proc is not None and proc.popen.poll() is None:
            return proc
        sink = self.sink_plain.port
        if case.relay in ("redirgate", "redirgate-resume"):
            tls = self.pki.server_args() if case.tls else []
            extra = ["--resumable"] if case.relay == "redirgate-resume" else []
            proc = self.procs.start(name, [*self.py, "redirgate", "--port", str(sink), *tls, *extra])
        elif case.relay == "stunnel":
            port = free_port()
            proc = self.procs.start(name, ["stunnel4", str(stunnel_config(self.pki, port, sink, self.workdir))], port)
        elif case.relay == "haproxy":
            port = free_port()
            proc = self.procs.start(
                name, ["haproxy", "-db", "-f", str(haproxy_config(self.pki, port, sink, self.workdir))], port
            )
        else:
            raise ValueError(case.relay)
        self.persistent[name] = proc
        return proc

    @contextmanager
    def endpoint(self, case: Case) -> Iterator[tuple[int, Proc | None, bool]]:
        """(port to dial, relay process or None, whether it ends with its connection)."""
        if case.relay is None:
            yield (self.sink_tls if case.tls else self.sink_plain).port, None, False
        elif case.relay == "socat":
            port = free_port()
            proc = self.procs.start("socat", socat_argv(port, self.sink_plain.port), port)
            try:
                yield port, proc, True
            finally:
                self.procs.stop(proc)
                self.procs.started.remove(proc)
        else:
            proc = self.relay_for(case)
            yield proc.port, proc, False

    def source(self, port: int, tls: bool, extra: list[str], timeout_s: float) -> dict[str, Any]:
        argv = [*self.py, "source", "--port", str(port), *(self.pki.client_args() if tls else []), *extra]
        try:
            out = subprocess.run(argv, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"error": f"no result within {timeout_s:.0f} s"}
        try:
            result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"source failed (rc {out.returncode}): {out.stderr.decode(errors='replace')[-400:]}"}
        return result

    def throughput(self, case: Case, nbytes: int, fig: Figures) -> None:
        timeout_s = 30.0 + nbytes / (FLOOR_MB_S * 1e6)
        with self.endpoint(case) as (port, relay, oneshot):
            sink = self.sink_tls if case.tls and relay is None else self.sink_plain
            relay_cpu0, sink_cpu0 = (relay.cpu_s() if relay else None), sink.cpu_s()
            result = self.source(port, case.tls, ["--bytes", str(nbytes)], timeout_s)
            sink_cpu1 = sink.cpu_s()
            if relay is None:
                relay_cpu1 = None
            elif oneshot:
                relay_cpu1 = relay.wait_exit_cpu_s(STOP_TIMEOUT_S)
            else:
                time.sleep(0.05)  # let the relay finish closing (counted: it is part of the run)
                relay_cpu1 = relay.cpu_s()
        if "error" in result or not result.get("complete"):
            fig.errors.append(f"throughput: {result.get('error', 'receiver never acknowledged')}")
            return
        seconds = float(result["seconds"])
        fig.mb_s.append(nbytes / 1e6 / seconds)
        fig.sender_cpu_pct.append(100 * float(result["cpu_s"]) / seconds)
        if sink_cpu0 is not None and sink_cpu1 is not None:
            fig.sink_cpu_pct.append(100 * (sink_cpu1 - sink_cpu0) / seconds)
        if relay_cpu0 is not None and relay_cpu1 is not None:
            fig.cpu_s_per_gb.append((relay_cpu1 - relay_cpu0) / (nbytes / 1e9))
        fig.tls = str(result.get("tls", ""))

    def round_trips(self, case: Case, count: int, fig: Figures) -> None:
        timeout_s = 30.0 + count * 0.01
        with self.endpoint(case) as (port, relay, oneshot):
            sink = self.sink_tls if case.tls and relay is None else self.sink_plain
            cpu0 = relay.cpu_s() if relay else None
            extra = ["--rtt", str(count), "--warmup", str(WARMUP), "--cpu", str(RTT_CPU)]
            with pinned([p for p in (sink, relay) if p is not None]):
                result = self.source(port, case.tls, extra, timeout_s)
            if relay is None:
                cpu1 = None
            elif oneshot:
                cpu1 = relay.wait_exit_cpu_s(STOP_TIMEOUT_S)
            else:
                time.sleep(0.05)
                cpu1 = relay.cpu_s()
        if "error" in result or result.get("count", 0) < count:
            fig.errors.append(f"round trip: {result.get('error', 'connection ended early')}")
            return
        fig.rtt_p50_us.append(float(result["p50_us"]))
        fig.rtt_p99_us.append(float(result["p99_us"]))
        if cpu0 is not None and cpu1 is not None:
            fig.cpu_us_per_rtt.append((cpu1 - cpu0) * 1e6 / (count + WARMUP))


def available(case: Case) -> str | None:
    """None if the relay program of `case` is installed, else why not."""
    program = {"socat": "socat", "stunnel": "stunnel4", "haproxy": "haproxy"}.get(case.relay or "")
    if program is None:
        return None
    from shutil import which

    return None if which(program) else f"{program} is not installed (tests/setup-system.sh installs it)"


def run(
    quick: bool,
    *,
    runs: int | None = None,
    mib: int | None = None,
    round_trips: int | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Measure every case; JSON-ready figures (lists of per-run values) and the conditions.

    The keyword arguments override the sizes of `quick` (for development).
    """
    runs = runs or (3 if quick else 5)
    nbytes = (mib or (128 if quick else 2048)) << 20
    rtt_count = round_trips or (2000 if quick else 5000)
    figures = {c.key: Figures(c.label) for c in CASES}
    paired: dict[str, list[float]] = {}
    started = time.monotonic()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-relay-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            bench = Bench(procs, make_pki(workdir / "pki"), workdir)
            cases = [c for c in CASES if available(c) is None and (not only or c.key in only)]
            for c in CASES:
                if (why := available(c)) is not None:
                    figures[c.key].errors.append(why)
            keys = {c.key for c in cases}
            ab = A_B if set(A_B) <= keys else None
            # the A/B pair runs back to back (its order alternating), as one slot of the rotation
            slots = [c for c in cases if ab is None or c.key != ab[1]]
            by_key = {c.key: c for c in cases}
            for i in range(runs):
                order = slots[i % len(slots) :] + slots[: i % len(slots)]
                for slot in order:
                    group = [slot]
                    if ab is not None and slot.key == ab[0]:
                        group = [by_key[k] for k in (ab if i % 2 == 0 else ab[::-1])]
                    before = {c.key: _lengths(figures[c.key]) for c in group}
                    for case in group:
                        try:
                            bench.throughput(case, nbytes, figures[case.key])
                            bench.round_trips(case, rtt_count, figures[case.key])
                        except (RuntimeError, OSError) as exc:
                            figures[case.key].errors.append(f"run {i + 1}: {exc}")
                    if len(group) == 2:
                        _pair(paired, figures[ab[1]], figures[ab[0]], before[ab[1]], before[ab[0]])
        finally:
            procs.stop_all()
    return {
        "what": "relay throughput, 64-byte round trip and relay CPU on loopback, TLS 1.3 sender -> relay -> plain TCP receiver",
        "runs": runs,
        "bytes_per_run": nbytes,
        "round_trips_per_run": rtt_count,
        "relay_buffer_bytes": RELAY_BUFFER_BYTES,
        "rtt_cpu": RTT_CPU,
        "machine": machine(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "cases": {key: vars(fig) for key, fig in figures.items()},
        "ratios": ratios(figures),
        "resume_cost": paired,
    }


def _lengths(fig: Figures) -> dict[str, int]:
    return {metric: len(getattr(fig, metric)) for metric, _, _ in METRICS}


def _pair(
    paired: dict[str, list[float]], b: Figures, a: Figures, before_b: dict[str, int], before_a: dict[str, int]
) -> None:
    """The A/B pair of one run: B ÷ A of each figure both measured in this run, and
    B − A of the round trip p50 (µs), into `paired` (metric -> one value per run)."""
    for metric, _, _ in METRICS:
        vb, va = getattr(b, metric), getattr(a, metric)
        if len(vb) > before_b[metric] and len(va) > before_a[metric] and va[-1]:
            paired.setdefault(metric, []).append(vb[-1] / va[-1])
            if metric == "rtt_p50_us":
                paired.setdefault("rtt_p50_added_us", []).append(vb[-1] - va[-1])


def ratios(figures: dict[str, Figures]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for ours, ref, label in RATIOS:
        row: dict[str, float | None] = {}
        for metric, _, _ in METRICS:
            a, b = _median(getattr(figures[ours], metric)), _median(getattr(figures[ref], metric))
            row[metric] = a / b if a is not None and b else None
        out[label] = row
    return out


# ---------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run` result."""
    cases: dict[str, dict[str, Any]] = result["cases"]
    m = result["machine"]
    lines = [
        f"relay: {result['what']}",
        f"  {result['runs']} runs, cases interleaved; {result['bytes_per_run'] >> 20} MiB per throughput run, "
        f"{result['round_trips_per_run']} round trips per run; median [min–max]",
        f"  {m['cpus']} × {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, {m['openssl']}; "
        f"{m['socat']}, {m['stunnel']}, {m['haproxy']}",
        f"  load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end "
        f"(other work on this machine shares its cores)",
        "",
    ]
    width = max(len(c["label"]) for c in cases.values()) + 2
    col = 20
    lines.append(f"{'case':<{width}}" + "".join(f"{h:>{col}}" for _, h, _ in METRICS) + f"{'load gen CPU %':>18}")
    for c in cases.values():
        gen = "—"
        if c["sender_cpu_pct"]:
            gen = f"{statistics.median(c['sender_cpu_pct']):.0f} / {statistics.median(c['sink_cpu_pct'] or [0]):.0f}"
        lines.append(
            f"{c['label']:<{width}}" + "".join(f"{_cell(c[k], d):>{col}}" for k, _, d in METRICS) + f"{gen:>18}"
        )
    lines += ["", f"{'ratio of medians (ours ÷ reference)':<{width}}" + "".join(f"{h:>{col}}" for _, h, _ in METRICS)]
    for label, row in result["ratios"].items():
        lines.append(
            f"{label:<{width}}" + "".join(f"{'—' if row[k] is None else f'{row[k]:.2f}':>{col}}" for k, _, _ in METRICS)
        )
    lines.append("  MB/s: higher is better; µs and CPU s/GB: lower is better")
    lines += resume_cost_lines(result.get("resume_cost", {}), width, col)
    tls = {c["tls"] for c in cases.values() if c["tls"]}
    if tls:
        lines.append(f"  negotiated: {', '.join(sorted(tls))}; mutual authentication (client certificate) everywhere")
    ceiling, ours_tls = cases.get("direct_tls", {}).get("mb_s"), cases.get("redirgate_tls", {}).get("mb_s")
    if ceiling and ours_tls:
        factor = statistics.median(ceiling) / statistics.median(ours_tls)
        verdict = "the load generator is not what limits it" if factor >= 1.3 else "the load generator may limit it"
        lines.append(f"  direct TLS ceiling is {factor:.1f}× redirgate's TLS relay: {verdict}")
    lines.append("  load gen CPU %: sender / receiver, % of one core during the throughput run")
    lines.append(
        f"  round trips: sender, relay and receiver pinned to CPU {result.get('rtt_cpu', '?')} "
        "(no cross-CPU wake-ups; throughput runs are not pinned)"
    )
    for c in cases.values():
        for err in dict.fromkeys(c["errors"]):
            lines.append(f"  {c['label']}: {err}")
    return "\n".join(lines)


def resume_cost_lines(paired: dict[str, list[float]], width: int, col: int) -> list[str]:
    """Resumable ÷ not resumable, pair by pair (each run measures both back to back):
    median [min–max] over runs, so the spread shows next to the ratio; and issue 16's floors."""
    if not paired:
        return []
    lines = [
        "",
        f"{'resumable ÷ not resumable, per run':<{width}}"
        + "".join(f"{_cell(paired.get(k), 2):>{col}}" for k, _, _ in METRICS),
    ]
    mb_s, added = paired.get("mb_s"), paired.get("rtt_p50_added_us")
    verdicts = []
    if mb_s:
        ok = statistics.median(mb_s) >= RESUME_MB_S_FLOOR
        verdicts.append(f"throughput {_cell(mb_s, 3)} of not resumable, {'meets' if ok else 'MISSES'} ≥ 0.95")
    if added:
        ok = statistics.median(added) <= RESUME_RTT_ADDED_US
        verdicts.append(f"round trip p50 {_cell(added, 1)} µs added, {'meets' if ok else 'MISSES'} ≤ 5 µs")
    lines.append("  the pair runs back to back in each run (order alternating); median [min–max] of the per-run ratios")
    if verdicts:
        lines.append("  issue 16 floor (reported, not asserted): " + "; ".join(verdicts))
    lines.append(
        "  the throughput stream goes client → VM: the resumable side counts and acknowledges it; the replay"
        " buffer's copy is on the VM → client direction (bench usb_gateway's bulk IN/OUT carry both)"
    )
    return lines


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One bar chart per question (see bench/__main__.py for the shape)."""
    cases: dict[str, dict[str, Any]] = result["cases"]
    labels = [c["label"] for c in cases.values()]

    def series(name: str, metric: str) -> dict[str, Any]:
        return {
            "name": name,
            "values": [[statistics.median(v), min(v), max(v)] if (v := c[metric]) else None for c in cases.values()],
        }

    sub = f"{result['runs']} runs, median with min–max; loopback, {result['machine']['cpus']} CPUs"
    return [
        {
            "id": "throughput",
            "title": f"Relay throughput, {result['bytes_per_run'] >> 20} MiB stream",
            "unit": "MB/s",
            "note": sub,
            "categories": labels,
            "series": [series("MB/s", "mb_s")],
        },
        {
            "id": "round-trip",
            "title": "64-byte round trip through the relay",
            "unit": "µs",
            "note": sub,
            "categories": labels,
            "series": [series("p50", "rtt_p50_us"), series("p99", "rtt_p99_us")],
        },
        {
            "id": "cpu",
            "title": "Relay process CPU per GB relayed",
            "unit": "CPU s/GB",
            "note": sub,
            "categories": labels,
            "series": [series("CPU s/GB", "cpu_s_per_gb")],
        },
    ]


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "3 runs of 128 MiB (about 15 s)")
    parser.add_argument("--mib", type=int, help="override the MiB per throughput run")
    parser.add_argument("--round-trips", type=int, help="override the round trips per run")
    parser.add_argument("--only", nargs="+", choices=[c.key for c in CASES], help="measure only these cases")
    args = parser.parse_args(argv)
    emit(run(args.quick, runs=args.runs, mib=args.mib, round_trips=args.round_trips, only=args.only), table, args.json)


if __name__ == "__main__":
    main()
