"""The control-session driver (redirgate.transport.control) against a hand-driven peer.

The peer is a bare `TunnelConnection` on the other end of an in-memory
stream pair; timers run on `MockClock(autojump_threshold=0)`, so the
heartbeat schedule and the peer timeout are asserted in exact virtual time.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from redirgate.proto import tunnel as t
from redirgate.transport import ControlSession, PeerGone, PeerSilent, peer_gone
from tests.support.control_peer import INTERVAL_S, TIMEOUT_S, connected_pair
from tests.support.transport_lab import plain_pair


def serve(session: ControlSession, handlers: Any = None, **kwargs: Any) -> Any:
    return session.serve(handlers or {}, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S, **kwargs)


# ============================================================== dispatch
@pytest.mark.usefixtures("autojump_clock")
async def test_dispatch_calls_the_handler_of_each_type_in_order_and_answers_heartbeats() -> None:
    session, peer = await connected_pair()
    seen: list[t.TunnelMessage] = []

    async def record(session: ControlSession, message: t.TunnelMessage) -> None:
        seen.append(message)

    entry = t.DeviceEntry(id="serial:a", kind=t.DeviceKind.SERIAL, port_path="/dev/ttyS0")
    handlers = {t.Inventory: record, t.InventoryUpdate: record, t.HeartbeatAck: record}
    async with trio.open_nursery() as nursery:
        outcome: list[str] = []

        async def run() -> None:
            outcome.append(await serve(session, handlers))

        nursery.start_soon(run)
        await peer.send(t.Inventory((entry,)))
        await peer.send(t.Heartbeat(7))
        assert await peer.next() == t.HeartbeatAck(7)  # answered by the driver itself
        await peer.send(t.InventoryUpdate((), ("serial:a",)))
        await peer.stream.aclose()
    assert outcome == ["connection closed"]
    assert seen == [t.Inventory((entry,)), t.InventoryUpdate((), ("serial:a",))]


@pytest.mark.usefixtures("autojump_clock")
async def test_a_handler_error_leaves_serve_as_it_is_and_finish_returns_its_reason() -> None:
    session, peer = await connected_pair()

    async def refuse(session: ControlSession, message: t.Inventory) -> None:
        raise LookupError("not this one")

    await peer.send(t.Inventory(()))
    with pytest.raises(LookupError, match="not this one"):  # not an ExceptionGroup
        await serve(session, {t.Inventory: refuse})

    session, peer = await connected_pair()

    async def goodbye(control: ControlSession, message: t.Error) -> None:
        control.finish("the peer said goodbye")

    await peer.send(t.Error(code=t.ErrorCode.INTERNAL, message="bye"))
    assert await serve(session, {t.Error: goodbye}) == "the peer said goodbye"


@pytest.mark.usefixtures("autojump_clock")
async def test_a_message_without_a_handler_is_rejected_as_unexpected() -> None:
    session, peer = await connected_pair()
    await peer.send(t.Inventory(()))
    with pytest.raises(t.UnexpectedMessageError, match="'inventory' is not handled here"):
        await serve(session, {t.InventoryUpdate: _ignore})


@pytest.mark.usefixtures("autojump_clock")
async def test_an_unknown_kind_on_the_wire_is_rejected() -> None:
    import msgpack

    session, peer = await connected_pair()
    body = msgpack.packb({"kind": "launch_missiles"})
    await peer.stream.send_all(len(body).to_bytes(4, "big") + body)
    with pytest.raises(t.InvalidMessageError, match="launch_missiles"):
        await serve(session, {t.Inventory: _ignore})


async def _ignore(session: ControlSession, message: t.TunnelMessage) -> None:
    pass


# ============================================================ heartbeats
@pytest.mark.usefixtures("autojump_clock")
async def test_heartbeats_go_out_every_interval_and_a_silent_peer_times_out() -> None:
    session, peer = await connected_pair()
    start = trio.current_time()
    sent_at: list[float] = []

    async def listen() -> None:
        while isinstance(event := await peer.next(), t.Heartbeat):
            assert event.seq == len(sent_at)
            sent_at.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        with pytest.raises(PeerSilent, match="no sign of life for 30 s") as silent:
            await serve(session)
        assert trio.current_time() - start == TIMEOUT_S
        nursery.cancel_scope.cancel()
    assert sent_at == [10.0, 20.0]  # the third one was due at 30: the timeout came first
    assert isinstance(silent.value, PeerGone) and silent.value.peer == "client-under-test"


@pytest.mark.usefixtures("autojump_clock")
async def test_any_message_from_the_peer_moves_the_timeout() -> None:
    session, peer = await connected_pair()
    start = trio.current_time()

    async def talk_once_at_25() -> None:
        await trio.sleep_until(start + 25)
        await peer.send(t.Inventory(()))
        while True:
            await peer.next()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(talk_once_at_25)
        with pytest.raises(PeerSilent):
            await serve(session, {t.Inventory: _ignore})
        assert trio.current_time() - start == 25 + TIMEOUT_S
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("autojump_clock")
async def test_before_heartbeat_runs_every_interval_and_may_end_the_session_silently() -> None:
    session, peer = await connected_pair()
    start = trio.current_time()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(trio.current_time() - start)
        if len(ticks) == 2:
            session.finish("certificate revoked")

    heartbeats: list[int] = []

    async def listen() -> None:
        while isinstance(event := await peer.next(), t.Heartbeat):
            heartbeats.append(event.seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        assert await serve(session, before_heartbeat=tick) == "certificate revoked"
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert ticks == [10.0, 20.0]
    assert heartbeats == [0]  # none after finish()


@pytest.mark.usefixtures("autojump_clock")
async def test_with_rtt_every_our_heartbeat_goes_only_to_a_silent_peer_and_every_nth_interval() -> None:
    """The gateway's quiet heartbeats: a peer that heartbeats every interval gets ours only every
    6th interval (the round trip is timed then); once it falls silent, ours go out every interval
    again until its timeout."""
    session, peer = await connected_pair()
    start = trio.current_time()
    ours: list[float] = []
    acks: list[int] = []
    ticks: list[float] = []

    async def client() -> None:
        async def heartbeat() -> None:
            for seq in range(12):  # then silent
                await trio.sleep_until(start + 5 + seq * INTERVAL_S)
                await peer.send(t.Heartbeat(seq))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            while True:
                event = await peer.next()
                if isinstance(event, t.Heartbeat):
                    ours.append(trio.current_time() - start)
                    if trio.current_time() - start < 118:  # then silent: no answers either
                        await peer.send(t.HeartbeatAck(event.seq))
                elif isinstance(event, t.HeartbeatAck):
                    acks.append(event.seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        with pytest.raises(PeerSilent):
            await serve(
                session, before_heartbeat=lambda: ticks.append(trio.current_time() - start), rtt_every=lambda: 6
            )
        nursery.cancel_scope.cancel()
    assert acks == list(range(12))  # every heartbeat of the peer answered
    # the peer spoke in every interval up to its last heartbeat at 115: ours at 60 and 120 only (the
    # round trip), then every interval while it is silent, until its timeout at 115 + 30 (145 s)
    assert ours == [60.0, 120.0, 130.0, 140.0]
    assert ticks == [10.0 * i for i in range(1, 15)]  # the revocation check still runs every interval
    assert session.tracker is not None and session.tracker.rtt_s == 0.0


# ============================================================ shielded send
@pytest.mark.parametrize("devices", [30, 1000])
async def test_a_send_cancelled_half_way_still_writes_the_whole_frame(devices: int) -> None:
    """A lockstep stream hands the frame over in the reader's small pieces;
    the sender is cancelled after the first piece.  The frame must arrive
    whole, followed by the next sender's message."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    session = ControlSession(ours, "client", peer="gateway-under-test")
    peer = t.TunnelConnection("gateway")
    inventory = tuple(
        t.DeviceEntry(id=f"serial:p{i}", kind=t.DeviceKind.SERIAL, port_path=f"/dev/ttyS{i}", description="x" * 40)
        for i in range(devices)
    )
    first_piece = trio.Event()
    cancelled_sender = trio.CancelScope()
    after: list[str] = []

    async def sender() -> None:
        with cancelled_sender:
            await session.send(t.Inventory(inventory))
            after.append("returned")
            await trio.lowlevel.checkpoint()
            after.append("not cancelled")  # pragma: no cover - the cancel must show here

    async def reader() -> list[Any]:
        events: list[Any] = []
        while len(events) < 3:
            data = await theirs.receive_some(1000)
            first_piece.set()
            peer.receive_data(data)
            while (event := peer.next_event()) is not t.NEED_DATA:
                events.append(event)
        return events

    got: list[Any] = []

    async def read_all() -> None:
        got.extend(await reader())

    await _send_hellos(session, peer, theirs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        nursery.start_soon(sender)
        await first_piece.wait()
        cancelled_sender.cancel()
        await session.send(t.Heartbeat(0))  # queued behind the cut-short one
        await session.send(t.Heartbeat(1))
    assert after == ["returned"] and cancelled_sender.cancelled_caught
    assert got == [t.Inventory(inventory), t.Heartbeat(0), t.Heartbeat(1)]


async def test_on_a_real_socket_a_frame_bigger_than_its_buffers_arrives_whole_when_its_sender_is_cancelled() -> None:
    """The non-blocking fast path writes what the socket takes; the rest goes
    out shielded, so cancelling the sender while it waits for room does not
    leave half a frame in front of the next one."""
    ours, theirs = await plain_pair()
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    session = ControlSession(ours, "client", peer="gw")
    await session.send(t.ClientHello())
    inventory = tuple(
        t.DeviceEntry(id=f"serial:p{i}", kind=t.DeviceKind.SERIAL, port_path=f"/dev/ttyS{i}", description="x" * 100)
        for i in range(1000)
    )
    sender = trio.CancelScope()
    returned = trio.Event()

    async def send_big() -> None:
        with sender:
            await session.send(t.Inventory(inventory))
            returned.set()
            await trio.sleep_forever()

    peer = t.TunnelConnection("gateway")
    events: list[Any] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_big)
            await trio.testing.wait_all_tasks_blocked()  # the sender waits for room: nobody reads yet
            assert not returned.is_set()
            sender.cancel()
            nursery.start_soon(session.send, t.Heartbeat(0))  # waits behind the cut-short one
            while len(events) < 3:
                peer.receive_data(await theirs.receive_some(65536))
                while (event := peer.next_event()) is not t.NEED_DATA:
                    events.append(event)
    finally:
        await ours.aclose()
        await theirs.aclose()
    assert returned.is_set() and sender.cancelled_caught
    assert events == [t.ClientHello(), t.Inventory(inventory), t.Heartbeat(0)]


