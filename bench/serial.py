"""Serial through redirgate beside ser2net, on a pty, in one run.

A pty pair stands in for the serial device: ``bench/serial_device.py`` (its
own process) holds the master end and echoes every byte back, or sinks or
sources a bulk transfer when told.  Each path below gets its own device,
and a TCP consumer in this process plays QEMU's chardev socket (what an
``isa-serial`` with ``-chardev socket`` is on the wire: raw bytes):

===================  ========================================================
ser2net              Debian's ser2net 4.x, raw TCP accepter, ``serialdev``
                     connector at 115200n81 ``local``; its defaults otherwise
                     (``chardelay`` on: it waits about two character times,
                     at least 1 ms, after device bytes before sending them)
ser2net, tuned       the same with ``chardelay: false``, ``tcp(nodelay)`` and
                     64 KiB buffers each way (its defaults are 64 bytes):
                     ser2net at its lowest latency and highest throughput
serve-serial         ``redirgate client serve-serial --listen`` (standalone
                     mode, ser2net's job; raw)
client + gateway     consumer → ``redirgate gateway run`` route
                     ``serial:bench`` → mutual TLS 1.3 tunnel →
                     ``redirgate client run`` with a ``[[serial]]`` export
===================  ========================================================

Figures, each the median over several runs (full 5, quick 3; paths
interleaved, rotated run by run) with min–max, one consumer connection per
path and run:

* byte-echo round trip p50 / p99, µs: one byte sent, the same byte back,
  one at a time (full 2000, quick 300 per run after 50 of warm-up);
  unpinned, and with every process of the path (all threads), the device
  and this consumer pinned to one CPU, as bench/relay.py pins its round
  trips (unpinned, wake-ups that cross CPUs make the figure bimodal);
* bulk MB/s (10^6 bytes/s), N bytes (full 16 MiB, quick 4 MiB): to the
  device (consumer writes, timed to the device's count of the last byte),
  from the device (the device writes, timed to the consumer's last byte)
  and echoed (both ways at once: the consumer writes N and reads the N
  echoed).  Every transfer is checked byte for byte (CRC or compare), so a
  path that is not transparent shows as an error, not a figure;
* CPU of the path's processes (ser2net; serve-serial; gateway + client),
  µs per round trip (unpinned loop) and s per GB moved through them during
  the bulk figures (to + from + 2 × echo), from /proc/PID/task/*/schedstat.

A pty has no baud rate: 115200 is set on the line, but bytes move as fast
as the programs move them, which is what a QEMU socket chardev does too.

    python bench/serial.py [--quick] [--runs N]

Every process started here is stopped by PID in a ``finally``; every wait
has a bound.  Nothing is asserted: a figure that cannot be measured is
reported as missing, with the reason.
"""

from __future__ import annotations

import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from shutil import which
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import gateway_lab as gl
from bench.relay_setup import LOOPBACK, RTT_CPU, Processes, free_port, machine
from bench.report import cell as _cell
from bench.report import emit, script_arguments
from bench.report import median as _med
from bench.serial_device import PATTERN

DEVICE = Path(__file__).resolve().with_name("serial_device.py")
SETTINGS = "115200,8N1"  # redirgate's spelling; ser2net's is 115200n81
ROUTE, EXPORT = "bench", "bench"
WARMUP = 50
CONNECT_TIMEOUT_S = 15.0
IO_TIMEOUT_S = 10.0  # per socket operation and per device line
FLOOR_MB_S = 1.0  # a bulk transfer slower than this is cut off (bounds the run time)
BYTES = [bytes((i,)) for i in range(256)]
TUNED_BUFSIZE = 65536  # ser2net.yaml(5) dev-to-net-bufsize / net-to-dev-bufsize; the default is 64


@dataclass(frozen=True)
class Case:
    key: str
    label: str


CASES: tuple[Case, ...] = (
    Case("ser2net", "ser2net (defaults)"),
    Case("ser2net_tuned", "ser2net tuned: no chardelay, nodelay, 64 KiB buffers"),
    Case("serve_serial", "redirgate serve-serial"),
    Case("gateway", "redirgate client + gateway"),
)
#: The ratio columns: ours, reference.
RATIOS: tuple[tuple[str, str], ...] = (
    ("serve_serial", "ser2net"),
    ("gateway", "ser2net"),
    ("serve_serial", "ser2net_tuned"),
    ("gateway", "ser2net_tuned"),
)
#: The table rows: key, label, digits.
METRICS: tuple[tuple[str, str, int], ...] = (
    ("rtt_p50_us", "byte echo round trip p50, µs", 0),
    ("rtt_p99_us", "byte echo round trip p99, µs", 0),
    ("pin_p50_us", "  same, all pinned to one CPU, p50, µs", 0),
    ("pin_p99_us", "  same, all pinned to one CPU, p99, µs", 0),
    ("to_mb_s", "bulk to the device, MB/s", 1),
    ("from_mb_s", "bulk from the device, MB/s", 1),
    ("echo_mb_s", "bulk echoed (both ways at once), MB/s each way", 1),
    ("cpu_us_per_rtt", "path CPU per round trip, µs", 0),
    ("cpu_s_per_gb", "path CPU per GB moved, s", 2),
)


