"""PrinterService and serve_parallel_stream on real stand-ins: a FIFO read by the
test is the printer (ENXIO while nobody reads, EPIPE when the reader leaves),
and `EmulatedLp` answers like the lp driver for printer errors.

Proves: bytes reach the printer in order and complete, also a megabyte to a
slow printer (EAGAIN is waited out, nothing dropped); what a consumer sends
while the printer is away, off, offline or out of paper is kept (bounded)
and written when it is back, each state change logged with the port's name;
the consumer is always read (a full queue discards, counted and logged,
instead of stalling the sender); one consumer at a time; the queue outlives
a consumer; the standalone TCP listener works end to end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from redirgate.client.parallel.serve import serve_parallel_listen
from redirgate.client.parallel.service import PrinterService
from tests.support.parallel_lab import BUSY, OFFLINE, PAPER_OUT, READY, STUCK_PAPER_OUT, LpState, fifo
from tests.support.waiting import until

#: The service's reopen and status timers (and the sleeps below that let them
#: fire a few times) run on a virtual clock; the FIFO I/O is real.
pytestmark = pytest.mark.usefixtures("autojump_clock")

MIB = 1024 * 1024


def _pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(n))


def _service(path: Path, **kwargs: Any) -> PrinterService:
    kwargs.setdefault("reopen_interval_s", 0.05)
    kwargs.setdefault("status_interval_s", 0.05)
    return PrinterService("printer", str(path), **kwargs)


@asynccontextmanager
async def running(service: PrinterService) -> AsyncIterator[PrinterService]:
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service
        nursery.cancel_scope.cancel()


async def test_bytes_reach_the_printer_in_order(tmp_path: Path) -> None:
    with fifo(tmp_path / "lp0") as printer:
        async with running(_service(printer.path)) as service:
            await until(lambda: service.port is not None, "the port to open")
            assert service.describe() == "status unknown"
            async with service.attach("vm1") as session:
                for chunk in (bytes(range(256)), b"\x00\xff" * 100, b"\x1b@text\r\n\x0c"):
                    assert session.put(chunk) == 0
            expected = bytes(range(256)) + b"\x00\xff" * 100 + b"\x1b@text\r\n\x0c"
            assert await printer.read_exactly(len(expected)) == expected
            assert service.written_bytes == len(expected) and service.discarded_bytes == 0


async def test_a_megabyte_to_a_slow_printer_loses_nothing(tmp_path: Path) -> None:
    payload = _pattern(MIB + 12345)
    with fifo(tmp_path / "lp0") as printer:
        async with running(_service(printer.path, queue_bytes=2 * MIB)) as service:
            await until(lambda: service.port is not None, "the port to open")
            async with service.attach("vm1") as session:
                for offset in range(0, len(payload), 50000):
                    assert session.put(payload[offset : offset + 50000]) == 0
            # The pipe holds 64 KiB; the rest waits in the queue while the reader dawdles.
            got = await printer.read_exactly(len(payload), chunk_pause_s=0.002)
            assert got == payload
            await until(lambda: service.queued_bytes == 0, "the queue to drain")


async def test_absent_printer_keeps_the_data_until_it_appears(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="redirgate.client.parallel")
    with fifo(tmp_path / "lp0", reader=False) as printer:
        async with running(_service(printer.path)) as service:
            assert service.port is None and "nobody reads" in service.describe()
            async with service.attach("gateway channel 7") as session:
                session.put(b"page one\x0c")
                session.put(b"page two\x0c")
            await trio.sleep(0.2)  # virtual: four reopen attempts
            assert service.queued_bytes == 18  # kept, not dropped
            printer.open_reader()
            assert await printer.read_exactly(18) == b"page one\x0cpage two\x0c"
    text = caplog.text
    assert "printer: waiting for the printer:" in text and "nobody reads" in text
    assert "printer ready again" in text and "sending 18 queued bytes" in text


async def test_reader_leaving_keeps_unwritten_bytes_for_its_return(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redirgate.client.parallel")
    with fifo(tmp_path / "lp0") as printer:
        async with running(_service(printer.path)) as service:
            await until(lambda: service.port is not None, "the port to open")
            async with service.attach("vm1") as session:
                session.put(b"first")
                assert await printer.read_exactly(5) == b"first"
                printer.close_reader()  # the printer is unplugged
                session.put(b"second")  # the write fails with EPIPE: nothing taken
                await until(lambda: service.port is None, "the port to close")
                assert service.queued_bytes == 6
                printer.open_reader()
                assert await printer.read_exactly(6) == b"second"
    assert "printer gone: the reader went away (EPIPE)" in caplog.text


@pytest.mark.parametrize(
    ("register", "reason"),
    [(PAPER_OUT, "printer out of paper"), (OFFLINE, "printer offline (or switched off)")],
)
async def test_printer_errors_are_logged_and_the_data_waits(
    register: int, reason: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redirgate.client.parallel")
    state = LpState(register)
    with fifo(tmp_path / "lp0") as printer:
        async with running(_service(printer.path, open_port=state.open_port)) as service:
            await until(lambda: service.port is not None, "the port to open")
            async with service.attach("gateway channel 3") as session:
                session.put(b"invoice #1\r\n")
                await until(lambda: service.problem == reason, reason)
                assert reason in service.describe()
                await trio.sleep(0.2)  # virtual: several retries, still nothing lost or written
                assert service.queued_bytes == 12 and printer.read_available() == b""
                state.register = int(READY)
                assert await printer.read_exactly(12) == b"invoice #1\r\n"
                await until(lambda: service.problem is None, "the printer to be ready")
                assert service.describe().startswith("printer ready")
    assert f"printer: {reason}; holding 12 queued bytes from gateway channel 3 until it is back" in caplog.text
    assert "printer ready again" in caplog.text
    assert caplog.text.count(f"printer: {reason}") == 1  # one line per change, not per retry


async def test_an_idle_printer_running_out_of_paper_is_logged_once_and_its_return(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody prints: the status lines are still read, and each change is one line (and the inventory's)."""
    caplog.set_level(logging.INFO, logger="redirgate.client.parallel")
    state = LpState(READY)
    with fifo(tmp_path / "lp0") as printer:
        async with running(_service(printer.path, open_port=state.open_port)) as service:
            await until(lambda: service.port is not None, "the port to open")
            state.register = int(PAPER_OUT)
            await until(lambda: service.problem == "printer out of paper", "the idle printer's paper-out")
            assert service.describe() == "printer out of paper"
            await trio.sleep(0.2)  # virtual: several idle status reads, one line
            state.register = int(READY)
            await until(lambda: service.problem is None, "the printer to be ready")
            assert service.describe() == "printer ready"
    assert caplog.text.count("printer: printer out of paper") == 1
    assert "printer: printer ready again (printer ready (status 0x" in caplog.text
    assert "sending 0 queued bytes" not in caplog.text


