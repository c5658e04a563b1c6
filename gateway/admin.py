"""The local admin socket: `redirgate gateway status` reads the gateway's state here.

A Unix socket (mode 0600, so only the gateway's user and root can read it)
that answers every connection with one JSON document - clients online with
their devices, routes and their state, live channels with bytes each way -
and closes.  A client sends one JSON line first: `{"command": "status"}`
(or nothing) for that document, `{"command": "disconnect", "target":
"ROUTE|CLIENT"}` to end a route's channel or a client's session
(`gateway disconnect`); the socket's mode is what keeps others out.

The answer is bounded and written piece by piece: a long list (`Streamed`,
the clients) is rendered and sent a few entries at a time with the event
loop free in between, and at most `STATUS_MAX_ENTRIES` of them are written,
then `"<name>_more": N` says how many were left out.  So status with 10,000
clients neither builds megabytes at once nor stalls the other connections.

A request is read by `_reply` and parsed by `parse_request`, which is
sans-IO (bytes in, an `AdminRequest` or `BadAdminRequest` out) so that it
can be fuzzed (fuzz/admin_fuzz.py).
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

from redirgate.gateway.admission import AcceptPause, serve_bounded
from redirgate.gateway.errors import GatewayError

__all__ = [
    "ANSWER_TIMEOUT_S",
    "REQUEST_LIMIT",
    "STATUS_MAX_ENTRIES",
    "AdminAnswers",
    "AdminRequest",
    "AdminSocketInUse",
    "BadAdminRequest",
    "Streamed",
    "answer_timeout_s",
    "check_admin_socket",
    "encode_status",
    "open_admin",
    "parse_request",
    "read_status",
    "request",
    "request_complete",
    "serve_admin",
]

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


async def open_admin(path: Path) -> trio.SocketListener:
    """Bind the admin socket at `path`; OSError says why not.  A stale socket
    file (nobody answers) is replaced; a live one is not: `AdminSocketInUse`."""
    check_admin_socket(path)
    _remove_stale_socket(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(os.fspath(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(16)
    return trio.SocketListener(sock)


class AdminAnswers:
    """The admin answers a process is writing, so that one that leaves (a
    gateway restart hands the admin socket to its successor) stops taking new
    ones and finishes these first: `redirgate gateway status` during a restart
    reads a whole answer, from the old process or the new one, never half of
    one (trio thread only)."""

    def __init__(self) -> None:
        self.pause = AcceptPause()
        self.running = 0
        self._idle = trio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        self.running += 1
        self._idle = trio.Event() if self.running == 1 else self._idle
        try:
            yield
        finally:
            self.running -= 1
            if not self.running:
                self._idle.set()

    async def finish(self) -> None:
        """Take no new connection (they wait in the backlog for whoever accepts next) and
        return once every answer under way was written; each ends within `answer_timeout_s()`."""
        self.pause.pause()
        while True:
            # a connection accepted just before the pause has its answer task started but
            # not yet running (counted only once it runs): a few scheduler passes run it
            for _ in range(3):
                await trio.lowlevel.checkpoint()
            if not self.running:
                return
            await self._idle.wait()


#: An admin connection is answered (or given up) within this long of its accept
#: (`REDIRGATE_ADMIN_TIMEOUT_S` sets another: tests that hold an answer open).
ANSWER_TIMEOUT_S = 5.0


def answer_timeout_s() -> float:
    """ANSWER_TIMEOUT_S, or what `REDIRGATE_ADMIN_TIMEOUT_S` says (a positive number)."""
    try:
        value = float(os.environ.get("REDIRGATE_ADMIN_TIMEOUT_S", ""))
    except ValueError:
        return ANSWER_TIMEOUT_S
    return value if value > 0 else ANSWER_TIMEOUT_S


async def serve_admin(
    path: Path,
    snapshot: Callable[[], dict[str, Any]],
    *,
    listener: trio.SocketListener | None = None,
    commands: Callable[[AdminRequest], dict[str, Any]] | None = None,
    answers: AdminAnswers | None = None,
    keep_path: Callable[[], bool] | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer on `path` (bound here unless `listener` is given) until cancelled; the file goes with it
    unless `keep_path()` says the listening socket lives on (systemd's fd store holds it).
    `answers`: what a leaving process waits for (`AdminAnswers.finish`)."""
    if listener is None:
        listener = await open_admin(path)
    if answers is None:
        answers = AdminAnswers()
    tracked = answers
    budget_s = answer_timeout_s()

    async def answer(stream: trio.SocketStream) -> None:
        with tracked.one():
            await _answer(stream)

    async def _answer(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(budget_s):
                reply = await _reply(stream, snapshot, commands)
                for piece in encode_status(reply):
                    await stream.send_all(piece)  # a checkpoint per piece: the loop stays free
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with listener:
            task_status.started(path)
            await serve_bounded(
                answer, [listener], what="admin socket", counters=collections.Counter(), pause=tracked.pause
            )
    finally:
        if keep_path is None or not keep_path():
            with contextlib.suppress(OSError):
                _remove_stale_socket(path)


class AdminSocketInUse(GatewayError):
    """Another gateway answers on the admin socket: this one must not take it over."""


def check_admin_socket(path: Path) -> None:
    """Raise `AdminSocketInUse` if a process accepts connections on the socket at `path`."""
    import socket

    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return  # refused or gone: a stale file from a gateway that died
    raise AdminSocketInUse(
        str(path), "another gateway is running on this admin socket; stop it or set another admin_socket"
    )


def _remove_stale_socket(path: Path) -> None:
    """Remove the socket file at `path`, if one is there.

    Synchronous on purpose: it also runs in `finally` after a cancellation,
    where an await would raise instead of running; unlinking a local file
    does not block."""
    if path.is_socket():
        path.unlink()


@dataclass(frozen=True)
class AdminRequest:
    """One request on the admin socket: `status`, or `disconnect` of `target` (a route or client)."""

    command: str
    target: str = ""


class BadAdminRequest(GatewayError):
    """A request the admin socket does not understand; `reason` is what the answer says."""


#: a request is one short JSON line
REQUEST_LIMIT = 4096
_COMMANDS = ("status", "disconnect")


def request_complete(data: bytes) -> bool:
    """Whether `data` holds a whole request line (or as much as is ever read)."""
    return b"\n" in data or len(data) >= REQUEST_LIMIT


def parse_request(data: bytes) -> AdminRequest:
    """The request in the first line of `data` (sans-IO); BadAdminRequest if it is not one.

    Nothing at all, or a JSON value that is not an object, is `status` (what
    `gateway status` from older versions sends); an object names its
    `command` ("status" if none) and, for `disconnect`, a string `target`.
    Only the first REQUEST_LIMIT bytes are looked at.
    """
    line = data[:REQUEST_LIMIT].split(b"\n", 1)[0].strip()
    if not line:
        return AdminRequest("status")
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        raise BadAdminRequest("admin socket", "not a JSON request") from None
    if not isinstance(message, dict):
        return AdminRequest("status")
    command = message.get("command", "status")
    if command not in _COMMANDS:
        shown = repr(command)[:80]
        raise BadAdminRequest("admin socket", f"unknown command {shown} (status, disconnect)")
    if command == "status":
        return AdminRequest("status")
    target = message.get("target")
    if not isinstance(target, str) or not target or len(target) > 255:
        raise BadAdminRequest("admin socket", "disconnect needs a target: a route or client name")
    return AdminRequest("disconnect", target)


async def _reply(
    stream: trio.SocketStream,
    snapshot: Callable[[], dict[str, Any]],
    commands: Callable[[AdminRequest], dict[str, Any]] | None,
) -> dict[str, Any]:
    """Read one request line (none, or `{"command": "status"}`: the status) and answer it."""
    data = b""
    while not request_complete(data):
        chunk = await stream.receive_some(REQUEST_LIMIT)
        if not chunk:
            break
        data += chunk
    try:
        asked = parse_request(data)
    except BadAdminRequest as exc:
        return {"ok": False, "error": exc.reason}
    if asked.command == "status":
        return snapshot()
    if commands is None:
        return {"ok": False, "error": f"unknown command {asked.command!r}"}
    return commands(asked)


def request(path: str | os.PathLike[str], message: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Blocking client of the admin socket (for the CLI): one request, one JSON reply; OSError if nobody answers."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(os.fspath(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data: dict[str, Any] = json.loads(b"".join(chunks))
    return data


def read_status(path: str | os.PathLike[str], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """The gateway's state (see the module docstring)."""
    return request(path, {"command": "status"}, timeout_s=timeout_s)
