"""Many control sessions on one shared `TimerWheel` (the gateway's way), and the
heartbeat answer written without waiting (`ControlSession._send_nowait`).

Timers run on `MockClock(autojump_threshold=0)`: the deadlines are asserted in
exact virtual time, against the same schedule a session's own wheel keeps
(tests/transport/test_control.py).
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import trio
import trio.testing

from redirgate.proto import tunnel as t
from redirgate.transport import Buffer, ControlSession, PeerSilent, TimerWheel
from tests.support.control_peer import INTERVAL_S, TIMEOUT_S, Peer, connected_pair


async def _heartbeats_until_silent(
    session: ControlSession, peer: Peer, timers: TimerWheel, start: float, answer_until: float
) -> tuple[list[float], float]:
    """Serve `session` on `timers`; the peer answers our heartbeats until `answer_until` and then
    says nothing.  Our heartbeats' times and the time `serve` raised PeerSilent, from `start`."""
    ours: list[float] = []

    async def listen() -> None:
        while isinstance(event := await peer.next(), t.Heartbeat):
            ours.append(trio.current_time() - start)
            if trio.current_time() - start < answer_until:
                await peer.send(t.HeartbeatAck(event.seq))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        with pytest.raises(PeerSilent, match=f"no sign of life for {TIMEOUT_S:g} s"):
            await session.serve({}, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S, timers=timers)
        ended = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return ours, ended


