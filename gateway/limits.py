"""What one client, stranger or burst may cost the gateway: the bounds and their tools.

Owns the numbers (`ClientLimits`, `HandshakeLimits`, from `[gateway]`) and
three small tools the servers share:

- `TokenBucket`: `rate` tokens a second up to `burst`; `take(now)` spends one.
- `Every`: "log this once per interval" with the number of times it was
  held back in between, so a flood is one line per interval, never one per
  event.
- `clip_ids`: a bounded list of ids for a log line (the first few and
  "+N more"), so no single update writes a 32 KB line.
- `RefusalLog`: a storm of failed handshakes is a few lines and one summary
  per interval, not a line per connection.
- `HandshakePacer`: how many handshakes to run at once so that each one
  finishes within about `pacing_s` at the rate they are measured to finish,
  and when a connection turned away should come back.

Pure bookkeeping: no I/O, no trio; callers pass the time (trio's clock).
"""

from __future__ import annotations

import collections
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REFUSAL_LINES_PER_INTERVAL",
    "ClientLimits",
    "Every",
    "HandshakeLimits",
    "HandshakePacer",
    "RefusalLog",
    "TokenBucket",
    "clip_ids",
]


@dataclass(frozen=True)
class ClientLimits:
    """Per certified client (`[gateway]` keys in parentheses)."""

    #: USB devices kept in one client's inventory (max_devices_per_client)
    max_devices: int = 256
    #: serial + parallel exports kept in one client's inventory (max_ports_per_client)
    max_ports: int = 32
    #: inventory messages a second that are applied at once (inventory_updates_per_s)
    updates_per_s: float = 5.0
    #: ... and how many may come in one burst (inventory_update_burst)
    update_burst: int = 20
    #: a throttled or refused thing is logged at most once per this (limit_log_interval_s)
    log_interval_s: float = 60.0


@dataclass(frozen=True)
class HandshakeLimits:
    """Per TLS listener (the tunnel port and each TLS route)."""

    #: TLS handshakes in progress at once on one listener (max_handshakes)
    max_handshakes: int = 256
    #: ... from one source address (max_handshakes_per_source)
    max_per_source: int = 16
    #: what is refused or failed is summarised once per this (limit_log_interval_s)
    log_interval_s: float = 60.0
    #: pace handshakes so each finishes within about this long, and tell the
    #: connections turned away when to come back (handshake_pacing_s; 0: off,
    #: only the two fixed limits above, excess closed without a hint)
    pacing_s: float = 2.5


#: The pacer's concurrency: where it starts, its floor, and how often it is adjusted.
PACER_START = 64
PACER_FLOOR = 16
PACER_WINDOW_S = 0.5
#: a handshake older than this many `pacing_s` no longer counts against the paced
#: limit (a stranger that never speaks keeps only its slot under max_handshakes)
PACER_STALLED = 3.0
#: the longest retry hint handed out, s
MAX_RETRY_AFTER_S = 60.0
#: a handshake's time the hints assume before the first one finished, s
UNMEASURED_HANDSHAKE_S = 0.1
#: the share of the measured completion rate the retry hints' queue is served at
HINT_RATE_SHARE = 0.9
#: the longest hint, in units of `pacing_s` (at most MAX_RETRY_AFTER_S): past it a client comes back with
#: its ticket, keeps its place and is told the rest at the rate then.  Not shorter: every client past the
#: horizon comes back once per horizon to be turned away again, and at 4 x pacing_s (10 s) 10,000 of them
#: crowded the gateway's loop with busy lines (20,000 a minute) until its handshakes slowed, the paced limit
#: fell to its floor and it finished 3-22 a second (and dials timed out in its accept queue)
HINT_HORIZON_PACINGS = 24.0
#: spreads the hints past the horizon (see `HandshakePacer.book`)
_GOLDEN = 0.6180339887498949
#: a client back at its place in the queue (its ticket is due) is admitted beyond the paced limit, up to
#: this many times it (never beyond max_handshakes): the queue already paces who comes back
DUE_OVERDRAFT = 2.0


