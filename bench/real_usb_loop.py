"""The loopback round trips of bench/real_usb.py: a usb_f_ss_lb Loopback gadget, bulk OUT then IN.

The thin client's second UDC carries a Loopback gadget (4 KiB requests,
32 queued: 128 KiB in flight, so a 64 KiB write completes before it is read
back).  Per server and run the VM side runs a small pyusb loop (this
checkout's venv over virtio-9p): write N bytes to bulk OUT, read N bytes
back from bulk IN, timed with the VM side's clock, for N = 4 KiB and 64 KiB;
a few unmeasured rounds first.  The figure is the median round trip of the
run, in ms.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["LOOP", "SIZES", "loop_gadget", "loop_one"]

LOOP = (0x1209, 0x7102)
#: (bytes per round trip, timed rounds)
SIZES = ((4096, 40), (65536, 15))
WARMUP = 3

VM_SCRIPT = r"""
import statistics, sys, time
import usb.core, usb.util

dev = usb.core.find(idVendor=0x{vid:04x}, idProduct=0x{pid:04x})
intf = dev.get_active_configuration()[(0, 0)]
usb.util.claim_interface(dev, intf)
out = usb.util.find_descriptor(intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_OUT)
inp = usb.util.find_descriptor(intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN)
for size, rounds in {sizes}:
    data = bytes(range(256)) * (size // 256)
    times = []
    for i in range({warmup} + rounds):
        t0 = time.perf_counter()
        out.write(data, timeout=120000)
        got = inp.read(size, timeout=120000)
        t1 = time.perf_counter()
        if bytes(got) != data:
            sys.exit(f"{{size}} B came back changed ({{len(got)}} B)")
        if i >= {warmup}:
            times.append(t1 - t0)
    print("loop", size, statistics.median(times) * 1000, flush=True)
"""


def loop_gadget() -> Any:
    """The Loopback gadget on the thin client's second UDC."""
    from tests.support.thinclient import UDCS, Gadget, loopback

    return Gadget("benchloop", *LOOP, "bench loopback", [loopback(buflen=4096, qlen=32)], serial="loop-1", udc=UDCS[1])


def loop_one(thin: Any, vm: Any, tunnels: Any, role: str, share: Path, log_path: Path) -> dict[str, float]:
    """`role` exporting the loopback gadget: the median 4 KiB and 64 KiB round trips (ms) in the VM side."""
    from bench.real_usb_serve import served
    from tests.support.thinclient import wait_usb_gone_script, wait_usb_script

    script = vm.guest.share_dir("loop") / "loop.py"
    script.write_text(VM_SCRIPT.format(vid=LOOP[0], pid=LOOP[1], sizes=SIZES, warmup=WARMUP))
    with served(thin, vm, tunnels, role, LOOP, log_path):
        vm.run(wait_usb_script(*LOOP), 600)
        result = vm.guest.run(f"{sys.executable} {script}", 600, check=False)
    vm.run(wait_usb_gone_script(*LOOP), 120)
    if result.rc != 0:
        raise RuntimeError(f"{role}: the loopback loop failed ({result.rc}): {result.stderr[-500:]}")
    return loop_figures(result.stdout)


def loop_figures(stdout: str) -> dict[str, float]:
    """The VM script's `loop SIZE MS` lines: {"lb4k": ms, "lb64k": ms}."""
    figures: dict[str, float] = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "loop":
            figures["lb4k" if words[1] == "4096" else "lb64k"] = float(words[2])
    return figures
