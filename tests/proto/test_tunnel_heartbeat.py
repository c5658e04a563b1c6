"""HeartbeatTracker: the timing rules, with time passed in by the test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redirgate.proto.tunnel import HeartbeatTracker, LocalProtocolError


def test_due_and_expired_over_time():
    t = HeartbeatTracker(interval_s=10, timeout_s=30, now=100.0)
    assert not t.due(100.0) and not t.due(109.999)
    assert t.due(110.0)
    assert t.on_sent(110.0) == 0
    assert not t.due(119.0) and t.due(120.0)
    assert t.on_sent(120.5) == 1
    assert not t.expired(129.999)
    assert t.expired(130.0)  # nothing received since 100
    t.on_received(125.0)
    assert not t.expired(154.9) and t.expired(155.0)
    assert t.next_deadline() == min(130.5, 155.0)


def test_acks_count_as_life_and_time_the_round_trip():
    t = HeartbeatTracker(1.0, 3.0, now=0.0)
    seq = t.on_sent(1.0)
    assert t.on_ack(seq, 1.25) == 0.25 and t.rtt_s == 0.25
    assert t.last_received == 1.25
    assert t.on_ack(seq, 1.5) is None  # timed once
    old = t.on_sent(2.0)
    t.on_sent(3.0)
    assert t.on_ack(old, 3.1) is None  # only the newest is timed


def test_a_clock_stepping_back_is_standing_still():
    t = HeartbeatTracker(5, 20, now=50.0)
    t.on_received(40.0)
    t.on_sent(45.0)
    assert t.last_received == 50.0 and t.last_sent == 50.0
    assert not t.due(30.0) and not t.expired(30.0)


@pytest.mark.parametrize(
    "interval, timeout, now",
    [
        (0, 10, 0),
        (10, 10, 0),
        (20, 10, 0),
        (-1, 10, 0),
        (float("nan"), 10, 0),
        (1, float("inf"), 0),
        (1, 2, float("nan")),
        ("1", 2, 0),
    ],
)
def test_bad_settings_are_refused(interval, timeout, now):
    with pytest.raises(LocalProtocolError):
        HeartbeatTracker(interval, timeout, now)


@given(
    st.floats(0.01, 100),
    st.floats(0.01, 100),
    st.lists(st.tuples(st.sampled_from(["recv", "send", "tick"]), st.floats(0, 50)), max_size=30),
)
def test_the_deadline_is_exactly_when_something_turns_due(interval, extra, steps):
    t = HeartbeatTracker(interval, interval + extra, now=0.0)
    now = 0.0
    for action, gap in steps:
        now += gap
        if action == "recv":
            t.on_received(now)
        elif action == "send":
            t.on_sent(now)
        deadline = t.next_deadline()
        if deadline > now:
            # nothing is due before the deadline, something is at it
            assert not t.due(now) and not t.expired(now)
        assert t.due(deadline) or t.expired(deadline)


def test_skip_moves_the_next_heartbeat_and_uses_no_seq() -> None:
    tracker = HeartbeatTracker(10.0, 30.0, 0.0)
    assert not tracker.heard_since_sent()
    tracker.on_received(4.0)
    assert tracker.heard_since_sent() and tracker.due(10.0)
    tracker.skip(10.0)
    assert not tracker.heard_since_sent() and not tracker.due(19.9) and tracker.due(20.0)
    assert tracker.on_sent(20.0) == 0  # the skipped one used no seq
    assert tracker.next_deadline() == min(30.0, 4.0 + 30.0)
