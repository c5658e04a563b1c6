"""Control sessions parked on a `QuietReader` (the gateway's way): real TLS on loopback
sockets, the session's peer driven by hand.

What is asserted is behaviour: heartbeats answered while the session's own task stays
parked (the reader's counters say who handled each read), any other message handed to
the session's read loop in order, the end of the stream, a protocol error, cancellation
and the reader's own end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from redirgate.proto import tunnel as t
from redirgate.transport import ControlSession, QuietReader, TimerWheel, ZeroCopyTLSStream
from tests.support.control_peer import INTERVAL_S, TIMEOUT_S
from tests.support.control_peer import Peer as Client
from tests.support.transport_lab import make_pki, plain_pair, tls_pair
from tests.support.waiting import until


async def _after_hellos(tmp_path: Path) -> tuple[ControlSession, Client, ZeroCopyTLSStream]:
    """A gateway-role session and its client over real TLS, after both hellos; the third is the
    session's stream (the caller closes both streams)."""
    pki = make_pki(tmp_path)
    client_stream, gateway_stream = await tls_pair(pki.server_context(), pki.client_context())
    client = Client(client_stream, "client")
    session = ControlSession(gateway_stream, "gateway", peer="thin-under-test")
    await client.send(t.ClientHello())
    assert isinstance(await session.receive(), t.ClientHello)
    await session.send(t.GatewayHello(heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S))
    assert isinstance(await client.next(), t.GatewayHello)
    return session, client, gateway_stream


@asynccontextmanager
async def parked_session(
    tmp_path: Path, handlers: Any = None
) -> AsyncIterator[tuple[ControlSession, Client, QuietReader, list[Any]]]:
    """A gateway-role session serving on a running QuietReader (and TimerWheel) after the
    hellos; yields (session, client, reader, outcome): `outcome` gets what serve returned
    or raised once it ended."""
    session, client, gateway_stream = await _after_hellos(tmp_path)
    reader, timers = QuietReader(), TimerWheel()
    outcome: list[Any] = []

    async def serve() -> None:
        try:
            outcome.append(
                await session.serve(
                    handlers or {},
                    heartbeat_interval_s=INTERVAL_S,
                    heartbeat_timeout_s=TIMEOUT_S,
                    timers=timers,
                    quiet=reader,
                )
            )
        except Exception as exc:
            outcome.append(exc)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(timers.run)
            await nursery.start(reader.run)
            nursery.start_soon(serve)
            await until(lambda: len(reader) == 1)
            yield session, client, reader, outcome
            nursery.cancel_scope.cancel()
    finally:
        await client.stream.aclose()
        await gateway_stream.aclose()


async def test_heartbeats_are_answered_by_the_reader_while_the_session_stays_parked(tmp_path: Path) -> None:
    async with parked_session(tmp_path) as (session, client, reader, _outcome):
        for seq in range(5):
            await client.send(t.Heartbeat(seq))
            assert await client.next() == t.HeartbeatAck(seq)
        assert reader.handled == 5 and reader.handed_over == 0 and len(reader) == 1
        assert session.tracker is not None


async def test_another_message_goes_to_the_read_loop_in_order_and_the_session_parks_again(tmp_path: Path) -> None:
    seen: list[Any] = []

    async def record(session: ControlSession, message: t.TunnelMessage) -> None:
        seen.append(message)

    entry = t.DeviceEntry(id="serial:a", kind=t.DeviceKind.SERIAL, port_path="/dev/ttyS0")
    async with parked_session(tmp_path, {t.Inventory: record}) as (_session, client, reader, _outcome):
        # one read with a heartbeat, an inventory and a heartbeat: the first answered by the reader,
        # the rest by the read loop, in order
        await client.stream.send_all(
            bytes(client.conn.send(t.Heartbeat(0)))
            + bytes(client.conn.send(t.Inventory((entry,))))
            + bytes(client.conn.send(t.Heartbeat(1)))
        )
        assert await client.next() == t.HeartbeatAck(0)
        assert await client.next() == t.HeartbeatAck(1)
        assert seen == [t.Inventory((entry,))]
        await until(lambda: len(reader) == 1)  # parked again
        handed = reader.handed_over
        await client.send(t.Heartbeat(2))
        assert await client.next() == t.HeartbeatAck(2)
        assert reader.handed_over == handed == 1


async def test_the_end_of_the_stream_ends_serve(tmp_path: Path) -> None:
    async with parked_session(tmp_path) as (_session, client, reader, outcome):
        await client.stream.aclose()
        await until(lambda: outcome)
        assert outcome == ["connection closed"] and len(reader) == 0


async def test_garbage_while_parked_raises_the_protocol_error_from_serve(tmp_path: Path) -> None:
    async with parked_session(tmp_path) as (_session, client, reader, outcome):
        await client.stream.send_all(b"\x00\x00\x00\x03abc")
        await until(lambda: outcome)
        assert isinstance(outcome[0], t.RemoteProtocolError) and len(reader) == 0
        assert "already failed" not in str(outcome[0])  # the error itself, not its echo


