"""The ordered send queue of one usbredir connection, with the reference's drop policy.

Everything the host engine sends goes through one `Outbox`, drained by one
writer task, so messages leave in the order they were queued (interface_info
and ep_info before the status that follows them).  Replies are never dropped:
a producer waits while more than `max_bytes` are queued.  Stream data (iso,
interrupt and buffered bulk packets) is dropped instead of queued when more
than 800 messages wait (usbredirhost.c), and iso packets also by the bytes
hysteresis of the reference; every drop is counted per endpoint.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import trio

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

#: usbredirhost.c: stream packets are dropped beyond this many queued messages
MAX_QUEUED_STREAM_MESSAGES = 800
#: small messages are coalesced into one send of at most this many bytes
COALESCE_BYTES = 64 * 1024

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
        self._has_data.set()
        if self._bytes > self._max_bytes:
            self._room = trio.Event()

    async def put(self, header: bytes, payload: Payload = b"") -> None:
        """Queue a message that must not be lost; waits while the queue is full."""
        while self._bytes > self._max_bytes and not self._closed:
            await self._room.wait()
        self._append(header, payload)

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

    async def drain_to(self, send_all: Callable[[Payload], Awaitable[None]]) -> None:
        """Writer loop: send queued messages in order until closed.

        Small messages are coalesced into one buffer so a burst of replies
        costs one send; large payloads go out as they are, uncopied.
        """
        batch = bytearray()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._has_data = trio.Event()
                await self._has_data.wait()
                continue
            header, payload = self._queue.popleft()
            size = len(header) + len(payload)
            self._bytes -= size
            if len(payload) > COALESCE_BYTES // 4:
                if batch:
                    await send_all(batch)
                    batch = bytearray()
                await send_all(header)
                await send_all(payload)
            else:
                batch += header
                if payload:
                    batch += payload
                if not self._queue or len(batch) >= COALESCE_BYTES:
                    await send_all(batch)
                    batch = bytearray()
            if self._bytes <= self._max_bytes:
                self._room.set()
