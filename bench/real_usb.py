"""A real USB stick through ``redirgate client serve-usb`` beside Debian's ``usbredirect``, on the real-device harness.

The thin-client VM of ``tests/support/thinclient.py`` (QEMU TCG, Debian
kernel, ``dummy_hcd``) makes a real USB stick: a configfs gadget with
``usb_f_mass_storage`` on an image in its share.  To its kernel and libusb
this is a real device.  The same VM side (a second TCG guest with a
``qemu-xhci``) hot-adds a ``usb-redir`` that dials, through the thin client's
port forward, one of the servers running inside the thin client:

* serve-usb: ``redirgate client serve-usb --listen 0.0.0.0:PORT VID:PID``
  (this checkout, its venv, over virtio-9p) with ``REDIRGATE_USB_TRANSFERS=async``:
  transfers on libusb's asynchronous API (client/usb/aio.py);
* serve-usb, threads: the same with ``REDIRGATE_USB_TRANSFERS=threads``,
  every transfer in a worker thread, one per endpoint at a time (the path
  before; still the emulated devices' one);
* usbredirect: ``usbredirect --device VID:PID --as 0.0.0.0:PORT`` (Debian's
  C usbredir host on libusb's asynchronous API);
* client + gateway: ``redirgate client run`` in the thin client, dialling
  ``redirgate gateway run`` on this host over mutual TLS; the VM side's
  usb-redir dials the gateway's route;
* usbredirect + stunnel: ``usbredirect --to`` in the thin client through a
  stunnel4 client there and a stunnel4 server on this host in front of
  QEMU's listening chardev (bench/real_usb_serve.py has both tunnels).

serve-usb is compared with usbredirect, client + gateway with usbredirect
behind the stunnel pair.

Interleaved run by run (the order flips every run): start the server, attach
the VM side, wait for its disk, then O_DIRECT ``dd`` read and write
(bs=1M, write with fsync) timed by the VM side (``date +%s.%N``), detach,
stop the server.  The server's CPU in the thin client (``/proc/PID/stat``,
utime+stime; the stunnel client's too on the stunnel row) is read right
before and after the two dd's: CPU ms per MiB moved.  Then, same server, the
4 KiB and 64 KiB bulk OUT+IN round trips of a Loopback gadget
(bench/real_usb_loop.py) and real isochronous OUT (bench/real_usb_iso.py):
the thin client's QEMU usb-audio, a tone played by the VM side through a
relay on this host that counts the iso packets sent; the share the device
took (QEMU's pcap).  Medians with min–max over the runs, ratios of medians
(each row ÷ its reference).  Quick: 2 runs × 16 MiB, without the
worker-thread row; full: 5 runs × 64 MiB.  One pair of guests per run of
the module; the gateway, `client run` and the stunnel pair are started once.

It needs QEMU, Debian's kernel and busybox (the guest image) and
``usbredirect``: without them the module reports why and measures nothing.

    python bench/real_usb.py [--quick] [--runs N]

Both guests and every server are stopped by PID, also on failure.  Nothing
is asserted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.guest_runs import Plan, choose_plan, guest_unavailable, run_measurement
from bench.real_usb_iso import TONE_S, iso_one
from bench.real_usb_loop import LOOP, loop_gadget, loop_one
from bench.real_usb_serve import GATEWAY, GUEST_PORT, STUNNEL, Tunnels, guest_cpu_s, served, start_tunnels
from bench.report import cell, emit, script_arguments
from bench.report import ratio as _ratio

STICK = (0x1209, 0x7101)
#: role, label; the order within a run flips every run
SERVERS: tuple[tuple[str, str], ...] = (
    ("serve_usb", "serve-usb"),
    ("serve_usb_threads", "serve-usb, threads"),
    ("usbredirect", "usbredirect"),
    (GATEWAY, "client + gateway"),
    (STUNNEL, "usbredirect+stunnel"),
)
#: what each role is compared with
REFERENCES = {"serve_usb": "usbredirect", "serve_usb_threads": "usbredirect", GATEWAY: STUNNEL}
#: the roles of the quick plan (the worker-thread path only in the full one)
QUICK_ROLES = ("serve_usb", "usbredirect", GATEWAY, STUNNEL)
OPS = (
    ("read", "read, MB/s"),
    ("write", "write + fsync, MB/s"),
    ("cpu", "thin-client CPU ms/MiB"),
    ("lb4k", "4 KiB OUT+IN, ms"),
    ("lb64k", "64 KiB OUT+IN, ms"),
    ("iso_share", "iso OUT taken/sent, %"),
    ("iso_sent", "iso OUT sent by the VM"),
    ("iso_cpu", "CPU ms per 1k iso pkts"),
)
#: the usb-audio of the thin client's QEMU (tests/support/thinclient.py QEMU_IDS)
AUDIO = (0x46F4, 0x0002)
#: Python in a TCG guest on a loaded 2-core host can take minutes to start (safety net only)
SERVER_READY_TIMEOUT_S = 900.0


QUICK = Plan(runs=2, image_mib=16, transfer_mib=16)
FULL = Plan(runs=5, image_mib=64, transfer_mib=64)


def unavailable() -> str | None:
    """Why the harness cannot run here, or None."""
    if shutil.which("usbredirect") is None:
        return "usbredirect is not installed (Debian package usbredirect)"
    return guest_unavailable()


def _vm_dd_script(flags: str, mib: int) -> str:
    """The VM side: wait for the stick's disk, say ready, wait for go, time read and write, say done."""
    from tests.support.thinclient import wait_block_script, wait_usb_script

    now = "date +%s.%N"
    return (
        "set -e\n" + wait_usb_script(*STICK) + 'usb="$found"\n' + wait_block_script("usb") + f"touch {flags}/ready\n"
        f"while [ ! -e {flags}/go ]; do sleep 0.05; done\n"
        f"t0=$({now}); dd if=$blk of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null; t1=$({now})\n"
        'echo "read $t0 $t1"\n'
        f"t0=$({now}); dd if=/dev/zero of=$blk bs=1M count={mib} oflag=direct conv=fsync 2>/dev/null; t1=$({now})\n"
        'echo "write $t0 $t1"\n'
    )


