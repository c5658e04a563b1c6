"""The raw-route relay: the hypervisor side is read whatever the client side does.

A plain TCP "hypervisor" and a TLS "client data connection" over loopback,
as in test_transport_relay.  While the client reads, bytes cross both ways
unchanged; while it does not, a hypervisor writing megabytes is never
blocked: the relay buffers its bound, then discards and counts (one WARNING
when it starts, one summary when the client caught up), and what the client
gets afterwards is the stream with gaps - in order, nothing invented,
received + discarded = sent.  Both the fast (non-blocking) and the plain
(awaiting) paths run every case.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from redirgate.gateway.raw_relay import _Ring, relay_raw
from redirgate.transport import Buffer, ReactorOutcome, RelayReactor, RelayStats, relay
from tests.support.resumable_link import open_link, sever
from tests.support.transport_lab import (
    Pki,
    make_channel,
    make_pki,
    plain_pair,
    receive_exactly,
    send_random,
)
from tests.support.waiting import until

RING_BYTES = 64 * 1024
FLOOD_BYTES = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class _Awaiting:
    """A stream with receive_into/send_all only: the relay's plain path."""

    supports_nonblocking = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def receive_into(self, buffer: Buffer) -> int:
        return int(await self.inner.receive_into(buffer))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _wrap(stream: Any, path: str) -> Any:
    return _Awaiting(stream) if path == "awaiting" else stream


#: "reactor": the fast path's streams, lent to the gateway's relay reactor while the client side keeps up
PATHS = pytest.mark.parametrize("path", ["fast", "awaiting", "reactor"])


@contextlib.asynccontextmanager
async def _mover(path: str) -> AsyncIterator[RelayReactor | None]:
    if path != "reactor":
        yield None
        return
    async with RelayReactor() as reactor:
        yield reactor


def check_gapped(sent: bytes, received: bytes) -> int:
    """`received` is slices of `sent` in order (random data makes 64-byte
    anchors unique); returns the number of gaps."""
    pos = got = gaps = 0
    while got < len(received):
        anchor = received[got : got + 64]
        found = sent.find(anchor, pos)
        assert found >= 0, f"received bytes at {got} are not in what was sent after {pos}"
        gaps += found != pos
        n = 0
        while got + n < len(received) and found + n < len(sent) and received[got + n] == sent[found + n]:
            n += 1
        pos, got = found + n, got + n
    return gaps


@PATHS
async def test_lossless_both_ways_while_the_client_reads(env: Pki, path: str) -> None:
    size = 2_000_000
    ch = await make_channel(env)
    stats = RelayStats()
    discards: list[int] = []
    results: dict[str, str] = {}

    async def put(name: str, stream: Any, seed: int) -> None:
        results[name] = await send_random(stream, size, seed)

    async def get(name: str, stream: Any) -> None:
        results[name] = await receive_exactly(stream, size)

    async with _mover(path) as mover, trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: relay_raw(
                _wrap(ch.relay_plain, path),
                _wrap(ch.relay_tls, path),
                label="test",
                stats=stats,
                on_discard=discards.append,
                mover=mover,
            )
        )
        async with trio.open_nursery() as traffic:
            traffic.start_soon(put, "hv sent", ch.hv, 1)
            traffic.start_soon(put, "client sent", ch.cl, 2)
            traffic.start_soon(get, "client got", ch.cl)
            traffic.start_soon(get, "hv got", ch.hv)
        await ch.hv.aclose()
        assert await ch.cl.receive_some(10) == b""  # the relay ended and closed its TLS end
    assert results["hv sent"] == results["client got"]
    assert results["client sent"] == results["hv got"]
    assert (stats.a_to_b, stats.b_to_a, discards) == (size, size, [])
    assert (stats.ended_by, stats.reason) == ("a", "end of stream")
    await ch.cl.aclose()


