"""A/B of serve-usb builds on the real-device harness: loopback round trips and dd, interleaved.

Not in the suite (``python -m bench`` does not run it): a development tool
for changes to the client's USB path.  One pair of guests (the thin-client
VM and the VM side of bench/real_usb.py) is booted once; each round attaches,
in turn (the order flips every round), every named build of ``client
serve-usb`` (a venv's python: ``--build main=/work/main/.venv/bin/python``,
the thin client runs it over virtio-9p; or ``LABEL=FOLDER``, redirgate's
packages laid out as the wheel installs them, e.g. links into a ``git
archive`` of a commit, somewhere the thin client sees: not /tmp, its own
tmpfs, where a missing FOLDER silently falls back to this checkout) and
Debian's ``usbredirect``, and
measures the median 4 KiB and 64 KiB bulk OUT+IN round trips of the Loopback
gadget (bench/real_usb_loop.py) and, with ``--dd``, O_DIRECT dd read and
write of the gadget stick with the thin client's CPU per MiB (bench/real_usb.py).
Ratios are each build ÷ usbredirect in the same round.  ``--strace LABEL``
runs that build once more under ``strace -f -tt -T`` (the trace is left in
the work folder, which is then kept).

    python bench/real_usb_ab.py --build main=/work/main/.venv/bin/python --build new=.venv/bin/python --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.real_usb import STICK, _vm_dd_script
from bench.real_usb_loop import LOOP, SIZES, VM_SCRIPT, WARMUP, loop_figures, loop_gadget
from bench.real_usb_serve import (
    GUEST_PORT,
    SERVER_READY_TIMEOUT_S,
    guest_cpu_s,
    stop_guest_process,
    vid_pid,
    wait_listening_script,
)

USBREDIRECT = "usbredirect"


PROFILE = """
import cProfile, os, pstats, signal, sys
from redirgate.cli import main
out, args = sys.argv[1], sys.argv[2:]
profiler = cProfile.Profile()
def stop(*_):
    profiler.disable()
    with open(out + ".txt", "w") as f:
        pstats.Stats(profiler, stream=f).sort_stats("tottime").print_stats(70)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
profiler.enable()
main(args)
"""


def _command(
    python: str | None,
    device: tuple[int, int],
    strace: Path | None = None,
    profile: Path | None = None,
    port: int = GUEST_PORT,
) -> str:
    if python is None:
        return f"usbredirect --device {vid_pid(device)} --as 0.0.0.0:{port}"
    args = f"client serve-usb --listen 0.0.0.0:{port} {vid_pid(device)}"
    if Path(python).is_dir():  # a folder of package links (a snapshot of a commit): this venv's python
        python = f"env PYTHONPATH={python} {sys.executable}"
    serve = f"{python} -m redirgate.cli {args}"
    if strace is not None:
        serve = f"strace -f -tt -T -o {strace} {serve}"
    if profile is not None:
        script = profile.with_name("prof_serve.py")
        script.write_text(PROFILE)
        serve = f"{python} {script} {profile} {args}"
    return f"env REDIRGATE_USB_TRANSFERS=async {serve}"


@contextlib.contextmanager
def _served(thin: Any, vm: Any, command: str, log_path: Path, port: int = GUEST_PORT) -> Iterator[int]:
    with contextlib.ExitStack() as stack:
        pid = thin.guest.spawn(command, log_path)
        stack.callback(stop_guest_process, thin, pid)
        thin.run(wait_listening_script(port), SERVER_READY_TIMEOUT_S)
        redir = vm.attach(thin.guest.host_port(port))
        stack.callback(vm.detach, redir)
        yield pid


#: the thin client's TCP counters worth a look per round trip (`--nstat`)
NSTAT = (
    "TcpInSegs",
    "TcpOutSegs",
    "TcpExtDelayedACKs",
    "TcpExtDelayedACKLocked",
    "TcpExtTCPHPAcks",
    "TcpExtTCPPureAcks",
    "TcpRetransSegs",
)
nstat = False


def _nstat(thin: Any) -> dict[str, int]:
    counters = {}
    for line in thin.run("nstat -asz").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in NSTAT:
            counters[words[0]] = int(words[1])
    return counters


def _loop(thin: Any, vm: Any, command: str, log_path: Path, rounds: tuple[int, int]) -> dict[str, float]:
    from tests.support.thinclient import wait_usb_gone_script, wait_usb_script

    script = vm.guest.share_dir("loop") / "loop.py"
    sizes = ((SIZES[0][0], rounds[0]), (SIZES[1][0], rounds[1]))
    script.write_text(VM_SCRIPT.format(vid=LOOP[0], pid=LOOP[1], sizes=sizes, warmup=WARMUP))
    trace = log_path.with_suffix(".trace")
    command = command.replace("env REDIRGATE_USB", f"env REDIRGATE_TRACE={trace} REDIRGATE_USB")
    with _served(thin, vm, command, log_path) as pid:
        vm.run(wait_usb_script(*LOOP), 600)
        cpu0, t0 = guest_cpu_s(thin, [pid]), time.monotonic()
        vm.run("sleep 5")
        cpu1, t1 = guest_cpu_s(thin, [pid]), time.monotonic()
        before = _nstat(thin) if nstat else {}
        result = vm.guest.run(f"{sys.executable} {script}", 900, check=False)
        after = _nstat(thin) if nstat else {}
        cpu2, t2 = guest_cpu_s(thin, [pid]), time.monotonic()
    vm.run(wait_usb_gone_script(*LOOP), 120)
    if result.rc != 0:
        raise RuntimeError(f"the loopback loop failed ({result.rc}): {result.stderr[-500:]}")
    figures = loop_figures(result.stdout)
    # CPU: % of a vCPU while attached and idle; ms per round trip (warm-ups included)
    figures["idle_cpu%"] = (cpu1 - cpu0) * 100 / (t1 - t0)
    # (the loop's own CPU: what the server spent meanwhile beyond its idle rate)
    idle_rate = (cpu1 - cpu0) / (t1 - t0)
    figures["cpu_ms_rt"] = ((cpu2 - cpu1) - idle_rate * (t2 - t1)) * 1000 / (sum(rounds) + 2 * WARMUP)
    if trace.exists():  # a build with the (uncommitted) per-request trace: where a round trip's time goes
        _print_trace(trace)
    for name in after:  # per round trip, both sizes
        figures[name.replace("TcpExt", "")] = (after[name] - before.get(name, 0)) / (sum(rounds) + 2 * WARMUP)
    return figures


#: the second Loopback gadget of the paired mode (on the other UDC)
LOOP2 = (LOOP[0], LOOP[1] + 1)
PAIRED_SCRIPT = r"""
import statistics, sys, time
import usb.core, usb.util

