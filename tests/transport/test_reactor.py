"""The relay reactor thread (transport.reactor): moves a channel's bytes on sockets the streams lend it (transport.relay's mover)."""

from __future__ import annotations

import functools
import hashlib

import pytest
import trio

from redirgate.proto import tunnel as t
from redirgate.transport import PrefixedStream, RelayReactor, RelayStats, ResumableStream, relay
from tests.support.transport_lab import (
    Pki,
    make_channel,
    random_digest,
    receive_exactly,
    send_random,
    slow_reader,
    small_messages_back,
)
from tests.support.waiting import until


@pytest.mark.parametrize("prefix", [b"", b"held bytes first"], ids=["no-prefix", "prefix"])
async def test_reactor_relays_everything_both_ways_with_a_slow_reader(env: Pki, prefix: bytes) -> None:
    ch = await make_channel(env)
    size = 6 * 1024 * 1024
    stats = RelayStats()
    results: dict[str, str] = {}
    got_all = trio.Event()

    async def slow_client() -> None:
        results["got"] = await slow_reader(ch.cl, size + len(prefix))
        got_all.set()

    async with RelayReactor() as reactor:
        async with trio.open_nursery() as nursery:
            a = PrefixedStream(ch.relay_plain, prefix)
            nursery.start_soon(functools.partial(relay, a, ch.relay_tls, stats=stats, mover=reactor))
            nursery.start_soon(slow_client)
            await send_random(ch.hv, size, seed=3)
            await got_all.wait()
            expect = await small_messages_back(ch, 300)
            await ch.cl.aclose()
            rest = await ch.hv.receive_some(10)
            assert rest == b""  # the relay ended and closed the hypervisor side
            await ch.hv.aclose()
        assert reactor.channels == 0
    assert results["got"] == random_digest(size, 3, prefix)
    assert stats.a_to_b == size + len(prefix) and stats.b_to_a == len(expect)
    assert stats.ended_by == "b"


async def test_reactor_channel_cancelled_gives_sockets_back_and_closes(env: Pki) -> None:
    ch = await make_channel(env)
    async with RelayReactor() as reactor:
        with trio.move_on_after(0.5):
            await relay(ch.relay_plain, ch.relay_tls, mover=reactor)
        assert reactor.channels == 0
        assert await ch.hv.receive_some(10) == b""  # closed by the relay
        assert await ch.cl.receive_some(10) == b""
    await ch.hv.aclose()
    await ch.cl.aclose()


class Refused(Exception):
    pass


async def test_reactor_inspector_verdict_ends_the_channel_before_the_chunk_is_sent(env: Pki) -> None:
    ch = await make_channel(env)
    seen: list[bytes] = []

    def inspect(chunk: memoryview) -> None:
        seen.append(bytes(chunk))
        if b"BAD" in bytes(chunk):
            raise Refused("bad bytes")

    async with RelayReactor() as reactor:
        async with trio.open_nursery() as nursery:
            raised: list[BaseException] = []

            async def run() -> None:
                try:
                    await relay(ch.relay_plain, ch.relay_tls, mover=reactor, inspect_b_to_a=inspect)
                except Refused as exc:
                    raised.append(exc)

            nursery.start_soon(run)
            await ch.cl.send_all(b"good")
            assert await ch.hv.receive_some(10) == b"good"
            await ch.cl.send_all(b"BAD")
            assert await ch.hv.receive_some(10) == b""  # never forwarded; the channel ended
        assert raised and str(raised[0]) == "bad bytes"
    await ch.hv.aclose()
    await ch.cl.aclose()


