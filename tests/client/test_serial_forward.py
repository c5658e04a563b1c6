"""Session.forward_to, the direct RX path (client/serial/service.py): while the
ring is empty and the consumer holds nothing, the RX pump hands device bytes
straight to the consumer's non-blocking stream.

Proves, with a scripted stream in front of a real pty: bytes arrive whole and
in order when the stream takes only part of each offer or would block; what a
failing stream did not take stays in the ring for the next consumer and the
failure is raised by the consumer's task (as its own send's would be).
"""

from __future__ import annotations

import trio

from tests.support.serial_lab import make_service, pty_pair, write_master
from tests.support.waiting import until


class ScriptedStream:
    """A NonBlockingStream that takes at most `take` bytes per try_send, says
    "would block" on every `block_every`-th call, and after `fail_after` bytes
    raises BrokenResourceError (as a peer that went away)."""

    supports_nonblocking = True  # transport.NonBlockingStream

    def __init__(self, take: int, block_every: int = 0, fail_after: int | None = None) -> None:
        self.take, self.block_every, self.fail_after = take, block_every, fail_after
        self.got = bytearray()
        self.calls = 0

    def try_send(self, view: memoryview) -> int | None:
        self.calls += 1
        if self.fail_after is not None and len(self.got) >= self.fail_after:
            raise trio.BrokenResourceError("the consumer went away")
        if self.block_every and self.calls % self.block_every == 0:
            return None
        n = min(self.take, len(view))
        self.got += view[:n]
        return n

    async def wait_sendable(self) -> None:
        await trio.sleep(0.001)  # a consumer that is sometimes full: the forwarder must come back later

    def try_receive_into(self, buffer: bytearray | memoryview) -> int | None:
        return None

    async def wait_receivable(self) -> None:
        await trio.sleep_forever()


def _pattern(n: int) -> bytes:
    return bytes((i * 31 + (i >> 8)) & 0xFF for i in range(n))


async def test_partial_and_blocked_sends_keep_every_byte_in_order() -> None:
    data = _pattern(200_000)
    with pty_pair() as pty:
        service = make_service(pty.path, ring_bytes=8192)
        stream = ScriptedStream(take=777, block_every=3)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            async with service.attach("scripted") as session:
                nursery.start_soon(session.forward_to, stream)
                for i in range(0, len(data), 4096):  # bursts, as a device writes them
                    await write_master(pty, data[i : i + 4096])
                await until(lambda: len(stream.got) >= len(data))
                nursery.cancel_scope.cancel()
        assert bytes(stream.got) == data
        assert service.rx_overflow_bytes == 0


async def test_a_failing_stream_raises_in_the_consumer_and_leaves_its_bytes_in_the_ring() -> None:
    with pty_pair() as pty:
        service = make_service(pty.path)
        stream = ScriptedStream(take=1 << 20, fail_after=5)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            raised: list[BaseException] = []
            async with service.attach("failing") as session:

                async def consumer() -> None:
                    try:
                        await session.forward_to(stream)
                    except trio.BrokenResourceError as exc:
                        raised.append(exc)

                async with trio.open_nursery() as inner:
                    inner.start_soon(consumer)
                    await write_master(pty, b"hello")
                    await until(lambda: len(stream.got) == 5)
                    await write_master(pty, b" world")  # the stream fails on this offer
                assert [str(e) for e in raised] == ["the consumer went away"]
            assert bytes(stream.got) == b"hello"
            async with service.attach("next") as session:
                assert await session.receive_some(100) == b" world"  # kept for the next consumer
            nursery.cancel_scope.cancel()
