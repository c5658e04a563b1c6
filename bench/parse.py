"""Cost of the usbredir parser on the hot path (issue: foundation).

Prints, for our `UsbredirConnection` in the host role:
  * parse throughput for a stream of 16 KiB bulk OUT packets (MB/s of payload),
  * messages/s for small control packets,
  * bytes allocated per message in steady state (tracemalloc),
each as the median of several runs with the spread, and, when Debian's
libusbredirparser is installed, the same stream parsed by the reference
through ctypes for scale (ctypes callbacks make that figure a floor for C).

    python bench/parse.py [--runs 5] [--megabytes 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from redirgate.proto.usbredir import NEED_DATA, Cap, Role, UsbredirConnection, messages as m

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
    return b"".join(
        guest.send(m.ControlPacket(0x80, 6, 0x80, 0, 0x0100, 0, 18, id=i)) for i in range(count)
    )


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
    base = tracemalloc.get_traced_memory()[0]
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
        from tests.support.refparser import RefParser  # type: ignore[import-not-found]
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


def spread(values: list[float]) -> str:
    return f"min {min(values):.1f} / max {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=64, help="bulk payload per pass")
    args = parser.parse_args()

    size = 16 * 1024
    bulk_count = args.megabytes * 1024 * 1024 // size
    ctrl_count = 100_000

    def make_bulk(g):
        return bulk_stream(g, bulk_count, size)

    def make_ctrl(g):
        return control_stream(g, ctrl_count)

    bulk_mb = [bulk_count * size / 1e6 / s for s in timed(args.runs, make_bulk, 1)]
    ctrl_rate = [ctrl_count / s for s in timed(args.runs, make_ctrl, 1)]
    churn_bulk = allocation_churn_per_message(lambda g: bulk_stream(g, 2000, size), 2000)
    churn_ctrl = allocation_churn_per_message(lambda g: control_stream(g, 20000), 20000)

    print(f"usbredir parser, host role, {args.runs} runs each (median, min/max); Python {sys.version.split()[0]}")
    print(f"{'measure':<44}{'redirgate':>16}{'reference (ctypes)':>22}{'ratio':>8}")
    ref_bulk = reference_seconds(args.runs, make_bulk, 1)
    ref_ctrl = reference_seconds(args.runs, make_ctrl, 1)
    ours_b = statistics.median(bulk_mb)
    ours_c = statistics.median(ctrl_rate)
    if ref_bulk:
        rb = statistics.median([bulk_count * size / 1e6 / s for s in ref_bulk])
        rc = statistics.median([ctrl_count / s for s in ref_ctrl])
        print(f"{'16 KiB bulk OUT stream, MB/s of payload':<44}{ours_b:>16.0f}{rb:>22.0f}{ours_b / rb:>8.2f}")
        print(f"{'64-byte control requests, messages/s':<44}{ours_c:>16.0f}{rc:>22.0f}{ours_c / rc:>8.2f}")
    else:
        print(f"{'16 KiB bulk OUT stream, MB/s of payload':<44}{ours_b:>16.0f}{'(not installed)':>22}")
        print(f"{'64-byte control requests, messages/s':<44}{ours_c:>16.0f}{'(not installed)':>22}")
    print(f"  spread: bulk {spread(bulk_mb)} MB/s; control {spread(ctrl_rate)} msg/s")
    print(f"{'bytes allocated per bulk message (transient)':<44}{churn_bulk:>16.0f}")
    print(f"{'bytes allocated per control message':<44}{churn_ctrl:>16.0f}")


if __name__ == "__main__":
    main()
