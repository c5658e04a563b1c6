"""Serving a printer port to consumers: one connection, or a TCP listener (standalone mode).

`serve_parallel_stream` is the one place a consumer connection meets a
`PrinterService`; standalone mode (`serve_parallel_listen`) and the
gateway's channels both use it.  It attaches the consumer (one at a time; a
second one is told the port is in use) and reads it until it ends, handing
every chunk to `Session.put` - which never waits, so the consumer is always
read (a QEMU isa-parallel whose socket is not read freezes its VM).  Nothing
is sent back: the parallel data direction is consumer -> printer only.

Shutdown: the caller cancels.  This module never closes the stream it was
given; `serve_parallel_listen` closes the ones it accepted.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from redirgate.client.listen import refuse_busy, serve_consumers
from redirgate.client.parallel.errors import ParallelError, PortBusy
from redirgate.client.parallel.service import PrinterService

__all__ = ["RECEIVE_BYTES", "serve_parallel_listen", "serve_parallel_stream"]

log = logging.getLogger(__name__)

RECEIVE_BYTES: Final = 65536


async def serve_parallel_stream(stream: trio.abc.Stream, service: PrinterService, *, peer: str) -> None:
    """Read one consumer into the printer's queue until it ends (EOF or gone),
    or refuse it when the port is in use.  The stream is left open."""
    try:
        async with service.attach(peer) as session:
            try:
                while data := await stream.receive_some(RECEIVE_BYTES):
                    session.put(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("%s: %s went away: %s", service.name, peer, str(exc) or type(exc).__name__)
    except PortBusy as exc:
        await refuse_busy(stream, service.name, peer, exc.reason)


async def serve_parallel_listen(
    host: str | None,
    port: int,
    service: PrinterService,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept consumers on HOST:PORT for `service` (which the caller runs) until cancelled.

    Reports the bound listeners through `task_status.started()` (bind port 0
    and read `listener.socket.getsockname()`).
    """

    async def serve_one(stream: trio.SocketStream, peer: str) -> None:
        await serve_parallel_stream(stream, service, peer=peer)

    await serve_consumers(host, port, service.name, serve_one, (ParallelError,), task_status=task_status)