@dataclass(frozen=True)
class Plan:
    runs: int
    rtt_count: int
    bulk_bytes: int


QUICK = Plan(runs=3, rtt_count=300, bulk_bytes=4 << 20)
FULL = Plan(runs=5, rtt_count=2000, bulk_bytes=16 << 20)


class BenchError(Exception):
    """A figure of one path and run could not be measured (the reason is the message)."""


# ------------------------------------------------------------ the device
class Device:
    """A serial_device.py process: its pty, commands on stdin, lines back on stdout."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"device-{name}.log"
        self._pending = b""
        with open(self.log, "ab") as err:
            self.popen = subprocess.Popen(
                [sys.executable, str(DEVICE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
            )
        try:
            line = self._line(IO_TIMEOUT_S)
            if not line.startswith("PTY "):
                raise RuntimeError(f"device {name} did not start: {line!r}")
        except BaseException:
            self.stop()
            raise
        self.pts = line.split()[1]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _line(self, timeout_s: float) -> str:
        """The next line it printed (read from the descriptor: a buffered readline
        could hold a second line where select cannot see it)."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    raise BenchError(f"device {self.name}: no answer within {timeout_s:.0f} s")
                data = os.read(fd, 4096)
                if not data:
                    raise BenchError(f"device {self.name} ended (see {self.log.name})")
                self._pending += data
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def command(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()

    def expect(self, prefix: str, timeout_s: float = IO_TIMEOUT_S) -> list[str]:
        line = self._line(timeout_s)
        if not line.startswith(prefix):
            raise BenchError(f"device {self.name}: expected {prefix!r}, got {line!r}")
        return line.split()[1:]

    def sync(self) -> None:
        """Until every command sent so far has taken effect."""
        self.command("ping")
        self.expect("PONG")

    def stop(self) -> None:
        """Close its stdin (it ends), then SIGTERM / SIGKILL by PID if it lingers."""
        try:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(2.0)
        except subprocess.TimeoutExpired:
            self.popen.terminate()
            try:
                self.popen.wait(5.0)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5.0)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


# -------------------------------------------------------------- the paths
@dataclass
class SerialPath:
    case: Case
    device: Device
    port: int
    pids: list[int]
    lab: gl.Lab | None = None  # the gateway path's lab (admin socket)
    figures: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def ser2net_config(workdir: Path, name: str, port: int, pts: str, *, tuned: bool) -> Path:
    """ser2net.yaml (ser2net 4.x): raw TCP accepter on 127.0.0.1:port, the pty at 115200n81."""
    accepter = f"tcp(nodelay),{LOOPBACK},{port}" if tuned else f"tcp,{LOOPBACK},{port}"
    options = (
        (
            "\n  options:\n    chardelay: false"
            f"\n    dev-to-net-bufsize: {TUNED_BUFSIZE}\n    net-to-dev-bufsize: {TUNED_BUFSIZE}"
        )
        if tuned
        else ""
    )
    path = workdir / f"{name}.yaml"
    path.write_text(
        f"connection: &{name}\n  accepter: {accepter}\n  connector: serialdev,{pts},115200n81,local{options}\n"
    )
    return path


