"""Serving a serial port to consumers: one connection, or a TCP listener (standalone mode).

`serve_serial_stream` is the one place a consumer connection meets a
`PortService`; standalone mode (`serve_serial_listen`, ser2net's job) and the
gateway's channels both use it.  It attaches the consumer (one at a time; a
second one is told the port is in use, or takes over when the service allows
it), then moves bytes both ways - "raw", or telnet/RFC 2217 through
`rfc2217.ComPortServer` - until either side ends.

Backpressure: consumer bytes go through `Session.write`, which waits for room
in the service's bounded TX buffer, so a slow port stops us reading the
consumer (TCP then slows it) and nothing it sent is ever dropped.  When the
consumer ends (EOF), the bytes still buffered are given time to reach the
device (their transmit time at the current baud rate plus a margin).

Raw mode is `raw.RawPath`: trio tasks on the stream's non-blocking moves
where it has them (the gateway's TLS data connection; a TCP consumer,
through a `PlainSocketStream` view of its fd), the awaitable methods on
other streams (tests' memory streams), and with a relay reactor (a gateway
channel's, `SerialExports`) the port's fd and the data connection's socket
lent to the reactor thread while plain bytes flow.

Shutdown: everything runs in nurseries; the caller cancels.  A takeover
cancels the old session's scope, which ends `serve_serial_stream` normally.
This module never closes the stream it was given; `serve_serial_listen`
closes the ones it accepted.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

import trio

from redirgate.client.listen import refuse_busy, serve_consumers
from redirgate.client.serial.errors import PortBusy, SerialError
from redirgate.client.serial.raw import DRAIN_EXTRA_S, RawPath
from redirgate.client.serial.rfc2217 import ComPortServer
from redirgate.client.serial.service import PortService
from redirgate.client.serial.settings import LineSettings
from redirgate.transport import RelayReactor

__all__ = ["PROTOCOLS", "serve_serial_listen", "serve_serial_stream"]

log = logging.getLogger(__name__)

PROTOCOLS: Final = ("raw", "rfc2217")


async def serve_serial_stream(
    stream: trio.abc.Stream,
    service: PortService,
    *,
    peer: str,
    protocol: str = "raw",
    settings: LineSettings | None = None,
    mover: RelayReactor | None = None,
) -> None:
    """Serve one consumer on an open stream until either side ends.

    `protocol`: "raw" (bytes both ways) or "rfc2217" (telnet + Com Port
    Control).  `settings`, when given (a gateway route's), are applied to the
    port for this consumer; a setting the port refuses is logged naming it and
    the port keeps its own.  `mover`: the relay reactor a raw session lends
    the port and the stream's socket to while plain bytes flow
    (`client/serial/raw.py`).  Returns normally when the consumer ends, goes
    away, is refused (port in use) or is taken over; the stream is left open
    for the caller.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    try:
        async with service.attach(peer) as session:
            if settings is not None:
                try:
                    now = session.apply(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)})
                    log.info("%s: %s asked for %s; the port is set to it", service.name, peer, now.describe())
                except SerialError as exc:
                    log.error(
                        "%s: the route's line settings for %s cannot be applied: %s; the port keeps %s",
                        service.name,
                        peer,
                        exc,
                        session.settings.describe(),
                    )
            if protocol == "raw":
                await RawPath(stream, session, peer, mover).run()
            else:
                await ComPortServer(stream, session, peer=peer, drain_extra_s=DRAIN_EXTRA_S).run()
        if session.kicked_by is not None:
            log.info("%s: %s was taken over by %s", service.name, peer, session.kicked_by)
    except PortBusy as exc:
        await refuse_busy(stream, service.name, peer, exc.reason)


async def serve_serial_listen(
    host: str | None,
    port: int,
    service: PortService,
    *,
    protocol: str = "raw",
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept consumers on HOST:PORT for `service` (which the caller runs) until cancelled.

    Reports the bound listeners through `task_status.started()` (bind port 0
    and read `listener.socket.getsockname()`).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")

    async def serve_one(stream: trio.SocketStream, peer: str) -> None:
        await serve_serial_stream(stream, service, peer=peer, protocol=protocol)

    await serve_consumers(host, port, service.name, serve_one, (SerialError,), label=protocol, task_status=task_status)
