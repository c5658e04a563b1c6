"""Who gets in, and how many at once: accept loops and TLS handshake limits.

`serve_bounded(handler, listeners, ...)` is `trio.serve_listeners` with the
gateway's manners: when accept() fails for want of file descriptors or
memory (EMFILE, ENFILE, ENOMEM, ENOBUFS) it logs one line per interval
(how many times since the last), never a traceback, retries every 0.1 s and
so recovers by itself as soon as descriptors are free again.  After each
accept it also takes what else waits in the backlog (up to ACCEPT_BURST),
so a burst of connections is answered at once, not one per pass of the
scheduler while each dial's deadline runs.

`HandshakeGate` bounds the TLS handshakes in progress on one listener, in
all and per source address: `admit(peer)` says whether a new connection may
start its handshake; one that may not is closed at once by the caller,
counted (`handshakes_refused`) and summed up in one line per interval.
Each handshake keeps its deadline (`handshake_timeout_s`), so a slot is
never held longer than that.  On the tunnel port the gate also paces
(`HandshakePacer`, issue 15): it admits handshakes at the rate they are
measured to finish, and a connection turned away is told when to come back
(the busy line, `redirgate.proto.tunnel.busy`, written by the caller), so a
restarted gateway's thousands of clients neither time out handshakes it
started nor come back all at once.

Threads: none; everything runs on the gateway's trio loop.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from redirgate.gateway.limits import DUE_OVERDRAFT, Every, HandshakeLimits, HandshakePacer
from redirgate.proto import tunnel as t

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "AcceptPause", "HandshakeGate", "Ticket", "serve_bounded", "take_ticket_line"]

log = logging.getLogger(__name__)

#: accept() errors that mean "out of descriptors or memory now", not "broken"
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: how long the accept loop waits after one of them
ACCEPT_RETRY_S = 0.1
#: connections taken from the backlog at once, besides the one trio's accept() returned
ACCEPT_BURST = 256


class AcceptPause:
    """Stops and restarts the accept loops that share it, without closing a
    listener or touching a connection already accepted: a gateway restart
    (issue 16 step 3) leaves new connections in the kernel's backlog for its
    successor.  An accept waiting now is cancelled (trio's accept loses no
    connection when cancelled)."""

    def __init__(self) -> None:
        self.paused = False
        self._resumed = trio.Event()
        self._waiting: set[trio.CancelScope] = set()

    def pause(self) -> None:
        self.paused = True
        self._resumed = trio.Event()
        for scope in self._waiting:
            scope.cancel()

    def resume(self) -> None:
        self.paused = False
        self._resumed.set()

    async def accept(self, listener: trio.SocketListener) -> trio.SocketStream:
        """The next connection, once accepting is not paused."""
        while True:
            while self.paused:
                await self._resumed.wait()
            scope = trio.CancelScope()
            self._waiting.add(scope)
            try:
                with scope:
                    return await listener.accept()
            finally:
                self._waiting.discard(scope)


async def serve_bounded(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    listeners: list[trio.SocketListener],
    *,
    what: str,
    counters: collections.Counter[str],
    log_interval_s: float = 60.0,
    pause: AcceptPause | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on `listeners` and run `handler` for each connection until cancelled
    (`pause` stops and restarts accepting)."""
    every = Every(log_interval_s)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, nursery, what, counters, every, pause)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
    what: str,
    counters: collections.Counter[str],
    every: Every,
    pause: AcceptPause | None,
) -> None:
    # the same listening socket as a plain one (a dup of its descriptor, non-blocking like it), to take
    # what waits in the backlog at once: trio's accept() takes one per pass of the scheduler
    burst = socket.socket(fileno=os.dup(listener.socket.fileno()))
    async with listener:
        try:
            await _accept_forever(listener, burst, handler, nursery, what, counters, every, pause)
        finally:
            burst.close()


async def _accept_forever(
    listener: trio.SocketListener,
    burst: socket.socket,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
    what: str,
    counters: collections.Counter[str],
    every: Every,
    pause: AcceptPause | None,
) -> None:
    while True:
        try:
            stream = await (listener.accept() if pause is None else pause.accept(listener))
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            counters["accept_failed_out_of_resources"] += 1
            if every.due(trio.current_time()):
                log.error(
                    "%s: cannot accept connections: %s (%s); retrying every %g s (%d more since the last line)",
                    what,
                    errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                    os.strerror(exc.errno or 0),
                    ACCEPT_RETRY_S,
                    every.take_held(),
                )
            await trio.sleep(ACCEPT_RETRY_S)
            continue
        nursery.start_soon(_run, handler, stream)
        if pause is None or not pause.paused:  # a paused gateway leaves the backlog to its successor
            for more in _backlog(burst):
                nursery.start_soon(_run, handler, more)


