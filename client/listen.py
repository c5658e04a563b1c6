"""What the standalone port listeners share: accept loop, peer names, the busy refusal.

`serve-serial` and `serve-parallel` (ser2net's job) both accept TCP
consumers for one port service; `serve_consumers` owns that loop - one task
per connection, the connection closed and logged whatever happens, the
service's typed errors logged per connection instead of ending the
listener.  `refuse_busy` is the one line a second consumer gets.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from redirgate.transport import peer_label

__all__ = ["REFUSAL_SEND_TIMEOUT_S", "peer_of", "refuse_busy", "serve_consumers"]

log = logging.getLogger(__name__)

#: How long a refused consumer gets to read why.
REFUSAL_SEND_TIMEOUT_S: Final = 2.0


def peer_of(stream: trio.SocketStream) -> str:
    """ "host:port" of an accepted consumer's peer."""
    return peer_label(stream.socket)


async def refuse_busy(stream: trio.abc.Stream, name: str, peer: str, reason: str) -> None:
    """Tell a consumer the port is taken (best effort) and log it."""
    log.warning("%s: refused %s: %s", name, peer, reason)
    with trio.move_on_after(REFUSAL_SEND_TIMEOUT_S):
        try:
            await stream.send_all(f"redirgate: port {name} is already in use\r\n".encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it left already; nothing else to tell it


async def serve_consumers(
    host: str | None,
    port: int,
    name: str,
    serve_one: Callable[[trio.SocketStream, str], Awaitable[None]],
    errors: tuple[type[Exception], ...],
    *,
    label: str = "",
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept consumers on HOST:PORT and run `serve_one(stream, peer)` for each.

    Reports the bound listeners through `task_status.started()` (bind port 0
    and read `listener.socket.getsockname()`).  `errors` raised by one
    consumer are logged and end only that connection.
    """
    suffix = f" ({label})" if label else ""

    async def handler(stream: trio.SocketStream) -> None:
        peer = peer_of(stream)
        log.info("%s: %s connected%s", name, peer, suffix)
        try:
            await serve_one(stream, peer)
        except errors as exc:
            log.error("%s: serving %s failed: %s", name, peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
            log.info("%s: %s disconnected", name, peer)

    listeners = await trio.open_tcp_listeners(port, host=host)
    for listener in listeners:
        log.info("%s: listening on %s%s", name, listener.socket.getsockname()[:2], suffix)
    await trio.serve_listeners(handler, listeners, task_status=task_status)
