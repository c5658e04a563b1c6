"""The ordered send queue of one usbredir connection, with the reference's drop policy.

Everything the host engine sends goes through one `Outbox`, drained by one
writer task, so messages leave in the order they were queued (interface_info
and ep_info before the status that follows them).  Replies are never dropped:
a producer waits while more than `max_bytes` are queued.  Stream data (iso,
interrupt and buffered bulk packets) is dropped instead of queued when more
than 800 messages wait (usbredirhost.c), and iso packets also by the bytes
hysteresis of the reference; every drop is counted per endpoint.

How it writes.  Messages are copied into one send buffer allocated once per
connection (`BATCH_BYTES`), header and payload together, so a 64 KiB bulk
reply is one send, one TCP segment train: sending its 28-byte header on its
own (TCP_NODELAY) cost a second syscall and a second segment the peer had
to wake up for, several times what copying 64 KiB costs.  Only payloads
over `COPY_LIMIT` are sent from the caller's own buffer, after their header.

On a stream with the non-blocking fast path (`try_send` / `wait_sendable`:
PlainSocketStream, ZeroCopyTLSStream, PrefixedStream over them), a message
queued while the writer is idle is sent at once by whoever queued it,
without waking the writer task: no trip through trio's scheduler per reply.
The writer task only finishes what the socket would not take at once (it
waits for the socket) and reports a send error.  Data that was partly sent
is never touched until the rest is out (OpenSSL wants a retried write to
see the same bytes).  Other streams get `send_all` from the writer task.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from redirgate.transport import nonblocking

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

#: usbredirhost.c: stream packets are dropped beyond this many queued messages
MAX_QUEUED_STREAM_MESSAGES = 800

#: stream packets dropped in this process, iso and other (interrupt, bulk
#: receiving) apart: the client's metrics read them (a dropped packet is rare,
#: so counting it always costs nothing on the path that matters)
dropped_totals: dict[str, int] = {"iso": 0, "other": 0}
#: the send buffer: messages are copied into it and leave in one send
BATCH_BYTES = 256 * 1024
#: a payload above this is sent from its own buffer instead of copied
COPY_LIMIT = 128 * 1024

Payload = bytes | bytearray | memoryview


class Outbox:
    def __init__(self, *, max_bytes: int = 8 * 1024 * 1024, peer: str = "") -> None:
        self._queue: deque[tuple[bytes, Payload]] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._has_data = trio.Event()
        self._room = trio.Event()
        self._room.set()
        self._closed = False
        self.peer = peer
        self.dropped: dict[int, int] = {}
        self._warned: set[int] = set()
        self._iso_dropping: set[int] = set()
        self._batch = memoryview(bytearray(BATCH_BYTES))
        #: what is being sent, in order: slices of the batch, large payloads
        self._pending: deque[memoryview] = deque()
        #: the stream's non-blocking send, once `drain` runs on such a stream
        self._try_send: Callable[[memoryview], int | None] | None = None
        #: a send error met outside the writer task, for it to raise
        self._error: trio.BrokenResourceError | trio.ClosedResourceError | None = None

    @property
    def queued_messages(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def _append(self, header: bytes, payload: Payload) -> None:
        if self._closed:
            return
        self._queue.append((header, payload))
        self._bytes += len(header) + len(payload)
        if self._bytes > self._max_bytes:
            self._room = trio.Event()
        if self._try_send is not None and not self._pending and self._error is None:
            self._send_now()
            if not self._queue and not self._pending:
                return  # all out: the writer has nothing to do
        self._has_data.set()

    async def put(self, header: bytes, payload: Payload = b"") -> None:
        """Queue a message that must not be lost; waits while the queue is full."""
        while self._bytes > self._max_bytes and not self._closed:
            await self._room.wait()
        self._append(header, payload)

    @property
    def has_room(self) -> bool:
        """Whether `put` would queue at once (the byte bound is not passed)."""
        return self._bytes <= self._max_bytes or self._closed

    def put_nowait(self, header: bytes, payload: Payload = b"") -> None:
        """Queue a message that must not be lost, past the byte bound (for the
        few protocol messages sent from synchronous code)."""
        self._append(header, payload)

    def offer_stream(self, endpoint: int, header: bytes, payload: Payload, *, iso_ref: int = 0) -> bool:
        """Queue stream data unless the reference would drop it; False if dropped.

        `iso_ref` (pkts_per_urb x no_urbs x max_packet_size) enables the iso
        byte hysteresis: start dropping at 3 x ref queued bytes, stop below ref/2.
        """
        drop = len(self._queue) > MAX_QUEUED_STREAM_MESSAGES
        if iso_ref:
            if endpoint in self._iso_dropping:
                if self._bytes < iso_ref // 2:
                    self._iso_dropping.discard(endpoint)
                else:
                    drop = True
            elif self._bytes >= 3 * iso_ref:
                self._iso_dropping.add(endpoint)
                drop = True
        if drop:
            self.dropped[endpoint] = self.dropped.get(endpoint, 0) + 1
            dropped_totals["iso" if iso_ref else "other"] += 1
            if endpoint not in self._warned:
                self._warned.add(endpoint)
                log.warning(
                    "peer %s reads too slowly: dropping stream packets of endpoint %#04x",
                    self.peer,
                    endpoint,
                )
            return False
        self._append(header, payload)
        return True

    def close(self) -> None:
        self._closed = True
        self._has_data.set()
        self._room.set()

    # ------------------------------------------------------------ writing
    def _fill(self) -> None:
        """Move queued messages into the send buffer (only once everything
        pending is out: partly sent bytes stay as they are)."""
        queue = self._queue
        if self._pending or not queue:
            return
        batch = self._batch
        capacity = len(batch)
        n = 0
        while queue:
            header, payload = queue[0]
            hsize, psize = len(header), len(payload)
            large = psize > COPY_LIMIT
            if n + hsize + (0 if large else psize) > capacity:
                break
            queue.popleft()
            self._bytes -= hsize + psize
            batch[n : n + hsize] = header
            n += hsize
            if large:
                self._pending.append(batch[:n])
                self._pending.append(memoryview(payload).cast("B"))
                n = 0
                break
            if psize:
                batch[n : n + psize] = payload
                n += psize
        if n:
            self._pending.append(batch[:n])
        if self._bytes <= self._max_bytes:
            self._room.set()

    def _send_pending(self) -> bool:
        """Send what the socket takes without waiting; True when all is out."""
        assert self._try_send is not None
        pending = self._pending
        while pending:
            view = pending[0]
            sent = self._try_send(view)
            if not sent:  # None: would block (0 never comes for a non-empty view)
                return False
            if sent < len(view):
                pending[0] = view[sent:]
            else:
                pending.popleft()
        return True

    def _send_now(self) -> None:
        """Producer side, writer idle: send what can go without waiting.  A
        send error is kept for the writer task, which raises it."""
        try:
            # nothing is pending when this runs (see `_append`)
            while self._queue:
                self._fill()
                if not self._send_pending():
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._error = exc

    async def drain(self, stream: trio.abc.SendStream) -> None:
        """Writer loop on `stream` until closed: the non-blocking fast path
        where the stream has it (see the module docstring), else send_all."""
        if not nonblocking(stream):
            await self.drain_to(stream.send_all)
            return
        self._try_send = stream.try_send
        wait_sendable = stream.wait_sendable
        try:
            while True:
                if self._error is not None:
                    raise self._error
                self._fill()
                if self._pending:
                    if not self._send_pending():
                        await wait_sendable()
                    continue
                if self._closed:
                    return
                self._has_data = trio.Event()
                await self._has_data.wait()
        finally:
            self._try_send = None

    async def drain_to(self, send_all: Callable[[Payload], Awaitable[None]]) -> None:
        """Writer loop: send queued messages in order until closed, through
        `send_all` (for streams without the non-blocking fast path)."""
        while True:
            self._fill()
            while self._pending:
                await send_all(self._pending.popleft())
            if not self._queue:
                if self._closed:
                    return
                self._has_data = trio.Event()
                await self._has_data.wait()
