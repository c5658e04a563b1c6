"""client/usb/iso_out.py: iso OUT packets go into libusb transfers as they are parsed.

No real device here (tests/e2e/real_usb/test_audio.py plays a tone through
QEMU's usb-audio on real libusb): the writer's libusb side is a stand-in
that records what is submitted and completes it when the test says, so the
writer's own rules are checked: packets copied into their transfer's
buffer at packet_size strides, full transfers submitted at once, the
half-full start, drops only when every transfer is busy (after asking
libusb for what completed), each drop counted, failures reported once.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import usb.backend.libusb1 as libusb1

from redirgate.client.usb import iso_out
from redirgate.client.usb.streams import Stream
from redirgate.proto.usbredir import EndpointType, Status
from redirgate.proto.usbredir import messages as m

SIZE = 192


class _Transfer:
    """What IsoOutWriter uses of aio.Transfer."""

    def __init__(self, aio: _Aio, handle: Any, kind: int, endpoint: int, buffer: Any, length: int, *_: Any, **kw: Any):
        self.aio, self.buffer, self.packets = aio, buffer, kw["iso_packets"]
        assert kw["keep"]  # submitted again and again
        aio.made.append(self)
        #: the buffer as it was submitted last
        self.sent = b""
        self.closed = False
        self.lengths: list[int] = []
        self.on_done: Any = None
        self.status = -1
        self.iso_results: list[tuple[int, int]] = []

    def set_iso_lengths(self, lengths: list[int]) -> None:
        self.lengths = list(lengths)

    def submit(self) -> None:
        assert self not in self.aio.inflight and not self.closed
        self.sent = bytes(self.buffer)
        self.aio.submitted.append(self)
        self.aio.inflight.append(self)

    def cancel(self) -> None:
        self.aio.cancelled.append(self)

    def close(self) -> None:
        self.closed = True

    def complete(self, status: int = libusb1.LIBUSB_TRANSFER_COMPLETED) -> None:
        self.aio.inflight.remove(self)
        self.status = status
        self.iso_results = [(status, n) for n in self.lengths]
        self.on_done()


class _Aio:
    """libusb's side: `handle_events` completes whatever the device finished (`device_keeps_up`)."""

    def __init__(self) -> None:
        self.made: list[_Transfer] = []
        self.submitted: list[_Transfer] = []
        self.inflight: list[_Transfer] = []
        self.cancelled: list[_Transfer] = []
        self.device_keeps_up = False
        self.polls = 0

    def handle_events(self) -> None:
        self.polls += 1
        if self.device_keeps_up:
            for transfer in list(self.inflight):
                transfer.complete()


class _Device:
    def __init__(self) -> None:
        self.aio = _Aio()

    def libusb_handle(self) -> object:
        return object()


class _Engine:
    def __init__(self) -> None:
        self.sent: list[m.Message] = []
        self.lost: list[str] = []

    def send_nowait(self, message: m.Message) -> None:
        self.sent.append(message)

    def device_lost(self, reason: str) -> None:
        self.lost.append(reason)


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> iso_out.IsoOutWriter:
    monkeypatch.setattr(iso_out.aio, "Transfer", _Transfer)
    stream = Stream(EndpointType.ISO, 0x01, SIZE, 10, 12, trio.CancelScope())  # QEMU's usb-audio stream
    return iso_out.IsoOutWriter(_Engine(), stream, _Device())  # type: ignore[arg-type]


def _aio(writer: iso_out.IsoOutWriter) -> _Aio:
    return writer.aio  # type: ignore[return-value]


def test_packets_land_at_packet_size_strides_and_the_stream_starts_half_full(writer) -> None:
    aio = _aio(writer)
    for i in range(59):
        assert writer.put(bytes([i]) * (SIZE - i % 3))
    assert aio.submitted == []  # 5 full transfers and a partial one: below half of 12
    writer.put(b"\xff" * SIZE)
    assert len(aio.submitted) == 6  # half full: started, all six at once
    first = aio.submitted[0]
    assert first.lengths == [SIZE - i % 3 for i in range(10)]
    assert first.sent[SIZE : 2 * SIZE - 1] == b"\x01" * (SIZE - 1)  # packet 1 at offset packet_size
    for _ in range(60, 70):
        writer.put(bytes(SIZE))
    assert len(aio.submitted) == 7  # started: each full transfer goes at once


def test_a_burst_parsed_in_one_go_is_not_dropped_while_the_device_keeps_up(writer) -> None:
    """The reader parses a whole socket read (hundreds of packets after the thin client was
    starved) without a task switch; the device finishes transfers meanwhile.  A packet is
    dropped only if libusb, asked then, has every transfer still busy."""
    aio = _aio(writer)
    aio.device_keeps_up = True
    assert all(writer.put(bytes(SIZE)) for _ in range(1000))
    assert writer.stream.dropped == 0
    # the rest waits in full transfers for the restart (reaping everything at once is an under-run)
    assert writer.stream.written >= 900
    assert aio.polls > 0
    # the stream's transfers (buffer and libusb struct) are made once and reused, never one per batch
    assert len(aio.made) <= writer.slots
    assert len(aio.submitted) >= 90


def test_a_stopped_stream_frees_its_transfers_now_or_as_they_come_back(writer) -> None:
    aio = _aio(writer)
    for _ in range(75):  # 6 in flight, a partial one filling
        writer.put(bytes(SIZE))
    inflight = list(aio.inflight)
    writer.close()
    assert {id(t) for t in aio.cancelled} == {id(t) for t in inflight}
    assert all(t.closed for t in aio.made)  # in flight ones: aio.Transfer frees them when they finish
    for transfer in inflight:
        transfer.complete(libusb1.LIBUSB_TRANSFER_CANCELLED)
    assert writer.stream.written == 0 and not aio.inflight


def test_a_device_behind_drops_counted_and_falls_back_to_half(writer) -> None:
    aio = _aio(writer)
    taken = [writer.put(bytes(SIZE)) for _ in range(300)]
    # 12 transfers of 10 in flight; then the reference's hysteresis: one drop and the next 60
    assert taken == [True] * 120 + [False] * 180
    assert (writer.stream.received, writer.stream.dropped) == (300, 180)
    assert len(aio.inflight) == 12
    for transfer in list(aio.inflight):
        transfer.complete()
    assert writer.stream.written == 120
    assert not writer.started  # under-run: nothing in flight, nothing full
    for _ in range(59):
        writer.put(bytes(SIZE))
    assert len(aio.submitted) == 12  # waits for half again


def test_a_failing_run_is_reported_once_and_a_gone_device_ends_the_session(writer) -> None:
    aio = _aio(writer)
    engine: _Engine = writer.engine  # type: ignore[assignment]
    for _ in range(80):
        writer.put(bytes(SIZE))
    aio.inflight[0].complete(libusb1.LIBUSB_TRANSFER_ERROR)
    aio.inflight[0].complete(libusb1.LIBUSB_TRANSFER_ERROR)
    assert [(type(x), x.status) for x in engine.sent] == [(m.IsoStreamStatus, Status.IOERROR)]
    assert writer.stream.failed == 20
    aio.inflight[0].complete()
    aio.inflight[0].complete(libusb1.LIBUSB_TRANSFER_ERROR)  # a new failing run: told again
    assert len(engine.sent) == 2
    aio.inflight[0].complete(libusb1.LIBUSB_TRANSFER_NO_DEVICE)
    assert engine.lost and writer.closed
    writer.close()
    assert {id(t) for t in aio.cancelled} == {id(t) for t in aio.inflight} != set()