def start_paths(procs: Processes, workdir: Path, devices: list[Device], errors: list[str]) -> list[SerialPath]:
    """Every path whose programs are here: devices, servers, gateway and client."""
    paths: list[SerialPath] = []
    ser2net = which("ser2net")
    for case in CASES:
        if case.key.startswith("ser2net") and ser2net is None:
            errors.append(f"{case.label}: ser2net is not installed (apt-get install ser2net)")
            continue
        device = Device(case.key, workdir)
        devices.append(device)
        if case.key.startswith("ser2net"):
            port = free_port()
            config = ser2net_config(workdir, case.key, port, device.pts, tuned=case.key == "ser2net_tuned")
            argv = [str(ser2net), "-n", "-u", "-c", str(config), "-P", str(workdir / f"{case.key}.pid")]
            proc = procs.start(case.key, argv, port)
            paths.append(SerialPath(case, device, port, [proc.pid]))
        elif case.key == "serve_serial":
            port = free_port()
            argv = [
                *gl.CLI,
                "client",
                "serve-serial",
                "--listen",
                f"{LOOPBACK}:{port}",
                "--settings",
                SETTINGS,
                device.pts,
            ]
            proc = procs.start(case.key, argv, port)
            paths.append(SerialPath(case, device, port, [proc.pid]))
        else:
            from redirgate.cli.lab import LabRoute

            export = f'\n[[serial]]\nname = "{EXPORT}"\nport = "{device.pts}"\nsettings = "{SETTINGS}"\n'
            lab = gl.write_lab(
                workdir / "lab", [LabRoute(ROUTE, f"serial:{EXPORT}")], {"thin-01": []}, exports={"thin-01": export}
            )
            gateway = gl.start_gateway(procs, lab)
            client = gl.start_client(procs, lab, "thin-01")
            gl.wait_online(lab, {"thin-01": 1}, procs=[client])
            paths.append(SerialPath(case, device, lab.routes[ROUTE], [gateway.pid, client.pid], lab))
    return paths


# ---------------------------------------------------------- measurement
def _put(path: SerialPath, key: str, value: float) -> None:
    path.figures.setdefault(key, []).append(value)


def _cpu_s(pids: list[int]) -> float:
    return sum(gl.cpu_ns(pid) or 0 for pid in pids) / 1e9


