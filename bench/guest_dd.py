"""Does redirection slow my USB stick down? A real guest's ``dd``, three ways, in one boot.

One QEMU guest (TCG, Debian kernel, qemu-xhci; bench/usb_path.py's part 1,
``usb_path.guest_dd``) gets three disks with identical content, each on its
own root port:

===================  ==========================================================
client + gateway     ``usb-redir`` chardev → ``redirgate gateway run`` route →
                     mutual TLS 1.3 tunnel → ``redirgate client run`` exporting
                     ``virtual:storage`` on a raw image (what a deployment is)
serve-usb            ``usb-redir`` chardev → ``redirgate client serve-usb``
                     with ``virtual:storage`` on a copy (standalone mode)
QEMU usb-storage     QEMU's own ``usb-storage`` on another copy (no
                     redirection at all: the reference)
===================  ==========================================================

The guest times O_DIRECT ``dd`` read and write (bs=1M, write with fsync) on
each disk, interleaved run by run, every disk limited to the same 120 KiB
requests (usb_path.MAX_KB); MB/s = 10^6 bytes/s, the median over the runs
(full 5 × 128 MiB, quick 3 × 16 MiB) with min–max; ratios of medians against
QEMU's usb-storage and between the two redirected paths.  CPU seconds of
serve-usb, gateway and client over the whole boot are printed beside them.

It needs qemu-system-x86_64, a Debian kernel and busybox (the guest image of
redirgate.cli.guestvm): without them the module reports why and measures
nothing.

    python bench/guest_dd.py [--quick] [--runs N]

Every process started here (serve-usb, gateway, client; QEMU through
run_guest) is stopped by PID, also on failure.  Nothing is asserted.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import gateway_lab as gl
from bench.guest_runs import Plan, choose_plan, guest_unavailable, run_measurement
from bench.relay_setup import LOOPBACK, Processes, free_port, process_cpu_s
from bench.report import cell, emit, script_arguments
from bench.report import ratio as _ratio

STORAGE_ID = "usb:1209:0001"  # client/virtual/storage.py's VID:PID
ROUTE = "stick"
#: role, label, xHCI root port; measured in this order within each run
PATHS: tuple[tuple[str, str, int], ...] = (
    ("gateway", "client + gateway", 3),
    ("serve_usb", "serve-usb", 1),
    ("native", "QEMU usb-storage", 2),
)
RATIOS: tuple[tuple[str, str], ...] = (("gateway", "native"), ("serve_usb", "native"), ("gateway", "serve_usb"))
OPS = (("read", "read, MB/s"), ("write", "write + fsync, MB/s"))


QUICK = Plan(runs=3, image_mib=16, transfer_mib=16)
FULL = Plan(runs=5, image_mib=128, transfer_mib=128)


def _cpu(pid: int) -> float | None:
    try:
        return process_cpu_s(pid)
    except (OSError, ValueError, IndexError):
        return None


def measure(plan: Plan, workdir: Path) -> dict[str, Any]:
    """One boot with the three disks: per-run MB/s, what the guest reported, CPU per process."""
    from bench.usb_path import guest_dd, native_disk, redirected_disk, write_image
    from redirgate.cli.guestvm.image import find_kernel
    from redirgate.cli.lab import LabRoute

    kernel = find_kernel()[0]

    images = {role: workdir / f"{role}.img" for role, _, _ in PATHS}
    write_image(images["serve_usb"], plan.image_mib)
    for role in ("gateway", "native"):
        shutil.copyfile(images["serve_usb"], images[role])
    procs = Processes(workdir)
    try:
        port = free_port()
        serve = procs.start(
            "serve-usb",
            [
                *gl.CLI,
                "client",
                "serve-usb",
                "--listen",
                f"{LOOPBACK}:{port}",
                f"virtual:storage:{images['serve_usb']}",
            ],
            port,
        )
        lab = gl.write_lab(
            workdir / "lab", [LabRoute(ROUTE, STORAGE_ID)], {"thin-01": [f"virtual:storage:{images['gateway']}"]}
        )
        gateway = gl.start_gateway(procs, lab)
        client = gl.start_client(procs, lab, "thin-01")
        gl.wait_online(lab, {"thin-01": 1}, procs=[client])
        ports = {role: p for role, _, p in PATHS}
        disks = [
            redirected_disk("gateway", ports["gateway"], lab.routes[ROUTE]),
            redirected_disk("serve_usb", ports["serve_usb"], port),
            native_disk("native", ports["native"], images["native"]),
        ]
        pids = {"serve-usb": serve.pid, "gateway": gateway.pid, "client": client.pid}
        cpu0 = {name: _cpu(pid) for name, pid in pids.items()}
        dd = guest_dd(plan.runs, plan.transfer_mib, disks)
        cpu1 = {name: _cpu(pid) for name, pid in pids.items()}
    finally:
        procs.stop_all()
    cpu: dict[str, float | None] = {}
    for name, before in cpu0.items():
        after = cpu1[name]
        cpu[name] = None if before is None or after is None else after - before
    return {
        "kernel": kernel,
        "rates": dd.rates,
        "reported": dd.reported,
        "script_start_s": dd.script_start_s,
        "vm_wall_s": dd.wall_s,
        "cpu_s": cpu,
    }


def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    """Measure the three disks in one boot; JSON-ready per-run values, or why not."""
    result = run_measurement(
        "real guest O_DIRECT dd on an emulated stick: client + gateway and serve-usb vs QEMU usb-storage",
        choose_plan(QUICK, FULL, is_quick=quick, runs=runs),
        unavailable=guest_unavailable,
        measure=measure,
        workdir_prefix="redirgate-bench-guestdd-",
        errors=(RuntimeError, OSError),
    )
    if "rates" in result:
        result["ratios"] = {
            f"{a}/{b}": {op: _ratio(result["rates"][op].get(a), result["rates"][op].get(b)) for op, _ in OPS}
            for a, b in RATIOS
        }
    return result


# ---------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run` result."""
    plan = result["plan"]
    lines = [f"guest_dd: {result['what']}"]
    if "skipped" in result:
        return "\n".join([*lines, f"  not measured: {result['skipped']}"])
    if "failed" in result:
        return "\n".join([*lines, f"  failed: {result['failed']}"])
    rep, mach = result["reported"], result["machine"]
    lines += [
        f"  {plan['runs']} runs in one boot, disks interleaved run by run; {plan['transfer_mib']} MiB per dd "
        f"(bs=1M, O_DIRECT) on {plan['image_mib']} MiB images; median [min–max]",
        f"  kernel {result['kernel']}, QEMU TCG 1 vCPU, qemu-xhci; boot to script {result['script_start_s']:.1f} s, "
        f"whole VM {result['vm_wall_s']:.1f} s; {mach['cpus']} × {mach['cpu']}; load average "
        f"{result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        "",
    ]
    width, col = 24, 22
    heads = {
        "gateway/native": "gateway ÷ QEMU",
        "serve_usb/native": "serve-usb ÷ QEMU",
        "gateway/serve_usb": "gateway ÷ serve-usb",
    }
    lines.append(
        f"{'guest dd':<{width}}"
        + "".join(f"{label:>{col}}" for _, label, _ in PATHS)
        + "".join(f"{h:>{col}}" for h in heads.values())
    )
    for op, label in OPS:
        cells = [cell(result["rates"][op].get(role), 1) for role, _, _ in PATHS]
        ratios = [result["ratios"][key][op] for key in heads]
        lines.append(
            f"{label:<{width}}"
            + "".join(f"{c:>{col}}" for c in cells)
            + "".join(f"{'—' if r is None else f'{r:.2f}':>{col}}" for r in ratios)
        )
    lines.append("  MB/s = 10^6 bytes/s, timed by the guest (busybox ts); higher is better")
    for role, label, port in PATHS:
        lines.append(
            f"  {label} (xHCI port {port}): {rep.get(f'{role}.vendor', '?').strip()}, "
            f"speed {rep.get(f'{role}.speed', '?')} Mb/s, write cache '{rep.get(f'{role}.cache', '?')}', "
            f"default request {rep.get(f'{role}.default_max_kb', '?')} KiB, measured at 120 KiB"
        )
    cpu = result["cpu_s"]
    lines.append(
        "  CPU s over the whole boot: "
        + ", ".join(f"{name} {'—' if v is None else f'{v:.2f}'}" for name, v in cpu.items())
    )
    return "\n".join(lines)


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Guest dd MB/s per path (see bench/__main__.py for the shape)."""
    if "rates" not in result:
        return []
    plan = result["plan"]

    def series(role: str, label: str) -> dict[str, Any]:
        values = []
        for op, _ in OPS:
            v = result["rates"][op].get(role)
            values.append([statistics.median(v), min(v), max(v)] if v else None)
        return {"name": label, "values": values}

    return [
        {
            "id": "dd",
            "title": f"Real guest dd, {plan['transfer_mib']} MiB O_DIRECT",
            "unit": "MB/s",
            "note": f"{plan['runs']} runs in one boot, median with min–max; QEMU TCG, qemu-xhci",
            "categories": [label.replace(", MB/s", "") for _, label in OPS],
            "series": [series(role, label) for role, label, _ in PATHS],
        }
    ]


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "3 runs of 16 MiB")
    args = parser.parse_args(argv)
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