@pytest.mark.usefixtures("autojump_clock")
async def test_sessions_on_one_wheel_keep_their_own_schedules_and_timeouts() -> None:
    """Three sessions started 1 s apart on one wheel: each sends its heartbeats every
    interval from its own start and times out 30 s after its peer's last word; one
    session timing out leaves the others alone."""
    timers = TimerWheel()
    results: dict[int, tuple[list[float], float]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        base = trio.current_time()

        async def one(i: int) -> None:
            await trio.sleep_until(base + i)
            session, peer = await connected_pair()
            # session i's peer answers until 25 + 20 * i s after its start: its last answer is to our
            # heartbeat at 20 + 20 * i, so it times out at 50 + 20 * i
            results[i] = await _heartbeats_until_silent(session, peer, timers, base + i, 25.0 + 20 * i)

        async with trio.open_nursery() as sessions:
            for i in range(3):
                sessions.start_soon(one, i)
        nursery.cancel_scope.cancel()
    for i in range(3):
        ours, ended = results[i]
        last_answered = 20.0 + 20 * i
        assert ours == [INTERVAL_S * k for k in range(1, int((last_answered + TIMEOUT_S) / INTERVAL_S))], i
        assert ended == last_answered + TIMEOUT_S, i


@pytest.mark.usefixtures("autojump_clock")
async def test_with_a_resolution_timers_fire_late_by_at_most_that_never_early_and_in_few_passes() -> None:
    """Resolution 2 s: timers due within 2 s of a pass wait for the next one (never run early);
    ten sessions started 0.1 s apart are served in a handful of passes, not ten per interval."""
    timers = TimerWheel(resolution_s=2.0)
    results: dict[int, tuple[list[float], float]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        base = trio.current_time()

        async def one(i: int) -> None:
            await trio.sleep_until(base + 0.1 * i)
            session, peer = await connected_pair()
            results[i] = await _heartbeats_until_silent(session, peer, timers, base + 0.1 * i, 25.0)

        async with trio.open_nursery() as sessions:
            for i in range(10):
                sessions.start_soon(one, i)
        nursery.cancel_scope.cancel()
    for i in range(10):
        ours, ended = results[i]
        expected = [INTERVAL_S, 2 * INTERVAL_S, 3 * INTERVAL_S, 4 * INTERVAL_S]
        assert len(ours) == len(expected), (i, ours)
        for got, due in zip(ours, expected, strict=True):
            # each late heartbeat shifts the later ones (the next is due an interval after it went)
            assert 0 <= got - due <= 2.0 * len([g for g in ours if g <= got]) + 1e-9, (i, ours)
        assert 2 * INTERVAL_S + TIMEOUT_S <= ended <= ours[1] + TIMEOUT_S + 2.0 + 1e-9, (i, ended)
    # 10 sessions x (4 heartbeats + a timeout) in about a pass every 10 s, not 50
    assert timers.passes <= 12


@pytest.mark.usefixtures("autojump_clock")
async def test_serve_refuses_a_shared_wheel_that_is_not_running() -> None:
    session, _peer = await connected_pair()
    with pytest.raises(RuntimeError, match="TimerWheel is not running"):
        await session.serve({}, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S, timers=TimerWheel())


@pytest.mark.usefixtures("autojump_clock")
async def test_an_ended_session_is_not_held_by_the_wheel() -> None:
    """The wheel's heap keeps a small entry until the timer's next firing, not the session."""

    class Session(ControlSession):
        __slots__ = ("__weakref__",)

        def tick(self) -> None:  # a bound method as before_heartbeat (the gateway's revocation check)
            pass

    timers = TimerWheel()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        ours, theirs = trio.testing.memory_stream_pair()
        peer = Peer(theirs, "client")
        await peer.send(t.ClientHello())
        session = Session(ours, "gateway", peer="weak")
        assert isinstance(await session.receive(), t.ClientHello)
        await session.send(t.GatewayHello(heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S))
        gone = weakref.ref(session)
        await peer.stream.aclose()
        assert await session.serve(
            {},
            heartbeat_interval_s=INTERVAL_S,
            heartbeat_timeout_s=TIMEOUT_S,
            before_heartbeat=session.tick,
            rtt_every=lambda: 6,
            timers=timers,
        )
        assert len(timers) == 1  # its entry is still there (due in 10 s)
        del session
        gc.collect()
        assert gone() is None
        await trio.sleep(INTERVAL_S + 1)
        assert len(timers) == 0  # and gone once it came due
        nursery.cancel_scope.cancel()


# ====================================================== the answer written without waiting
class TrickleStream(trio.abc.Stream):
    """A non-blocking stream whose socket takes `take` bytes per `try_send`; the rest of a
    frame goes through `send_all`, which takes a (virtual) second.  What it is fed arrives
    through `feed`; everything written is in `written`."""

    supports_nonblocking = True

    def __init__(self, take: int) -> None:
        self.take = take
        self.written = bytearray()
        self._incoming = bytearray()
        self._fed = trio.Event()

    def feed(self, data: bytes) -> None:
        self._incoming += data
        self._fed.set()

    def try_send(self, view: memoryview) -> int | None:
        n = min(self.take, len(view))
        self.written += view[:n]
        return n

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(1)
        self.written += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self.wait_receivable()
        data = bytes(self._incoming)
        self._incoming.clear()
        return data

    def try_receive_into(self, buffer: Buffer) -> int | None:
        if not self._incoming:
            self._fed = trio.Event()
            return None
        n = min(len(buffer), len(self._incoming))
        buffer[:n] = self._incoming[:n]
        del self._incoming[:n]
        return n

    async def wait_receivable(self) -> None:
        if not self._incoming:
            await self._fed.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def wait_sendable(self) -> None:  # pragma: no cover - the socket always takes a few bytes
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _frames(peer: t.TunnelConnection, data: bytes) -> list[Any]:
    peer.receive_data(data)
    events = []
    while (event := peer.next_event()) is not t.NEED_DATA:
        events.append(event)
    return events


@pytest.mark.usefixtures("autojump_clock")
async def test_an_answer_the_socket_takes_only_part_of_is_finished_whole_before_the_next_frame() -> None:
    """Two heartbeats in one read: the first answer's frame is cut short by the socket, so a
    task of the session writes its rest under the send gate; the second answer waits for it."""
    stream = TrickleStream(take=3)
    client = t.TunnelConnection("client")
    session = ControlSession(stream, "gateway", peer="trickle", received=bytes(client.send(t.ClientHello())))
    assert isinstance(await session.receive(), t.ClientHello)
    stream.take = 1000
    await session.send(t.GatewayHello(heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S))
    stream.take = 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: session.serve({}, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S))
        stream.feed(bytes(client.send(t.Heartbeat(7))) + bytes(client.send(t.Heartbeat(8))))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert _frames(client, bytes(stream.written)) == [
        t.GatewayHello(heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S),
        t.HeartbeatAck(7),
        t.HeartbeatAck(8),
    ]