def _connect(port: int) -> socket.socket:
    """A consumer connection that has echoed a byte (the path is up end to end).

    serve-serial refuses a second consumer and the gateway a busy route:
    a connection closed before the first echo is retried until the deadline."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        sock = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(b"\x00")
            if sock.recv(1) == b"\x00":
                return sock
            reason = "closed before echoing"
        except OSError as exc:
            reason = str(exc)
        sock.close()
        if time.monotonic() > deadline:
            raise BenchError(f"no echo through 127.0.0.1:{port}: {reason}")
        time.sleep(0.05)


def round_trips(sock: socket.socket, count: int) -> list[float]:
    """`count` one-byte echoes, one at a time: sorted seconds."""
    one = bytearray(1)
    lat = []
    clock = time.perf_counter
    for i in range(count):
        byte = i & 0xFF
        start = clock()
        sock.send(BYTES[byte])
        n = sock.recv_into(one)
        lat.append(clock() - start)
        if n != 1 or one[0] != byte:
            raise BenchError(f"round trip {i}: sent {byte:#04x}, got {bytes(one[:n])!r}")
    return sorted(lat)


def _p(lat: list[float], q: float) -> float:
    return lat[min(len(lat) - 1, int(len(lat) * q))] * 1e6


def _recv_exactly(sock: socket.socket, buf: bytearray) -> None:
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise BenchError(f"the path closed after {got} of {len(buf)} bytes")
        got += n


def bulk_to(path: SerialPath, sock: socket.socket, payload: bytes, crc: int) -> float:
    path.device.command(f"sink {len(payload)}")
    path.device.sync()
    start = time.perf_counter()
    sock.sendall(payload)
    count, got_crc = (int(x) for x in path.device.expect("SUNK", IO_TIMEOUT_S + len(payload) / (FLOOR_MB_S * 1e6)))
    seconds = time.perf_counter() - start
    if count != len(payload) or got_crc != crc:
        raise BenchError("bulk to the device: the device received other bytes than were sent")
    return seconds


def bulk_from(path: SerialPath, sock: socket.socket, payload: bytes, buf: bytearray) -> float:
    start = time.perf_counter()
    path.device.command(f"source {len(payload)}")
    _recv_exactly(sock, buf)
    seconds = time.perf_counter() - start
    path.device.expect("SOURCED")
    if buf != payload:
        raise BenchError("bulk from the device: other bytes arrived than the device sent")
    return seconds


def bulk_echo(sock: socket.socket, payload: bytes, buf: bytearray) -> float:
    failure: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(payload)
        except OSError as exc:
            failure.append(exc)

    sender = threading.Thread(target=send, name="serial-bench-sender", daemon=True)
    start = time.perf_counter()
    sender.start()
    try:
        _recv_exactly(sock, buf)
    finally:
        sender.join(IO_TIMEOUT_S)
    seconds = time.perf_counter() - start
    if failure:
        raise BenchError(f"bulk echo: sending failed: {failure[0]}")
    if buf != payload:
        raise BenchError("bulk echo: other bytes came back than were sent")
    return seconds


def measure(path: SerialPath, plan: Plan, payload: bytes, crc: int) -> None:
    """One run of every figure of one path, on one consumer connection."""
    sock = _connect(path.port)
    timeout_s = IO_TIMEOUT_S + plan.bulk_bytes / (FLOOR_MB_S * 1e6)
    try:
        sock.settimeout(IO_TIMEOUT_S)
        round_trips(sock, WARMUP)
        cpu0 = _cpu_s(path.pids)
        lat = round_trips(sock, plan.rtt_count)
        _put(path, "cpu_us_per_rtt", (_cpu_s(path.pids) - cpu0) / plan.rtt_count * 1e6)
        _put(path, "rtt_p50_us", _p(lat, 0.5))
        _put(path, "rtt_p99_us", _p(lat, 0.99))
        with gl.pinned_all([*path.pids, path.device.pid], RTT_CPU):
            round_trips(sock, WARMUP)
            lat = round_trips(sock, plan.rtt_count)
        _put(path, "pin_p50_us", _p(lat, 0.5))
        _put(path, "pin_p99_us", _p(lat, 0.99))
        sock.settimeout(timeout_s)
        buf = bytearray(len(payload))
        mb = len(payload) / 1e6
        cpu0 = _cpu_s(path.pids)
        _put(path, "to_mb_s", mb / bulk_to(path, sock, payload, crc))
        _put(path, "from_mb_s", mb / bulk_from(path, sock, payload, buf))
        _put(path, "echo_mb_s", mb / bulk_echo(sock, payload, buf))
        _put(path, "cpu_s_per_gb", (_cpu_s(path.pids) - cpu0) / (4 * len(payload) / 1e9))
    finally:
        sock.close()


def _route_discards(path: SerialPath) -> int | None:
    st = gl.status(path.lab) if path.lab is not None else None
    if st is None:
        return None
    return sum(int(r.get("discarded_bytes", 0)) for r in st["routes"] if r["name"] == ROUTE)


# ------------------------------------------------------------------ run
def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    """Measure every path; JSON-ready per-run values and the conditions."""
    plan = QUICK if quick else FULL
    if runs:
        plan = Plan(runs, plan.rtt_count, plan.bulk_bytes)
    payload = (PATTERN * (plan.bulk_bytes // len(PATTERN) + 1))[: plan.bulk_bytes]
    crc = zlib.crc32(payload)
    errors: list[str] = []
    started = time.monotonic()
    load0 = os.getloadavg()
    paths: list[SerialPath] = []
    discards: int | None = None
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-serial-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        devices: list[Device] = []
        try:
            paths = start_paths(procs, workdir, devices, errors)
            for i in range(plan.runs):
                for path in paths[i % len(paths) :] + paths[: i % len(paths)]:
                    try:
                        measure(path, plan, payload, crc)
                    except (BenchError, OSError) as exc:
                        path.errors.append(f"run {i + 1}: {type(exc).__name__}: {exc}")
                    if path.lab is not None:
                        gl.wait_route_idle(path.lab, ROUTE)
            for path in paths:
                if path.lab is not None:
                    discards = _route_discards(path)
        except (RuntimeError, OSError, BenchError) as exc:
            errors.append(f"setup: {type(exc).__name__}: {exc}")
        finally:
            ended = [
                f"{p.name} ended early: {p.log_tail()[-300:]}" for p in procs.started if p.popen.poll() is not None
            ]
            procs.stop_all()
            for device in devices:
                device.stop()
        errors.extend(ended)
    cases = {c.key: {"label": c.label, "figures": {}, "errors": []} for c in CASES}
    for path in paths:
        cases[path.case.key] = {"label": path.case.label, "figures": path.figures, "errors": path.errors}
    return {
        "what": "serial byte echo and bulk through ser2net vs redirgate (serve-serial; client + gateway), pty device",
        "plan": vars(plan),
        "rtt_cpu": RTT_CPU,
        "machine": {**machine(), "ser2net": _ser2net_version()},
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "cases": cases,
        "ratios": ratios(cases),
        "gateway_discarded_bytes": discards,
        "errors": errors,
    }


def _ser2net_version() -> str:
    try:
        out = subprocess.run(["ser2net", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"


def ratios(cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Ratio of medians, ours ÷ reference, per metric."""
    out: dict[str, dict[str, float | None]] = {}
    for ours, ref in RATIOS:
        row: dict[str, float | None] = {}
        for key, _, _ in METRICS:
            a, b = _med(cases[ours]["figures"].get(key)), _med(cases[ref]["figures"].get(key))
            row[key] = a / b if a is not None and b else None
        out[f"{ours}/{ref}"] = row
    return out


