"""SIGTERM/SIGINT handling for the long-running commands: the only place signals are caught.

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

__all__ = ["until_signal"]

log = logging.getLogger(__name__)


async def until_signal(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    log.info("stopping")
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await fn(*args)
            nursery.cancel_scope.cancel()
