"""A resumable channel's stream on the non-blocking fast path: every byte once, in order, across breaks.

Two `ResumableStream`s (one per end of a channel) over real TLS
connections on loopback, each moved by `transport.relay` from a plain
socket pair, as the gateway's raw relay and the client's serial handler
move them: the fast path (`try_send` / `try_receive_into` and the waits)
is what runs.  A connection is broken by shutting its TCP socket down under
both TLS ends (no close_notify: a break, not an end); each end's
`reconnect` hands over the next TLS pair and the replay the other end's
count asks for.  Acks go straight to the other end with a small replay
buffer, so senders also wait for room.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from redirgate.transport import PlainSocketStream, ResumableStream, nonblocking, relay
from tests.support.resumable_link import open_link, sever, small_send_buffer
from tests.support.transport_lab import (
    Pki,
    plain_pair,
    random_digest,
    receive_exactly,
    send_random,
)
from tests.support.waiting import until

SIZE = 3_000_000


async def test_every_byte_once_in_order_across_breaks_on_the_fast_path(env: Pki) -> None:
    breaks = 3
    link = await open_link(env, breaks + 1)
    assert nonblocking(link.a) and nonblocking(link.b)
    a_outer, a_inner = await plain_pair()
    b_outer, b_inner = await plain_pair()
    results: dict[str, str] = {}

    async def put(name: str, stream: PlainSocketStream, seed: int) -> None:
        results[name] = await send_random(stream, SIZE, seed)

    async def get(name: str, stream: PlainSocketStream) -> None:
        results[name] = await receive_exactly(stream, SIZE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: relay(a_inner, link.a))
        nursery.start_soon(lambda: relay(b_inner, link.b))
        async with trio.open_nursery() as traffic:
            traffic.start_soon(put, "a sent", a_outer, 1)
            traffic.start_soon(put, "b sent", b_outer, 2)
            traffic.start_soon(get, "b got", b_outer)
            traffic.start_soon(get, "a got", a_outer)
            for n in range(breaks):
                moved = link.b.channel.incoming.received + link.a.channel.incoming.received
                await until(lambda m=moved: link.b.channel.incoming.received + link.a.channel.incoming.received > m)
                await until(lambda n=n: link.a.resumes == link.b.resumes == n)
                sever(link.current()[0])
        await a_outer.aclose()
        nursery.cancel_scope.cancel()
    assert results["a sent"] == results["b got"] == random_digest(SIZE, 1)
    assert results["b sent"] == results["a got"] == random_digest(SIZE, 2)
    assert link.a.resumes == link.b.resumes == breaks
    for s in (b_outer, link.a, link.b):
        await s.aclose()


async def test_interrupt_wakes_a_fast_path_wait_and_the_channel_goes_on(env: Pki) -> None:
    """The gateway interrupts a channel whose client came back on a new
    connection while the old one still looks alive: the end's waiting
    relay (parked on the old socket, no scope of ours around it) recovers."""
    link = await open_link(env, 2)
    a_outer, a_inner = await plain_pair()
    b_outer, b_inner = await plain_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: relay(a_inner, link.a))
        nursery.start_soon(lambda: relay(b_inner, link.b))
        await a_outer.send_all(b"before")
        assert await b_outer.receive_some(6) == b"before"
        await trio.testing.wait_all_tasks_blocked()  # both relays wait on the old connection
        link.b.interrupt()
        link.a.interrupt()
        await until(lambda: link.a.resumes == link.b.resumes == 1, "both ends resumed")
        await a_outer.send_all(b"after")
        assert await b_outer.receive_some(5) == b"after"
        await b_outer.send_all(b"back")
        assert await a_outer.receive_some(4) == b"back"
        assert link.reconnects == {"a": 1, "b": 1}
        nursery.cancel_scope.cancel()
    for s in (a_outer, b_outer, link.a, link.b):
        await s.aclose()


@pytest.mark.trio_timeout(60)
async def test_both_ends_replaying_more_than_the_socket_buffers_hold_do_not_deadlock(env: Pki) -> None:
    """Each end has MiBs sent and unread when the connection breaks: on
    resume both replays are far bigger than the kernel's (and TLS's) buffers,
    so an end that wrote its replay before reading again would wait for a
    peer doing the same, forever.  Everything arrives once, in order."""
    size = 3 * 1024 * 1024
    link = await open_link(env, 2, replay_limit=4 * 1024 * 1024)
    for pair in link.pairs:
        small_send_buffer(pair[1])
    data = {"a": random.Random(1).randbytes(size), "b": random.Random(2).randbytes(size)}
    got: dict[str, bytes] = {}

    async def receive_all(side: str, stream: ResumableStream) -> None:
        buf = bytearray()
        while len(buf) < size:
            chunk = await stream.receive_some(65536)
            assert chunk, f"EOF after {len(buf)} of {size} bytes"
            buf += chunk
        got[side] = bytes(buf)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.a.send_all, data["a"])  # one write: all of it is recorded, then it waits
        nursery.start_soon(link.b.send_all, data["b"])
        await trio.testing.wait_all_tasks_blocked()  # both ends wait to write, nobody reads
        assert link.a.channel.incoming.received == link.b.channel.incoming.received == 0
        sever(link.current()[0])
        nursery.start_soon(receive_all, "b", link.b)
        nursery.start_soon(receive_all, "a", link.a)
    assert got["b"] == data["a"]
    assert got["a"] == data["b"]
    assert link.a.resumes == link.b.resumes == 1
    for s in (link.a, link.b):
        await s.aclose()