class HandshakePacer:
    """Handshakes at the rate they can be finished (issue 15, reconnecting at scale).

    `limit` is how many young handshakes may run at once.  Each window
    (PACER_WINDOW_S, at least a few completions) it is scaled by
    ``pacing_s / mean handshake time``: down at once when handshakes took
    longer than `pacing_s`, up (at most doubled) when they were quicker and
    the limit was reached in the window; so an admitted handshake finishes in
    about `pacing_s` whether the gateway has a core to itself or shares it.
    A handshake that runs longer than PACER_STALLED x `pacing_s` (or x the
    mean handshake time, if longer) stops counting against `limit` (see
    `stall_after_s`).

    A connection turned away gets a place in a queue whose head moves at the
    completion rate (measured while the limit was reached, raised toward
    `limit` / the mean handshake time by a window that did not reach it;
    before the first window, the handshakes running / a quick guess, by
    Little's law): `book(now, running)` hands out the next place (a
    `ticket`, signed, so it can only come from this pacer) and says how far
    ahead of the head it is, at most `horizon_s()`.  A client sends its
    ticket back on its next dial: `due(now, ticket)` says whether the head
    has reached its place (admit it even if the limit is reached: the queue
    paced it already), and `book(now, running, ticket)` prices the same
    place again at today's rate, so a client told too early is not put at
    the end, and one told to wait at a rate that was too low is told a
    shorter wait when it comes back.  So the clients of a restarted gateway
    come back one after the other at the rate it finishes them.
    Times are the caller's clock (trio's); no I/O.
    """

    __slots__ = (
        "_booked",
        "_completed",
        "_head",
        "_head_at",
        "_key",
        "_latency",
        "_mean_s",
        "_reached",
        "_window_start",
        "limit",
        "max_limit",
        "pacing_s",
        "rate",
    )

    def __init__(self, pacing_s: float, max_limit: int) -> None:
        self.pacing_s = pacing_s
        self.max_limit = max_limit
        self.limit = float(min(PACER_START, max_limit))
        #: handshakes finished per second, measured while the limit was reached (None: not yet)
        self.rate: float | None = None
        self._window_start: float | None = None
        self._completed = 0
        self._latency = 0.0
        self._reached = False
        #: a handshake's time, moving average over the last few dozen (None: none finished yet)
        self._mean_s: float | None = None
        #: the queue: the last place handed out, the head (places up to it are due) and when it was moved
        self._booked = 0
        self._head = 0.0
        self._head_at: float | None = None
        #: signs the tickets (a new pacer, e.g. a restarted gateway, knows none of the old ones)
        self._key = secrets.token_bytes(16)

    def stall_after_s(self) -> float:
        """How old a handshake in progress must be to stop counting against `limit`: PACER_STALLED x
        `pacing_s`, or x the mean handshake time when that is longer (a starved gateway's handshakes are
        slow, not stalled: counting them out would only admit more and slow them all further)."""
        return PACER_STALLED * max(self.pacing_s, self._mean_s or 0.0)

    def full(self, young: int) -> bool:
        """Whether `young` handshakes in progress (the stalled ones left out) are as many as may run."""
        if young >= self.limit:
            self._reached = True
            return True
        return False

    def finished(self, now: float, took_s: float) -> None:
        """A handshake finished (succeeded or failed; not one the peer abandoned) after `took_s`."""
        if self._window_start is None:
            self._window_start = now
        self._completed += 1
        self._latency += took_s
        self._mean_s = took_s if self._mean_s is None else self._mean_s + 0.2 * (took_s - self._mean_s)
        elapsed = now - self._window_start
        if elapsed < PACER_WINDOW_S or self._completed < PACER_FLOOR:
            return
        mean = self._latency / self._completed
        if self._reached:
            rate = self._completed / elapsed
            self.rate = rate if self.rate is None else 0.5 * self.rate + 0.5 * rate
        elif self.rate is not None and self.limit / max(mean, 1e-6) > self.rate:
            # the limit was not reached: nobody waited for a slot, so the completions counted are what came,
            # not what the gateway can finish.  The queue's head moves faster, toward what `limit` handshakes
            # of `mean` each finish (Little's law; at most doubled a window), so the clients that hold
            # tickets are told shorter waits; too fast, and the next window reaches the limit and measures.
            self.rate = min(2.0 * self.rate, 0.5 * self.rate + 0.5 * self.limit / max(mean, 1e-6))
        scale = self.pacing_s / max(mean, 1e-6)
        if scale < 1.0:  # never below PACER_FLOOR: a gateway starved by others still finishes a few at a time
            self.limit = max(float(min(PACER_FLOOR, self.max_limit)), self.limit * max(0.5, scale))
        elif self._reached and scale > 1.25:
            self.limit = min(float(self.max_limit), self.limit * min(2.0, scale))
        self._window_start, self._completed, self._latency, self._reached = now, 0, 0.0, False

    def _queue_rate(self, running: int) -> float:
        """Places a second the queue's head moves: a little behind the completion rate (a client back before
        there is room is only turned away again)."""
        rate = self.rate
        if rate is None:  # not measured yet; Little's law: `running` handshakes at a time, each for about _mean_s
            # before the first handshake finished, a guess on the quick side: a restarted gateway's whole herd
            # is turned away in its first second, and with `pacing_s` as the guess (64 / 2.5 s: 25 a second)
            # 10,000 clients were booked over minutes for a gateway that finishes hundreds a second; too early
            # costs a client one more busy line, and it keeps its place
            mean = self._mean_s if self._mean_s is not None else UNMEASURED_HANDSHAKE_S
            rate = max(1, running) / max(mean, 1e-3)
        return max(HINT_RATE_SHARE * rate, 1e-3)

    def _advance(self, now: float, qrate: float) -> None:
        if self._head_at is not None and now > self._head_at:
            self._head = min(float(self._booked), self._head + (now - self._head_at) * qrate)
        self._head_at = now

    def horizon_s(self) -> float:
        """The longest wait a hint tells: HINT_HORIZON_PACINGS x `pacing_s` (at least 1 s), at most
        MAX_RETRY_AFTER_S.  Past it a client comes back with its ticket and is told the rest then."""
        return min(MAX_RETRY_AFTER_S, max(1.0, HINT_HORIZON_PACINGS * self.pacing_s))

    def ticket(self, place: int) -> bytes:
        """The ticket for `place` (opaque to the client: the place and a signature, hex)."""
        body = place.to_bytes(6, "big")
        return (body + hashlib.blake2b(body, key=self._key, digest_size=8).digest()).hex().encode()

    def place(self, ticket: bytes | None) -> int | None:
        """The place `ticket` holds, if this pacer handed it out (else None)."""
        if ticket is None or len(ticket) != 28:
            return None
        try:
            raw = bytes.fromhex(ticket.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        body, mac = raw[:6], raw[6:]
        if not secrets.compare_digest(mac, hashlib.blake2b(body, key=self._key, digest_size=8).digest()):
            return None
        place = int.from_bytes(body, "big")
        return place if 0 < place <= self._booked else None

    def due(self, now: float, ticket: bytes | None, running: int) -> bool:
        """Whether the queue's head has reached the place `ticket` holds (False without a valid one)."""
        place = self.place(ticket)
        if place is None:
            return False
        self._advance(now, self._queue_rate(running))
        return place <= self._head + 1.0

    def book(self, now: float, running: int, ticket: bytes | None = None) -> tuple[float, bytes]:
        """A connection turned away (`running`: the handshakes in progress now, the stalled ones left
        out): (seconds until its place in the queue, the ticket for it).  With a valid `ticket` the client
        keeps its place; without, it gets the next one at the end."""
        qrate = self._queue_rate(running)
        self._advance(now, qrate)
        place = self.place(ticket)
        ahead = None if place is None else place - self._head
        if place is None:
            self._booked = max(self._booked, int(self._head)) + 1
            place = self._booked
            hint = (place - self._head) / qrate
        elif ahead is not None and ahead <= 1.0:  # due and still turned away (past the overdraft): half a limit on
            hint = self.limit / qrate / 2
        else:
            hint = (place - self._head) / qrate
        horizon = self.horizon_s()
        if hint > horizon:
            # past the horizon: spread over its second half by place (the golden ratio's fractions), so the far
            # end of a herd does not come back all at once to be told the rest (10,000 told 10 s each came back
            # together every 10 s: a storm of busy lines, and dials that timed out in the accept queue)
            hint = horizon * (0.5 + 0.5 * ((place * _GOLDEN) % 1.0))
        return max(0.05, hint), self.ticket(place)

    def retry_after(self, now: float, running: int) -> float:
        """`book` without a ticket: seconds until the next place at the end of the queue."""
        return self.book(now, running)[0]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def next_token_at(self, now: float) -> float:
        """When `take` will succeed next."""
        self._refill(now)
        if self.tokens >= 1.0 or self.rate <= 0:
            return now
        return now + (1.0 - self.tokens) / self.rate


class Every:
    """Once per `interval_s`: `due(now)` says whether to log now, and
    `held` is how many times it was not due since the last line."""

    __slots__ = ("held", "interval_s", "last")

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last: float | None = None
        self.held = 0

    def due(self, now: float) -> bool:
        if self.last is None or now - self.last >= self.interval_s:
            self.last = now
            return True
        self.held += 1
        return False

    def take_held(self) -> int:
        """The count held back so far, reset (for the line being logged)."""
        held, self.held = self.held, 0
        return held


def clip_ids(ids: Iterable[str], shown: int = 8) -> str:
    """'a, b, c' or 'a, b, ... (+N more)': a log line's bounded list."""
    out: list[str] = []
    more = 0
    for device_id in ids:
        if len(out) < shown:
            out.append(device_id)
        else:
            more += 1
    text = ", ".join(out) or "none"
    return f"{text} (+{more} more)" if more else text


#: Refusals per interval that get a line of their own; the rest of a storm is one summary line.
REFUSAL_LINES_PER_INTERVAL = 10


class RefusalLog:
    """A listener's refusals (failed handshakes, refused certificates): the
    first `lines_per_interval` of each interval are logged one by one, the
    rest is counted by category and summed up in one line (`flush`, called on
    the next refusal after the interval and by the gateway's ticker)."""

    __slots__ = ("_held", "_logged", "_start", "interval_s", "lines_per_interval", "log", "what")

    def __init__(
        self, log: Any, what: str, interval_s: float, lines_per_interval: int = REFUSAL_LINES_PER_INTERVAL
    ) -> None:
        self.log = log
        self.what = what
        self.interval_s = interval_s
        self.lines_per_interval = lines_per_interval
        self._start: float | None = None
        self._logged = 0
        self._held: collections.Counter[str] = collections.Counter()

    def refused(self, now: float, category: str, line: str, *args: object) -> None:
        """One refusal: `line % args` is its own log line unless the interval's quota is spent."""
        if self._start is None or now - self._start >= self.interval_s:
            self.flush()
            self._start, self._logged = now, 0
        if self._logged < self.lines_per_interval:
            self._logged += 1
            self.log.warning(line, *args)
        else:
            self._held[category] += 1

    def flush(self) -> None:
        """Log the summary of what was held back, if anything."""
        if not self._held:
            return
        total = sum(self._held.values())
        kinds = ", ".join(f"{category}: {n}" for category, n in self._held.most_common())
        self.log.warning(
            "%s: %d more refused connection(s) in this interval, not logged one by one (%s)",
            self.what,
            total,
            kinds,
        )
        self._held.clear()