async def test_printer_stuck_without_an_error_is_named_from_its_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redirgate.client.parallel")
    state = LpState(BUSY)
    with fifo(tmp_path / "lp0") as printer:
        async with running(_service(printer.path, open_port=state.open_port)) as service:
            await until(lambda: service.port is not None, "the port to open")
            async with service.attach("vm1") as session:
                session.put(b"x" * 10)
                await trio.sleep(0.3)  # virtual: six status polls
                assert service.problem is None and service.queued_bytes == 10  # busy is no error
                state.register = int(STUCK_PAPER_OUT)  # EAGAIN only; the lines say why
                await until(lambda: service.problem == "printer out of paper", "the stall to be named")
                state.register = int(READY)
                assert await printer.read_exactly(10) == b"x" * 10
    assert "printer: printer out of paper; holding 10 queued bytes from vm1 until it is back" in caplog.text


async def test_full_queue_discards_loudly_and_never_stalls_the_sender(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redirgate.client.parallel")
    with fifo(tmp_path / "lp0", reader=False) as printer:
        service = _service(printer.path, queue_bytes=1024)
        async with running(service):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(serve_parallel_listen, "127.0.0.1", 0, service))
                port = listeners[0].socket.getsockname()[1]
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                payload = _pattern(2 * MIB)
                # all of it is read although the printer is away
                await stream.send_all(payload)
                await stream.send_eof()
                await until(lambda: service.discarded_bytes == len(payload) - 1024, "the discards")
                await stream.aclose()
                printer.open_reader()
                assert await printer.read_exactly(1024) == payload[:1024]
                await trio.sleep(0.1)  # virtual: two more write attempts would have come
                assert printer.read_available() == b""
                nursery.cancel_scope.cancel()
    discards = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
    assert discards and "printer: the 1024-byte queue is full (waiting for the printer:" in discards[0]
    assert "rather than stall the VM" in discards[0] and "127.0.0.1:" in discards[0]
    assert len(discards) < 30  # first, then each doubling


async def test_listener_one_consumer_at_a_time_and_the_queue_outlives_it(tmp_path: Path) -> None:
    with fifo(tmp_path / "lp0") as printer:
        service = _service(printer.path)
        async with running(service):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(serve_parallel_listen, "127.0.0.1", 0, service))
                port = listeners[0].socket.getsockname()[1]
                first = await trio.open_tcp_stream("127.0.0.1", port)
                await first.send_all(b"job from the first VM\n")
                await until(lambda: service.session is not None, "the first consumer")
                second = await trio.open_tcp_stream("127.0.0.1", port)
                refusal = await second.receive_some(200)
                assert b"port printer is already in use" in refusal
                await second.aclose()
                await first.aclose()
                await until(lambda: service.session is None, "the first consumer to leave")
                assert await printer.read_exactly(22) == b"job from the first VM\n"
                third = await trio.open_tcp_stream("127.0.0.1", port)
                await third.send_all(b"next job\n")
                await third.aclose()
                assert await printer.read_exactly(9) == b"next job\n"
                nursery.cancel_scope.cancel()


async def test_shutdown_reports_what_never_reached_the_printer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redirgate.client.parallel")
    with fifo(tmp_path / "lp0", reader=False) as printer:
        async with running(_service(printer.path)) as service:
            async with service.attach("vm1") as session:
                session.put(b"lost at shutdown")
    assert "printer: stopping with 16 bytes that never reached the printer" in caplog.text
