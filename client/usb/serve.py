"""Standalone mode: serve a device to QEMU directly, like usbredirserver/usbredirect.

`serve_listen` accepts QEMU's `-chardev socket,host=...,port=...` connections,
one VM at a time (a second one is refused while the first is served), and
offers the device again to the next connection after a VM disconnects.
`serve_connect` dials a QEMU chardev that listens (`server=on`), retrying
while it is not there, like `usbredirect --to`.  `watch_presence` says, one
line per change, whether the device is plugged in (or refused, and why), so
a device that is not there is never a silent wait; it does not look while a
session holds the device (that session's engine watches it then).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import trio

from redirgate.client.listen import peer_of
from redirgate.client.usb.engine import DeviceSource, HostEngine
from redirgate.client.usb.errors import USB_CALL_ERRORS
from redirgate.client.usb.source import SelectorSource, device_name
from redirgate.transport import PlainSocketStream

__all__ = ["peer_name", "serve_connect", "serve_listen", "watch_presence"]

log = logging.getLogger(__name__)


def peer_name(stream: trio.SocketStream) -> str:
    return peer_of(stream)


def _tune(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)


async def serve_listen(
    host: str,
    port: int,
    source: DeviceSource,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    on_session: Callable[[HostEngine], None] | None = None,
) -> None:
    """Accept usbredir guests on HOST:PORT; reports the bound listeners."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    busy = False

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal busy
        peer = peer_name(stream)
        if busy:
            log.warning("refusing %s: %s is already served to another VM", peer, source.describe())
            await stream.aclose()
            return
        busy = True
        try:
            _tune(stream)
            log.info("usbredir guest connected from %s for %s", peer, source.describe())
            # PlainSocketStream: the engine's non-blocking fast path (outbox.py)
            engine = HostEngine(PlainSocketStream(stream), source, peer=peer)
            if on_session is not None:
                on_session(engine)
            await engine.run()
        finally:
            busy = False
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async with trio.open_nursery() as nursery:
        task_status.started(listeners)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def serve_connect(host: str, port: int, source: DeviceSource, *, retry_interval_s: float = 1.0) -> None:
    """Dial a listening QEMU chardev, serve it, and dial again when it closes."""
    logged = False
    while True:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            if not logged:
                log.info("waiting for %s:%d (%s)", host, port, exc)
                logged = True
            await trio.sleep(retry_interval_s)
            continue
        logged = False
        async with stream:
            _tune(stream)
            log.info("connected to usbredir guest at %s:%d", host, port)
            await HostEngine(PlainSocketStream(stream), source, peer=f"{host}:{port}").run()
        await trio.sleep(retry_interval_s)


async def watch_presence(source: SelectorSource, report: Callable[[str], None], *, interval_s: float = 1.0) -> None:
    """Call `report` with one line each time the device comes, goes or is
    refused (and once at the start), until cancelled.  Looks every
    `interval_s`; a device's strings are read only when it first shows up."""
    last_key: object = None
    while True:
        # while a session holds the device, its engine watches it (and says when it goes): looking
        # here as well opened the device a second time every interval, which cost a thin client
        # CPU and woke the session's libusb event handling (a new and a closed pollfd)
        await source.until_unheld()
        try:
            dev, key, refused = await trio.to_thread.run_sync(source.look)
        except USB_CALL_ERRORS as exc:
            dev, key, refused = None, None, {}
            log.debug("cannot look for %s: %s", source.describe(), exc)
        state = (key, tuple(sorted(refused.items())))
        if state != last_key:
            last_key = state
            if dev is not None:
                name = await trio.to_thread.run_sync(device_name, dev)
                report(f"{source.describe()}: {name} is plugged in")
            elif refused:
                report("; ".join(f"refusing {name}: {reason}" for name, reason in refused.items()))
            else:
                report(f"{source.describe()}: no such USB device is plugged in; waiting for it")
        await trio.sleep(interval_s)