@PATHS
async def test_a_client_that_does_not_read_never_blocks_the_hypervisor(
    env: Pki, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redirgate.gateway.raw_relay")
    ch = await make_channel(env)
    stats = RelayStats()
    discards: list[int] = []
    flood = random.Random(7).randbytes(FLOOD_BYTES)
    upstream = random.Random(8).randbytes(300_000)
    after = random.Random(9).randbytes(FLOOD_BYTES // 2)
    received = bytearray()

    async def client_reads() -> None:
        while chunk := await ch.cl.receive_some(65536):
            received.extend(chunk)

    async with _mover(path) as mover, trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: relay_raw(
                _wrap(ch.relay_plain, path),
                _wrap(ch.relay_tls, path),
                label="route t",
                stats=stats,
                buffer_bytes=RING_BYTES,
                on_discard=discards.append,
                mover=mover,
            )
        )
        # Nobody reads the client end: the hypervisor's megabytes still go
        # out (with the lossless pump this send never returns: the runner's safety net fails it).
        await ch.hv.send_all(flood)
        await until(lambda: discards, "the first discard")
        # The other direction is untouched by all this.
        await ch.cl.send_all(upstream)
        assert await receive_exactly(ch.hv, len(upstream)) == _digest(upstream)
        nursery.start_soon(client_reads)
        await until(lambda: len(received) + sum(discards) >= FLOOD_BYTES, "the flood read or discarded")
        # A client that reads again is paced, not discarded against: all of
        # what follows arrives, however fast the hypervisor sends it.
        discarded = sum(discards)
        await ch.hv.send_all(after)
        await ch.hv.aclose()
    assert sum(discards) == discarded
    assert 0 < discarded < FLOOD_BYTES
    assert len(received) == FLOOD_BYTES - discarded + len(after) == stats.a_to_b
    assert received[:RING_BYTES] == flood[:RING_BYTES]  # what came first was kept
    assert received[-len(after) :] == after
    check_gapped(flood, bytes(received[: -len(after)]))  # in order, nothing invented (the gap may be at the end)
    warnings = [r.getMessage() for r in caplog.records if r.name == "redirgate.gateway.raw_relay"]
    assert len(warnings) == 2, warnings
    assert "route t: the client side took nothing for 0.25 s" in warnings[0]
    assert f"caught up; discarded {discarded} bytes from the hypervisor" in warnings[1]
    await ch.cl.aclose()


@PATHS
async def test_what_is_buffered_when_the_hypervisor_leaves_still_reaches_the_client(env: Pki, path: str) -> None:
    ch = await make_channel(env)
    data = random.Random(3).randbytes(RING_BYTES // 2)
    stats = RelayStats()
    async with _mover(path) as mover, trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: relay_raw(
                _wrap(ch.relay_plain, path),
                _wrap(ch.relay_tls, path),
                label="t",
                stats=stats,
                buffer_bytes=RING_BYTES,
                mover=mover,
            )
        )
        await ch.hv.send_all(data)
        await ch.hv.aclose()  # gone before the client read anything
        await trio.testing.wait_all_tasks_blocked()  # the relay has seen the end
        assert await receive_exactly(ch.cl, len(data)) == _digest(data)
        assert await ch.cl.receive_some(10) == b""
    assert (stats.ended_by, stats.reason, stats.a_to_b) == ("a", "end of stream", len(data))
    await ch.cl.aclose()


@PATHS
async def test_a_stalled_client_delays_the_end_by_the_flush_budget_only(
    env: Pki, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redirgate.gateway.raw_relay")
    ch = await make_channel(env)
    stats = RelayStats()
    async with _mover(path) as mover, trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: relay_raw(
                _wrap(ch.relay_plain, path),
                _wrap(ch.relay_tls, path),
                label="t",
                stats=stats,
                buffer_bytes=RING_BYTES,
                flush_budget_s=0.5,
                mover=mover,
            )
        )
        await ch.hv.send_all(bytes(FLOOD_BYTES))
        await ch.hv.aclose()
    # It ended although the client side never read: the flush budget ended it (the
    # line below); without one the relay would wait for the client for ever.
    assert stats.ended_by == "a"
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "did not reach the client side within 0.5 s" in messages
    assert "the channel ended while discarding" in messages
    await ch.cl.aclose()


@PATHS
async def test_the_client_leaving_ends_the_relay_at_once(env: Pki, path: str) -> None:
    ch = await make_channel(env)
    stats = RelayStats()
    async with _mover(path) as mover, trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: relay_raw(
                _wrap(ch.relay_plain, path), _wrap(ch.relay_tls, path), label="t", stats=stats, mover=mover
            )
        )
        await ch.cl.send_all(b"last words")
        await ch.cl.aclose()
        assert await receive_exactly(ch.hv, 10)
        assert await ch.hv.receive_some(10) == b""
    assert (stats.ended_by, stats.b_to_a) == ("b", 10)
    await ch.hv.aclose()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the ring on its own ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 64), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 80)), max_size=60))
