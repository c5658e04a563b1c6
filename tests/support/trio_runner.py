"""The test suite's one trio runner (tests/conftest.py imports its hook and fixture).

Every ``async def test_...`` runs under ``trio.run`` with a safety net of
TRIO_TIMEOUT_S seconds of wall-clock time; ``@pytest.mark.trio_timeout(seconds)``
changes it for one test.  A test that asks for the ``autojump_clock`` fixture
runs on ``trio.testing.MockClock(autojump_threshold=0)``: our own timers
(heartbeats, hold timeouts, backoff, rescan intervals) then fire as soon as
every task waits, so such a test never waits on them in real time.  The safety
net is counted on the wall clock either way (a timer thread cancels the test):
a virtual clock that jumps cannot trip it, and a test stuck on real I/O cannot
hang the suite.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

#: Wall-clock seconds an async test may run before it is cancelled and fails.
TRIO_TIMEOUT_S = 120.0


class TrioTestTimeout(Exception):
    """An async test ran past its wall-clock safety net."""


def _task_stacks(task: trio.lowlevel.Task, depth: int = 0) -> list[str]:
    """Where `task` and its children wait: one line per await frame."""
    lines = [f"{'  ' * depth}task {task.name}:"]
    for frame, lineno in task.iter_await_frames():
        lines.append(f"{'  ' * depth}  {frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}")
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            lines.extend(_task_stacks(child, depth + 1))
    return lines


async def _under_safety_net(test: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    """Run `test`, cancelling it from a timer thread after `timeout_s` wall-clock seconds.

    When the net fires, the message says where every task was waiting."""
    token = trio.lowlevel.current_trio_token()
    test_task = trio.lowlevel.current_task()
    stacks: list[str] = []
    with trio.CancelScope() as scope:

        def cancel() -> None:  # in the trio thread
            stacks.extend(_task_stacks(test_task))
            scope.cancel()

        def expire() -> None:  # in the timer thread
            try:
                token.run_sync_soon(cancel)
            except trio.RunFinishedError:
                pass

        timer = threading.Timer(timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            await test()
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        raise TrioTestTimeout(
            f"still running after {timeout_s:g} s of wall-clock time "
            "(the safety net; @pytest.mark.trio_timeout(seconds) changes it); the tasks were waiting at:\n"
            + "\n".join(stacks)
        )


def run_trio_test(
    fn: Callable[..., Awaitable[None]],
    kwargs: dict[str, Any],
    *,
    timeout_s: float = TRIO_TIMEOUT_S,
    clock: trio.abc.Clock | None = None,
) -> None:
    """Run one async test function with its fixture values (the runner below)."""
    trio.run(_under_safety_net, lambda: fn(**kwargs), timeout_s, clock=clock)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """A virtual clock that jumps to the next deadline whenever every task waits.

    An async test that asks for it (as an argument, or with
    ``@pytest.mark.usefixtures("autojump_clock")``) runs on it.  Only for tests
    whose tasks wait on trio alone (memory streams, our own timers): while a
    task waits on a real socket, a thread or a process, the clock jumps too,
    so every deadline in the test would pass at once."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(fn).parameters}
    marker = pyfuncitem.get_closest_marker("trio_timeout")
    timeout_s = float(marker.args[0]) if marker is not None else TRIO_TIMEOUT_S
    # autojump_clock asked for as an argument or through @pytest.mark.usefixtures
    clocks = [value for value in pyfuncitem.funcargs.values() if isinstance(value, trio.abc.Clock)]
    run_trio_test(fn, kwargs, timeout_s=timeout_s, clock=clocks[0] if clocks else None)
    return True
