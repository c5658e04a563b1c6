"""The byte ring the serial and parallel services share (client/ring.py)."""

from __future__ import annotations

from redirgate.client.ring import Ring


def test_ring_keeps_newest_and_counts_overflow() -> None:
    ring = Ring(8)
    assert ring.write(b"abcdef") == 0
    ring.consume(2)
    assert ring.write(b"ghijkl") == 2  # wraps around, drops "cd"
    assert ring.overflow_bytes == 2 and len(ring) == 8
    out = bytearray()
    while len(ring):
        chunk = ring.peek()
        out += chunk
        ring.consume(len(chunk))
    assert bytes(out) == b"efghijkl"
    assert ring.write(b"0123456789AB") == 4 and ring.overflow_bytes == 6
    assert bytes(ring.peek()) == b"456789AB"
