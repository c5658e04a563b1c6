"""The local admin socket: `redirgate gateway status` reads the gateway's state here.

A Unix socket (mode 0600, so only the gateway's user and root can read it)
that answers every connection with one JSON document - clients online with
their devices, routes and their state, live channels with bytes each way -
and closes.  Read-only by design: nothing sent to it changes anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

__all__ = ["read_status", "serve_admin"]

log = logging.getLogger(__name__)


async def serve_admin(
    path: Path,
    snapshot: Callable[[], dict[str, Any]],
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `path` (a stale socket file is replaced) until cancelled."""
    _remove_stale_socket(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(os.fspath(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def answer(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                await stream.send_all(json.dumps(snapshot(), indent=1, sort_keys=True).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with listener:
            task_status.started(path)
            await trio.serve_listeners(answer, [listener])
    finally:
        with contextlib.suppress(OSError):
            _remove_stale_socket(path)


def _remove_stale_socket(path: Path) -> None:
    """Remove the socket file at `path`, if one is there.

    Synchronous on purpose: it also runs in `finally` after a cancellation,
    where an await would raise instead of running; unlinking a local file
    does not block."""
    if path.is_socket():
        path.unlink()


def read_status(path: str | os.PathLike[str], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Blocking client of the admin socket (for the CLI); OSError if nobody answers."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(os.fspath(path))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data: dict[str, Any] = json.loads(b"".join(chunks))
    return data
