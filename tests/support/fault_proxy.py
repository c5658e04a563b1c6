"""A TCP proxy on loopback that breaks the network on command (issue 16's fault tests).

    async with fault_proxy(("127.0.0.1", gateway_port)) as proxy:
        ...dial ("127.0.0.1", proxy.port) instead of the gateway...
        proxy.pause()      # stop forwarding both ways; connections stay open (a stall, a blip)
        proxy.resume()     # forward again: everything held arrives, in order
        proxy.reset()      # every current connection ends with a TCP RST on both sides
                           # (SO_LINGER 0), the way a NAT or firewall drops it
        proxy.source = "127.0.0.2"   # new connections reach the target from this address
                                     # (the client came back from another address)

The proxy keeps listening through all of these, so a peer can redial.
`pause` holds bytes in the kernel's socket buffers and at most one read
chunk per direction in the proxy (`held`), so a long pause fills the
sender's buffers and it blocks, as on a real stalled path.  Everything runs
in one nursery the context manager owns; leaving it closes every
connection and the listener.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

__all__ = ["FaultProxy", "fault_proxy"]

CHUNK = 65536
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    """One proxied connection: the accepted side and the dialled side."""

    near: trio.SocketStream
    far: trio.SocketStream | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    reset: bool = False


class FaultProxy:
    """See the module docstring.  `port` is where to dial."""

    def __init__(self, target: tuple[str, int], listener: trio.SocketListener) -> None:
        self.target = target
        self._listener = listener
        self.port: int = listener.socket.getsockname()[1]
        self._flowing = trio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        #: connections accepted so far, and resets done
        self.accepted = 0
        self.resets = 0
        #: bytes read and not yet forwarded (while paused)
        self.held = 0
        #: the local address the proxy dials the target from (None: the kernel's choice)
        self.source: str | None = None

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def pause(self) -> None:
        if not self.paused:
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def reset(self) -> int:
        """RST every current connection (both sides); returns how many."""
        links = list(self._links)
        for link in links:
            link.reset = True
            link.scope.cancel()
        self.resets += 1
        return len(links)

    async def _serve(self, nursery: trio.Nursery) -> None:
        while True:
            near = await self._listener.accept()
            assert isinstance(near, trio.SocketStream)
            self.accepted += 1
            link = _Link(near)
            self._links.add(link)
            nursery.start_soon(self._run_link, link)

    async def _run_link(self, link: _Link) -> None:
        try:
            with link.scope:
                link.far = await trio.open_tcp_stream(*self.target, local_address=self.source)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._pump, link.near, link.far)
                    pumps.start_soon(self._pump, link.far, link.near)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            link.reset = True  # one side broke (a pump's error comes in a group): pass the break on
        finally:
            self._links.discard(link)
            for stream in (link.near, link.far):
                if stream is None:
                    continue
                if link.reset:
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                stream.socket.close()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        while True:
            data = await src.receive_some(CHUNK)
            if not data:
                await dst.send_eof()
                return
            self.held += len(data)
            while self.paused:  # pause() puts a new unset event in place, resume() sets it
                await self._flowing.wait()
            self.held -= len(data)
            await dst.send_all(data)


@asynccontextmanager
async def fault_proxy(target: tuple[str, int], host: str = "127.0.0.1") -> AsyncIterator[FaultProxy]:
    """A running `FaultProxy` to `target`, listening on a free port of `host`."""
    listeners = await trio.open_tcp_listeners(0, host=host)
    proxy = FaultProxy(target, listeners[0])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy._serve, nursery)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
            proxy.resume()
    for link in proxy._links:  # accepted as the nursery was cancelled: its task never ran
        for stream in (link.near, link.far):
            if stream is not None:
                stream.socket.close()
    for listener in listeners:
        await listener.aclose()
