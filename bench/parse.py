"""Cost of the usbredir parser on the hot path (issue: foundation).

Prints, for our `UsbredirConnection` in the host role:
  * parse throughput for a stream of 16 KiB bulk OUT packets (MB/s of payload),
  * messages/s for small control packets,
  * bytes allocated per message in steady state (tracemalloc),
each as the median of several runs with the spread, and, when Debian's
libusbredirparser is installed, the same stream parsed by the reference
through ctypes for scale (ctypes callbacks make that figure a floor for C).
Also the CPU of one control round trip through the whole host path in one
process (`engine_control_cpu_us`): a `HostEngine` (parser, host state,
outbox) over a trio memory stream, an emulated loopback device, a guest
`UsbredirConnection` sending GET_DESCRIPTOR requests one at a time; what
the host state and its adapter cost per transfer shows here first.

    python bench/parse.py [--runs 5] [--megabytes 256]

Also runs under ``python -m bench`` through :func:`run` / :func:`table` /
:func:`charts` (the same measurements).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio
import trio.testing

from redirgate.proto.usbredir import NEED_DATA, Cap, Role, UsbredirConnection
from redirgate.proto.usbredir import messages as m

CHUNK = 256 * 1024  # what one recv_into would typically hand over


def _connected_host() -> tuple[UsbredirConnection, UsbredirConnection]:
    host = UsbredirConnection(Role.HOST, Cap.all_known())
    guest = UsbredirConnection(Role.GUEST, Cap.all_known())
    host.receive_data(guest.hello_bytes())
    guest.receive_data(host.hello_bytes())
    host.next_event()
    guest.next_event()
    return host, guest


def bulk_stream(guest: UsbredirConnection, count: int, size: int) -> bytes:
    payload = bytes(range(256)) * (size // 256)
    return b"".join(guest.send(m.BulkPacket(0x02, 0, size, 0, id=i, data=payload)) for i in range(count))


def control_stream(guest: UsbredirConnection, count: int) -> bytes:
    return b"".join(guest.send(m.ControlPacket(0x80, 6, 0x80, 0, 0x0100, 0, 18, id=i)) for i in range(count))


def parse_all(host: UsbredirConnection, wire: memoryview) -> int:
    events = 0
    for pos in range(0, len(wire), CHUNK):
        buf = host.get_receive_buffer(CHUNK)
        piece = wire[pos : pos + CHUNK]
        buf[: len(piece)] = piece
        host.commit_received(len(piece))
        while host.next_event() is not NEED_DATA:
            events += 1
    return events


def timed(runs: int, make_wire, repeat: int) -> list[float]:
    """Seconds per pass of `repeat` parses of the same wire, per run."""
    results = []
    for _ in range(runs):
        host, guest = _connected_host()
        wire = memoryview(make_wire(guest))
        start = time.perf_counter()
        for _ in range(repeat):
            parse_all(host, wire)
        results.append((time.perf_counter() - start) / repeat)
    return results


def allocation_churn_per_message(make_wire, count: int) -> float:
    """Bytes allocated (not retained) per message: sum of block sizes of all
    allocations made during a pass, via tracemalloc's peak with frequent resets."""
    host, guest = _connected_host()
    wire = memoryview(make_wire(guest))
    parse_all(host, wire)
    tracemalloc.start()
    tracemalloc.reset_peak()
    total = 0
    for pos in range(0, len(wire), CHUNK):
        buf = host.get_receive_buffer(CHUNK)
        piece = wire[pos : pos + CHUNK]
        buf[: len(piece)] = piece
        host.commit_received(len(piece))
        while True:
            tracemalloc.reset_peak()
            now = tracemalloc.get_traced_memory()[0]
            ev = host.next_event()
            total += tracemalloc.get_traced_memory()[1] - now
            if ev is NEED_DATA:
                break
            del ev
    tracemalloc.stop()
    return total / count


def reference_seconds(runs: int, make_wire, repeat: int) -> list[float] | None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from tests.support.refparser import RefParser
    except (ImportError, OSError):
        return None
    results = []
    for _ in range(runs):
        _, guest = _connected_host()
        wire = make_wire(guest)
        ref = RefParser("host", 0xFF, no_hello=False)
        peer = UsbredirConnection(Role.GUEST, Cap.all_known())
        ref.feed(peer.hello_bytes())
        start = time.perf_counter()
        for _ in range(repeat):
            for pos in range(0, len(wire), CHUNK):
                ref.feed(wire[pos : pos + CHUNK])
        results.append((time.perf_counter() - start) / repeat)
        ref.close()
    return results