def test_ring_is_a_fifo_of_contiguous_runs(capacity: int, ops: list[tuple[bool, int]]) -> None:
    ring = _Ring(capacity)
    model = bytearray()
    counter = 0
    for write, n in ops:
        if write:
            free = ring.free_view()
            assert len(free) <= capacity - ring.size
            assert len(free) > 0 or ring.size == capacity
            k = min(n, len(free))
            chunk = bytes((counter + i) % 251 for i in range(k))
            counter += k
            free[:k] = chunk
            ring.commit(k)
            model += chunk
        else:
            filled = ring.filled_view()
            assert len(filled) > 0 or ring.size == 0
            k = min(n, len(filled))
            assert bytes(filled[:k]) == bytes(model[:k])
            ring.consume(k)
            del model[:k]
        assert ring.size == len(model)


def test_ring_refuses_zero_capacity() -> None:
    with pytest.raises(ValueError):
        _Ring(0)


# -- the direct path (fast streams only) ----------------------------------------


class _TaskSteps(trio.abc.Instrument):
    """Counts the scheduler steps of tasks by the end of their name."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        name = task.name.rsplit(".", 1)[-1]
        self.steps[name] = self.steps.get(name, 0) + 1


async def test_a_typed_byte_reaches_the_client_without_waking_the_writer(env: Pki) -> None:
    """While the writer waits holding nothing, the reader sends what it read
    itself: one scheduler pass per byte through the gateway, not two."""
    ch = await make_channel(env)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: relay_raw(ch.relay_plain, ch.relay_tls, label="t"))
        await ch.hv.send_all(b"warm")
        assert await receive_exactly(ch.cl, 4) == _digest(b"warm")
        steps = _TaskSteps()
        for key in b"typed":
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(steps)
            try:
                await ch.hv.send_all(bytes([key]))
                assert await ch.cl.receive_some(10) == bytes([key])
            finally:
                trio.lowlevel.remove_instrument(steps)
        assert steps.steps.get("read_hypervisor", 0) >= 5
        assert steps.steps.get("write_device", 0) == 0, steps.steps
        await ch.hv.aclose()
    await ch.cl.aclose()


class _FailingSends:
    """The client side's fast path, whose sends fail once `broken` is set."""

    supports_nonblocking = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.broken = False

    def try_receive_into(self, buffer: Buffer) -> int | None:
        return self.inner.try_receive_into(buffer)  # type: ignore[no-any-return]

    async def wait_receivable(self) -> None:
        await self.inner.wait_receivable()

    def try_send(self, view: memoryview) -> int | None:
        if self.broken:
            raise trio.BrokenResourceError("the client side broke")
        return self.inner.try_send(view)  # type: ignore[no-any-return]

    async def wait_sendable(self) -> None:
        await self.inner.wait_sendable()

    async def receive_into(self, buffer: Buffer) -> int:
        return int(await self.inner.receive_into(buffer))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_failed_direct_send_ends_the_relay_as_the_client_sides_failure(env: Pki) -> None:
    ch = await make_channel(env)
    client_side = _FailingSends(ch.relay_tls)
    stats = RelayStats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: relay_raw(ch.relay_plain, client_side, label="t", stats=stats))
        await ch.hv.send_all(b"ok")
        assert await receive_exactly(ch.cl, 2) == _digest(b"ok")
        await trio.testing.wait_all_tasks_blocked()
        client_side.broken = True
        await ch.hv.send_all(b"x")  # the reader's direct send fails: the writer raises it
    assert (stats.ended_by, stats.a_to_b) == ("b", 2)
    assert "the client side broke" in stats.reason
    for s in (ch.hv, ch.cl):
        await s.aclose()


class _Lends:
    """Counts the reactor's lends of a raw channel and how each ended."""

    def __init__(self, reactor: RelayReactor) -> None:
        self.outcomes: list[ReactorOutcome] = []
        self.started = 0
        move_raw = reactor.move_raw

        async def counting(*args: Any) -> ReactorOutcome:
            self.started += 1
            outcome = await move_raw(*args)
            self.outcomes.append(outcome)
            return outcome

        reactor.move_raw = counting  # type: ignore[method-assign]

    @property
    def congested(self) -> int:
        return sum(o.congested for o in self.outcomes)


async def _typed_without_trio_steps(ch: Any, keys: bytes) -> None:
    """Each key hypervisor -> client and back, with no step of the relay's trio tasks."""
    steps = _TaskSteps()
    for key in keys:
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(steps)
        try:
            await ch.hv.send_all(bytes([key]))
            assert await ch.cl.receive_some(10) == bytes([key])
            await ch.cl.send_all(bytes([key]))
            assert await ch.hv.receive_some(10) == bytes([key])
        finally:
            trio.lowlevel.remove_instrument(steps)
    relay_steps = {
        k: v for k, v in steps.steps.items() if k in ("read_hypervisor", "write_device", "client_to_hypervisor")
    }
    assert relay_steps == {}, relay_steps


