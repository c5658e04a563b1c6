"""What the USB path through `redirgate client serve-usb` costs, end to end.

One run prints, side by side with a reference and the ratio (redirgate ÷
reference), each figure the median of several runs with min/max:

1. Real guest (QEMU TCG, Debian kernel, xHCI): guest-side O_DIRECT `dd`
   read and write MB/s of the emulated stick (`virtual:storage` on a raw
   image, served by `serve-usb` as a real process, QEMU `usb-redir`) against
   an identical copy of the image attached to the same VM as QEMU's own
   `usb-storage` (no redirection).  Both disks get the same request size
   (max_sectors_kb = 120, usb-storage's high-speed default; QEMU's stick is
   SuperSpeed and would otherwise use 1024 KiB).  Timed by the guest
   (busybox `ts`, microseconds), reported through the harness's `report`.
   The two disks are measured interleaved, run by run, in one boot.
2. Control round trip through `serve-usb` (`virtual:loopback`, a real
   process) over loopback TCP, from the VM side: GET_DESCRIPTOR(device) one
   at a time, p50/p99 in µs.
3. Bulk MB/s through `serve-usb` with the loopback device: OUT in SINK mode
   and IN in SOURCE mode, 16 KiB and 64 KiB transfers, 1 and 4 requests
   outstanding.
4. For scale, parts 2 and 3 with Debian's libusbredirparser (through
   ctypes: tests/support/refparser.py) as the VM side against the same
   `serve-usb`, so the ratio isolates our VM-side code; the CPU rows say
   which process spent what.  QEMU's usb-storage is part 1's reference.

    python bench/usb_path.py [--quick] [--runs N] [--guest-runs N] [--no-guest]

Stops every process it starts (serve-usb, QEMU) by PID, also on failure.
Asserts nothing: a figure that cannot be measured is printed as missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.report import cell as _cell
from redirgate.client.virtual import LoopbackMode
from redirgate.vmside.guest import GuestError, UsbredirGuest
from tests.support.services import running

GET_DESCRIPTOR, DEVICE_DESCRIPTOR = 6, 0x0100
VENDOR_SET_MODE = 0x01  # client/virtual/loopback.py
BULK_OUT, BULK_IN = 0x01, 0x81
DEPTHS = (1, 4)
SIZES_KIB = (16, 64)
CONNECT_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ figures
@dataclass
class Row:
    measure: str
    ours: list[float] = field(default_factory=list)
    ref: list[float] = field(default_factory=list)
    digits: int = 1


def print_table(title: str, ref_name: str, rows: list[Row]) -> None:
    width = max(len(r.measure) for r in rows) + 2
    print(f"\n{title}")
    print(f"{'measure':<{width}}{'redirgate':>26}{ref_name:>26}{'ratio':>8}")
    for r in rows:
        ratio = "—"
        if r.ours and r.ref and statistics.median(r.ref) > 0:
            ratio = f"{statistics.median(r.ours) / statistics.median(r.ref):.2f}"
        print(f"{r.measure:<{width}}{_cell(r.ours, r.digits):>26}{_cell(r.ref, r.digits):>26}{ratio:>8}")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (proc(5) fields 14 and 15), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ------------------------------------------------------------ the VM sides
class VmSide(Protocol):
    async def control(
        self, requesttype: int, request: int, value: int, index: int, length: int, data: bytes = b""
    ) -> tuple[int, bytes]: ...

    async def bulk(self, endpoint: int, length: int = 0, data: bytes = b"") -> tuple[int, bytes | int]: ...


class RefVm:
    """libusbredirparser in the guest role over a trio stream, with the same
    `control`/`bulk` calls as `UsbredirGuest` (replies matched by id)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        from tests.support.refparser import ParseError, RefParser

        self._parse_error = ParseError
        self.stream = stream
        self.parser = RefParser("guest", 0xFE, "redirgate bench (reference)")  # our caps minus bulk_streams
        self._ids = iter(range(1, 1 << 62))
        self._pending: dict[int, list[Any]] = {}
        self._connected = trio.Event()
        self._closed: str | None = None
        self._lock = trio.Lock()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._flush()
        task_status.started()
        try:
            while True:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    raise GuestError("serve-usb", "closed the connection")
                for event in self.parser.feed(data):
                    if isinstance(event, self._parse_error):
                        raise GuestError("serve-usb", f"reference parser error: {event.reason}")
                    if event.type == 1:  # device_connect
                        self._connected.set()
                    elif event.type in (8, 100, 101) and event.id in self._pending:
                        slot = self._pending[event.id]
                        slot[1] = event
                        slot[0].set()
                await self._flush()
        except (GuestError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed = str(exc)
        finally:
            for slot in self._pending.values():
                slot[0].set()
            self._connected.set()

    async def _flush(self) -> None:
        async with self._lock:
            out = self.parser.output()
            if out:
                await self.stream.send_all(out)

    async def wait_device(self) -> None:
        await self._connected.wait()
        if self._closed is not None:
            raise GuestError("serve-usb", self._closed)

    async def request(self, msg_type: int, fields: dict[str, Any], data: bytes = b"") -> Any:
        msg_id = next(self._ids)
        slot: list[Any] = [trio.Event(), None]
        self._pending[msg_id] = slot
        try:
            async with self._lock:
                self.parser.send(msg_type, msg_id, fields, data)
                await self.stream.send_all(self.parser.output())
            await slot[0].wait()
            if slot[1] is None:
                raise GuestError("serve-usb", self._closed or "connection closed")
            return slot[1]
        finally:
            del self._pending[msg_id]

    async def set_configuration(self, value: int) -> None:
        await self.request(6, {"configuration": value})

    async def control(
        self, requesttype: int, request: int, value: int, index: int, length: int, data: bytes = b""
    ) -> tuple[int, bytes]:
        fields = {
            "endpoint": requesttype & 0x80,
            "request": request,
            "requesttype": requesttype,
            "status": 0,
            "value": value,
            "index": index,
            "length": length if requesttype & 0x80 else len(data),
        }
        reply = await self.request(100, fields, data)
        return reply.fields["status"], reply.data

    async def bulk(self, endpoint: int, length: int = 0, data: bytes = b"") -> tuple[int, bytes | int]:
        fields = {"endpoint": endpoint, "status": 0, "length": length if endpoint & 0x80 else len(data), "stream_id": 0}
        reply = await self.request(101, fields, data)
        if endpoint & 0x80:
            return reply.fields["status"], reply.data
        return reply.fields["status"], reply.fields["length"]


def reference_available() -> str | None:
    """None when the reference parser loads, else why not."""
    try:
        from tests.support.refparser import load_library

        load_library()
    except (ImportError, OSError, AttributeError) as exc:
        return f"libusbredirparser not usable: {exc}"
    return None


# ------------------------------------------------------- parts 2 and 3
@dataclass
class SocketPlan:
    ctrl_count: int
    bulk_bytes: int


async def _ctrl_latencies(vm: VmSide, count: int) -> list[float]:
    for _ in range(min(100, count)):  # warm-up
        await vm.control(0x80, GET_DESCRIPTOR, DEVICE_DESCRIPTOR, 0, 18)
    lat = []
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        status, data = await vm.control(0x80, GET_DESCRIPTOR, DEVICE_DESCRIPTOR, 0, 18)
        lat.append(clock() - start)
        if status != 0 or len(data) != 18:
            raise GuestError("serve-usb", f"GET_DESCRIPTOR failed: status {status}, {len(data)} bytes")
    return sorted(lat)


async def _bulk_seconds(vm: VmSide, endpoint: int, size: int, total: int, depth: int) -> float:
    count = max(depth, total // size)
    left = count
    payload = bytes(size)

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if endpoint & 0x80:
                status, got = await vm.bulk(endpoint, size)
                moved = len(got)  # type: ignore[arg-type]  # IN: the payload
            else:
                status, got = await vm.bulk(endpoint, data=payload)
                moved = int(got)  # type: ignore[arg-type]  # OUT: the count written
            if status != 0 or moved != size:
                raise GuestError("serve-usb", f"bulk {endpoint:#04x}: status {status}, {moved} of {size} bytes")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(depth):
            nursery.start_soon(worker)
    return time.perf_counter() - start


async def _measure_session(vm: VmSide, plan: SocketPlan, host_pid: int, into: dict[str, list[float]]) -> None:
    """One run of every socket figure on a connected, configured VM side."""

    def put(key: str, value: float) -> None:
        into.setdefault(key, []).append(value)

    cpu_host, cpu_vm = process_cpu_s(host_pid), time.process_time()
    lat = await _ctrl_latencies(vm, plan.ctrl_count)
    put("host_cpu_ctrl", (process_cpu_s(host_pid) - cpu_host) / plan.ctrl_count * 1e6)
    put("vm_cpu_ctrl", (time.process_time() - cpu_vm) / plan.ctrl_count * 1e6)
    put("ctrl_p50", lat[len(lat) // 2] * 1e6)
    put("ctrl_p99", lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6)
    for direction, endpoint, mode in (("OUT", BULK_OUT, LoopbackMode.SINK), ("IN", BULK_IN, LoopbackMode.SOURCE)):
        status, _ = await vm.control(0x40, VENDOR_SET_MODE, int(mode), 0, 0)
        if status != 0:
            raise GuestError("serve-usb", f"SET_MODE {mode.name} failed: status {status}")
        for kib in SIZES_KIB:
            for depth in DEPTHS:
                cpu_host, cpu_vm = process_cpu_s(host_pid), time.process_time()
                seconds = await _bulk_seconds(vm, endpoint, kib * 1024, plan.bulk_bytes, depth)
                n = max(depth, plan.bulk_bytes // (kib * 1024))
                put(f"bulk_{direction}_{kib}_{depth}", n * kib * 1024 / 1e6 / seconds)
                if depth == 1 and kib == 64:
                    put(f"host_cpu_{direction}", (process_cpu_s(host_pid) - cpu_host) / n * 1e6)
                    put(f"vm_cpu_{direction}", (time.process_time() - cpu_vm) / n * 1e6)


def _only_guest_errors(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(GuestError)[1] is None
    return isinstance(exc, GuestError)


async def _with_retry(connect: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
    """serve-usb serves one VM at a time and frees the device a moment after
    the previous connection closed: a connection it drops before the device
    was announced is retried.  `connect` calls its argument once announced."""
    deadline = trio.current_time() + CONNECT_TIMEOUT_S
    announced = False

    def mark() -> None:
        nonlocal announced
        announced = True

    while True:
        try:
            return await connect(mark)
        except Exception as exc:
            if announced or not _only_guest_errors(exc) or trio.current_time() > deadline:
                raise
            await trio.sleep(0.05)


async def run_ours(port: int, plan: SocketPlan, host_pid: int, into: dict[str, list[float]]) -> None:
    async def connect(announced: Callable[[], None]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, UsbredirGuest(stream, peer=f"127.0.0.1:{port}", version="redirgate bench") as vm:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await vm.wait_device()
            announced()
            await vm.set_configuration(1)
            with trio.fail_after(600):
                await _measure_session(vm, plan, host_pid, into)

    await _with_retry(connect)


async def run_reference(port: int, plan: SocketPlan, host_pid: int, into: dict[str, list[float]]) -> None:
    async def connect(announced: Callable[[], None]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        vm = RefVm(stream)
        try:
            async with stream, trio.open_nursery() as nursery:
                await nursery.start(vm.run)
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    await vm.wait_device()
                announced()
                await vm.set_configuration(1)
                with trio.fail_after(600):
                    await _measure_session(vm, plan, host_pid, into)
                nursery.cancel_scope.cancel()
        finally:
            vm.parser.close()

    await _with_retry(connect)


def socket_figures(
    runs: int, plan: SocketPlan, workdir: Path, *, reference: bool = True
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Parts 2-4 against one `serve-usb virtual:loopback` process: (ours, reference)."""
    ours: dict[str, list[float]] = {}
    ref: dict[str, list[float]] = {}
    argv = ["client", "serve-usb", "--listen", "127.0.0.1:0", "virtual:loopback"]
    with running(argv, workdir / "serve-usb-loopback.log") as service:
        pid = service.process.pid
        for _ in range(runs):  # interleaved, so drift hits both sides alike
            trio.run(run_ours, service.port, plan, pid, ours)
            if reference:
                trio.run(run_reference, service.port, plan, pid, ref)
    return ours, ref


def socket_rows(ours: dict[str, list[float]], ref: dict[str, list[float]]) -> list[Row]:
    rows = [
        Row("control GET_DESCRIPTOR(device) round trip p50, µs", ours["ctrl_p50"], ref.get("ctrl_p50", []), 0),
        Row("control GET_DESCRIPTOR(device) round trip p99, µs", ours["ctrl_p99"], ref.get("ctrl_p99", []), 0),
    ]
    for direction, mode in (("OUT", "sink"), ("IN", "source")):
        for kib in SIZES_KIB:
            for depth in DEPTHS:
                key = f"bulk_{direction}_{kib}_{depth}"
                rows.append(
                    Row(f"bulk {direction} ({mode}) {kib} KiB, {depth} in flight, MB/s", ours[key], ref.get(key, []))
                )
    rows += [
        Row("VM-side CPU per control transfer, µs", ours["vm_cpu_ctrl"], ref.get("vm_cpu_ctrl", []), 0),
        Row("serve-usb CPU per control transfer, µs", ours["host_cpu_ctrl"], ref.get("host_cpu_ctrl", []), 0),
    ]
    for direction in ("OUT", "IN"):
        rows += [
            Row(
                f"VM-side CPU per 64 KiB bulk {direction}, µs",
                ours[f"vm_cpu_{direction}"],
                ref.get(f"vm_cpu_{direction}", []),
                0,
            ),
            Row(
                f"serve-usb CPU per 64 KiB bulk {direction}, µs",
                ours[f"host_cpu_{direction}"],
                ref.get(f"host_cpu_{direction}", []),
                0,
            ),
        ]
    return rows


# ------------------------------------------------------------- part 1
#: One boot, several USB disks on one xHCI, each found by the root port it is
#: on (its USB device's sysfs `devpath`), measured interleaved run by run in
#: the order of @ROLES@.  bench/guest_dd.py runs it with a third disk.
GUEST_SCRIPT = r"""
now() { echo | ts '%.s' | cut -d' ' -f1; }
wait_for_usb 1209 0001 90 >/dev/null || fail "the redirected stick never appeared"
for d in @BLOCKS@; do wait_for_block $d 60 >/dev/null || fail "no $d"; done
for d in @BLOCKS@; do
    p=$(readlink -f /sys/block/$d/device)
    while [ "$p" != / ] && [ ! -f "$p/speed" ]; do p=$(dirname "$p"); done
    [ -f "$p/devpath" ] || fail "$d is not a USB disk"
    for pr in @PORTS@; do
        [ "${pr%%=*}" = "$(cat $p/devpath)" ] && eval "${pr#*=}=$d; ${pr#*=}_usb=$p"
    done
done
for role in @ROLES@; do
    eval dev=\$$role; eval p=\$${role}_usb
    [ -n "$dev" ] || fail "no disk on the $role port"
    report $role.vendor "$(cat /sys/block/$dev/device/vendor)"
    report $role.speed "$(cat $p/speed)"
    report $role.default_max_kb "$(cat /sys/block/$dev/queue/max_sectors_kb)"
    report $role.cache "$(cat /sys/block/$dev/device/scsi_disk/*/cache_type 2>/dev/null)"
    echo @MAXKB@ > /sys/block/$dev/queue/max_sectors_kb
done
i=1
while [ $i -le @RUNS@ ]; do
    for role in @ROLES@; do
        eval dev=\$$role
        sync; echo 3 > /proc/sys/vm/drop_caches
        t0=$(now); dd if=/dev/$dev of=/dev/null bs=1M count=@MIB@ iflag=direct 2>/dev/null; t1=$(now)
        report read.$role.$i "$t0 $t1"
        t0=$(now); dd if=/dev/zero of=/dev/$dev bs=1M count=@MIB@ oflag=direct conv=fsync 2>/dev/null; t1=$(now)
        report write.$role.$i "$t0 $t1"
    done
    i=$((i + 1))
done
"""
MAX_KB = 120  # usb-storage's max_sectors for a high-speed device (240 sectors)


@dataclass(frozen=True)
class GuestDisk:
    """One disk of the boot: its role (the key it is reported under), the
    qemu-xhci root port it sits on, and the QEMU arguments that attach it."""

    role: str
    port: int
    qemu_args: tuple[str, ...]


def redirected_disk(role: str, port: int, chardev_port: int) -> GuestDisk:
    """A usb-redir on xHCI `port` whose chardev dials 127.0.0.1:`chardev_port`."""
    from tests.support.controllers import BUS

    return GuestDisk(
        role,
        port,
        (
            "-chardev",
            f"socket,id={role}0,host=127.0.0.1,port={chardev_port},reconnect=1",
            "-device",
            f"usb-redir,chardev={role}0,bus={BUS['xhci']},port={port}",
        ),
    )


def native_disk(role: str, port: int, image: Path) -> GuestDisk:
    """QEMU's own usb-storage on `image` (cache=unsafe: like serve-usb, no host fsync)."""
    from tests.support.controllers import BUS

    return GuestDisk(
        role,
        port,
        (
            "-drive",
            f"if=none,id={role},file={image},format=raw,cache=unsafe",
            "-device",
            f"usb-storage,bus={BUS['xhci']},drive={role},port={port}",
        ),
    )


def write_image(path: Path, image_mib: int) -> None:
    """A raw image of `image_mib` MiB, not zeros: no sparse-file shortcut."""
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(path, "wb") as f:
        for _ in range(image_mib):
            f.write(block)


@dataclass
class GuestDd:
    """What one boot measured: MB/s per run by operation and role, and what the guest reported."""

    rates: dict[str, dict[str, list[float]]]  # "read"/"write" -> role -> MB/s per run
    reported: dict[str, str]
    script_start_s: float
    wall_s: float


def guest_dd(runs: int, transfer_mib: int, disks: list[GuestDisk]) -> GuestDd:
    """Boot the guest with `disks` on qemu-xhci and time `runs` rounds of O_DIRECT dd on each.

    RuntimeError when the guest script fails (its reason and the console's end)."""
    from tests.support.controllers import CONTROLLERS
    from tests.support.guest import build_guest
    from tests.support.qemu import run_guest

    roles = " ".join(d.role for d in disks)
    script = (
        GUEST_SCRIPT.replace("@RUNS@", str(runs))
        .replace("@MIB@", str(transfer_mib))
        .replace("@MAXKB@", str(MAX_KB))
        .replace("@ROLES@", roles)
        .replace("@BLOCKS@", " ".join(f"sd{chr(ord('a') + i)}" for i in range(len(disks))))
        .replace("@PORTS@", " ".join(f"{d.port}={d.role}" for d in disks))
    )
    timeout_s = 120.0 + runs * 2 * len(disks) * transfer_mib / 5.0  # boot + a floor of 5 MB/s
    qemu_args = [*CONTROLLERS["xhci"], *(arg for d in disks for arg in d.qemu_args)]
    result = run_guest(script, qemu_args, timeout_s, guest=build_guest())
    if result.rc != 0:
        reason = result.results.get("fail", "no reason reported")
        raise RuntimeError(f"guest script failed: {reason}\n{result.console[-2000:]}")
    res = result.results
    nbytes = transfer_mib * 1024 * 1024
    rates: dict[str, dict[str, list[float]]] = {}
    for op in ("read", "write"):
        for d in disks:
            out = rates.setdefault(op, {}).setdefault(d.role, [])
            for i in range(1, runs + 1):
                t0, t1 = (float(x) for x in res[f"{op}.{d.role}.{i}"].split())
                out.append(nbytes / 1e6 / (t1 - t0))
    return GuestDd(rates, res, result.script_start_s or 0.0, result.wall_s)


@dataclass
class GuestOutcome:
    rows: list[Row]
    notes: list[str]


def guest_figures(runs: int, image_mib: int, transfer_mib: int, workdir: Path) -> GuestOutcome:
    from tests.support.guest import find_kernel

    redir_img, native_img = workdir / "redir.img", workdir / "native.img"
    write_image(redir_img, image_mib)
    shutil.copyfile(redir_img, native_img)
    argv = ["client", "serve-usb", "--listen", "127.0.0.1:0", f"virtual:storage:{redir_img}"]
    with running(argv, workdir / "serve-usb-storage.log") as service:
        disks = [redirected_disk("redir", 1, service.port), native_disk("native", 2, native_img)]
        cpu0 = process_cpu_s(service.process.pid)
        dd = guest_dd(runs, transfer_mib, disks)
        host_cpu = process_cpu_s(service.process.pid) - cpu0
    res, nbytes = dd.reported, transfer_mib * 1024 * 1024
    redir_s = sum(nbytes / 1e6 / r for op in ("read", "write") for r in dd.rates[op]["redir"])
    rows = [
        Row(
            f"guest dd read {transfer_mib} MiB O_DIRECT bs=1M, MB/s",
            dd.rates["read"]["redir"],
            dd.rates["read"]["native"],
        ),
        Row(
            f"guest dd write {transfer_mib} MiB O_DIRECT+fsync, MB/s",
            dd.rates["write"]["redir"],
            dd.rates["write"]["native"],
        ),
    ]
    notes = [
        f"kernel {find_kernel()[0]}, QEMU TCG 1 vCPU, qemu-xhci; {runs} runs, disks interleaved in one boot "
        f"(boot to script {dd.script_start_s:.1f} s, whole VM {dd.wall_s:.1f} s)",
        f"redirgate: usb-redir -> serve-usb process, virtual:storage on a {image_mib} MiB raw image; "
        f"speed {res['redir.speed']} Mb/s, write cache '{res['redir.cache']}'",
        f"reference: QEMU usb-storage on an identical copy (cache=unsafe: like serve-usb, no host fsync); "
        f"speed {res['native.speed']} Mb/s, write cache '{res['native.cache']}', "
        f"its own default request {res['native.default_max_kb']} KiB",
        f"both disks limited to {MAX_KB} KiB requests (max_sectors_kb); timed in the guest with busybox ts",
        f"serve-usb CPU for the whole VM session: {host_cpu:.2f} s "
        f"({host_cpu / redir_s * 100:.0f}% of the {redir_s:.1f} s the redirected dd runs took)",
    ]
    return GuestOutcome(rows, notes)


# --------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller sizes (under ~2 minutes)")
    parser.add_argument("--runs", type=int, help="runs of the socket figures (default 5, quick 2)")
    parser.add_argument("--guest-runs", type=int, help="dd runs per disk and direction (default 3, quick 2)")
    parser.add_argument("--no-guest", action="store_true", help="skip part 1 (no QEMU)")
    parser.add_argument("--no-reference", action="store_true", help="skip the libusbredirparser VM side")
    parser.add_argument(
        "--bulk-mib",
        type=int,
        help="MiB moved per bulk figure per run (default 16, quick 4); more gives the "
        "CPU-per-transfer rows a finer grain (CPU time is counted in clock ticks)",
    )
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    guest_runs = args.guest_runs or (2 if args.quick else 3)
    bulk_mib = args.bulk_mib or (4 if args.quick else 16)
    plan = SocketPlan(ctrl_count=500 if args.quick else 2000, bulk_bytes=bulk_mib << 20)
    image_mib, transfer_mib = (32, 32) if args.quick else (128, 128)

    print(
        f"redirgate USB path benchmark; Python {sys.version.split()[0]}, trio {trio.__version__}, "
        f"{os.cpu_count()} CPUs; medians [min–max]; ratio = redirgate ÷ reference"
    )
    workdir = Path(tempfile.mkdtemp(prefix="redirgate-bench-"))
    try:
        if args.no_guest:
            print("\n1. real guest: skipped (--no-guest)")
        else:
            from tests.support.guest import guest_unavailable_reason

            why = guest_unavailable_reason()
            if why is not None:
                print(f"\n1. real guest: skipped ({why})")
            else:
                try:
                    outcome = guest_figures(guest_runs, image_mib, transfer_mib, workdir)
                except (RuntimeError, OSError) as exc:
                    print(f"\n1. real guest: failed: {exc}")
                else:
                    print_table(
                        "1. real guest: redirected stick vs QEMU's own usb-storage", "QEMU usb-storage", outcome.rows
                    )
                    for note in outcome.notes:
                        print(f"   {note}")
        why_ref = "--no-reference" if args.no_reference else reference_available()
        ours, ref = socket_figures(runs, plan, workdir, reference=why_ref is None)
        print_table(
            "2-4. serve-usb virtual:loopback over loopback TCP, VM side in this process",
            "libusbredirparser VM",
            socket_rows(ours, ref),
        )
        print(
            f"   {runs} runs; {plan.ctrl_count} control transfers and {plan.bulk_bytes >> 20} MiB per bulk "
            "figure per run; VM side: redirgate UsbredirGuest vs libusbredirparser through ctypes "
            "(a floor for C: ctypes copies and callbacks), same serve-usb process"
        )
        if why_ref is not None:
            print(f"   reference VM side skipped: {why_ref}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