def engine_control_cpu_us(count: int, rounds: int = 1) -> float:
    """Process CPU (µs) per GET_DESCRIPTOR round trip through an in-process
    `HostEngine` on an emulated loopback device, one request at a time (the
    guest's side, trio's scheduling and the memory stream included): the
    lowest of `rounds` rounds of `count` round trips, the round least
    disturbed by whatever else runs on the machine."""
    from redirgate.client.usb.engine import HostEngine
    from redirgate.client.usb.selector import parse_selector
    from redirgate.client.usb.source import SelectorSource
    from redirgate.client.virtual import LoopbackDevice, VirtualBackend

    backend = VirtualBackend([LoopbackDevice()])
    result: list[float] = []

    async def session() -> None:
        host_end, guest_end = trio.testing.memory_stream_pair()
        source = SelectorSource(parse_selector("virtual:any"), backend=backend, poll_interval_s=0.02)
        engine = HostEngine(host_end, source, peer="bench guest")
        guest = UsbredirConnection(Role.GUEST, Cap.all_known(), "bench guest")

        async def next_message() -> m.Message:
            while True:
                event = guest.next_event()
                if isinstance(event, m.Message):
                    return event
                guest.receive_data(await guest_end.receive_some(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await guest_end.send_all(guest.hello_bytes())
            with trio.fail_after(30):
                while not isinstance(await next_message(), m.DeviceConnect):
                    pass
                for warm in (True,) + (False,) * rounds:
                    start = time.process_time()
                    for i in range(count // 10 if warm else count):
                        await guest_end.send_all(guest.send(m.ControlPacket(0x80, 6, 0x80, 0, 0x0100, 0, 18, id=i)))
                        while not isinstance(reply := await next_message(), m.ControlPacket):
                            pass
                        if reply.status != 0 or reply.id != i:
                            raise RuntimeError(f"control request {i} answered {reply!r}")
                    if not warm:
                        result.append((time.process_time() - start) / count * 1e6)
            nursery.cancel_scope.cancel()

    try:
        trio.run(session)
    finally:
        backend.close()
    return min(result)


def spread(values: list[float]) -> str:
    return f"min {min(values):.1f} / max {max(values):.1f}"


def measure(
    runs: int, megabytes: int, ctrl_count: int = 100_000, churn_ctrl_count: int = 20_000, engine_count: int = 2_000
) -> dict[str, Any]:
    """Every figure of this benchmark, per run (JSON-ready)."""
    size = 16 * 1024
    bulk_count = megabytes * 1024 * 1024 // size

    def make_bulk(g):
        return bulk_stream(g, bulk_count, size)

    def make_ctrl(g):
        return control_stream(g, ctrl_count)

    bulk_mb = [bulk_count * size / 1e6 / s for s in timed(runs, make_bulk, 1)]
    ctrl_rate = [ctrl_count / s for s in timed(runs, make_ctrl, 1)]
    churn_bulk = allocation_churn_per_message(lambda g: bulk_stream(g, 2000, size), 2000)
    churn_ctrl = allocation_churn_per_message(lambda g: control_stream(g, churn_ctrl_count), churn_ctrl_count)
    ref_bulk = reference_seconds(runs, make_bulk, 1)
    ref_ctrl = reference_seconds(runs, make_ctrl, 1)
    engine_us = [engine_control_cpu_us(engine_count, rounds=5) for _ in range(runs)]
    return {
        "what": "usbredir parser, host role: 16 KiB bulk OUT stream and 64-byte control requests",
        "python": sys.version.split()[0],
        "runs": runs,
        "megabytes": megabytes,
        "control_messages": ctrl_count,
        "bulk_mb_s": bulk_mb,
        "control_msg_s": ctrl_rate,
        "ref_bulk_mb_s": [bulk_count * size / 1e6 / s for s in ref_bulk] if ref_bulk else None,
        "ref_control_msg_s": [ctrl_count / s for s in ref_ctrl] if ref_ctrl else None,
        "alloc_bytes_per_bulk_msg": churn_bulk,
        "alloc_bytes_per_control_msg": churn_ctrl,
        "engine_round_trips": engine_count,
        "engine_control_cpu_us": engine_us,
    }


def run(quick: bool) -> dict[str, Any]:
    """For ``python -m bench``: this script's defaults (5 runs of 64 MiB, 100 000 control
    messages, the engine's best of 5 rounds of 2 000 round trips), or quick: 3 runs of 16 MiB,
    25 000 (5 000 for the allocation count) and 5 rounds of 600."""
    if quick:
        return measure(3, 16, ctrl_count=25_000, churn_ctrl_count=5_000, engine_count=600)
    return measure(5, 64)


def table(result: dict[str, Any]) -> str:
    """The table this script has always printed, from a :func:`measure` result."""
    bulk_mb, ctrl_rate = result["bulk_mb_s"], result["control_msg_s"]
    ours_b = statistics.median(bulk_mb)
    ours_c = statistics.median(ctrl_rate)
    lines = [
        f"usbredir parser, host role, {result['runs']} runs each (median, min/max) of {result['megabytes']} MiB of "
        f"bulk and {result.get('control_messages', 100_000)} control messages; Python {result['python']}",
        f"{'measure':<44}{'redirgate':>16}{'reference (ctypes)':>22}{'ratio':>8}",
    ]
    if result["ref_bulk_mb_s"]:
        rb = statistics.median(result["ref_bulk_mb_s"])
        rc = statistics.median(result["ref_control_msg_s"])
        lines.append(f"{'16 KiB bulk OUT stream, MB/s of payload':<44}{ours_b:>16.0f}{rb:>22.0f}{ours_b / rb:>8.2f}")
        lines.append(f"{'64-byte control requests, messages/s':<44}{ours_c:>16.0f}{rc:>22.0f}{ours_c / rc:>8.2f}")
    else:
        lines.append(f"{'16 KiB bulk OUT stream, MB/s of payload':<44}{ours_b:>16.0f}{'(not installed)':>22}")
        lines.append(f"{'64-byte control requests, messages/s':<44}{ours_c:>16.0f}{'(not installed)':>22}")
    lines.append(f"  spread: bulk {spread(bulk_mb)} MB/s; control {spread(ctrl_rate)} msg/s")
    lines.append(f"{'bytes allocated per bulk message (transient)':<44}{result['alloc_bytes_per_bulk_msg']:>16.0f}")
    lines.append(f"{'bytes allocated per control message':<44}{result['alloc_bytes_per_control_msg']:>16.0f}")
    engine_us = result.get("engine_control_cpu_us")
    if engine_us:
        lines.append(
            f"{'HostEngine control round trip, CPU us':<44}{statistics.median(engine_us):>16.1f}"
            f"  ({spread(engine_us)}; best of 5 rounds of {result['engine_round_trips']} GET_DESCRIPTOR"
            " in one process, emulated loopback, guest side included)"
        )
    return "\n".join(lines)


def charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Parse rate, ours beside the reference (see bench/__main__.py for the shape)."""

    def cell(values: list[float] | None) -> list[float] | None:
        return [statistics.median(values), min(values), max(values)] if values else None

    note = f"{result['runs']} runs, median with min–max; reference = libusbredirparser through ctypes"
    return [
        {
            "id": "bulk",
            "title": "usbredir parse rate, 16 KiB bulk OUT packets",
            "unit": "MB/s",
            "note": note,
            "categories": ["redirgate", "libusbredirparser"],
            "series": [{"name": "MB/s", "values": [cell(result["bulk_mb_s"]), cell(result["ref_bulk_mb_s"])]}],
        },
        {
            "id": "control",
            "title": "usbredir parse rate, 64-byte control requests",
            "unit": "messages/s",
            "note": note,
            "categories": ["redirgate", "libusbredirparser"],
            "series": [{"name": "msg/s", "values": [cell(result["control_msg_s"]), cell(result["ref_control_msg_s"])]}],
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=64, help="bulk payload per pass")
    args = parser.parse_args()
    print(table(measure(args.runs, args.megabytes)))


if __name__ == "__main__":
    main()
