"""The relay's non-blocking fast path: used where both ends offer it, exact, fair, back-pressured."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.lowlevel

from redirgate.transport import DEFAULT_BUFFER_BYTES, PrefixedStream, RelayStats, nonblocking, pump, relay
from tests.support.transport_lab import (
    Pki,
    make_channel,
    plain_pair,
    random_digest,
    receive_exactly,
    send_random,
    slow_reader,
    small_messages_back,
)


class Opaque(trio.abc.Stream):
    """A stream without the fast path (forces the generic loop)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def receive_into(self, buffer: bytearray) -> int:
        return await self.inner.receive_into(buffer)  # type: ignore[attr-defined,no-any-return]  # the stream under test has it

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_both_stream_kinds_and_prefixed_wrappers_offer_the_fast_path(env: Pki) -> None:
    ch = await make_channel(env)
    try:
        assert nonblocking(ch.relay_plain) and nonblocking(ch.relay_tls)
        assert nonblocking(PrefixedStream(ch.relay_tls, b"x"))
        assert not nonblocking(PrefixedStream(Opaque(ch.relay_tls), b"x"))
    finally:
        for s in (ch.hv, ch.relay_plain, ch.relay_tls, ch.cl):
            await s.aclose()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
async def test_slow_reader_gets_every_byte_with_a_prefix_first(env: Pki, fast: bool) -> None:
    ch = await make_channel(env)
    prefix = b"held while the device was on its way"
    size = 6 * 1024 * 1024
    stats = RelayStats()
    a = PrefixedStream(ch.relay_plain if fast else Opaque(ch.relay_plain), prefix)
    b = ch.relay_tls if fast else Opaque(ch.relay_tls)
    results: dict[str, str] = {}
    got_all = trio.Event()

    async def slow_client() -> None:
        results["got"] = await slow_reader(ch.cl, size + len(prefix))
        got_all.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(relay, a, b, buffer_size=DEFAULT_BUFFER_BYTES, stats=stats))  # type: ignore[arg-type]  # start_soon does not see through partial
        nursery.start_soon(slow_client)
        sent = await send_random(ch.hv, size, seed=7)
        await got_all.wait()
        await small_messages_back(ch, 200)  # and the other way, small messages
        await ch.cl.aclose()
        await ch.hv.aclose()
    assert results["got"] == random_digest(size, 7, prefix)
    assert sent  # send_random's own digest covers only its bytes
    assert stats.a_to_b == size + len(prefix)


async def test_fast_pump_yields_to_other_tasks_while_data_keeps_coming() -> None:
    a_out, a_in = await plain_pair()
    b_in, b_out = await plain_pair()
    ticks = 0
    moved = trio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not moved.is_set():
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a_in, b_in)
        nursery.start_soon(ticker)
        nursery.start_soon(send_random, a_out, 32 * 1024 * 1024, 1)
        await receive_exactly(b_out, 32 * 1024 * 1024)
        moved.set()
        nursery.cancel_scope.cancel()
    for s in (a_out, a_in, b_in, b_out):
        await s.aclose()
    assert ticks > 50  # the other task ran all along
