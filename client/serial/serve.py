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

Raw mode on a stream with non-blocking moves (the gateway's TLS data
connection; a TCP consumer, through a `PlainSocketStream` view of its fd)
uses them: consumer bytes are read into one buffer and go to the port
without a scheduler pass of their own, and device bytes go through
`Session.forward_to`, where the port's RX pump sends them itself while
nothing is queued.  Other streams (tests' memory streams) take the
awaitable methods; the behaviour is the same.

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
from redirgate.client.serial.rfc2217 import RECEIVE_BYTES, ComPortServer
from redirgate.client.serial.service import PortService, Session
from redirgate.client.serial.settings import LineSettings
from redirgate.transport import FULL_RECORD_BYTES, NonBlockingStream, PlainSocketStream, nonblocking

__all__ = ["PROTOCOLS", "serve_serial_listen", "serve_serial_stream"]

log = logging.getLogger(__name__)

PROTOCOLS: Final = ("raw", "rfc2217")
#: Added to the transmit time of the buffered bytes when a consumer leaves.
DRAIN_EXTRA_S: Final = 2.0


async def serve_serial_stream(
    stream: trio.abc.Stream,
    service: PortService,
    *,
    peer: str,
    protocol: str = "raw",
    settings: LineSettings | None = None,
) -> None:
    """Serve one consumer on an open stream until either side ends.

    `protocol`: "raw" (bytes both ways) or "rfc2217" (telnet + Com Port
    Control).  `settings`, when given (a gateway route's), are applied to the
    port for this consumer; a setting the port refuses is logged naming it and
    the port keeps its own.  Returns normally when the consumer ends, goes
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
                await _serve_raw(stream, session, peer)
            else:
                await ComPortServer(stream, session, peer=peer, drain_extra_s=DRAIN_EXTRA_S).run()
        if session.kicked_by is not None:
            log.info("%s: %s was taken over by %s", service.name, peer, session.kicked_by)
    except PortBusy as exc:
        await refuse_busy(stream, service.name, peer, exc.reason)


async def _serve_raw(stream: trio.abc.Stream, session: Session, peer: str) -> None:
    name = session.service.name
    fast = _nonblocking_view(stream)

    async def consumer_to_port(scope: trio.CancelScope) -> None:
        try:
            if fast is not None:
                await _consumer_to_port_fast(fast, session)
            else:
                while data := await stream.receive_some(RECEIVE_BYTES):
                    await session.write(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: %s went away: %s", name, peer, str(exc) or type(exc).__name__)
        else:
            await session.drain(DRAIN_EXTRA_S)
        scope.cancel()

    async def port_to_consumer(scope: trio.CancelScope) -> None:
        try:
            if fast is not None:
                await session.forward_to(fast, RECEIVE_BYTES)
            else:
                while True:
                    await stream.send_all(await session.receive_some(RECEIVE_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: %s stopped reading: %s", name, peer, str(exc) or type(exc).__name__)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer_to_port, nursery.cancel_scope)
        nursery.start_soon(port_to_consumer, nursery.cancel_scope)


def _nonblocking_view(stream: trio.abc.Stream) -> NonBlockingStream | None:
    """`stream` itself when it has non-blocking moves (the gateway's TLS data
    connection), a view of a plain trio socket stream's fd that has them (a
    standalone consumer; not ours to close), else None (the awaitable
    methods are used)."""
    if nonblocking(stream):
        return stream
    if isinstance(stream, trio.SocketStream):
        return PlainSocketStream(stream)
    return None


async def _consumer_to_port_fast(stream: NonBlockingStream, session: Session) -> None:
    """Consumer bytes to the port until EOF, on non-blocking moves: a chunk
    that is there costs a read and the port write, and a scheduler pass only
    for the wait before it.  Errors of the stream propagate.

    After a short read (less than `FULL_RECORD_BYTES`: the socket had no more, or
    a TLS record that is not part of a train of full ones) the next step is
    the wait, not another read that would only say "nothing yet": typed
    bytes come one burst at a time, and if more did arrive the wait returns
    at once."""
    buf = bytearray(RECEIVE_BYTES)
    view = memoryview(buf)
    try_receive_into, wait_receivable = stream.try_receive_into, stream.wait_receivable
    waited = drained = False
    while True:
        n = None if drained else try_receive_into(buf)
        if n is None:
            await wait_receivable()
            waited, drained = True, False
            continue
        if not n:
            return
        await session.write(view[:n])  # copies what the port does not take at once
        if not waited:
            # bytes that were already there: a consumer that floods faster
            # than we move must not starve the loop or miss a cancellation
            await trio.lowlevel.checkpoint()
        waited = False
        drained = n < FULL_RECORD_BYTES


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
