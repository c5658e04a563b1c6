"""The VM side of usbredir, on trio: what `redirgate probe` and benchmarks speak.

`UsbredirGuest` drives a `UsbredirConnection` in the guest role over any trio
stream: it sends hello, collects the device announcement (interface_info,
ep_info, device_connect), and offers request/reply calls (`control`, `bulk`,
`set_configuration`, ...) that match replies to requests by id.  Stream data
(interrupt, iso and buffered bulk packets) is queued per endpoint.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

import trio

from redirgate.proto.usbredir import (
    CLOSED,
    NEED_DATA,
    Cap,
    RemoteProtocolError,
    Role,
    UsbredirConnection,
    messages as m,
)

__all__ = ["UsbredirGuest", "GuestError", "AnnouncedDevice"]

log = logging.getLogger(__name__)


class GuestError(Exception):
    """The host misbehaved, went away, or a request failed; names the peer."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"{peer}: {reason}")


@dataclass
class AnnouncedDevice:
    connect: m.DeviceConnect
    interface_info: m.InterfaceInfo
    ep_info: m.EpInfo


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    reply: m.Message | None = None


#: One read takes up to this much (a 64 KiB transfer and more).
_RECEIVE_BYTES = 256 * 1024


class UsbredirGuest:
    """Guest role over a stream; use `async with UsbredirGuest(stream, peer=...)`."""

    def __init__(
        self, stream: trio.abc.Stream, *, peer: str, caps: Cap = Cap.all_known() & ~Cap.BULK_STREAMS,
        version: str = "redirgate probe",
    ) -> None:
        self.stream = stream
        #: a trio socket behind `stream` (trio.SocketStream), for recv_into and
        #: sendmsg without a copy; None: the stream's own receive_some/send_all
        sock = getattr(stream, "socket", None)
        self._socket = sock if hasattr(sock, "recv_into") and hasattr(sock, "sendmsg") else None
        self.peer = peer
        self.conn = UsbredirConnection(Role.GUEST, caps, version)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._stream_data: dict[int, deque[m.Message]] = {}
        self._stream_event = trio.Event()
        self._interface_info: m.InterfaceInfo | None = None
        self._ep_info: m.EpInfo | None = None
        self.device: AnnouncedDevice | None = None
        self._device_event = trio.Event()
        self.disconnects = 0
        self.closed_reason: str | None = None
        self._closed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._send_lock = trio.Lock()

    async def __aenter__(self) -> "UsbredirGuest":
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        await self.stream.send_all(self.conn.hello_bytes())
        self._nursery.start_soon(self._reader)
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(*exc)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- I/O
    async def _receive(self) -> None:
        """Read what the host sent into the parser (at least one byte, or EOF):
        straight into its buffer where the stream has a socket, no copy."""
        sock = self._socket
        if sock is None:
            self.conn.receive_data(await self.stream.receive_some(_RECEIVE_BYTES))
            return
        try:
            n = await sock.recv_into(self.conn.get_receive_buffer(_RECEIVE_BYTES))
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        self.conn.commit_received(n)

    async def _reader(self) -> None:
        try:
            while True:
                await self._receive()
                while True:
                    event = self.conn.next_event()
                    if event is NEED_DATA:
                        break
                    if event is CLOSED:
                        raise GuestError(self.peer, "the host closed the connection")
                    self._handle(event)  # type: ignore[arg-type]
        except (GuestError, RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.closed_reason = str(exc)
        finally:
            self._closed.set()
            for pending in self._pending.values():
                pending.done.set()
            self._device_event.set()
            self._stream_event.set()

    def _handle(self, event: m.Message) -> None:
        if isinstance(event, m.InterfaceInfo):
            self._interface_info = event
        elif isinstance(event, m.EpInfo):
            self._ep_info = event
        elif isinstance(event, m.DeviceConnect):
            assert self._interface_info is not None and self._ep_info is not None
            self.device = AnnouncedDevice(event, self._interface_info, self._ep_info)
            self._device_event.set()
        elif isinstance(event, m.DeviceDisconnect):
            self.device = None
            self.disconnects += 1
            self._device_event = trio.Event()
            if Cap.DEVICE_DISCONNECT_ACK in self.conn.shared_caps and self._nursery is not None:
                self._nursery.start_soon(self._send, m.DeviceDisconnectAck())
        elif isinstance(event, (m.IsoPacket, m.BufferedBulkPacket)) or (
            isinstance(event, m.InterruptPacket) and event.endpoint & 0x80
        ):
            data = bytes(event.data)  # type: ignore[union-attr]
            copy = type(event)(**{**event.as_dict(), "data": data})
            self._stream_data.setdefault(event.endpoint, deque()).append(copy)  # type: ignore[union-attr]
            self._stream_event.set()
        elif isinstance(event, m.Hello):
            pass
        else:
            pending = self._pending.get(event.id)
            if pending is not None and pending.reply is None:
                if isinstance(event, m.DataMessage):
                    event = type(event)(**{**event.as_dict(), "data": bytes(event.data)})
                pending.reply = event
                pending.done.set()
            elif isinstance(event, (m.IsoStreamStatus, m.InterruptReceivingStatus, m.BulkReceivingStatus)):
                self._stream_data.setdefault(event.endpoint, deque()).append(event)
                self._stream_event.set()

    async def _send(self, message: m.Message) -> None:
        """A large payload goes with its header in one sendmsg where the stream
        has a socket (the host sees the message at once), else in a second
        send; a small one is joined to its header."""
        async with self._send_lock:
            header, payload = self.conn.send_parts(message)
            sock = self._socket
            if sock is None or len(payload) < 4096:
                # small: joined; large without a socket: two sends, no copy
                await self.stream.send_all(header + bytes(payload) if len(payload) < 4096 else header)
                if len(payload) >= 4096:
                    await self.stream.send_all(payload)
                return
            try:
                sent = await sock.sendmsg([header, payload])
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if sent < len(header):  # a partial write: the rest goes the plain way
                await self.stream.send_all(header[sent:])
                sent = len(header)
            if sent - len(header) < len(payload):
                await self.stream.send_all(memoryview(payload)[sent - len(header) :])

    # ----------------------------------------------------------- requests
    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, message: m.Message) -> m.Message:
        """Send a request and wait for the reply with its id."""
        pending = self._pending[message.id] = _Pending()
        try:
            if self._closed.is_set():  # the reader already released every waiter
                raise GuestError(self.peer, self.closed_reason or "connection closed")
            await self._send(message)
            await pending.done.wait()
            if pending.reply is None:
                raise GuestError(self.peer, self.closed_reason or "connection closed")
            return pending.reply
        finally:
            self._pending.pop(message.id, None)

    async def wait_device(self) -> AnnouncedDevice:
        while self.device is None:
            if self._closed.is_set():
                raise GuestError(self.peer, self.closed_reason or "connection closed")
            await self._device_event.wait()
        return self.device

    async def wait_disconnect(self, known: int) -> None:
        """Wait until more than `known` device_disconnects have arrived."""
        while self.disconnects <= known:
            if self._closed.is_set():
                raise GuestError(self.peer, self.closed_reason or "connection closed")
            await trio.sleep(0.01)

    async def control(
        self, requesttype: int, request: int, value: int, index: int, length: int, data: bytes = b""
    ) -> tuple[int, bytes]:
        endpoint = requesttype & 0x80
        msg = m.ControlPacket(
            endpoint, request, requesttype, 0, value, index, len(data) if not endpoint else length,
            id=self.next_id(), data=data,
        )
        reply = await self.request(msg)
        assert isinstance(reply, m.ControlPacket)
        return reply.status, bytes(reply.data)

    async def bulk(self, endpoint: int, length: int = 0, data: bytes = b"") -> tuple[int, bytes | int]:
        """Bulk IN of up to `length` bytes -> (status, bytes); OUT -> (status, sent)."""
        if endpoint & 0x80:
            reply = await self.request(m.BulkPacket(endpoint, 0, length, 0, id=self.next_id()))
            assert isinstance(reply, m.BulkPacket)
            return reply.status, bytes(reply.data)
        reply = await self.request(m.BulkPacket(endpoint, 0, len(data), 0, id=self.next_id(), data=data))
        assert isinstance(reply, m.BulkPacket)
        return reply.status, reply.length

    async def set_configuration(self, value: int) -> m.ConfigurationStatus:
        reply = await self.request(m.SetConfiguration(value, id=self.next_id()))
        assert isinstance(reply, m.ConfigurationStatus)
        return reply

    async def set_alt_setting(self, interface: int, alt: int) -> m.AltSettingStatus:
        reply = await self.request(m.SetAltSetting(interface, alt, id=self.next_id()))
        assert isinstance(reply, m.AltSettingStatus)
        return reply

    async def send(self, message: m.Message) -> None:
        """Send a message that has no reply (reset, iso OUT packets, ...)."""
        await self._send(message)

    async def stream_packets(self, endpoint: int, count: int) -> list[m.Message]:
        """The next `count` stream messages (packets or statuses) of an endpoint."""
        got: list[m.Message] = []
        while len(got) < count:
            queue = self._stream_data.get(endpoint)
            if queue:
                got.append(queue.popleft())
                continue
            if self._closed.is_set():
                raise GuestError(self.peer, self.closed_reason or "connection closed")
            self._stream_event = trio.Event()
            await self._stream_event.wait()
        return got
