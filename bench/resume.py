"""How long a USB channel stalls when the tunnel's TCP connections break, with resumable channels (issue 16).

One emulated device (``virtual:loopback``) behind ``redirgate client run``,
the client dialling ``redirgate gateway run`` through the fault proxy of
the test suite (tests/support/fault_proxy.py, in this process), the VM side
our ``UsbredirGuest`` on the route's port, one VM connection for the whole
run.  Each round the proxy breaks every tunnel connection while the VM
keeps asking for the device descriptor, in one of two ways:

* **reset**: an RST both ways (a NAT or firewall dropping the flow); the
  network is back at once (the proxy accepts the client's redial);
* **outage**: the proxy stops forwarding, resets, and forwards again
  `OUTAGE_S` later (a middlebox restart, a Wi-Fi roam).

Measured from the moment the network is back (the reset; the end of the
outage) to the first GET_DESCRIPTOR answered again: the client noticed,
redialled, resumed with its credential, and both sides replayed what the
other had not received.  **unplugs** counts the rounds where the VM's
connection failed instead (the gateway closed it: the guest would lose the
device); with resume it should be 0.  Issue 16's floor: data flows again
<= 1 s (p50) after the network returns.

Then the gateway is **restarted** a few times by SIGUSR2 (issue 16 step
3: a new process takes the sockets and channels over) while the VM asks
for the descriptor back to back: measured are the time from the signal to
the new process serving (most of it the new process starting up, while the
old one still serves) and the longest gap between two answers the VM saw
meanwhile (the handover itself: the cut, the clients' redial and resume).

    python bench/resume.py [--quick] [--runs N]

Every process started here is stopped by PID in a ``finally``; nothing is
asserted.  The proxy is the test suite's own (one fault proxy in the tree),
so this module imports ``tests.support``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
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
#: how long the network is gone in an "outage" round
OUTAGE_S = 1.0


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


async def _one_round(vm: UsbredirGuest, proxy: FaultProxy, outage: bool) -> float | None:
    """Seconds from the network's return to the next answered GET_DESCRIPTOR; None: the VM's connection failed."""
    if outage:
        proxy.pause()
        proxy.reset()
        await trio.sleep(OUTAGE_S)  # the fault's own length
        proxy.resume()
    else:
        proxy.reset()
    back = trio.current_time()
    try:
        await _descriptor_ok(vm)
    except (GuestError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return None
    return trio.current_time() - back


async def _restart_round(vm: UsbredirGuest, lab: gl.Lab, successors: list[int]) -> tuple[float, float] | None:
    """(seconds from SIGUSR2 to the new process serving, the longest gap between two
    answers the VM saw meanwhile); None: the VM's connection failed."""
    old = (await trio.to_thread.run_sync(gl.status, lab) or {}).get("pid")
    if not isinstance(old, int):
        raise RuntimeError("the gateway does not say its pid")
    answers: list[float] = []
    failed = False
    serving = 0.0

    async def ask(cancel: trio.CancelScope) -> None:
        nonlocal failed
        try:
            while True:
                await _descriptor_ok(vm)
                answers.append(trio.current_time())
        except (GuestError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            failed = True
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, nursery.cancel_scope)
        signalled = trio.current_time()
        os.kill(old, signal.SIGUSR2)
        while True:
            now = await trio.to_thread.run_sync(gl.status, lab)
            if now is not None and now.get("pid") not in (None, old):
                serving = trio.current_time()
                successors.append(now["pid"])
                break
            await trio.sleep(0.02)
        while not answers or answers[-1] < serving:  # noqa: ASYNC110 -- the VM's answers, from another task
            await trio.sleep(0.005)
        nursery.cancel_scope.cancel()
    if failed:
        return None
    times = [signalled, *(t for t in answers if t >= signalled)]
    return serving - signalled, max(b - a for a, b in itertools.pairwise(times))