@pytest.mark.parametrize("cap", [0, 5], ids=["uncapped", "capped-records"])
async def test_reactor_small_messages_both_ways_keep_order_and_counts(env: Pki, cap: int) -> None:
    """Ping-pong of small messages, the reactor's inline path, with an inspector
    on each direction: one retires itself after its first chunk (returns True),
    the other sees every chunk.  With `cap`, TLS records to the client carry at
    most 5 bytes (as towards QEMU's chardev), so every send is split."""
    ch = await make_channel(env)
    ch.relay_tls.max_send_bytes = cap
    first_only: list[bytes] = []
    every: list[bytes] = []

    def once(chunk: memoryview) -> bool:
        first_only.append(bytes(chunk))
        return True

    def always(chunk: memoryview) -> None:
        every.append(bytes(chunk))

    stats = RelayStats()
    chunks: list[int] = []  # sizes the client received, one TLS record each at most
    async with RelayReactor() as reactor:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    relay,
                    ch.relay_plain,
                    ch.relay_tls,
                    stats=stats,
                    mover=reactor,
                    inspect_a_to_b=once,
                    inspect_b_to_a=always,
                )
            )
            for i in range(500):
                ping = b"ping %d" % i
                await ch.hv.send_all(ping)
                assert await receive_exactly_bytes(ch.cl, len(ping), chunks) == ping
                pong = b"pong %d!" % i
                await ch.cl.send_all(pong)
                assert await receive_exactly_bytes(ch.hv, len(pong)) == pong
            await ch.hv.aclose()
            assert await ch.cl.receive_some(10) == b""
            await ch.cl.aclose()
        assert reactor.channels == 0
    pings = sum(len(b"ping %d" % i) for i in range(500))
    pongs = b"".join(b"pong %d!" % i for i in range(500))
    assert stats.a_to_b == pings and stats.b_to_a == len(pongs)
    assert first_only == [b"ping 0"]
    assert b"".join(every) == pongs
    assert max(chunks) == (cap or max(len(b"ping %d" % i) for i in range(500)))


async def receive_exactly_bytes(stream: trio.abc.ReceiveStream, size: int, chunks: list[int] | None = None) -> bytes:
    got = b""
    while len(got) < size:
        chunk = await stream.receive_some(size - len(got))
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
        if chunks is not None:
            chunks.append(len(chunk))
    return got


async def test_a_resumable_channel_reads_the_hypervisor_only_as_far_as_its_replay_buffer_has_room(env: Pki) -> None:
    """1 MiB through a 64 KiB replay buffer: the reactor reads the hypervisor's
    bytes straight into the replay ring and no more than the room (a commit
    past it raises and would end the channel); each ack from the client makes
    room again, and once all is acknowledged nothing is held for replay."""
    ch = await make_channel(env)
    limit, size = 64 * 1024, 1024 * 1024
    state = t.ResumableChannel(1, replay_limit=limit, ack_every=limit)
    acks: list[t.ChannelAck] = []

    async def never(why: str) -> tuple[trio.abc.Stream, bytes]:
        raise trio.BrokenResourceError(why)

    client_side = ResumableStream(ch.relay_tls, state, never, peer="test", on_ack=acks.append)
    stats = RelayStats()
    async with RelayReactor() as reactor, trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(relay, ch.relay_plain, client_side, stats=stats, mover=reactor))
        nursery.start_soon(send_random, ch.hv, size, 5)
        digest = hashlib.sha256()
        got = 0
        while got < size:
            chunk = await ch.cl.receive_some(limit)
            digest.update(chunk)
            got += len(chunk)
            if state.outgoing.room() == 0 or got == size:
                client_side.acked(t.ChannelAck(1, got))  # what the client would send on the control connection
        await until(lambda: not state.outgoing.allocated, "the last ack applied")
        # the client -> hypervisor direction is counted, and an ack is due every `ack_every` bytes
        await ch.cl.send_all(bytes(limit))
        assert await receive_exactly(ch.hv, limit) == hashlib.sha256(bytes(limit)).hexdigest()
        await until(lambda: bool(acks), "an ack due")
        assert acks == [t.ChannelAck(1, limit)]
        await ch.cl.aclose()  # a clean end: the relay ends (no resume) and closes the hypervisor side
        assert await ch.hv.receive_some(10) == b""
        await ch.hv.aclose()
    assert stats.ended_by == "b" and not stats.broken
    assert digest.hexdigest() == await send_random(_Sink(), size, 5)  # every byte once, in order
    assert stats.a_to_b == size and state.outgoing.sent_total == size


class _Sink(trio.abc.SendStream):
    """Where send_random's bytes go when only its digest is wanted."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
