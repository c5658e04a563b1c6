"""Named long-running port services that a reload can add, remove or replace one by one.

`ServiceSet(exports, make, keep)` holds one service per export (`make`
builds it, `keep` runs it for the client's life).  `run()` keeps them all
going in one nursery, each in its own cancel scope, so `reload(exports)`
ends only the services whose export was removed or changed and starts the
new ones; an unchanged export's service (its open port, its ring, its
consumer) is not touched.  Serial and parallel exports both use it.  All on
the client's trio loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import trio

__all__ = ["RESTART_FIRST_S", "RESTART_MAX_S", "PortChange", "ServiceSet"]

log = logging.getLogger(__name__)

#: Pause before a service that failed unexpectedly is started again; it doubles up to RESTART_MAX_S.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0

E = TypeVar("E")  # an export dataclass with a .name
S = TypeVar("S")  # its service


@dataclass(frozen=True)
class PortChange:
    """What a reload did to one export (`name`, or the device id its caller prefixes)."""

    name: str
    verb: Literal["removed", "changed", "added"]

    @property
    def stopped(self) -> bool:
        """Its old service stopped (removed, or changed and started anew)."""
        return self.verb != "added"

    def __str__(self) -> str:
        return f"{self.name} {self.verb}"


class ServiceSet(Generic[E, S]):
    def __init__(self, exports: Sequence[E], make: Callable[[E], S], keep: Callable[[S], Awaitable[None]]) -> None:
        self._make, self._keep = make, keep
        self.exports: dict[str, E] = {_name(e): e for e in exports}
        self.services: dict[str, S] = {name: make(e) for name, e in self.exports.items()}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name in self.services:
                self._start(name)
            await trio.sleep_forever()

    def _start(self, name: str) -> None:
        assert self._nursery is not None
        scope = self._scopes[name] = trio.CancelScope()
        service = self.services[name]

        async def keep() -> None:
            with scope:
                await self._keep_despite_bugs(name, service)

        self._nursery.start_soon(keep)

    async def _keep_despite_bugs(self, name: str, service: S) -> None:
        """Run one service; an unexpected exception (a bug) restarts it, the other ports keep going.

        The services handle every failure they expect (a port that is absent,
        busy or hung up) themselves; what reaches here is a defect, so it is
        logged with its traceback, and the service is made anew after a pause
        that doubles up to RESTART_MAX_S, instead of ending the whole client.
        """
        pause = RESTART_FIRST_S
        while True:
            try:
                await self._keep(service)
                return
            except Exception:
                log.exception(
                    "port %s: its service failed unexpectedly (a bug, please report it); restarting it in %.0f s",
                    name,
                    pause,
                )
            await trio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX_S)
            if name not in self.exports:
                return
            service = self.services[name] = self._make(self.exports[name])

    def reload(self, exports: Sequence[E]) -> list[PortChange]:
        """Apply a new list of exports; returns what changed."""
        wanted = {_name(e): e for e in exports}
        changes: list[PortChange] = []
        for name in list(self.exports):
            if name not in wanted or wanted[name] != self.exports[name]:
                scope = self._scopes.pop(name, None)
                if scope is not None:
                    scope.cancel()
                del self.exports[name], self.services[name]
                changes.append(PortChange(name, "removed" if name not in wanted else "changed"))
        stopped = {change.name for change in changes}
        for name, export in wanted.items():
            if name not in self.exports:
                self.exports[name], self.services[name] = export, self._make(export)
                if self._nursery is not None:
                    self._start(name)
                if name not in stopped:
                    changes.append(PortChange(name, "added"))
        return changes


def _name(export: Any) -> str:
    return str(export.name)
