"""A small QMP client on trio: connect to QEMU's monitor socket, run commands, wait for events.

Owns the QMP wire format (one JSON object per line; a greeting, then
``qmp_capabilities``; replies carry the ``id`` we sent; events may arrive in
between and are kept for :meth:`QmpClient.wait_event`).  Every wait is under
a cancel scope; the socket is closed when the ``async with`` ends.  Errors
come out as QmpError naming the socket and QEMU's own description.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from redirgate.host.errors import QmpError

__all__ = ["QmpClient", "QmpCommandError", "open_qmp"]

#: A reply or an event never takes long; this only catches a wedged QEMU.
DEFAULT_TIMEOUT_S = 30.0
_MAX_LINE = 16 * 1024 * 1024


class QmpCommandError(QmpError):
    """QEMU answered a command with an error; ``error_class`` is QMP's class (GenericError, ...)."""

    def __init__(self, subject: str, reason: str, error_class: str, description: str) -> None:
        super().__init__(subject, reason)
        self.error_class = error_class
        self.description = description


class QmpClient:
    """One QMP session.  Not safe for concurrent commands: one task drives it."""

    def __init__(self, stream: trio.SocketStream, where: str, timeout_s: float) -> None:
        self._stream = stream
        self.where = where
        self.timeout_s = timeout_s
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.version: tuple[int, int, int] = (0, 0, 0)

    async def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE:
                raise QmpError(self.where, "QMP message too long")
            try:
                chunk = await self._stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                raise QmpError(self.where, f"connection broke: {exc}") from exc
            if not chunk:
                raise QmpError(self.where, "QEMU closed the QMP connection")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise QmpError(self.where, f"not QMP: {line[:80]!r}") from exc
        if not isinstance(message, dict):
            raise QmpError(self.where, f"not QMP: {line[:80]!r}")
        return message

    async def _handshake(self) -> None:
        with trio.move_on_after(self.timeout_s) as scope:
            greeting = await self._read_message()
            if "QMP" not in greeting:
                raise QmpError(self.where, f"no QMP greeting (got {greeting!r:.80})")
            qemu = greeting["QMP"].get("version", {}).get("qemu", {})
            self.version = (qemu.get("major", 0), qemu.get("minor", 0), qemu.get("micro", 0))
        if scope.cancelled_caught:
            raise QmpError(self.where, f"no QMP greeting within {self.timeout_s:g} s")
        await self.execute("qmp_capabilities")

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command``; its ``return`` value, or QmpCommandError with QEMU's description."""
        ident = next(self._ids)
        request: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            request["arguments"] = arguments
        try:
            await self._stream.send_all(json.dumps(request).encode() + b"\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise QmpError(self.where, f"cannot send {command}: {exc}") from exc
        with trio.move_on_after(self.timeout_s) as scope:
            while True:
                message = await self._read_message()
                if "event" in message:
                    self.events.append(message)
                    continue
                if message.get("id") != ident:
                    continue
                if "error" in message:
                    error = message["error"]
                    desc = str(error.get("desc", "?"))
                    klass = str(error.get("class", "?"))
                    raise QmpCommandError(self.where, f"{command}: {desc}", klass, desc)
                return message.get("return")
        assert scope.cancelled_caught
        raise QmpError(self.where, f"no reply to {command} within {self.timeout_s:g} s")

    async def wait_event(
        self, name: str, match: Callable[[dict[str, Any]], bool] = lambda _e: True, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """The first event ``name`` (seen already or arriving) for which ``match(data)`` holds."""
        for index, event in enumerate(self.events):
            if event.get("event") == name and match(event.get("data", {})):
                return self.events.pop(index)
        limit = self.timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(limit if limit > 0 else math.inf):
            while True:
                message = await self._read_message()
                if message.get("event") == name and match(message.get("data", {})):
                    return message
                if "event" in message:
                    self.events.append(message)
        raise QmpError(self.where, f"no {name} event within {limit:g} s")


@asynccontextmanager
async def open_qmp(path: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncIterator[QmpClient]:
    """Connect to a QMP unix socket and finish the handshake."""
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_unix_socket(path)
    except (OSError, trio.TooSlowError) as exc:
        reason = getattr(exc, "strerror", None) or "no answer"
        raise QmpError(
            path,
            f"cannot connect to QEMU's QMP socket: {reason} (is the VM running with -qmp unix:{path},server=on,wait=off?)",
        ) from exc
    async with stream:
        client = QmpClient(stream, path, timeout_s)
        await client._handshake()
        yield client
