"""The local admin socket: `redirgate gateway status` reads the gateway's state here.

A Unix socket (mode 0600, so only the gateway's user and root can read it)
that answers every connection with one JSON document - clients online with
their devices, routes and their state, live channels with bytes each way -
and closes.  Read-only by design: nothing sent to it changes anything.

The answer is bounded and written piece by piece: a long list (`Streamed`,
the clients) is rendered and sent a few entries at a time with the event
loop free in between, and at most `STATUS_MAX_ENTRIES` of them are written,
then `"<name>_more": N` says how many were left out.  So status with 10,000
clients neither builds megabytes at once nor stalls the other connections.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from redirgate.gateway.admission import serve_bounded

__all__ = ["STATUS_MAX_ENTRIES", "Streamed", "encode_status", "read_status", "serve_admin"]

log = logging.getLogger(__name__)

#: Entries of one streamed list written at most; the rest is counted in "<name>_more".
STATUS_MAX_ENTRIES = 1000
#: Entries rendered between two sends (and two trips through the event loop).
_ENTRIES_PER_CHUNK = 50


@dataclass(frozen=True)
class Streamed:
    """A list of the status document rendered entry by entry while it is sent."""

    items: Sequence[Any]
    render: Callable[[Any], Any]


def encode_status(document: dict[str, Any], *, max_entries: int = STATUS_MAX_ENTRIES) -> Iterator[bytes]:
    """The JSON text of `document` in pieces: a `Streamed` value becomes a
    list of at most `max_entries` rendered entries (a few per piece) and
    ``"<key>_more": N`` for the rest."""
    yield b"{"
    first = True
    for key in sorted(document):
        value = document[key]
        prefix = b"" if first else b",\n"
        first = False
        name = json.dumps(key).encode()
        if not isinstance(value, Streamed):
            yield prefix + name + b": " + json.dumps(value, sort_keys=True).encode()
            continue
        shown = value.items[:max_entries]
        parts = [prefix + name + b": ["]
        for index, item in enumerate(shown):
            parts.append((b"" if index == 0 else b",\n ") + json.dumps(value.render(item), sort_keys=True).encode())
            if len(parts) >= _ENTRIES_PER_CHUNK:
                yield b"".join(parts)
                parts = []
        parts.append(b"]")
        parts.append(b",\n" + json.dumps(f"{key}_more").encode() + b": " + str(len(value.items) - len(shown)).encode())
        yield b"".join(parts)
    yield b"}\n"


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
                for piece in encode_status(snapshot()):
                    await stream.send_all(piece)  # a checkpoint per piece: the loop stays free
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with listener:
            task_status.started(path)
            await serve_bounded(answer, [listener], what="admin socket", counters=collections.Counter())
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