def _one(thin: Any, vm: Any, tunnels: Tunnels, role: str, plan: Plan, share: Path, run: int) -> dict[str, float]:
    """One server, one attach: read and write MB/s and thin-client CPU ms per MiB."""
    from tests.support.thinclient import wait_usb_gone_script

    flags = vm.guest.share_dir(f"{role}-{run}")
    try:
        with served(thin, vm, tunnels, role, STICK, share / f"{role}-{run}.log") as attached:
            job = vm.guest.start(_vm_dd_script(str(flags), plan.transfer_mib))
            deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
            while not (flags / "ready").exists():
                if job.done() or time.monotonic() > deadline:
                    result = job.wait()
                    log = attached.log_path.read_text(errors="replace")[-1500:] if attached.log_path else ""
                    raise RuntimeError(f"{role}: the VM side saw no disk ({result.rc}): {result.stderr[-500:]}\n{log}")
                time.sleep(0.05)
            cpu0 = guest_cpu_s(thin, attached.pids)
            (flags / "go").touch()
            out = job.wait().check().stdout
            cpu1 = guest_cpu_s(thin, attached.pids)
    finally:
        with contextlib.suppress(Exception):
            vm.run(wait_usb_gone_script(*STICK), 60)
    times = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] in ("read", "write"):
            times[words[0]] = (float(words[1]), float(words[2]))
    mb = plan.transfer_mib * 1024 * 1024 / 1e6
    return {
        "read": mb / (times["read"][1] - times["read"][0]),
        "write": mb / (times["write"][1] - times["write"][0]),
        "cpu": (cpu1 - cpu0) * 1000 / (2 * plan.transfer_mib),
    }