def _backlog(burst: socket.socket) -> list[trio.SocketStream]:
    """Up to ACCEPT_BURST connections waiting in the backlog now, without waiting.  A restarted
    gateway's thousands of clients are all there at once: each is answered (a handshake, or the busy
    line) one scheduler pass later, instead of one per pass while its dial's deadline runs."""
    taken = []
    for _ in range(ACCEPT_BURST):
        try:
            conn, _ = burst.accept()
        except OSError:  # none left (EAGAIN), or out of descriptors: the awaited accept() says so next
            break
        taken.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
    return taken


async def _run(handler: Callable[[trio.SocketStream], Awaitable[None]], stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def take_ticket_line(sock: trio.socket.SocketType) -> tuple[bytes | None, bool]:
    """A client's place in the queue, if its first bytes are a ticket line (`proto.tunnel.busy`):
    (the ticket, whether the peer is still there).  The line is taken from the socket, and nothing
    after it: the ClientHello stays for OpenSSL (read with MSG_PEEK first).  The caller bounds the
    wait."""
    taken = b""
    while True:
        try:
            data = await sock.recv(t.TICKET_LINE_MAX_BYTES - len(taken), socket.MSG_PEEK)
        except OSError:
            return None, False
        if not data:
            return None, False
        ticket, used = t.parse_ticket_line(taken + data)
        if used == 0:  # not a ticket line (a ClientHello, or garbage that OpenSSL will name)
            return None, True
        if used > 0:
            await sock.recv(used - len(taken))
            return ticket, True
        taken += await sock.recv(len(data))  # the start of one: take it, wait for the rest


class Ticket:
    """One connection's answer from `HandshakeGate.admit`: true if it may
    handshake; else `retry_after_s` is the hint to give it (None: no hint)
    and `queue_ticket` its place in the pacer's queue (None: none)."""

    __slots__ = ("abandoned", "admitted", "done", "queue_ticket", "retry_after_s", "stalled", "started")

    def __init__(
        self, admitted: bool, started: float, retry_after_s: float | None = None, queue_ticket: bytes | None = None
    ) -> None:
        self.admitted = admitted
        self.started = started
        self.retry_after_s = retry_after_s
        self.queue_ticket = queue_ticket
        #: the peer left the handshake unfinished (timed out, or closed in the middle): say so with `abandon`
        self.abandoned = False
        self.done = False
        #: older than the pacer's horizon while still in progress: not counted against its limit
        self.stalled = False

    def __bool__(self) -> bool:
        return self.admitted

    def abandon(self) -> None:
        self.abandoned = True


class HandshakeGate:
    """TLS handshakes in progress on one listener, bounded (module docstring).

    With `pace` (the tunnel port, whose clients understand the busy line) and
    `limits.pacing_s` > 0, a `HandshakePacer` also bounds the handshakes
    started in the last few pacing_s (`stall_after_s`) to what the gateway is
    measured to finish in about `pacing_s`, and every connection turned away
    gets a retry hint: a slot in the queue the pacer serves at that rate.
    """

    def __init__(
        self, limits: HandshakeLimits, what: str, counters: collections.Counter[str], *, pace: bool = False
    ) -> None:
        self.limits = limits
        self.what = what
        self.counters = counters
        self.in_progress = 0
        self.by_source: collections.Counter[str] = collections.Counter()
        #: whether this listener's peers read the busy line (the tunnel port): `reconfigure` keeps it
        self.pace = pace
        self.pacer = HandshakePacer(limits.pacing_s, limits.max_handshakes) if pace and limits.pacing_s > 0 else None
        #: admitted tickets, oldest first, until they finish or stall (the pacer's young ones)
        self._young: collections.deque[Ticket] = collections.deque()
        self.stalled = 0
        self._every = Every(limits.log_interval_s)
        self._refused_since = 0
        self._latest = ""
        self._longest_hint = 0.0

    def reconfigure(self, limits: HandshakeLimits) -> None:
        """New limits (a config reload): the next connection is admitted under them.  Handshakes in
        progress keep their slots; a pacer whose `pacing_s` and ceiling did not change keeps its
        measurements; turning pacing on or off starts or drops it."""
        if limits == self.limits:
            return
        old, self.limits = self.limits, limits
        self._every.interval_s = limits.log_interval_s
        if not (self.pace and limits.pacing_s > 0):
            self.pacer = None
            self._young.clear()  # nothing counts them out without a pacer; they end by their deadline
        elif self.pacer is None or (old.pacing_s, old.max_handshakes) != (limits.pacing_s, limits.max_handshakes):
            self.pacer = HandshakePacer(limits.pacing_s, limits.max_handshakes)

    def _young_count(self, pacer: HandshakePacer, now: float) -> int:
        horizon = now - pacer.stall_after_s()
        young = self._young
        while young and (young[0].done or young[0].started < horizon):
            ticket = young.popleft()
            if not ticket.done:
                ticket.stalled = True
                self.stalled += 1
        return self.in_progress - self.stalled

    def _host(self, peer: str) -> str:
        return peer.rsplit(":", 1)[0].strip("[]")

    def _over_fixed_limits(self, host: str) -> bool:
        limits = self.limits
        return self.in_progress >= limits.max_handshakes or self.by_source[host] >= limits.max_per_source

    def turns_away(self, peer: str) -> bool:
        """Whether a connection from `peer` would be turned away now if it held no ticket (the caller
        then reads its ticket line first: `take_ticket_line`)."""
        pacer = self.pacer
        if self._over_fixed_limits(self._host(peer)):
            return True
        return pacer is not None and self._young_count(pacer, trio.current_time()) >= pacer.limit

    @contextmanager
    def admit(self, peer: str, queue_ticket: bytes | None = None) -> Iterator[Ticket]:
        """``with gate.admit(peer) as ticket:`` hold a slot for the handshake
        if `ticket`; else the caller closes the connection at once (first
        writing the busy line if `ticket.retry_after_s` is not None, with
        `ticket.queue_ticket`).  `queue_ticket`: the place in the pacer's
        queue the client brought back; if the queue has reached it, it is
        admitted beyond the paced limit (up to DUE_OVERDRAFT times it),
        else it keeps that place."""
        host = self._host(peer)
        pacer = self.pacer
        now = trio.current_time()
        young = self._young_count(pacer, now) if pacer is not None else 0
        fixed = self._over_fixed_limits(host)
        if fixed or (pacer is not None and pacer.full(young)):
            if (
                not fixed
                and pacer is not None
                and young < DUE_OVERDRAFT * pacer.limit
                and pacer.due(now, queue_ticket, young)
            ):
                self.counters["handshakes_admitted_at_place"] += 1
            else:
                # a place in the pacer's queue either way: many thin clients behind one NAT address come back
                # spread out, not together after the same wait
                hint, place = pacer.book(now, young, queue_ticket) if pacer is not None else (None, None)
                self._refused(peer, hint)
                yield Ticket(False, now, hint, place)
                return
        ticket = Ticket(True, now)
        if pacer is not None:
            self._young.append(ticket)
        self.in_progress += 1
        self.by_source[host] += 1
        try:
            yield ticket
        finally:
            ticket.done = True
            self.in_progress -= 1
            self.by_source[host] -= 1
            if not self.by_source[host]:
                del self.by_source[host]
            if ticket.stalled:
                self.stalled -= 1
            if ticket.abandoned:
                self.counters["handshakes_abandoned"] += 1
            elif pacer is not None:
                end = trio.current_time()
                pacer.finished(end, end - ticket.started)

    def _refused(self, peer: str, hint: float | None) -> None:
        self.counters["handshakes_refused"] += 1
        if hint is not None:
            self.counters["handshakes_told_to_retry"] += 1
            self._longest_hint = max(self._longest_hint, hint)
        self._refused_since += 1
        self._latest = peer
        if self._every.due(trio.current_time()):
            self._summary()

    def flush(self) -> None:
        """The summary line of what was turned away, if an interval passed since the last one
        (the gateway's ticker calls this once per interval, so the end of a storm is told too)."""
        if self._refused_since and self._every.due(trio.current_time()):
            self._summary()

    def _summary(self) -> None:
        host = self._latest.rsplit(":", 1)[0].strip("[]")
        pacer = self.pacer
        paced = (
            f"; paced: at most {int(pacer.limit)} young handshakes, finishing {pacer.rate or 0:.0f}/s; "
            f"told to retry after up to {self._longest_hint:.1f} s"
            if pacer is not None
            else ""
        )
        log.warning(
            "%s: %d connection(s) turned away at once since the last such line (the latest from %s): too many TLS "
            "handshakes at once (%d in all, %d from %s; max_handshakes = %d, max_handshakes_per_source = %d%s)",
            self.what,
            self._refused_since,
            self._latest,
            self.in_progress,
            self.by_source[host],
            host,
            self.limits.max_handshakes,
            self.limits.max_per_source,
            paced,
        )
        self._refused_since = 0
        self._longest_hint = 0.0

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"in_progress": self.in_progress, "sources": len(self.by_source)}
        if self.pacer is not None:
            out["paced_limit"] = int(self.pacer.limit)
            out["completed_per_s"] = round(self.pacer.rate, 1) if self.pacer.rate is not None else None
        return out
