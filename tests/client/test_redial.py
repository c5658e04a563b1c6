"""The reconnect policy over several gateways (`client/redial.py`): what a client does after losing its node.

Pure bookkeeping, so each rule is checked step by step with a seeded
generator: a dead node's clients spread over the live nodes, a dead node in
the list costs no backoff while another is there, and a busy node's hint
is honoured at that node.  (The real client on real sockets:
tests/client/test_failover.py.)
"""

from __future__ import annotations

import collections
import random

from redirgate.client.redial import Next, Redial, reconnect_delay

NODES = ("a", "b", "c")
MIN_S, MAX_S = 0.5, 30.0


def redial(seed: int = 18) -> Redial[str]:
    return Redial(min_s=MIN_S, max_s=MAX_S, now=0.0, rng=random.Random(seed))


def lost(policy: Redial[str], node: str, now: float = 100.0) -> Next[str]:
    """A session on `node` that was up for a long time ends now."""
    return policy.after(NODES, node, now=now, lasted_s=100.0, was_up=True, hint=None)


def refused(policy: Redial[str], node: str, now: float = 100.0) -> Next[str]:
    return policy.after(NODES, node, now=now, lasted_s=0.001, was_up=False, hint=None)


def test_the_first_connection_goes_to_the_first_address() -> None:
    assert redial().first(NODES) == "a"


def test_a_dead_nodes_clients_spread_over_the_live_ones() -> None:
    """Not "the next in the list" for everyone: that node would take the whole herd (and shed most
    of it with retry hints) while the other one idles."""
    landed = collections.Counter(lost(redial(seed), "c").address for seed in range(400))
    assert set(landed) == {"a", "b"}  # never the node just lost first
    assert min(landed.values()) > 150, landed  # about half each (binomial: 200 +- 10)


def test_the_first_redial_after_a_loss_is_quick_and_the_others_follow_at_once() -> None:
    policy = redial()
    first = lost(policy, "c")
    assert first.why == "failover" and first.delay_s <= MIN_S
    # the node dialled is dead too: the other live one at once, then the lost one, each at once
    second = refused(policy, first.address, now=100.5)
    assert second.why == "next" and second.delay_s == 0.0 and second.address not in (first.address, "c")
    third = refused(policy, second.address, now=100.5)
    assert (third.address, third.delay_s) == ("c", 0.0)
    # all three failed: only now a backoff, and a new round
    fourth = refused(policy, "c", now=100.5)
    assert fourth.why == "backoff" and fourth.delay_s > 0 and fourth.address == "a"


def test_a_busy_nodes_hint_is_honoured_at_that_node() -> None:
    """Its pacer booked this client a slot: coming back there, not booking a second slot on another
    node (which would push that node's later clients further out), and a dead node tried in between
    does not make the client forget the hint and back off."""
    policy = redial()
    first = lost(policy, "c")
    for _ in range(5):
        step = policy.after(NODES, first.address, now=101.0, lasted_s=0.001, was_up=False, hint=0.8)
        assert step.why == "hint" and step.address == first.address
        assert 0.8 <= step.delay_s <= 0.8 * 1.1 + 1e-9
    assert policy.failures == 1  # hints are not failures: the backoff did not grow


def test_the_backoff_grows_only_when_every_address_failed() -> None:
    policy = redial()
    lost(policy, "c")
    delays = []
    for _ in range(6):  # six rounds of three refusals
        steps = [refused(policy, n, now=101.0) for n in NODES]
        assert [s.why for s in steps].count("backoff") == 1
        delays.append(max(s.delay_s for s in steps))
    assert policy.failures == 7  # the failover's first redial, then one per round
    assert max(delays) > MIN_S * 2  # the window did grow


def test_one_gateway_is_the_jittered_backoff_as_before() -> None:
    policy: Redial[str] = Redial(min_s=MIN_S, max_s=MAX_S, now=0.0, rng=random.Random(1))
    reference = random.Random(1)
    expected = [reconnect_delay(f, 50.0, min_s=MIN_S, max_s=MAX_S, rng=reference) for f in range(4)]
    got = [policy.after(("gw",), "gw", now=50.0, lasted_s=0.01, was_up=False, hint=None) for _ in range(4)]
    assert [s.address for s in got] == ["gw"] * 4
    assert [s.delay_s for s in got] == expected
    hinted = policy.after(("gw",), "gw", now=50.0, lasted_s=0.01, was_up=False, hint=3.0)
    assert hinted.why == "hint" and 3.0 <= hinted.delay_s <= 3.3


def test_a_long_session_resets_the_backoff() -> None:
    policy = redial()
    for _ in range(3):
        for n in NODES:
            refused(policy, n)
    assert policy.failures > 1
    lost(policy, "a")
    assert policy.failures == 1  # reset by the long session, then the failover's first redial


def test_the_configured_addresses_come_before_the_nodes_a_hello_named() -> None:
    """The configured list is the site's choice (names its certificates carry); the nodes a hello named
    are the way out when those are gone, tried after them."""
    addresses = ("c", "b", "learned-1", "learned-2")
    for seed in range(50):
        policy = redial(seed)
        first = policy.after(addresses, "c", now=100.0, lasted_s=100.0, was_up=True, hint=None, configured=2)
        order = [first.address]
        for _ in range(3):
            order.append(policy.after(addresses, order[-1], now=100.5, lasted_s=0.001, was_up=False, hint=None).address)
        assert order[0] == "b" and set(order[1:3]) == {"learned-1", "learned-2"} and order[3] == "c", order