async def _measure(workdir: Path, rounds: int) -> dict[str, Any]:
    from redirgate.cli.lab import LabRoute, write_client_config

    procs = Processes(workdir)
    lab = gl.write_lab(workdir / "lab", [LabRoute("loop", LOOPBACK_ID, client="thin")], {"thin": ["virtual:loopback"]})
    back: dict[str, list[float]] = {"reset": [], "outage": []}
    unplugs = {"reset": 0, "outage": 0, "restart": 0}
    restarts: dict[str, list[float]] = {"serving": [], "gap": []}
    successors: list[int] = []
    try:
        async with fault_proxy((LOOPBACK, lab.tunnel_port)) as proxy:
            # the client dials the proxy instead of the gateway
            write_client_config(lab.directory, proxy.port, name="thin", virtual=["virtual:loopback"])
            await trio.to_thread.run_sync(gl.start_gateway, procs, lab)
            client = gl.start_client(procs, lab, "thin")
            await trio.to_thread.run_sync(lambda: gl.wait_online(lab, {"thin": 1}, procs=[client]))
            pending = ["outage" if i % 2 else "reset" for i in range(rounds)]

            async def rounds_on(vm: UsbredirGuest) -> None:
                while pending:
                    kind = pending.pop(0)
                    with trio.fail_after(ROUND_TIMEOUT_S):
                        seconds = await _one_round(vm, proxy, kind == "outage")
                    if seconds is None:
                        unplugs[kind] += 1
                        return  # the VM's connection failed: a new one for the next rounds
                    back[kind].append(seconds)

            while pending:
                await _working_session(lab.routes["loop"], rounds_on)
            resets = proxy.resets
            restarting = max(2, rounds // 4)

            async def restarts_on(vm: UsbredirGuest) -> None:
                nonlocal restarting
                while restarting:
                    restarting -= 1
                    with trio.fail_after(ROUND_TIMEOUT_S * 3):
                        measured = await _restart_round(vm, lab, successors)
                    if measured is None:
                        unplugs["restart"] += 1
                        return
                    restarts["serving"].append(measured[0])
                    restarts["gap"].append(measured[1])

            while restarting:
                await _working_session(lab.routes["loop"], restarts_on)
    finally:
        procs.stop_all()
        for pid in successors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return {"back_s": back, "unplugs": unplugs, "resets": resets, "outage_s": OUTAGE_S, "restarts": restarts}


def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    rounds = runs or (10 if quick else 40)
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-resume-") as tmp:
        result = trio.run(_measure, Path(tmp), rounds)
    result.update(machine=machine(), quick=quick, rounds=rounds)
    return result


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Tunnel connections broken {result['rounds']} times, resumable channels, virtual:loopback",
        f"{'first answer after the network is back':42}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'unplugs':>9}",
    ]
    labels = {"reset": "after a reset (RST both ways)", "outage": f"after a {result['outage_s']:g} s outage + reset"}
    for kind, label in labels.items():
        values = result["back_s"][kind]
        unplugs = result["unplugs"][kind]
        if not values:
            lines.append(f"{label:42}{'missing':>9}{'':>9}{'':>9}{unplugs:>9}")
            continue
        cells = [statistics.median(values), _pct(values, 0.99), max(values)]
        lines.append(f"{label:42}" + "".join(f"{v * 1e3:9.0f}" for v in cells) + f"{unplugs:>9}")
    restarts = result.get("restarts", {"serving": [], "gap": []})
    for key, label in (("serving", "SIGUSR2 -> the new process serves"), ("gap", "longest gap the VM saw meanwhile")):
        values = restarts[key]
        if values:
            cells = [statistics.median(values), _pct(values, 0.99), max(values)]
            unplugs = result["unplugs"].get("restart", 0) if key == "gap" else ""
            lines.append(f"{label:42}" + "".join(f"{v * 1e3:9.0f}" for v in cells) + f"{unplugs:>9}")
    lines.append(
        "(issue 16's floor: no unplug within the grace period, data again <= 1 s p50 after the network returns)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = script_arguments(__doc__, "10 rounds instead of 40").parse_args(argv)
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
