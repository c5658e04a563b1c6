"""The client's stream-drop counter: what `redirgate_iso_packets_dropped_total` reads."""

from __future__ import annotations

from redirgate.client.usb import outbox


def test_dropped_stream_packets_are_counted_iso_apart() -> None:
    box = outbox.Outbox(peer="test")
    before = dict(outbox.dropped_totals)
    header = bytes(16)
    # an iso stream with a tiny reference: past 3 x ref queued bytes it drops
    offered = [box.offer_stream(0x82, header, b"x" * 8, iso_ref=4) for _ in range(10)]
    assert offered[0] and not all(offered)
    dropped = offered.count(False)
    assert outbox.dropped_totals["iso"] - before["iso"] == dropped
    assert outbox.dropped_totals["other"] == before["other"]
