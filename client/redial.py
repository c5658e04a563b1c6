"""Which gateway the client dials next, and after how long (issue 15's herd manners, issue 18's failover).

One gateway: after any loss the client waits `reconnect_delay` (jittered
exponential backoff whose window also grows with how long the gateway has
been away, so a restarted gateway's clients come back spread out), or what
a busy gateway's retry hint says.

Several (a cluster: `gateway` lists them, and the nodes' hellos name the
others), the same manners, but a node that is gone must not cost a backoff
while another one is there (issue 18's floor: a node's clients back on
another node within 5 s, p99, 1,000 clients):

- After a session that was up ends, the client makes a *round*: the other
  configured addresses in random order, then the other nodes the hellos
  named (in random order), the lost one last.  The first dial of the
  round waits the usual first jittered delay (within `min_s`); each dial
  that fails without a hint (refused: a dead node; timed out; closed) goes
  on to the next of the round at once.  Random, not "the next in the
  list": a dead node's clients spread over the live ones instead of all
  landing on the same one (which then sheds most of them with hints).
- A busy node's hint (its handshake pacer booked the client a slot in its
  queue) is honoured at that node: the client comes back to it then and
  does not try the others in between, which would book it a second slot it
  will not use and push every later client of that node further out.
- Only when every address of a round failed without a hint does the
  backoff grow, as with one gateway; the next round starts after it, at
  the address after the last one tried.

The first connection keeps to the first address (`first()`).  Pure
bookkeeping, no I/O: callers pass trio's clock.  `client/tunnel.py` uses it,
and so do the benchmark's simulated clients (`bench/scale_peers.py`).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from redirgate.client.resume import HINT_JITTER

__all__ = ["RESET_AFTER_S", "Next", "Redial", "reconnect_delay"]

#: A session (or a dial) that lasted this long resets the backoff.
RESET_AFTER_S = 10.0
#: The backoff's exponent stops growing here (min_s * 2**16 is past any max_s).
MAX_FAILURES = 16

K = TypeVar("K", bound=Hashable)


def reconnect_delay(
    failures: int,
    away_s: float,
    *,
    min_s: float,
    max_s: float,
    rng: random.Random | None = None,
    retry_after_s: float | None = None,
) -> float:
    """How long to wait before dialling the gateway again.

    The window is the exponential backoff (`min_s` * 2**failures) or how long
    the gateway has been away, whichever is longer, at most `max_s`; the delay
    is drawn from all of it (from `min_s`/2 up), not from its upper half.  So
    the first redial after a loss is quick, and clients that lost a gateway
    together for D seconds come back spread over about D seconds instead of
    in step (a restarted gateway with thousands of clients: issue 15).

    A gateway that turned the dial away because it was busy says when to come
    back (`retry_after_s`, its busy line): that is honoured instead, plus up
    to HINT_JITTER of it, at most `max_s` (the hint is not authenticated).
    """
    uniform = (rng or random).uniform
    if retry_after_s is not None:
        return min(max_s, retry_after_s * uniform(1.0, 1.0 + HINT_JITTER))
    window = min(max_s, max(min_s * 2**failures, away_s))
    return uniform(min(window, min_s / 2), window)


@dataclass(frozen=True)
class Next(Generic[K]):
    """The next dial: where, after how long, and why (for the log line)."""

    address: K
    delay_s: float
    #: "failover" (the first of a round after a loss), "next" (at once: the one before failed),
    #: "hint" (a busy gateway's time), "backoff" (every address failed)
    why: str


class Redial(Generic[K]):
    """The client's reconnect policy over one or more addresses (see the module docstring).
    Owned by the task that dials; not thread-safe."""

    def __init__(self, *, min_s: float, max_s: float, now: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s
        #: None: the `random` module's own generator (tests seed it)
        self.rng = rng
        #: dials in a row that failed without a hint (the backoff's exponent)
        self.failures = 0
        #: when the gateway was last there (the end of the last session that was up)
        self.lost_at = now
        #: the rest of the current round, tried in this order
        self._round: list[K] = []

    def first(self, addresses: Sequence[K]) -> K:
        """Where the first connection goes: the first address."""
        return addresses[0]

    def after(
        self,
        addresses: Sequence[K],
        tried: K,
        *,
        now: float,
        lasted_s: float,
        was_up: bool,
        hint: float | None,
        configured: int | None = None,
    ) -> Next[K]:
        """The dial to `tried` ended after `lasted_s` (`was_up`: its session was online; `hint`: a busy
        gateway's retry-after): where and when to dial next.  `configured`: how many of `addresses`
        (the first) the configuration lists; the rest (nodes a hello named) come after them in a round."""
        if was_up:
            self.lost_at = now
        if lasted_s > RESET_AFTER_S:
            self.failures = 0
        away_s = now - self.lost_at
        if len(addresses) <= 1 or hint is not None:
            # one gateway, or a busy node that booked us a slot: come back to it when it said
            if hint is None:
                return Next(addresses[0], self._backoff(away_s), "backoff")
            delay = reconnect_delay(
                self.failures, away_s, min_s=self.min_s, max_s=self.max_s, rng=self.rng, retry_after_s=hint
            )
            return Next(tried if tried in addresses else addresses[0], delay, "hint")
        if was_up:
            split = len(addresses) if configured is None else configured
            listed = [a for a in addresses[:split] if a != tried]
            learned = [a for a in addresses[split:] if a != tried]
            (self.rng or random).shuffle(listed)
            (self.rng or random).shuffle(learned)
            self._round = [*listed, *learned, tried] if tried in addresses else [*listed, *learned]
            return Next(self._round.pop(0), self._backoff(0.0), "failover")
        self._round = [a for a in self._round if a in addresses and a != tried]
        if self._round:
            return Next(self._round.pop(0), 0.0, "next")
        # every address of the round failed: back off, then a new round from the one after `tried`
        start = (addresses.index(tried) + 1) if tried in addresses else 0
        self._round = [addresses[(start + i) % len(addresses)] for i in range(len(addresses))]
        return Next(self._round.pop(0), self._backoff(away_s), "backoff")

    def _backoff(self, away_s: float) -> float:
        delay = reconnect_delay(self.failures, away_s, min_s=self.min_s, max_s=self.max_s, rng=self.rng)
        self.failures = min(self.failures + 1, MAX_FAILURES)
        return delay
