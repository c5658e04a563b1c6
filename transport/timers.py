"""One task for many timers: `TimerWheel`.

A gateway holds tens of thousands of idle control sessions, each with a
heartbeat to send and a peer timeout to watch.  A sleeping task per session
costs a cancel scope, a deadline in trio's table and a wake-up through a
`Cancelled` exception per timer, per session, per interval; here one task
keeps every session's next deadline in a heap and, when it wakes, runs each
due timer's `fire(now)` (plain synchronous code) and files the deadline it
returns.  With `resolution_s` > 0 the task wakes at most once per
`resolution_s`, taking every timer that came due meanwhile in one pass: a
timer fires at its deadline or up to `resolution_s` later, never earlier.

A timer's deadline may only be a lower bound: `fire(now)` may find nothing
due yet and return its real next deadline (this is how a received message
moves a session's timeout without touching the heap).  `fire` returns None
to leave the wheel; an owner that is done with a timer makes its next
`fire` return None (the heap keeps a small entry until then).  `fire` must
not raise: a timer routes its own errors to whatever it serves.

Threads: none; `run` is one task on the owner's trio loop, `add` is called
from tasks on that loop.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

import trio

__all__ = ["Timer", "TimerWheel"]


class Timer(Protocol):
    """What a `TimerWheel` runs."""

    def fire(self, now: float) -> float | None:
        """Do what is due at `now`; the next deadline (> now), or None to leave the wheel."""
        ...


class TimerWheel:
    """Many timers on one task (see the module docstring).  `run` must be running
    in some nursery for the timers to fire; `running` says whether it is."""

    __slots__ = ("_heap", "_not_before", "_seq", "_wake", "passes", "resolution_s", "running")

    def __init__(self, resolution_s: float = 0.0) -> None:
        #: (deadline, tie-breaker, timer): the tie-breaker keeps timers from being compared
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        #: the sleep of the running pass loop (its deadline is the next pass)
        self._wake: trio.CancelScope | None = None
        self._not_before = -math.inf
        #: the wheel wakes at most once per this many seconds (0: at each deadline)
        self.resolution_s = resolution_s
        self.running = False
        #: passes made so far (each takes every timer due by then)
        self.passes = 0

    def __len__(self) -> int:
        """Entries in the heap (live timers, and left ones not yet reached)."""
        return len(self._heap)

    def add(self, timer: Timer, deadline: float) -> None:
        """Run `timer.fire` at `deadline` (or up to `resolution_s` later)."""
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, timer))
        wake = self._wake
        if wake is not None and deadline < wake.deadline:
            wake.deadline = max(deadline, self._not_before)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The wheel's task: sleep until the earliest deadline, fire what is due, again; until
        cancelled.  Started (`nursery.start`) once `running` is true."""
        if self.running:
            raise RuntimeError("TimerWheel.run is running already")
        self.running = True
        heap = self._heap
        task_status.started()
        try:
            while True:
                deadline = heap[0][0] if heap else math.inf
                with trio.CancelScope(deadline=max(deadline, self._not_before)) as self._wake:
                    await trio.sleep_forever()
                self._wake = None
                now = trio.current_time()
                self._not_before = now + self.resolution_s
                self.passes += 1
                again: list[tuple[float, int, Timer]] = []
                while heap and heap[0][0] <= now:
                    _, seq, timer = heapq.heappop(heap)
                    upcoming = timer.fire(now)
                    if upcoming is not None:
                        again.append((upcoming, seq, timer))  # filed after the pass: never twice in one
                for entry in again:
                    heapq.heappush(heap, entry)
        finally:
            self._wake = None
            self.running = False
