"""SIGTERM/SIGINT/SIGHUP/SIGUSR2 handling for the long-running commands: the only place signals are caught.

`until_signal(fn, *args)` runs `fn(*args)` and cancels it on the first
SIGTERM or SIGINT, so services unwind through their own shutdown paths
(listeners closed first, then connections, devices released).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from redirgate.cli.sdnotify import Notifier

__all__ = ["lone_error", "until_signal"]

log = logging.getLogger(__name__)


def lone_error(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The one exception a (nested) group holds, or None when it holds several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


async def until_signal(
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    reload: Callable[[], Awaitable[None]] | None = None,
    notifier: Notifier | None = None,
    restart: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run `fn(*args)` until it returns or SIGTERM/SIGINT arrives.

    With `reload`, SIGHUP (what `systemctl reload` sends) calls it instead
    of ending the process; with `restart`, SIGUSR2 (nginx's signal for the
    same job) calls it (the gateway hands over to a new process and this one
    exits, or it goes on when the restart is called off); with a `notifier`, systemd hears RELOADING then
    READY around it, STOPPING on the way out, and WATCHDOG pings while the
    loop runs (READY itself is the command's to send, once it serves).
    An error `fn` raises comes out as itself, not inside the nursery's
    ExceptionGroup, so the commands can turn their typed errors into one
    line each.
    """
    wanted = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if reload is not None else [])
    wanted += [signal.SIGUSR2] if restart is not None else []
    with trio.open_signal_receiver(*wanted) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for signum in signals:
                        if signum == signal.SIGHUP and reload is not None:
                            log.info("SIGHUP: reloading the configuration")
                            if notifier is not None:
                                notifier.reloading()
                            await reload()
                            if notifier is not None:
                                notifier.ready()
                            continue
                        if signum == signal.SIGUSR2 and restart is not None:
                            log.info("SIGUSR2: restarting into a new process")
                            await restart()
                            continue
                        log.info("stopping (%s)", signal.Signals(signum).name)
                        if notifier is not None:
                            notifier.stopping()
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)
                if notifier is not None and notifier.watchdog_interval_s is not None:
                    nursery.start_soon(_watchdog, notifier, notifier.watchdog_interval_s)
                await fn(*args)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            lone = lone_error(group)
            if lone is None:
                raise
            raise lone from None


async def _watchdog(notifier: Notifier, interval_s: float) -> None:
    """WATCHDOG=1 while the trio loop turns: a wedged loop stops the pings."""
    while True:
        notifier.watchdog()
        await trio.sleep(interval_s)
