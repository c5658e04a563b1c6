"""A bounded byte ring: bytes kept until their consumer (or printer) takes them.

When full, the oldest bytes are overwritten and counted (`overflow_bytes`),
so a console that printed its boot messages to nobody keeps the newest
`capacity` bytes.  Shared by the serial service (the device's bytes while no
consumer is there) and the parallel service (the guest's print job while the
printer is away).  Plain data structure, no I/O, no locking (one trio task
writes, one reads).
"""

from __future__ import annotations

__all__ = ["Ring"]


class Ring:
    """Fixed-capacity FIFO of bytes that drops the oldest on overflow."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1 byte")
        self.capacity = capacity
        self._buf = bytearray(capacity)
        self._start = 0
        self._len = 0
        #: Bytes dropped (oldest first) since creation.
        self.overflow_bytes = 0

    def __len__(self) -> int:
        return self._len

    @property
    def free(self) -> int:
        return self.capacity - self._len

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append; returns how many old bytes were dropped to make room."""
        view = memoryview(data)
        dropped = 0
        if len(view) > self.capacity:
            dropped += len(view) - self.capacity
            view = view[-self.capacity :]
        excess = self._len + len(view) - self.capacity
        if excess > 0:
            self.consume(excess)
            dropped += excess
        end = (self._start + self._len) % self.capacity
        first = min(len(view), self.capacity - end)
        self._buf[end : end + first] = view[:first]
        self._buf[: len(view) - first] = view[first:]
        self._len += len(view)
        self.overflow_bytes += dropped
        return dropped

    def peek(self) -> memoryview:
        """The oldest contiguous run of bytes (may be less than len(self))."""
        end = min(self._start + self._len, self.capacity)
        return memoryview(self._buf)[self._start : end]

    def consume(self, n: int) -> None:
        n = min(n, self._len)
        self._start = (self._start + n) % self.capacity
        self._len -= n
        if self._len == 0:
            self._start = 0

    def clear(self) -> None:
        self._start = self._len = 0