def open_loop(pid):
    dev = usb.core.find(idVendor=0x{vid:04x}, idProduct=pid)
    intf = dev.get_active_configuration()[(0, 0)]
    usb.util.claim_interface(dev, intf)
    out = usb.util.find_descriptor(intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_OUT)
    inp = usb.util.find_descriptor(intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN)
    return out, inp

loops = [open_loop(0x{pid_a:04x}), open_loop(0x{pid_b:04x})]
for size, rounds in {sizes}:
    data = bytes(range(256)) * (size // 256)
    times = [[], []]
    for i in range({warmup} + rounds):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            out, inp = loops[which]
            t0 = time.perf_counter()
            out.write(data, timeout=120000)
            got = inp.read(size, timeout=120000)
            t1 = time.perf_counter()
            if bytes(got) != data:
                sys.exit(f"{{size}} B came back changed ({{len(got)}} B)")
            if i >= {warmup}:
                times[which].append(t1 - t0)
    print("pair", size, statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000, flush=True)
"""


def _paired(
    thin: Any, vm: Any, a: tuple[str, str | None], b: tuple[str, str | None], share: Path, rnd: int, sizes: Any
) -> dict[str, float]:
    """`a` serves the first Loopback gadget and `b` the second at once; the VM side alternates round
    trips between them (A B, B A, ...), so both see the same moment's load.  Figures: a ÷ b per size."""
    from tests.support.thinclient import wait_usb_gone_script, wait_usb_script

    script = vm.guest.share_dir("loop") / "paired.py"
    pid_a, pid_b = (LOOP, LOOP2) if rnd % 2 == 0 else (LOOP2, LOOP)  # the gadgets (and UDCs) swap each round
    script.write_text(PAIRED_SCRIPT.format(vid=LOOP[0], pid_a=pid_a[1], pid_b=pid_b[1], sizes=sizes, warmup=WARMUP))
    with contextlib.ExitStack() as stack:
        for (label, python), device, port in ((a, pid_a, GUEST_PORT), (b, pid_b, GUEST_PORT + 1)):
            command = _command(python, device, port=port)
            stack.enter_context(_served(thin, vm, command, share / f"pair-{label}-{rnd}.log", port))
            vm.run(wait_usb_script(*device), 600)
        result = vm.guest.run(f"{sys.executable} {script}", 900, check=False)
    for device in (LOOP, LOOP2):
        vm.run(wait_usb_gone_script(*device), 120)
    if result.rc != 0:
        raise RuntimeError(f"the paired loop failed ({result.rc}): {result.stderr[-500:]}")
    figures = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "pair":
            key = "lb4k" if words[1] == "4096" else "lb64k"
            figures[f"{key} {a[0]}"], figures[f"{key} {b[0]}"] = float(words[2]), float(words[3])
            figures[f"{key} {a[0]}÷{b[0]}"] = float(words[2]) / float(words[3])
    return figures


def _print_trace(trace: Path) -> None:
    """Medians in ms per request kind: read -> submitted, submitted -> libusb done, done -> reply sent,
    and reply sent -> the next request read (outside this process)."""
    rows = [line.split() for line in trace.read_text().splitlines() if line.strip()]
    parts: dict[str, list[list[float]]] = {}
    for i, (ep, length, rx, sub, done, sent) in enumerate(rows):
        nxt = float(rows[i + 1][2]) if i + 1 < len(rows) else None
        kind = f"{ep}/{length}"
        cols = [float(sub) - float(rx), float(done) - float(sub), float(sent) - float(done)]
        cols.append(nxt - float(sent) if nxt is not None else float("nan"))
        parts.setdefault(kind, []).append([c * 1000 for c in cols])
    for kind, values in parts.items():
        meds = [statistics.median(v[j] for v in values if v[j] == v[j]) for j in range(4)]
        print(
            f"  trace {kind} x{len(values)}: read->submit {meds[0]:.2f}, device {meds[1]:.2f}, "
            f"done->sent {meds[2]:.2f}, sent->next read {meds[3]:.2f} ms",
            flush=True,
        )


def _dd(thin: Any, vm: Any, command: str, log_path: Path, mib: int, flags: Path) -> dict[str, float]:
    from tests.support.thinclient import wait_usb_gone_script

    try:
        with _served(thin, vm, command, log_path) as pid:
            job = vm.guest.start(_vm_dd_script(str(flags), mib))
            deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
            while not (flags / "ready").exists():
                if job.done() or time.monotonic() > deadline:
                    raise RuntimeError(f"the VM side saw no disk: {job.wait().stderr[-500:]}")
                time.sleep(0.05)
            cpu0 = guest_cpu_s(thin, [pid])
            (flags / "go").touch()
            out = job.wait().check().stdout
            cpu1 = guest_cpu_s(thin, [pid])
    finally:
        with contextlib.suppress(Exception):
            vm.run(wait_usb_gone_script(*STICK), 60)
    times = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] in ("read", "write"):
            times[words[0]] = float(words[2]) - float(words[1])
    mb = mib * 1024 * 1024 / 1e6
    return {"read": mb / times["read"], "write": mb / times["write"], "cpu": (cpu1 - cpu0) * 1000 / (2 * mib)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        help="LABEL=PYTHON (a venv's python) or LABEL=FOLDER (redirgate's packages as the wheel lays them out, "
        "e.g. links to a snapshot of a commit: run with this venv's python and PYTHONPATH=FOLDER)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lb-rounds", default="40,15", help="timed 4 KiB and 64 KiB round trips per attach")
    parser.add_argument("--dd", type=int, default=0, help="MiB per dd (0: no dd)")
    parser.add_argument("--strace", default=None, help="LABEL: one more attach of that build under strace")
    parser.add_argument("--profile", default=None, help="LABEL: one more attach of that build under cProfile")
    parser.add_argument("--no-usbredirect", action="store_true")
    parser.add_argument("--nstat", action="store_true", help="the thin client's TCP counters per round trip")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="two Loopback gadgets: each round, every pair of builds serves one each at once, round trips "
        "alternating between them",
    )
    args = parser.parse_args(argv)
    builds: list[tuple[str, str | None]] = [tuple(b.split("=", 1)) for b in args.build]
    for label, where in builds:
        if where is not None and Path(where).resolve().is_relative_to("/tmp"):
            parser.error(f"--build {label}: {where} is under /tmp, which the thin client does not see")
    if not args.no_usbredirect:
        builds.append((USBREDIRECT, None))
    global nstat
    nstat = args.nstat
    lb_rounds = tuple(int(x) for x in args.lb_rounds.split(","))
    assert len(lb_rounds) == 2

    from tests.support.thinclient import Gadget, mass_storage, start_thinclient, start_vm_side

    workdir = Path(tempfile.mkdtemp(prefix="redirgate-bench-usbab-"))
    keep = False
    figures: dict[str, dict[str, list[float]]] = {label: {} for label, _ in builds}
    try:
        share, vm_share = workdir / "thin", workdir / "vm"
        share.mkdir()
        vm_share.mkdir()
        with contextlib.ExitStack() as stack:
            ftdi = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            thin = start_thinclient(share, ftdi_port=ftdi.getsockname()[1], hostfwd=(GUEST_PORT, GUEST_PORT + 1))
            stack.callback(thin.guest.stop)
            vm = start_vm_side(vm_share)
            stack.callback(vm.guest.stop)
            gadgets = [loop_gadget()]
            if args.paired:
                from tests.support.thinclient import UDCS, Gadget, loopback

                second = Gadget("benchloop2", *LOOP2, "bench loopback 2", [loopback()], serial="loop-2", udc=UDCS[0])
                gadgets.append(second)
            if args.dd:
                image = share / "stick.img"
                with image.open("wb") as f:
                    chunk = os.urandom(1 << 20)
                    for _ in range(args.dd):
                        f.write(chunk)
                gadgets.append(Gadget("benchstick", *STICK, "bench stick", [mass_storage(image)], serial="bench-1"))
            for gadget in gadgets:
                thin.plug(gadget)
                stack.callback(thin.remove, gadget)
            print(f"guests up; load {os.getloadavg()[0]:.1f}", flush=True)
            pairs = [(builds[i], builds[j]) for i in range(len(builds)) for j in range(i + 1, len(builds))]
            for rnd in range(args.rounds if args.paired else 0):
                for a, b in pairs:
                    load = os.getloadavg()[0]
                    try:
                        sizes = ((SIZES[0][0], lb_rounds[0]), (SIZES[1][0], lb_rounds[1]))
                        one = _paired(thin, vm, a, b, share, rnd, sizes)
                    except Exception as exc:  # a failed pair: reported, the others kept
                        print(f"round {rnd} {a[0]}+{b[0]}: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                        continue
                    for key, value in one.items():
                        figures.setdefault(f"{a[0]}+{b[0]}", {}).setdefault(key, []).append(value)
                    print(
                        f"round {rnd} paired (load {load:.1f}): " + ", ".join(f"{k} {v:.2f}" for k, v in one.items()),
                        flush=True,
                    )
            for rnd in range(0 if args.paired else args.rounds):
                order = builds if rnd % 2 == 0 else builds[::-1]
                for label, python in order:
                    load = os.getloadavg()[0]
                    one: dict[str, float] = {"load": load}
                    try:
                        log = share / f"{label}-{rnd}.log"
                        one.update(_loop(thin, vm, _command(python, LOOP), log, lb_rounds))
                        if args.dd:
                            flags = vm.guest.share_dir(f"dd-{label}-{rnd}")
                            one.update(_dd(thin, vm, _command(python, STICK), log, args.dd, flags))
                    except Exception as exc:  # a failed attach: reported, the others kept
                        print(f"round {rnd} {label}: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                        continue
                    for key, value in one.items():
                        figures[label].setdefault(key, []).append(value)
                    print(f"round {rnd} {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in one.items()), flush=True)
                _ratios(figures, builds, rnd)
            if args.strace:
                python = dict(builds)[args.strace]
                trace = share / "strace.txt"
                keep = True
                print(_loop(thin, vm, _command(python, LOOP, trace), share / "strace-serve.log", (10, 5)))
                print(f"strace in {trace}", flush=True)
            if args.profile:
                python = dict(builds)[args.profile]
                prof = share / "profile"
                keep = True
                print(_loop(thin, vm, _command(python, LOOP, profile=prof), share / "profile-serve.log", (100, 30)))
                print(f"profile in {prof}.txt", flush=True)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nmedians (ratio ÷ usbredirect of medians):")
    for label in figures:
        line = []
        for key, values in figures[label].items():
            med = statistics.median(values)
            ref = figures.get(USBREDIRECT, {}).get(key)
            ratio = f" ({med / statistics.median(ref):.2f})" if ref and label != USBREDIRECT else ""
            line.append(f"{key} {med:.2f}{ratio}")
        print(f"  {label}: " + ", ".join(line))


def _ratios(figures: dict[str, dict[str, list[float]]], builds: list[tuple[str, str | None]], rnd: int) -> None:
    ref = figures.get(USBREDIRECT)
    if not ref:
        return
    for label, _ in builds:
        if label == USBREDIRECT:
            continue
        mine = figures[label]
        cells = []
        for key in ("lb4k", "lb64k", "cpu_ms_rt", "idle_cpu%", "read", "write", "cpu"):
            if len(mine.get(key, [])) > rnd and len(ref.get(key, [])) > rnd:
                cells.append(f"{key} {mine[key][rnd] / ref[key][rnd]:.2f}")
        print(f"  round {rnd} {label} ÷ usbredirect: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