async def test_finish_while_parked_unparks_the_session(tmp_path: Path) -> None:
    async with parked_session(tmp_path) as (session, _client, reader, outcome):
        session.finish("done here")
        await until(lambda: outcome)
        assert outcome == ["done here"] and len(reader) == 0


async def test_sessions_go_on_reading_by_themselves_when_the_reader_stops(tmp_path: Path) -> None:
    session, client, gateway_stream = await _after_hellos(tmp_path)
    reader = QuietReader()
    try:
        async with trio.open_nursery() as nursery:
            reader_scope = trio.CancelScope()

            async def run_reader(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with reader_scope:
                    await reader.run(task_status=task_status)

            await nursery.start(run_reader)
            nursery.start_soon(
                lambda: session.serve({}, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S, quiet=reader)
            )
            await until(lambda: len(reader) == 1)
            reader_scope.cancel()
            await until(lambda: not reader.running)
            await client.send(t.Heartbeat(9))
            assert await client.next() == t.HeartbeatAck(9)
            assert reader.handled == 0
            nursery.cancel_scope.cancel()
    finally:
        await client.stream.aclose()
        await gateway_stream.aclose()


@pytest.mark.parametrize("sessions", [50])
async def test_many_sessions_on_one_reader(tmp_path: Path, sessions: int) -> None:
    """Fifty sessions parked at once: each client's heartbeats are answered to that client."""
    pki = make_pki(tmp_path)
    server_ctx, client_ctx = pki.server_context(), pki.client_context()
    reader, timers = QuietReader(), TimerWheel()
    pairs = [await tls_pair(server_ctx, client_ctx) for _ in range(sessions)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(timers.run)
            await nursery.start(reader.run)
            clients = []
            for client_stream, gateway_stream in pairs:
                client = Client(client_stream, "client")
                session = ControlSession(gateway_stream, "gateway", peer="many")
                await client.send(t.ClientHello())
                assert isinstance(await session.receive(), t.ClientHello)
                await session.send(t.GatewayHello(heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S))
                assert isinstance(await client.next(), t.GatewayHello)
                clients.append(client)
                nursery.start_soon(
                    lambda s=session: s.serve(
                        {},
                        heartbeat_interval_s=INTERVAL_S,
                        heartbeat_timeout_s=TIMEOUT_S,
                        timers=timers,
                        quiet=reader,
                    )
                )
            await until(lambda: len(reader) == sessions)
            for seq in range(3):
                for i, client in enumerate(clients):
                    await client.send(t.Heartbeat(seq * 1000 + i))
                for i, client in enumerate(clients):
                    assert await client.next() == t.HeartbeatAck(seq * 1000 + i)
            assert reader.handled >= sessions  # several heartbeats may come in one read
            assert reader.handed_over == 0
            nursery.cancel_scope.cancel()
    finally:
        for a, b in pairs:
            await a.aclose()
            await b.aclose()


async def test_sessions_reading_floods_at_once_each_get_only_their_own_messages() -> None:
    """Every session's read goes through one shared buffer: two sessions whose peers each send
    many messages in one go (reads that do not wait, each followed by a turn for other tasks)
    must each see exactly their own peer's messages, in order."""
    got: dict[str, list[str]] = {"a": [], "b": []}

    async def record(session: ControlSession, message: t.Inventory) -> None:
        got[session.peer].extend(entry.id for entry in message.devices)

    streams: list[trio.abc.Stream] = []

    async def one(name: str, nursery: trio.Nursery) -> tuple[ControlSession, Client]:
        ours, theirs = await plain_pair()  # no TLS: each read returns all that came, many messages
        streams.extend((ours, theirs))
        client = Client(theirs, "client")  # type: ignore[arg-type]
        session = ControlSession(ours, "gateway", peer=name)
        await client.send(t.ClientHello())
        assert isinstance(await session.receive(), t.ClientHello)
        await session.send(t.GatewayHello(heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S))
        assert isinstance(await client.next(), t.GatewayHello)
        nursery.start_soon(
            lambda: session.serve({t.Inventory: record}, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S)
        )
        return session, client

    # floods of several times the 64 KiB read each: reads that do not wait, one after the other
    sent = {name: [f"serial:{name}{i}" for i in range(2000)] for name in got}
    try:
        async with trio.open_nursery() as nursery:
            a, b = await one("a", nursery), await one("b", nursery)
            for (_session, client), name in ((a, "a"), (b, "b")):
                entries = [
                    (t.DeviceEntry(id=i, kind=t.DeviceKind.SERIAL, port_path="/dev/x", description="x" * 100),)
                    for i in sent[name]
                ]
                flood = b"".join(bytes(client.conn.send(t.Inventory(e))) for e in entries)
                nursery.start_soon(client.stream.send_all, flood)
            await until(lambda: len(got["a"]) + len(got["b"]) >= 4000)
            nursery.cancel_scope.cancel()
    finally:
        for stream in streams:
            await stream.aclose()
    assert got == sent
