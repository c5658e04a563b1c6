"""Waiting in tests without a wall-clock budget.

Wait on an event when the code under test offers one (a trio.Event, a reply
to a later request, a line a process prints).  `until` is for the rest:
state that another thread or process changes (a device emulation's worker
thread, a pty, a FIFO, a child process), which no trio event announces.  It
has no deadline of its own: a loaded machine is slow, not wrong, and the
test's safety net (tests/support/trio_runner.py) ends a wait that never ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

#: how often `until` looks again; short, since it only costs a check
POLL_S = 0.005


async def until(predicate: Callable[[], object], what: str = "") -> None:
    """Return once `predicate()` is true; `what` names it for the reader."""
    while not predicate():  # noqa: ASYNC110 -- state of another thread or process: no trio event announces it
        await trio.sleep(POLL_S)


async def until_async(check: Callable[[], Awaitable[object]], what: str = "") -> None:
    """`until` for a check that must itself wait (a call into a blocking
    library run in a worker thread)."""
    while not await check():  # noqa: ASYNC110 -- another thread's or process's state, as in `until`
        await trio.sleep(POLL_S)
