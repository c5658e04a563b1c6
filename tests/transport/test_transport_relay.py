"""The relay pump between a plain TCP stream and a TLS stream, both ways, over loopback.

Random data in both directions at once (so both buffers and the
backpressure path are exercised), byte counters, and close propagation from
either end.
"""

from __future__ import annotations

import pytest
import trio

from redirgate.transport import (
    DEFAULT_BUFFER_BYTES,
    RelayStats,
    relay,
)
from tests.support.transport_lab import Pki, make_channel, receive_exactly, send_random


@pytest.mark.parametrize("buffer_size", [DEFAULT_BUFFER_BYTES, 4096, 1], ids=["256k", "4k", "1byte"])
async def test_relay_moves_random_data_both_ways(env: Pki, buffer_size: int) -> None:
    size = 3_000_000 if buffer_size > 1 else 20_000
    ch = await make_channel(env)
    results: dict[str, str] = {}

    async def run_relay() -> None:
        await relay(ch.relay_plain, ch.relay_tls, buffer_size=buffer_size, stats=ch.stats)

    async def put(name: str, stream: trio.abc.SendStream, seed: int) -> None:
        results[name] = await send_random(stream, size, seed)

    async def get(name: str, stream: trio.abc.ReceiveStream) -> None:
        results[name] = await receive_exactly(stream, size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay)
        async with trio.open_nursery() as traffic:
            traffic.start_soon(put, "hv sent", ch.hv, 1)
            traffic.start_soon(put, "client sent", ch.cl, 2)
            traffic.start_soon(get, "client got", ch.cl)
            traffic.start_soon(get, "hv got", ch.hv)
        assert results["hv sent"] == results["client got"]
        assert results["client sent"] == results["hv got"]
        assert (ch.stats.a_to_b, ch.stats.b_to_a) == (size, size)
        # the hypervisor hangs up: the relay ends and the client sees a clean end (close_notify)
        await ch.hv.aclose()
        assert await ch.cl.receive_some(10) == b""
    assert ch.stats.ended_by == "a"
    assert ch.stats.reason == "end of stream"
    await ch.cl.aclose()


async def test_client_closing_ends_the_relay_and_the_hypervisor_side(env: Pki) -> None:
    ch = await make_channel(env)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay, ch.relay_plain, ch.relay_tls)
        await ch.cl.send_all(b"last words")
        await ch.cl.aclose()
        assert await receive_exactly(ch.hv, 10)
        assert await ch.hv.receive_some(10) == b""
    with pytest.raises(trio.ClosedResourceError):
        await ch.relay_tls.send_all(b"x")  # the relay closed both of its ends
    with pytest.raises(trio.ClosedResourceError):
        await ch.relay_plain.send_all(b"x")
    await ch.hv.aclose()


async def test_abrupt_client_drop_is_a_broken_end(env: Pki) -> None:
    ch = await make_channel(env)
    async with trio.open_nursery() as nursery:
        stats = RelayStats()

        async def run() -> None:
            await relay(ch.relay_plain, ch.relay_tls, stats=stats)

        nursery.start_soon(run)
        await ch.hv.send_all(b"ping")
        assert await ch.cl.receive_some(10) == b"ping"
        # the thin client vanishes: TCP closes with no close_notify (reaching
        # under the stream to the socket is the only way to skip it)
        raw = ch.cl._ssl
        trio.lowlevel.notify_closing(raw)
        raw.close()
        assert await ch.hv.receive_some(10) == b""
    assert stats.ended_by == "b"
    assert stats.reason.startswith("BrokenResourceError")
    await ch.hv.aclose()
    await ch.cl.aclose()