# ---------------------------------------------------------------- report


SHORT = {
    "ser2net": "ser2net",
    "ser2net_tuned": "ser2net tuned",
    "serve_serial": "serve-serial",
    "gateway": "client+gateway",
}
RATIO_HEADS = {"serve_serial": "serve-serial", "gateway": "gateway", "ser2net": "ser2net", "ser2net_tuned": "tuned"}


def table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run` result."""
    plan, mach, cases = result["plan"], result["machine"], result["cases"]
    lines = [
        f"serial: {result['what']}",
        f"  {plan['runs']} runs, paths interleaved; per run and path: {plan['rtt_count']} one-byte round trips "
        f"(×2: unpinned, pinned to CPU {result['rtt_cpu']}), {plan['bulk_bytes'] >> 20} MiB per bulk figure; "
        "median [min–max]",
        f"  {mach['cpus']} × {mach['cpu']}, Linux {mach['kernel']}, Python {mach['python']}, {mach['ser2net']}; "
        f"load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        "  each path a separate process on 127.0.0.1 with its own pty device (bench/serial_device.py: echo)",
        "",
    ]
    width, col = 48, 20
    lines.append(f"{'measure':<{width}}" + "".join(f"{SHORT[c.key]:>{col}}" for c in CASES))
    for key, label, digits in METRICS:
        lines.append(
            f"{label:<{width}}" + "".join(f"{_cell(cases[c.key]['figures'].get(key), digits):>{col}}" for c in CASES)
        )
    lines.append("")
    heads = [f"{RATIO_HEADS[a]}÷{RATIO_HEADS[b]}" for a, b in RATIOS]
    rcol = max(col, max(len(h) for h in heads) + 2)
    lines.append(f"{'ratio of medians':<{width}}" + "".join(f"{h:>{rcol}}" for h in heads))
    for key, label, _ in METRICS:
        cells = []
        for a, b in RATIOS:
            v = result["ratios"][f"{a}/{b}"][key]
            cells.append("—" if v is None else f"{v:.2f}")
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{rcol}}" for c in cells))
    lines.append(
        "  ours ÷ ser2net (its defaults) and ÷ tuned (ser2net tuned); MB/s: higher is better, µs and CPU: "
        "lower is better"
    )
    lines.append("  ser2net's default chardelay holds device bytes ≥ 1 ms before sending: it sets its round trip;")
    lines.append(f"  ser2net tuned: chardelay false, tcp(nodelay), {TUNED_BUFSIZE} B buffers each way (default 64 B)")
    lines.append("  path CPU: ser2net | serve-serial | gateway + client, schedstat of every live thread")
    if result.get("gateway_discarded_bytes"):
        lines.append(
            f"  gateway discarded {result['gateway_discarded_bytes']} byte(s) on the route "
            "(the client side took nothing for 0.25 s)"
        )
    for c in CASES:
        for err in dict.fromkeys(cases[c.key]["errors"]):
            lines.append(f"  {cases[c.key]['label']}: {err}")
    for err in dict.fromkeys(result["errors"]):
        lines.append(f"  error: {err}")
    return "\n".join(lines)


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Round trip and bulk MB/s per path (see bench/__main__.py for the shape)."""
    cases = result["cases"]
    labels = [c.label if len(c.label) <= 30 else SHORT[c.key] for c in CASES]

    def series(name: str, key: str) -> dict[str, Any]:
        values = []
        for c in CASES:
            v = cases[c.key]["figures"].get(key)
            values.append([statistics.median(v), min(v), max(v)] if v else None)
        return {"name": name, "values": values}

    note = f"{result['plan']['runs']} runs, median with min–max; pty device on loopback"
    return [
        {
            "id": "round-trip",
            "title": "Serial one-byte echo round trip",
            "unit": "µs",
            "note": note,
            "categories": labels,
            "series": [series("p50", "rtt_p50_us"), series("p99", "rtt_p99_us"), series("pinned p50", "pin_p50_us")],
        },
        {
            "id": "throughput",
            "title": f"Serial bulk, {result['plan']['bulk_bytes'] >> 20} MiB",
            "unit": "MB/s",
            "note": note,
            "categories": labels,
            "series": [
                series("to device", "to_mb_s"),
                series("from device", "from_mb_s"),
                series("echo, each way", "echo_mb_s"),
            ],
        },
    ]


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "3 short runs of 4 MiB")
    args = parser.parse_args(argv)
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
