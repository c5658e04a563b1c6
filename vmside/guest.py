"""The VM side of usbredir, on trio: what `redirgate probe` and benchmarks speak.

`UsbredirGuest` drives a `UsbredirConnection` in the guest role over any trio
stream: it sends hello, collects the device announcement (interface_info,
ep_info, device_connect), and offers request/reply calls (`control`, `bulk`,
`set_configuration`, ...) that match replies to requests by id.  Stream data
(interrupt, iso and buffered bulk packets) is queued per endpoint.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import os
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_readable, wait_task_rescheduled, wait_writable

from redirgate.proto.usbredir import (
    CLOSED,
    NEED_DATA,
    Cap,
    RemoteProtocolError,
    Role,
    UsbredirConnection,
)
from redirgate.proto.usbredir import (
    messages as m,
)

__all__ = ["AnnouncedDevice", "GuestError", "UsbredirGuest"]

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


class _Pending:
    """One request waiting for its reply.  The requester parks on its own task
    (no trio.Event per request) and the reader reschedules it; `data` is the
    reply's payload copied out of the parser's buffer (its `reply.data` view
    is only valid until the next read)."""

    __slots__ = ("data", "reply", "task")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.reply: m.Message | None = None
        self.data: bytes = b""

    def abort(self, _: object) -> Abort:
        # cancelled while parked: the reader must not reschedule it any more
        self.task = None
        return Abort.SUCCEEDED

    def wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)


#: One read takes up to this much (a 64 KiB transfer and more).
_RECEIVE_BYTES = 256 * 1024
#: Payloads under this go joined to their header in one send.
_JOIN_BYTES = 4096
#: Reads in a row that may fill the whole buffer before the reader yields, so
#: that a host sending without pause cannot starve the tasks it wakes.
_READS_BEFORE_YIELD = 4


def _fast_fd_io(sock: Any) -> bool:
    """Whether `sock` (a stream's socket) is an OS socket that the reader and
    the sender may read and write by file descriptor (os.readv / os.writev)."""
    if sock is None or not hasattr(os, "readv") or not hasattr(os, "writev"):
        return False
    try:
        return isinstance(sock.fileno(), int) and sock.fileno() >= 0 and isinstance(sock.did_shutdown_SHUT_WR, bool)
    except (AttributeError, NotImplementedError, OSError):
        return False


#: errnos that trio.SocketStream reports as its own closed socket (EBADF on
#: Unix); the rest of OSError is a broken connection
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def _raise_as_send_all(exc: OSError) -> NoReturn:
    """Raise what trio.SocketStream.send_all raises for `exc`: the small
    messages and the rest of a partly written one went through it before
    descriptor writes, and the errors stay the same."""
    if exc.errno in _CLOSED_ERRNOS:
        raise trio.ClosedResourceError("this socket was already closed") from None
    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


def _closed_reason(exc: BaseException) -> str:
    """'the host closed the connection', with the OS's word for how."""
    cause = exc.__cause__
    how = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
    return f"the host closed the connection ({how.lower()})" if how else "the host closed the connection"


class UsbredirGuest:
    """Guest role over a stream; use `async with UsbredirGuest(stream, peer=...)`.

    Where the stream is a trio.SocketStream, reads and writes go straight to
    its file descriptor and wait for readiness only when the kernel says they
    would block: trio's socket methods end every call that did not block with
    a schedule point, and with one transfer in flight each of those costs a
    whole scheduler pass.  A request is a cancel point before it sends and a
    schedule point where it waits for its reply, as before.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: str,
        caps: Cap = Cap.all_known() & ~Cap.BULK_STREAMS,
        version: str = "redirgate probe",
    ) -> None:
        self.stream = stream
        #: the OS socket behind `stream` (trio.SocketStream), read and written
        #: by descriptor; None: the stream's own receive_some/send_all
        sock = getattr(stream, "socket", None)
        self._socket = sock if _fast_fd_io(sock) else None
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

    async def __aenter__(self) -> UsbredirGuest:
        try:
            await self.stream.send_all(self.conn.hello_bytes())  # before the nursery: nothing to unwind
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise GuestError(self.peer, _closed_reason(exc)) from exc
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(self._reader)
        return self

    @property
    def hello_received(self) -> bool:
        """Whether the host's usbredir hello has arrived."""
        return bool(self.conn.have_peer_hello)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(exc_type, exc, tb)

    # ---------------------------------------------------------------- I/O
    async def _read_stream(self) -> None:
        conn = self.conn
        while True:
            conn.receive_data(await self.stream.receive_some(_RECEIVE_BYTES))
            self._parse()

    async def _read_socket(self) -> None:
        """Read straight into the parser's buffer, no copy.  After a read that
        left the socket empty (less than the buffer offered) wait for
        readiness first rather than try a read that would fail; after a full
        one read on, but yield now and then."""
        sock = self._socket
        assert sock is not None
        conn = self.conn
        readv = os.readv
        full_reads = 0
        while True:
            if sock.fileno() != -1:  # closed: the read below reports it as trio did
                await wait_readable(sock)
            while True:
                buf = conn.get_receive_buffer(_RECEIVE_BYTES)
                try:
                    n = readv(sock.fileno(), (buf,))
                except BlockingIOError:
                    break
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                conn.commit_received(n)
                self._parse()
                if n < len(buf):
                    break
                full_reads += 1
                if full_reads >= _READS_BEFORE_YIELD:
                    full_reads = 0
                    await trio.lowlevel.checkpoint()

    def _parse(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if event is CLOSED:
                raise GuestError(self.peer, "the host closed the connection")
            self._handle(event)

    async def _reader(self) -> None:
        try:
            if self._socket is not None:
                await self._read_socket()
            else:
                await self._read_stream()
        except GuestError as exc:
            self.closed_reason = exc.reason  # the peer is named once, by whoever raises with it
        except RemoteProtocolError as exc:
            self.closed_reason = f"malformed usbredir from the host: {exc}"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.closed_reason = _closed_reason(exc)
        finally:
            self._closed.set()
            for pending in self._pending.values():
                pending.wake()
            self._device_event.set()
            self._stream_event.set()

    def _handle(self, event: m.Message) -> None:
        cls = type(event)
        if cls is m.ControlPacket or cls is m.BulkPacket:  # the replies that matter for speed
            self._deliver(event)
        elif isinstance(event, m.InterfaceInfo):
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
            copy = dataclasses.replace(event, data=bytes(event.data))
            self._stream_data.setdefault(event.endpoint, deque()).append(copy)
            self._stream_event.set()
        elif isinstance(event, m.Hello):
            pass
        elif not self._deliver(event) and isinstance(
            event, (m.IsoStreamStatus, m.InterruptReceivingStatus, m.BulkReceivingStatus)
        ):
            self._stream_data.setdefault(event.endpoint, deque()).append(event)
            self._stream_event.set()

    def _deliver(self, event: m.Message) -> bool:
        """Hand `event` to the request waiting for its id (its payload copied
        out of the parser's buffer); False when none waits for it."""
        pending = self._pending.get(event.id)
        if pending is None or pending.reply is not None:
            return False
        if isinstance(event, m.DataMessage):
            pending.data = bytes(event.data)
        pending.reply = event
        pending.wake()
        return True

    async def _send(self, message: m.Message) -> None:
        """A large payload goes with its header in one write where the stream
        has a socket (the host sees the message at once), else in a second
        send; a small one is joined to its header."""
        sock = self._socket
        if sock is None:
            async with self._send_lock:
                header, payload = self.conn.send_parts(message)
                if len(payload) < _JOIN_BYTES:
                    await self.stream.send_all(header + bytes(payload))
                else:  # two sends, no copy
                    await self.stream.send_all(header)
                    await self.stream.send_all(payload)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._send_lock
        if lock.locked():  # another message is part-way out: queue behind it
            async with lock:
                await self._write(sock, *self.conn.send_parts(message))
            return
        header, payload = self.conn.send_parts(message)
        left = self._write_now(sock, header, payload)
        if left is not None:
            # The socket took part of it: hold the lock until the rest is out.
            # Taken without a cancel point (it is free: nothing ran since the
            # check), so a cancellation cannot leave the message cut here.
            lock.acquire_nowait()
            try:
                await self._write_rest(sock, *left)
            finally:
                lock.release()

    def _write_now(self, sock: Any, header: bytes, payload: m.Buffer) -> tuple[m.Buffer, m.Buffer] | None:
        """Write what the socket takes now without blocking: what is left
        (header part, payload part), or None."""
        try:
            if len(payload) < _JOIN_BYTES:  # small: joined to its header
                if sock.did_shutdown_SHUT_WR:
                    raise trio.ClosedResourceError("can't send data after sending EOF")
                data = header + bytes(payload) if payload else header
                try:
                    sent = os.write(sock.fileno(), data)
                except OSError as exc:
                    if isinstance(exc, BlockingIOError):
                        raise
                    _raise_as_send_all(exc)
                return None if sent == len(data) else (memoryview(data)[sent:], b"")
            try:  # large: header and payload in one write, as trio's sendmsg was
                sent = os.writev(sock.fileno(), (header, payload))
            except OSError as exc:
                if isinstance(exc, BlockingIOError):
                    raise
                raise trio.BrokenResourceError(str(exc)) from exc
        except BlockingIOError:
            return header, payload
        if sent < len(header):
            return memoryview(header)[sent:], payload
        sent -= len(header)
        return None if sent == len(payload) else (b"", memoryview(payload)[sent:])

    async def _write(self, sock: Any, header: bytes, payload: m.Buffer) -> None:
        left = self._write_now(sock, header, payload)
        if left is not None:
            await self._write_rest(sock, *left)

    async def _write_rest(self, sock: Any, *parts: m.Buffer) -> None:
        """Finish a message the socket took part of, waiting until it is writable."""
        for part in parts:
            view = memoryview(part)
            while len(view):
                try:
                    sent = os.write(sock.fileno(), view)
                except BlockingIOError:
                    await wait_writable(sock)
                    continue
                except OSError as exc:
                    _raise_as_send_all(exc)
                view = view[sent:]

    # ----------------------------------------------------------- requests
    def next_id(self) -> int:
        return next(self._ids)

    async def _exchange(self, message: m.Message) -> _Pending:
        """Send a request and wait for the reply with its id (in `.reply`)."""
        msg_id = message.id
        pending = self._pending[msg_id] = _Pending()
        try:
            if self._closed.is_set():  # the reader already released every waiter
                raise GuestError(self.peer, self.closed_reason or "connection closed")
            await self._send(message)
            if pending.reply is None and not self._closed.is_set():
                pending.task = current_task()
                await wait_task_rescheduled(pending.abort)
            else:
                await trio.lowlevel.checkpoint()
            if pending.reply is None:
                raise GuestError(self.peer, self.closed_reason or "connection closed")
            return pending
        finally:
            self._pending.pop(msg_id, None)

    async def request(self, message: m.Message) -> m.Message:
        """Send a request and wait for the reply with its id."""
        pending = await self._exchange(message)
        reply = pending.reply
        assert reply is not None
        return dataclasses.replace(reply, data=pending.data) if isinstance(reply, m.DataMessage) else reply

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
            endpoint,
            request,
            requesttype,
            0,
            value,
            index,
            len(data) if not endpoint else length,
            id=next(self._ids),
            data=data,
        )
        pending = await self._exchange(msg)
        reply = pending.reply
        assert isinstance(reply, m.ControlPacket)
        return reply.status, pending.data

    async def bulk(self, endpoint: int, length: int = 0, data: bytes = b"") -> tuple[int, bytes | int]:
        """Bulk IN of up to `length` bytes -> (status, bytes); OUT -> (status, sent)."""
        if endpoint & 0x80:
            pending = await self._exchange(m.BulkPacket(endpoint, 0, length, 0, id=next(self._ids)))
            reply = pending.reply
            assert isinstance(reply, m.BulkPacket)
            return reply.status, pending.data
        pending = await self._exchange(m.BulkPacket(endpoint, 0, len(data), 0, id=next(self._ids), data=data))
        reply = pending.reply
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
        if self._socket is not None:  # still a schedule point, as trio's sends are
            await trio.lowlevel.cancel_shielded_checkpoint()

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
