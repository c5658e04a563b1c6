"""Who gets in, and how many at once: accept loops and TLS handshake limits.

`serve_bounded(handler, listeners, ...)` is `trio.serve_listeners` with the
gateway's manners: when accept() fails for want of file descriptors or
memory (EMFILE, ENFILE, ENOMEM, ENOBUFS) it logs one line per interval
(how many times since the last), never a traceback, retries every 0.1 s and
so recovers by itself as soon as descriptors are free again.

`HandshakeGate` bounds the TLS handshakes in progress on one listener, in
all and per source address: `admit(peer)` says whether a new connection may
start its handshake; one that may not is closed at once by the caller,
counted (`handshakes_refused`) and summed up in one line per interval.
Each handshake keeps its deadline (`handshake_timeout_s`), so a slot is
never held longer than that.

Threads: none; everything runs on the gateway's trio loop.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from redirgate.gateway.limits import Every, HandshakeLimits

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "HandshakeGate", "serve_bounded"]

log = logging.getLogger(__name__)

#: accept() errors that mean "out of descriptors or memory now", not "broken"
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: how long the accept loop waits after one of them
ACCEPT_RETRY_S = 0.1


async def serve_bounded(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    listeners: list[trio.SocketListener],
    *,
    what: str,
    counters: collections.Counter[str],
    log_interval_s: float = 60.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on `listeners` and run `handler` for each connection until cancelled."""
    every = Every(log_interval_s)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, nursery, what, counters, every)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
    what: str,
    counters: collections.Counter[str],
    every: Every,
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
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


async def _run(handler: Callable[[trio.SocketStream], Awaitable[None]], stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


class HandshakeGate:
    """TLS handshakes in progress on one listener, bounded (module docstring)."""

    def __init__(self, limits: HandshakeLimits, what: str, counters: collections.Counter[str]) -> None:
        self.limits = limits
        self.what = what
        self.counters = counters
        self.in_progress = 0
        self.by_source: collections.Counter[str] = collections.Counter()
        self._every = Every(limits.log_interval_s)
        self._refused_since = 0

    @contextmanager
    def admit(self, peer: str) -> Iterator[bool]:
        """``with gate.admit(peer) as admitted:`` hold a slot for the handshake
        if `admitted`; else the caller closes the connection at once."""
        host = peer.rsplit(":", 1)[0].strip("[]")
        limits = self.limits
        if self.in_progress >= limits.max_handshakes or self.by_source[host] >= limits.max_per_source:
            self._refused(peer, host)
            yield False
            return
        self.in_progress += 1
        self.by_source[host] += 1
        try:
            yield True
        finally:
            self.in_progress -= 1
            self.by_source[host] -= 1
            if not self.by_source[host]:
                del self.by_source[host]

    def _refused(self, peer: str, host: str) -> None:
        self.counters["handshakes_refused"] += 1
        self._refused_since += 1
        if self._every.due(trio.current_time()):
            log.warning(
                "%s: %d connection(s) closed at once since the last such line (the latest from %s): too many TLS "
                "handshakes at once (%d in all, %d from %s; max_handshakes = %d, max_handshakes_per_source = %d)",
                self.what,
                self._refused_since,
                peer,
                self.in_progress,
                self.by_source[host],
                host,
                self.limits.max_handshakes,
                self.limits.max_per_source,
            )
            self._refused_since = 0

    def snapshot(self) -> dict[str, Any]:
        return {"in_progress": self.in_progress, "sources": len(self.by_source)}
