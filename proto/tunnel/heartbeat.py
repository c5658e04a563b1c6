"""Heartbeat timing for one end of a control connection, sans-IO.

`HeartbeatTracker` answers "should I send a heartbeat now?" and "has the peer
gone silent too long?" from the times the caller passes in (any monotonic
clock in seconds, e.g. `trio.current_time()`); it never reads a clock or
sleeps.  Any message from the peer counts as a sign of life, not only acks.

    tracker = HeartbeatTracker(hello.heartbeat_interval_s, hello.heartbeat_timeout_s, now)
    ...on every received message: tracker.on_received(now)
    ...when woken: if tracker.expired(now): close; if tracker.due(now):
                   send(Heartbeat(tracker.on_sent(now)))
    ...sleep until tracker.next_deadline()

A clock that steps backwards is treated as standing still.  `due` and
`expired` compare against the same sums `next_deadline` returns, so a caller
that sleeps until the deadline always finds something to do (no float drift).
"""

from __future__ import annotations

import math

from redirgate.proto.tunnel.errors import LocalProtocolError

__all__ = ["HeartbeatTracker"]


class HeartbeatTracker:
    """When to send heartbeats and when the peer counts as gone."""

    def __init__(self, interval_s: float, timeout_s: float, now: float, *, first_seq: int = 0) -> None:
        for name, value in (("interval_s", interval_s), ("timeout_s", timeout_s), ("now", now)):
            if type(value) not in (int, float) or not math.isfinite(value):
                raise LocalProtocolError(f"HeartbeatTracker {name}={value!r} is not a finite number")
        if not 0 < interval_s < timeout_s:
            raise LocalProtocolError(
                f"HeartbeatTracker needs 0 < interval_s < timeout_s (got {interval_s}, {timeout_s})"
            )
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.last_received = float(now)
        self.last_sent = float(now)
        self.next_seq = first_seq
        self._sent_at: dict[int, float] = {}
        #: round-trip time of the latest acked heartbeat, seconds
        self.rtt_s: float | None = None

    def on_received(self, now: float) -> None:
        """Any message arrived from the peer at `now`."""
        self.last_received = max(self.last_received, now)

    def on_sent(self, now: float) -> int:
        """We are sending a heartbeat at `now`: returns its seq."""
        seq = self.next_seq
        self.next_seq += 1
        self.last_sent = max(self.last_sent, now)
        self._sent_at = {seq: self.last_sent}  # only the newest is timed
        return seq

    def heard_since_sent(self) -> bool:
        """Something came from the peer after our last heartbeat (or skip): it is alive."""
        return self.last_received > self.last_sent

    def skip(self, now: float) -> None:
        """We chose not to send the heartbeat due now (the peer spoke meanwhile,
        so it knows we are alive by our answers): the next one is due an
        interval later, and no seq is used."""
        self.last_sent = max(self.last_sent, now)

    def on_ack(self, seq: int, now: float) -> float | None:
        """A `HeartbeatAck(seq)` arrived: counts as received; returns the
        round-trip time if it answers our newest heartbeat."""
        self.on_received(now)
        sent = self._sent_at.pop(seq, None)
        if sent is None:
            return None
        self.rtt_s = max(0.0, now - sent)
        return self.rtt_s

    def due(self, now: float) -> bool:
        """A heartbeat should be sent now."""
        return now >= self.last_sent + self.interval_s

    def expired(self, now: float) -> bool:
        """Nothing has come from the peer for the whole timeout."""
        return now >= self.last_received + self.timeout_s

    def next_deadline(self) -> float:
        """The earliest time at which `due` or `expired` can turn true."""
        return min(self.last_sent + self.interval_s, self.last_received + self.timeout_s)
