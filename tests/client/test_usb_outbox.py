"""Outbox: messages leave in order, header and payload in one send, sent at
once by the producer while the writer is idle (non-blocking streams), the
rest by the writer task; partly sent bytes kept as they are; the byte bound
and send errors; the send_all path for other streams."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.lowlevel
import trio.testing

from redirgate.client.usb.outbox import BATCH_BYTES, COPY_LIMIT, Outbox
from redirgate.transport import PlainSocketStream
from tests.support.waiting import until


class FakeNonBlockingStream(trio.abc.SendStream):
    """The fast-path protocol (try_send/wait_sendable) over a byte log whose
    room the test controls (None: unlimited)."""

    supports_nonblocking = True  # transport.NonBlockingStream

    def __init__(self, room: int | None = None) -> None:
        self.room = room
        self.sends: list[bytes] = []
        self.error: BaseException | None = None
        self._writable = trio.Event()
        self.waits = 0

    @property
    def received(self) -> bytes:
        return b"".join(self.sends)

    def try_send(self, view: memoryview) -> int | None:
        if self.error is not None:
            raise self.error
        n = len(view) if self.room is None else min(self.room, len(view))
        if n == 0:
            return None
        if self.room is not None:
            self.room -= n
        self.sends.append(bytes(view[:n]))
        return n

    async def wait_sendable(self) -> None:
        self.waits += 1
        await self._writable.wait()
        self._writable = trio.Event()

    def open(self, room: int | None) -> None:
        self.room = room
        self._writable.set()

    def try_receive_into(self, buffer: bytearray | memoryview) -> int | None:
        return None

    async def wait_receivable(self) -> None:
        await trio.sleep_forever()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise AssertionError("the fast path never uses send_all")

    async def wait_send_all_might_not_block(self) -> None:  # pragma: no cover
        raise AssertionError("unused")

    async def aclose(self) -> None:
        pass


async def test_a_reply_is_one_send_made_by_the_producer() -> None:
    outbox = Outbox()
    stream = FakeNonBlockingStream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.drain, stream)
        await trio.testing.wait_all_tasks_blocked()
        payload = memoryview(bytes(range(256)) * 256)  # 64 KiB
        await outbox.put(b"H" * 28, payload)
        # sent before put returned, header and payload in one send
        assert stream.sends == [b"H" * 28 + bytes(payload)]
        outbox.put_nowait(b"small")
        assert stream.sends[-1] == b"small"
        assert outbox.queued_bytes == 0 and outbox.queued_messages == 0
        outbox.close()


async def test_messages_queued_before_the_writer_starts_go_in_one_batch() -> None:
    outbox = Outbox()
    stream = FakeNonBlockingStream()
    for i in range(10):
        outbox.put_nowait(bytes([i]) * 3, bytes([i]) * 5)
    outbox.close()
    await outbox.drain(stream)
    assert stream.sends == [b"".join(bytes([i]) * 8 for i in range(10))]


async def test_large_payload_is_sent_from_its_own_buffer() -> None:
    outbox = Outbox()
    stream = FakeNonBlockingStream()
    big = bytes(range(251)) * (COPY_LIMIT // 251 + 1)
    assert len(big) > COPY_LIMIT
    outbox.put_nowait(b"a", b"1")
    outbox.put_nowait(b"HDR", big)
    outbox.put_nowait(b"z", b"")
    outbox.close()
    await outbox.drain(stream)
    assert stream.sends == [b"a1HDR", big, b"z"]


async def test_partly_sent_data_is_finished_by_the_writer_in_order() -> None:
    outbox = Outbox()
    stream = FakeNonBlockingStream(room=10)
    expected = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.drain, stream)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(40):
            header, payload = bytes([i]) * 4, bytes([255 - i]) * (1000 * i)
            await outbox.put(header, payload)
            expected += header + payload
        assert stream.received == bytes(expected[:10])  # the socket took 10 bytes
        await trio.testing.wait_all_tasks_blocked()
        assert stream.waits == 1  # the writer task waits for the socket
        for room in (1, 7, 5000, 100_000, None):
            stream.open(room)
            await trio.testing.wait_all_tasks_blocked()
        assert stream.received == bytes(expected)
        assert outbox.queued_bytes == 0
        outbox.close()


async def test_producers_wait_while_more_than_max_bytes_are_queued() -> None:
    outbox = Outbox(max_bytes=100_000)
    stream = FakeNonBlockingStream(room=0)
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.drain, stream)
        await trio.testing.wait_all_tasks_blocked()  # the writer is idle first

        async def producer() -> None:
            for i in range(5):
                await outbox.put(b"h", bytes(60_000))
                done.append(i)

        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        # the first message is in the send buffer, two more are queued,
        # which puts the queue past its bound: the fourth put waits
        assert done == [0, 1, 2] and outbox.queued_bytes == 2 * 60_001
        stream.open(None)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [0, 1, 2, 3, 4] and len(stream.received) == 5 * 60_001
        outbox.close()


@pytest.mark.parametrize("error", [trio.BrokenResourceError("peer reset"), trio.ClosedResourceError("closed")])
async def test_a_send_error_on_the_producer_side_ends_the_writer(error: BaseException) -> None:
    outbox = Outbox()
    stream = FakeNonBlockingStream()
    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.drain, stream)
            await trio.testing.wait_all_tasks_blocked()
            stream.error = error
            outbox.put_nowait(b"lost")  # no exception here: the writer reports it
            await trio.sleep_forever()
    assert info.group_contains(type(error), depth=1)


async def test_send_all_streams_get_the_same_bytes() -> None:
    """A stream without the fast path (a trio memory stream): the writer
    task sends each batch with send_all."""
    outbox = Outbox()
    send, receive = trio.testing.memory_stream_pair()
    big = bytes(range(256)) * (BATCH_BYTES // 256 + 10)
    parts = [(b"a" * 28, bytes(65536)), (b"b", b""), (b"c" * 28, big), (b"d", b"tail")]
    expected = b"".join(h + p for h, p in parts)
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.drain, send)
        for header, payload in parts:
            await outbox.put(header, payload)
        while len(got) < len(expected):
            got += await receive.receive_some()
        outbox.close()
    assert bytes(got) == expected


async def test_a_real_socket_with_a_slow_reader_gets_every_byte_in_order() -> None:
    """PlainSocketStream over a socketpair with small kernel buffers: sends
    would block all the time, and nothing is lost, reordered or duplicated."""
    a, b = trio.socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sender, reader = PlainSocketStream(trio.SocketStream(a)), trio.SocketStream(b)
    outbox = Outbox(max_bytes=200_000)
    expected = bytearray()
    got = bytearray()
    async with sender, reader, trio.open_nursery() as nursery:
        nursery.start_soon(outbox.drain, sender)

        async def slow_reader() -> None:
            while True:
                data = await reader.receive_some(3000)
                if not data:
                    return
                got.extend(data)
                await trio.lowlevel.checkpoint()

        nursery.start_soon(slow_reader)
        for i in range(300):
            size = (0, 17, 4096, 65536, 200_000)[i % 5]
            header, payload = i.to_bytes(4, "little"), bytes([i & 0xFF]) * size
            await outbox.put(header, memoryview(payload))
            expected += header + payload
        await until(lambda: len(got) >= len(expected), "the slow reader to get everything")
        outbox.close()
        nursery.cancel_scope.cancel()
    assert bytes(got) == bytes(expected)
