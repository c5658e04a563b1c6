"""PortService + serve_serial_stream in raw mode, on a pty standing in for the device.

Proves: every byte value and ≥ 1 MiB bursts cross both ways intact with
backpressure (a slow device side drops nothing), the ring replays what the
device sent while nobody was connected and counts what it had to drop, one
consumer at a time (refused with a message, or taken over), and a port that
vanishes is reopened when it returns, with its settings.
"""

from __future__ import annotations

import os
import termios
from pathlib import Path

import trio

from redirgate.client.serial.settings import LineSettings
from tests.support.serial_lab import (
    connect,
    make_service,
    pty_pair,
    read_master,
    receive_exactly,
    serving,
    write_master,
)
from tests.support.waiting import until

MIB = 1024 * 1024


def _pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(n))


async def test_all_byte_values_both_ways() -> None:
    with pty_pair() as pty:
        async with serving(make_service(pty.path)) as port:
            stream = await connect(port)
            async with stream:
                await stream.send_all(bytes(range(256)) * 4)
                assert await read_master(pty, 1024) == bytes(range(256)) * 4
                await write_master(pty, bytes(range(256)) * 4)
                assert await receive_exactly(stream, 1024) == bytes(range(256)) * 4


async def test_megabyte_bursts_both_ways_with_a_slow_side() -> None:
    """The consumer sends 1.5 MiB while the device side does not read: the TX
    buffer fills, TCP pushes back, then everything arrives in order."""
    with pty_pair() as pty:
        service = make_service(pty.path, tx_bytes=4096, ring_bytes=4096)
        async with serving(service) as port:
            stream = await connect(port)
            async with stream, trio.open_nursery() as nursery:
                to_device = _pattern(3 * MIB // 2, 1)
                from_device = _pattern(3 * MIB // 2, 2)
                nursery.start_soon(stream.send_all, to_device)
                # nobody reads the device: everything must wait, not drop
                await until(lambda: len(service._tx) == service._tx.capacity, "the TX buffer to fill")
                assert await read_master(pty, len(to_device)) == to_device
                nursery.start_soon(write_master, pty, from_device)
                # nobody reads the consumer: the ring fills, the pty waits
                await until(lambda: len(service._rx) == service._rx.capacity, "the ring to fill")
                assert await receive_exactly(stream, len(from_device)) == from_device
                assert service.rx_overflow_bytes == 0


async def test_ring_replays_on_connect_and_counts_overflow() -> None:
    with pty_pair() as pty:
        service = make_service(pty.path, ring_bytes=100)
        async with serving(service) as port:
            await write_master(pty, b"boot: ok\r\n")
            await until(lambda: len(service._rx) == 10)
            stream = await connect(port)
            async with stream:
                assert await receive_exactly(stream, 10) == b"boot: ok\r\n"
            assert service.rx_overflow_bytes == 0
            await until(lambda: service.session is None)
            await write_master(pty, bytes(range(250)))  # 150 more than the ring holds
            await until(lambda: service.rx_overflow_bytes == 150)
            stream = await connect(port)
            async with stream:
                assert await receive_exactly(stream, 100) == bytes(range(150, 250))  # the newest
                await write_master(pty, b"live")
                assert await receive_exactly(stream, 4) == b"live"


async def test_second_consumer_is_refused_with_a_message() -> None:
    with pty_pair() as pty:
        async with serving(make_service(pty.path)) as port:
            first = await connect(port)
            async with first:
                await first.send_all(b"1")
                assert await read_master(pty, 1) == b"1"
                second = await connect(port)
                async with second:
                    line = await receive_exactly(second, len(b"redirgate: port test-port is already in use\r\n"))
                    assert line == b"redirgate: port test-port is already in use\r\n"
                    assert await second.receive_some(100) == b""  # then EOF
                    await second.send_all(b"x")  # its bytes never reach the port
                await first.send_all(b"2")  # the first one is unaffected
                assert await read_master(pty, 1) == b"2"
                await write_master(pty, b"3")
                assert await receive_exactly(first, 1) == b"3"


async def test_takeover_moves_the_port_to_the_new_consumer() -> None:
    with pty_pair() as pty:
        service = make_service(pty.path, takeover=True)
        async with serving(service) as port:
            old = await connect(port)
            async with old:
                await old.send_all(b"old")
                assert await read_master(pty, 3) == b"old"
                new = await connect(port)
                async with new:
                    assert await old.receive_some(100) == b""  # the old one gets EOF
                    await new.send_all(b"new")
                    assert await read_master(pty, 3) == b"new"
                    await write_master(pty, b"back")
                    assert await receive_exactly(new, 4) == b"back"
                    assert service.session is not None and service.session.peer.endswith(
                        str(new.socket.getsockname()[1])
                    )


async def test_vanished_port_is_reopened_when_it_returns(tmp_path: Path) -> None:
    """The service is given a symlink; the pty behind it dies and a new one
    appears under the same name: the port comes back with its settings and
    the same consumer goes on."""
    link = tmp_path / "ttyTEST"
    settings = LineSettings(baud=57600, stop_bits=2, rtscts=True)
    with pty_pair() as first:
        link.symlink_to(first.path)
        service = make_service(link, settings)
        async with serving(service) as port:
            stream = await connect(port)
            async with stream:
                await stream.send_all(b"before")
                assert await read_master(first, 6) == b"before"
                first.close()  # unplugged
                await until(lambda: service.port is None)
                link.unlink()
                await stream.send_all(b"while away")
                await until(lambda: len(service._tx) == 10, "the bytes in the TX buffer")  # waiting there
                assert service.port is None and service.opened_count == 1
                with pty_pair() as second:
                    link.symlink_to(second.path)
                    await until(lambda: service.port is not None)
                    assert service.opened_count == 2
                    assert second.speed() == termios.B57600
                    assert second.cflag() & termios.CSTOPB and second.cflag() & termios.CRTSCTS
                    assert await read_master(second, 10) == b"while away"
                    await write_master(second, b"after")
                    assert await receive_exactly(stream, 5) == b"after"


async def test_port_missing_at_start_is_opened_when_it_appears(tmp_path: Path) -> None:
    link = tmp_path / "ttyLATE"
    service = make_service(link)
    async with serving(service) as port:
        assert service.port is None
        with pty_pair() as pty:
            os.symlink(pty.path, link)
            await until(lambda: service.port is not None)
            stream = await connect(port)
            async with stream:
                await stream.send_all(b"hi")
                assert await read_master(pty, 2) == b"hi"


async def test_consumer_leaving_lets_its_last_bytes_reach_the_device() -> None:
    with pty_pair() as pty:
        service = make_service(pty.path, tx_bytes=1024)
        async with serving(service) as port:
            stream = await connect(port)
            data = _pattern(200_000, 3)
            async with trio.open_nursery() as nursery:

                async def send_and_close() -> None:
                    await stream.send_all(data)
                    await stream.aclose()

                nursery.start_soon(send_and_close)
                assert await read_master(pty, len(data)) == data
