"""Waiting in tests without a wall-clock budget.

Wait on an event when the code under test offers one (a trio.Event, a reply
to a later request, a line a process prints).  `until` is for the rest:
state that another thread or process changes (a device emulation's worker
thread, a pty, a FIFO, a child process), which no trio event announces.  It
has no deadline of its own: a loaded machine is slow, not wrong, and the
test's safety net (tests/support/trio_runner.py) ends a wait that never ends.

`wait_until` and `wait_for_text` are the same for tests that run no trio
loop (subprocesses, ptys, files another process writes).  No runner ends
those, so each wait carries its own safety net: generous, never a budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

#: how often `until` looks again; short, since it only costs a check
POLL_S = 0.005
#: how often `wait_until` looks again: its checks read files and call other processes
BLOCKING_POLL_S = 0.05
#: the safety net of a blocking wait: far beyond what a loaded machine needs, only so a wait that never ends fails
WAIT_NET_S = 300.0

T = TypeVar("T")


async def until(predicate: Callable[[], object], what: str = "", *, poll_s: float = POLL_S) -> None:
    """Return once `predicate()` is true; `what` names it for the reader."""
    while not predicate():  # noqa: ASYNC110 -- state of another thread or process: no trio event announces it
        await trio.sleep(poll_s)


async def until_async(check: Callable[[], Awaitable[object]], what: str = "", *, poll_s: float = POLL_S) -> None:
    """`until` for a check that must itself wait (a call into a blocking
    library run in a worker thread, a request to another process: give
    those a longer `poll_s`)."""
    while not await check():  # noqa: ASYNC110 -- another thread's or process's state, as in `until`
        await trio.sleep(poll_s)


def wait_until(
    predicate: Callable[[], T],
    what: str,
    *,
    net_s: float = WAIT_NET_S,
    detail: Callable[[], str] | None = None,
    poll_s: float = BLOCKING_POLL_S,
) -> T:
    """Block until `predicate()` returns something true, and return that.

    `what` names the awaited state in the failure; `detail()` adds what the
    reader needs then (a log's tail).  `net_s` is a safety net, not a budget:
    a loaded machine is slow, not wrong."""
    deadline = time.monotonic() + net_s
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"{what}: still not so after {net_s:g} s (the safety net){more}")
        # the poll interval: another process's state, which no event here announces
        time.sleep(poll_s)
    return value


def wait_for_text(
    path: Path, pattern: str | re.Pattern[str], *, start: int = 0, net_s: float = WAIT_NET_S
) -> re.Match[str]:
    """Block until the file another process writes (read from character `start` on) matches `pattern`."""
    compiled = re.compile(pattern)

    def text() -> str:
        return path.read_text(errors="replace")[start:] if path.exists() else ""

    return wait_until(
        lambda: compiled.search(text()),
        f"{path.name} showing {compiled.pattern!r}",
        net_s=net_s,
        detail=lambda: text()[-4000:],
    )