def measure(plan: Plan, workdir: Path, roles: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Boot both guests once; per-run figures of each server, interleaved."""
    from redirgate.cli.guestvm.qemu import GuestError
    from tests.support.thinclient import Gadget, mass_storage, start_thinclient, start_vm_side

    servers = [(role, label) for role, label in SERVERS if roles is None or role in roles]

    share, vm_share = workdir / "thin", workdir / "vm"
    share.mkdir()
    vm_share.mkdir()
    image = share / "stick.img"
    with image.open("wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(plan.image_mib):
            f.write(chunk)
    figures: dict[str, dict[str, list[float]]] = {op: {role: [] for role, _ in servers} for op, _ in OPS}
    failures: list[str] = []
    loads: list[float] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        ftdi = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        thin = start_thinclient(share, ftdi_port=ftdi.getsockname()[1], hostfwd=(GUEST_PORT,))
        stack.callback(thin.guest.stop)
        vm = start_vm_side(vm_share)
        stack.callback(vm.guest.stop)
        boot_s = time.monotonic() - started
        stick = Gadget("benchstick", *STICK, "bench stick", [mass_storage(image)], serial="bench-1")
        loop = loop_gadget()
        for gadget in (stick, loop):
            thin.plug(gadget)
            stack.callback(thin.remove, gadget)
        tunnels = start_tunnels(thin, share, {"stick": STICK, "loop": LOOP, "audio": AUDIO}, stack)
        for run in range(plan.runs):
            order = servers if run % 2 == 0 else servers[::-1]
            for role, _ in order:
                loads.append(os.getloadavg()[0])
                try:
                    one = _one(thin, vm, tunnels, role, plan, share, run)
                    one.update(loop_one(thin, vm, tunnels, role, share, share / f"{role}-loop-{run}.log"))
                    one.update(iso_one(thin, vm, tunnels, role, share, share / f"{role}-iso-{run}.log"))
                except (RuntimeError, OSError, GuestError) as exc:  # one failed run: reported, the others kept
                    failures.append(f"{role} run {run}: {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                for op, _ in OPS:
                    figures[op][role].append(one[op])
    return {
        "figures": figures,
        "boot_s": boot_s,
        "failures": failures,
        "servers": [r for r, _ in servers],
        "loads": loads,
    }


def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    """Measure both servers on one pair of boots; JSON-ready per-run values, or why not."""
    from redirgate.cli.guestvm.qemu import GuestError

    result = run_measurement(
        "real devices in a thin-client VM: serve-usb vs usbredirect, client + gateway vs usbredirect + stunnel",
        choose_plan(QUICK, FULL, is_quick=quick, runs=runs),
        unavailable=unavailable,
        measure=lambda plan, workdir: measure(plan, workdir, QUICK_ROLES if quick else None),
        workdir_prefix="redirgate-bench-realusb-",
        errors=(RuntimeError, OSError, GuestError),
    )
    if "figures" in result:
        f = result["figures"]
        result["ratios"] = {
            role: {op: _ratio(f[op][role], f[op][reference]) for op, _ in OPS}
            for role, reference in REFERENCES.items()
            if role in result["servers"]
        }
    return result


# ---------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run` result."""
    plan = result["plan"]
    lines = [f"real_usb: {result['what']}"]
    if "skipped" in result:
        return "\n".join([*lines, f"  not measured: {result['skipped']}"])
    if "failed" in result:
        return "\n".join([*lines, f"  failed: {result['failed']}"])
    mach = result["machine"]
    lines += [
        f"  {plan['runs']} runs, servers interleaved (order flips each run); {plan['transfer_mib']} MiB per dd "
        f"(bs=1M, O_DIRECT) on a {plan['image_mib']} MiB gadget image; median [min–max]",
        f"  QEMU TCG 1 vCPU per guest (thin client: dummy_hcd + usb_f_mass_storage and usb_f_ss_lb; VM side: "
        f"qemu-xhci + usb-redir); boots {result['boot_s']:.0f} s; {mach['cpus']} × {mach['cpu']}; load average "
        f"{result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end"
        + (
            f", {min(result['loads']):.1f}–{max(result['loads']):.1f} (1 min) as each server began"
            if result.get("loads")
            else ""
        ),
        "",
    ]
    width, col = 24, 20
    shown = [(role, label) for role, label in SERVERS if role in result.get("servers", [r for r, _ in SERVERS])]
    compared = [(role, label, REFERENCES[role]) for role, label in shown if role in REFERENCES]
    lines.append(
        f"{'real devices':<{width}}"
        + "".join(f"{label:>{col}}" for _, label in shown)
        + "".join(f"{label + ' ÷ ref':>{col + 6}}" for _, label, _ in compared)
    )
    for op, label in OPS:
        digits = 0 if op in ("cpu", "iso_sent", "iso_cpu") else 1  # wide figures: no decimals, columns stay apart
        cells = [cell(result["figures"][op].get(role), digits) for role, _ in shown]
        ratios = [result["ratios"][role][op] for role, _, _ in compared]
        lines.append(
            f"{label:<{width}}"
            + "".join(f"{c:>{col}}" for c in cells)
            + "".join(f"{'—' if r is None else f'{r:.2f}':>{col + 6}}" for r in ratios)
        )
    lines.append(
        "  ÷ ref: serve-usb ÷ usbredirect, client + gateway ÷ usbredirect+stunnel (floors, issue 13: dd ≥ 0.8 and "
        "≥ 0.9, CPU ≤ 1.3, round trips ≤ 1.1, iso OUT share ≥ 0.98)"
    )
    for failure in result.get("failures", []):
        lines.append(f"  failed: {failure}")
    lines.append(
        "  MB/s = 10^6 bytes/s timed in the VM side; CPU = the server's utime+stime in the thin client (with the "
        "stunnel client's on its row) over both dd's, per MiB moved (lower is better); OUT+IN = a bulk write and "
        "its read back from a Loopback gadget, median round trip of the run, timed in the VM side",
    )
    lines.append(
        f"  iso OUT: QEMU's usb-audio in the thin client, a {TONE_S} s tone played by the VM side (1 packet per ms): "
        "the share of the packets the VM side sent (counted by a relay on this host) that the device took "
        "(QEMU's pcap); CPU per 1,000 packets sent"
    )
    return "\n".join(lines)


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """dd MB/s per server (see bench/__main__.py for the shape)."""
    if "figures" not in result:
        return []
    plan = result["plan"]

    def series(role: str, label: str) -> dict[str, Any]:
        values = []
        for op, _ in OPS[:2]:
            v = result["figures"][op][role]
            values.append([statistics.median(v), min(v), max(v)] if v else None)
        return {"name": label, "values": values}

    return [
        {
            "id": "dd",
            "title": f"Real gadget stick, {plan['transfer_mib']} MiB O_DIRECT dd",
            "unit": "MB/s",
            "note": f"{plan['runs']} runs interleaved, median with min–max; thin-client VM, QEMU TCG",
            "categories": [label.replace(", MB/s", "") for _, label in OPS[:2]],
            "series": [series(role, label) for role, label in SERVERS if role in result.get("servers", [])],
        }
    ]


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "2 runs of 16 MiB")
    args = parser.parse_args(argv)
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