async def test_the_reactor_moves_typed_bytes_and_takes_the_channel_again_after_a_congestion(env: Pki) -> None:
    """While the client side takes every byte at once the reactor thread moves
    them (no trio task of the relay runs); a client that stops reading makes it
    hand the channel to the trio tasks (the ring, then discarding: the
    hypervisor is never stalled), and once the client caught up it is lent again."""
    ch = await make_channel(env)
    stats = RelayStats()
    discards: list[int] = []
    async with RelayReactor() as reactor, trio.open_nursery() as nursery:
        lends = _Lends(reactor)
        nursery.start_soon(
            lambda: relay_raw(
                ch.relay_plain,
                ch.relay_tls,
                label="t",
                stats=stats,
                buffer_bytes=RING_BYTES,
                on_discard=discards.append,
                mover=reactor,
            )
        )
        await until(lambda: reactor.channels == 1, "the first lend")
        await _typed_without_trio_steps(ch, b"typed")
        assert (lends.started, lends.outcomes) == (1, [])
        await ch.hv.send_all(random.Random(5).randbytes(FLOOD_BYTES))  # nobody reads the client end
        await until(lambda: discards, "the first discard")
        assert lends.congested >= 1
        received = 0
        while received < FLOOD_BYTES - sum(discards):
            received += len(await ch.cl.receive_some(65536))
        await until(lambda: reactor.channels == 1, "a lend after the client caught up")
        await _typed_without_trio_steps(ch, b"again")
        await ch.hv.aclose()
        assert await ch.cl.receive_some(10) == b""
    assert stats.a_to_b == 5 + FLOOD_BYTES - sum(discards) + 5 == received + 10
    assert (stats.b_to_a, stats.ended_by) == (10, "a")
    await ch.cl.aclose()


async def test_every_byte_once_in_order_across_breaks_and_congestions_through_the_reactor(env: Pki) -> None:
    """A resumable channel (the default) whose gateway end is the raw relay
    with the reactor, in bursts: each burst starts lent, congests (small
    send buffers, a small replay buffer), and every other one breaks the
    connection while the reactor or the trio tasks hold bytes.  The reactor
    records what it writes and hands the trio tasks what it read and did
    not write; nothing is lost or repeated either way."""
    rounds, breaks = 8, (1, 3, 6)
    link = await open_link(env, len(breaks) + 1)
    hv, hv_relay = await plain_pair()
    cl, cl_relay = await plain_pair()
    rng = random.Random(11)
    bursts = [(rng.randrange(100_000, 400_000), rng.randrange(1, 60_000)) for _ in range(rounds)]
    down = rng.randbytes(sum(b[0] for b in bursts))
    up = rng.randbytes(sum(b[1] for b in bursts))
    got = {"cl": bytearray(), "hv": bytearray()}

    async def collect(name: str, stream: Any) -> None:
        while chunk := await stream.receive_some(65536):
            got[name].extend(chunk)

    async with RelayReactor() as reactor, trio.open_nursery() as nursery:
        lends = _Lends(reactor)
        # a generous stall: this test is about order and loss, not discarding
        nursery.start_soon(lambda: relay_raw(hv_relay, link.a, label="t", stall_s=60.0, mover=reactor))
        nursery.start_soon(lambda: relay(cl_relay, link.b))
        nursery.start_soon(collect, "cl", cl)
        nursery.start_soon(collect, "hv", hv)
        sent_down = sent_up = 0
        for i, (n_down, n_up) in enumerate(bursts):
            await until(lambda: reactor.channels == 1, f"burst {i} starts lent")
            await hv.send_all(down[sent_down : sent_down + n_down])
            await cl.send_all(up[sent_up : sent_up + n_up])
            sent_down, sent_up = sent_down + n_down, sent_up + n_up
            if i in breaks:
                sever(link.current()[0])
            want = (sent_down, sent_up)
            await until(lambda w=want: (len(got["cl"]), len(got["hv"])) == w, f"burst {i} arrived")
        nursery.cancel_scope.cancel()
    assert got["cl"] == down and got["hv"] == up
    assert link.a.resumes == link.b.resumes == len(breaks)
    assert lends.congested >= rounds // 2, lends.outcomes
    for s in (hv, cl, link.a, link.b):
        await s.aclose()
