"""Certified but hostile thin clients on real TLS sockets (tests/gateway).

`HostileClient(port, context)` dials the tunnel port with a real client
certificate and speaks the real codec (`TunnelConnection`), then does what
a test asks: flood inventory updates, stay silent, ...  `connect()` says
hello and reads the gateway's; `answer_heartbeats()` runs as a task so the
session stays up while the test floods.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import trio

from redirgate.proto import tunnel as t
from redirgate.transport import ClientContext, ZeroCopyTLSStream


def usb_entries(start: int, count: int, *, description: str = "") -> tuple[t.DeviceEntry, ...]:
    """`count` distinct USB devices numbered from `start` (serials S<n>)."""
    return tuple(
        t.DeviceEntry(
            id=f"usb:1209:0001:S{n}",
            kind="usb",
            vendor_id=0x1209,
            product_id=1,
            serial=f"S{n}",
            description=description,
        )
        for n in range(start, start + count)
    )


class HostileClient:
    """A certified client with the real codec, doing what the test says."""

    def __init__(self, port: int, context: ClientContext) -> None:
        self.port = port
        self.context = context
        self.conn = t.TunnelConnection("client")
        self.stream: ZeroCopyTLSStream | None = None
        self._lock = trio.Lock()
        #: OpenChannel requests and the Error the gateway sent, as `answer_heartbeats` reads them
        self.opens_in, self.opens = trio.open_memory_channel[t.OpenChannel](100)
        self.error: t.Error | None = None

    async def connect(self, *, inventory: Sequence[t.DeviceEntry] = ()) -> None:
        hello = await self.hello()
        assert isinstance(hello, t.GatewayHello), hello
        await self.send(t.Inventory(tuple(inventory)))

    async def hello(self) -> t.Event:
        """Dial, say hello; the gateway's answer (its hello, an Error, or CLOSED)."""
        self.stream = await self.dial()
        await self.send(t.ClientHello(software="hostile test client"))
        return await self.next_event()

    async def dial(self) -> ZeroCopyTLSStream:
        sock = socket.create_connection(("127.0.0.1", self.port))
        stream = ZeroCopyTLSStream(
            sock, self.context.ssl_context, server_side=False, server_hostname=self.context.server_name
        )
        try:
            await stream.do_handshake(10.0)
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def attach(self, channel_id: int, token: bytes) -> tuple[ZeroCopyTLSStream, t.AttachResult]:
        """A data connection for `channel_id`: (the stream, the gateway's answer)."""
        stream = await self.dial()
        attach = t.AttachConnection("client")
        await stream.send_all(attach.send(t.Attach(channel_id, token)))
        while (result := attach.next_event()) is t.NEED_DATA:
            attach.receive_data(await stream.receive_some(65536))
        assert isinstance(result, t.AttachResult), result
        return stream, result

    async def send(self, message: t.TunnelMessage) -> None:
        assert self.stream is not None
        async with self._lock:
            await self.stream.send_all(self.conn.send(message))

    async def next_event(self) -> t.Event:
        assert self.stream is not None
        while (event := self.conn.next_event()) is t.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        return event

    async def answer_heartbeats(self) -> None:
        """Keep the session alive (run as a task), keep what the gateway asks or says;
        returns when the gateway closes."""
        while True:
            event = await self.next_event()
            if event is t.CLOSED:
                return
            if isinstance(event, t.Heartbeat):
                await self.send(t.HeartbeatAck(event.seq))
            elif isinstance(event, t.OpenChannel):
                await self.opens_in.send(event)
            elif isinstance(event, t.Error):
                self.error = event

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
