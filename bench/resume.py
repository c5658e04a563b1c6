"""How long a USB channel is gone after the tunnel's TCP connection is reset (issue 16's baseline).

One emulated device (``virtual:loopback``) behind ``redirgate client run``,
the client dialling ``redirgate gateway run`` through the fault proxy of
the test suite (tests/support/fault_proxy.py, in this process), the VM side
our ``UsbredirGuest`` on the route's port.  Each round: the VM does a
GET_DESCRIPTOR, the proxy resets every tunnel connection (an RST both ways,
as a NAT or firewall dropping the flow), then

* **unplug**: time until the VM's connection fails (today the gateway
  closes QEMU's socket at once: the guest loses the device);
* **back**: time until a new VM connection (retried every 10 ms, as a
  ``reconnect`` chardev would, only faster) sees the device and a
  GET_DESCRIPTOR succeeds: the client redialled, re-announced its device
  and the gateway took the route again.

Issue 16's resume layer aims to make "unplug" never happen within the grace
period and "back" at most 1 s (p50) after the network returns; these are
today's figures to compare against.

    python bench/resume.py [--quick] [--runs N]

Every process started here is stopped by PID in a ``finally``; nothing is
asserted.  The proxy is the test suite's own (one fault proxy in the tree),
so this module imports ``tests.support``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself, where bench/serial.py would shadow pyserial
elif str(ROOT) not in sys.path:  # make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench import gateway_lab as gl
from bench.relay_setup import LOOPBACK, Processes, machine
from bench.report import emit, script_arguments
from bench.usb_path import _only_guest_errors
from redirgate.vmside.guest import GuestError, UsbredirGuest
from tests.support.fault_proxy import FaultProxy, fault_proxy

LOOPBACK_ID = "usb:1209:0003"
GET_DESCRIPTOR, DEVICE_DESCRIPTOR = 0x06, 0x0100
RETRY_S = 0.01
ROUND_TIMEOUT_S = 60.0


async def _descriptor_ok(vm: UsbredirGuest) -> None:
    status, data = await vm.control(0x80, GET_DESCRIPTOR, DEVICE_DESCRIPTOR, 0, 18)
    if status != 0 or len(data) != 18:
        raise GuestError("bench", f"GET_DESCRIPTOR failed: status {status}, {len(data)} bytes")


async def _working_session(port: int, body: Callable[[UsbredirGuest], Awaitable[None]]) -> None:
    """A VM connection that saw the device and did one GET_DESCRIPTOR, then
    `body`; a connection the gateway refuses or drops before that (the route
    not free again yet, the device not back yet) is retried every 10 ms."""
    while True:
        try:
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            async with stream, UsbredirGuest(stream, peer=f"{LOOPBACK}:{port}", version="redirgate bench") as vm:
                await vm.wait_device()
                await _descriptor_ok(vm)
                await body(vm)
                return
        except (OSError, trio.BrokenResourceError):
            pass  # refused or dropped: the gateway or the device is not back yet
        except Exception as exc:
            if not _only_guest_errors(exc):
                raise
        await trio.sleep(RETRY_S)


async def _one_round(port: int, proxy: FaultProxy) -> tuple[float, float]:
    """(seconds until the VM's connection failed, seconds until a new one works)."""
    t0 = unplug = 0.0

    async def reset_then_use(vm: UsbredirGuest) -> None:
        nonlocal t0, unplug
        proxy.reset()
        t0 = trio.current_time()
        try:
            while True:  # each transfer works (the break not seen yet) or fails
                await _descriptor_ok(vm)
        except (GuestError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            unplug = trio.current_time() - t0

    async def nothing(vm: UsbredirGuest) -> None:
        return None

    await _working_session(port, reset_then_use)
    await _working_session(port, nothing)
    return unplug, trio.current_time() - t0


async def _measure(workdir: Path, rounds: int) -> dict[str, Any]:
    from redirgate.cli.lab import LabRoute, write_client_config

    procs = Processes(workdir)
    lab = gl.write_lab(workdir / "lab", [LabRoute("loop", LOOPBACK_ID, client="thin")], {"thin": ["virtual:loopback"]})
    unplug: list[float] = []
    back: list[float] = []
    try:
        async with fault_proxy((LOOPBACK, lab.tunnel_port)) as proxy:
            # the client dials the proxy instead of the gateway
            write_client_config(lab.directory, proxy.port, name="thin", virtual=["virtual:loopback"])
            await trio.to_thread.run_sync(gl.start_gateway, procs, lab)
            client = gl.start_client(procs, lab, "thin")
            await trio.to_thread.run_sync(lambda: gl.wait_online(lab, {"thin": 1}, procs=[client]))
            for _ in range(rounds):
                with trio.fail_after(ROUND_TIMEOUT_S):
                    u, b = await _one_round(lab.routes["loop"], proxy)
                unplug.append(u)
                back.append(b)
            resets = proxy.resets
    finally:
        procs.stop_all()
    return {"unplug_s": unplug, "back_s": back, "resets": resets}


def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    rounds = runs or (5 if quick else 20)
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-resume-") as tmp:
        result = trio.run(_measure, Path(tmp), rounds)
    result.update(machine=machine(), quick=quick, rounds=rounds)
    return result


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Tunnel reset (RST both ways) with today's reconnect, virtual:loopback, {result['rounds']} rounds",
        f"{'':34}{'p50 ms':>10}{'p99 ms':>10}{'min ms':>10}{'max ms':>10}",
    ]
    for key, label in (("unplug_s", "VM connection fails after"), ("back_s", "device works again after")):
        values = result[key]
        if not values:
            lines.append(f"{label:34}{'missing':>10}")
            continue
        cells = [statistics.median(values), _pct(values, 0.99), min(values), max(values)]
        lines.append(f"{label:34}" + "".join(f"{v * 1e3:10.0f}" for v in cells))
    lines.append("(today every reset unplugs the device in the VM; issue 16's floor: no unplug, back <= 1 s p50)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = script_arguments(__doc__, "5 rounds instead of 20").parse_args(argv)
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