async def _send_hellos(session: ControlSession, peer: t.TunnelConnection, theirs: trio.abc.Stream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.send, t.ClientHello())
        peer.receive_data(await theirs.receive_some(65536))
    assert isinstance(peer.next_event(), t.ClientHello)
    peer.send(t.GatewayHello())


@pytest.mark.usefixtures("autojump_clock")
async def test_a_stalled_send_ends_the_session_after_its_own_deadline() -> None:
    """The peer stops reading: the shielded write gives up after send_timeout_s,
    later sends fail at once, and serve ends with the same PeerGone."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    session = ControlSession(ours, "client", peer="gw", send_timeout_s=5.0)
    peer = t.TunnelConnection("gateway")
    await _send_hellos(session, peer, theirs)
    start = trio.current_time()
    with pytest.raises(PeerGone, match="'inventory' write stalled for 5 s"):
        await session.send(t.Inventory(()))
    assert trio.current_time() - start == 5.0
    with pytest.raises(PeerGone, match="stalled"):
        await session.send(t.Heartbeat(0))
    with pytest.raises(PeerGone, match="stalled"):
        await serve(session)


# ============================================================ peer gone
class FailingStream(trio.abc.Stream):
    """Every operation raises `error` (a fresh copy each time)."""

    def __init__(self, error: type[BaseException]) -> None:
        self.error = error
        self.calls = 0

    def _fail(self) -> BaseException:
        self.calls += 1
        return self.error("the other end went away")

    async def send_all(self, data: Any) -> None:
        raise self._fail()

    async def wait_send_all_might_not_block(self) -> None:
        raise self._fail()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise self._fail()

    async def aclose(self) -> None:
        pass


PEER_GONE_ERRORS = pytest.mark.parametrize(
    "error", [OSError, ConnectionResetError, trio.BrokenResourceError, trio.ClosedResourceError]
)


@PEER_GONE_ERRORS
@pytest.mark.usefixtures("autojump_clock")
async def test_each_stream_error_becomes_one_peer_gone_on_send(error: type[BaseException]) -> None:
    stream = FailingStream(error)
    session = ControlSession(stream, "client", peer="gw:1")
    with pytest.raises(PeerGone) as gone:
        with peer_gone("an outer boundary"):  # must not wrap it again
            await session.send(t.ClientHello())
    assert type(gone.value) is PeerGone and gone.value.peer == "gw:1"
    assert type(gone.value.__cause__) is error
    assert gone.value.reason == f"{error.__name__}: the other end went away"
    with pytest.raises(PeerGone):  # the stream is not touched again
        await session.send(t.Error(code=t.ErrorCode.INTERNAL, message="x"))
    assert stream.calls == 1


@PEER_GONE_ERRORS
@pytest.mark.usefixtures("autojump_clock")
async def test_each_stream_error_becomes_one_peer_gone_on_receive(error: type[BaseException]) -> None:
    session = ControlSession(FailingStream(error), "gateway", peer="thin-01 (1.2.3.4:5)")
    with pytest.raises(PeerGone) as gone:
        await session.receive()
    assert type(gone.value) is PeerGone and type(gone.value.__cause__) is error
    assert gone.value.peer == "thin-01 (1.2.3.4:5)"


@PEER_GONE_ERRORS
@pytest.mark.usefixtures("autojump_clock")
async def test_peer_gone_maps_each_stream_error_once(error: type[BaseException]) -> None:
    with pytest.raises(PeerGone) as gone:
        with peer_gone("outer"), peer_gone("inner"):
            raise error("lost")
    assert gone.value.peer == "inner" and type(gone.value.__cause__) is error


@pytest.mark.usefixtures("autojump_clock")
async def test_peer_gone_lets_other_errors_through() -> None:
    with pytest.raises(t.RemoteProtocolError):
        with peer_gone("x"):
            raise t.RemoteProtocolError("broken")
