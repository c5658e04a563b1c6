"""HostEngine from the VM side, ordinary transfers (protocol reference §4.3, §4.7):
bulk both ways through a Bulk-Only mass-storage round trip checked against the
image file, bulk transfers above 64 KiB (32bits_bulk_length), interrupt OUT,
wrong-endpoint requests, cancellation, and exactly one reply per request.
The peer is libusbredirparser in the guest role over loopback TCP.
"""

from __future__ import annotations

import collections
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio

from redirgate.client.usb import engine as engine_module
from redirgate.client.usb.device import UsbDevice
from redirgate.client.virtual import (
    LoopbackDevice,
    LoopbackMode,
    VirtualBackend,
    source_pattern,
)
from tests.support.engine_lab import (
    CANCELLED,
    INVAL,
    STALL,
    SUCCESS,
    configure,
    processed,
    source_for,
)
from tests.support.refguest import REPLY_TYPE, RefGuest, T, cbw, engine_session, parse_csw
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("reference_parser")

BLOCK = 512
WRITE10, READ10 = 0x2A, 0x28


def cdb10(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)


async def scsi_write(guest: RefGuest, tag: int, lba: int, data: bytes) -> None:
    blocks = len(data) // BLOCK
    reply = await guest.bulk(0x02, data=cbw(tag, len(data), False, cdb10(WRITE10, lba, blocks)))
    assert reply.fields == {"endpoint": 0x02, "status": SUCCESS, "length": 31, "stream_id": 0}
    reply = await guest.bulk(0x02, data=data)
    assert reply.fields == {"endpoint": 0x02, "status": SUCCESS, "length": len(data), "stream_id": 0}
    assert reply.data == b""
    csw = await guest.bulk(0x81, 13)
    assert csw.fields["status"] == SUCCESS and csw.fields["length"] == 13
    assert parse_csw(csw.data) == (tag, 0, 0)


async def scsi_read(guest: RefGuest, tag: int, lba: int, blocks: int) -> bytes:
    size = blocks * BLOCK
    reply = await guest.bulk(0x02, data=cbw(tag, size, True, cdb10(READ10, lba, blocks)))
    assert reply.fields["status"] == SUCCESS
    data = await guest.bulk(0x81, size)
    assert data.fields == {"endpoint": 0x81, "status": SUCCESS, "length": size, "stream_id": 0}
    csw = await guest.bulk(0x81, 13)
    assert parse_csw(csw.data) == (tag, 0, 0)
    return data.data


async def test_bulk_only_write_then_read_back(storage) -> None:
    backend, device, image = storage
    payload = os.urandom(8 * BLOCK)
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        lun = await guest.control(0xA1, 0xFE, 0, 0, 1)  # GET MAX LUN
        assert (lun.fields["status"], lun.data) == (SUCCESS, b"\x00")
        await scsi_write(guest, 0x11, 10, payload)
        assert await scsi_read(guest, 0x12, 10, 8) == payload
        assert guest.parse_errors == []
    device.disk.flush()
    async with await trio.open_file(image, "rb") as f:
        await f.seek(10 * BLOCK)
        assert await f.read(len(payload)) == payload


async def test_bulk_above_64k_with_32bit_lengths(storage) -> None:
    backend, device, image = storage
    payload = os.urandom(256 * BLOCK)  # 128 KiB in one bulk packet each way
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        await scsi_write(guest, 1, 100, payload)
        assert await scsi_read(guest, 2, 100, 256) == payload
        assert guest.parse_errors == []
    device.disk.flush()
    async with await trio.open_file(image, "rb") as f:
        await f.seek(100 * BLOCK)
        assert await f.read(len(payload)) == payload


async def test_request_to_wrong_endpoint_type_is_inval(loopback) -> None:
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        # bulk packet to the interrupt OUT endpoint, to an unused one
        reply = await guest.bulk(0x03, data=b"abc")
        assert reply.fields == {"endpoint": 0x03, "status": INVAL, "length": 0, "stream_id": 0}
        reply = await guest.bulk(0x8F, 64)
        assert reply.fields == {"endpoint": 0x8F, "status": INVAL, "length": 0, "stream_id": 0}
        # interrupt packet to a bulk endpoint
        reply = await guest.request(T.INTERRUPT_PACKET, data=b"ab", endpoint=0x01, status=0, length=2)
        assert reply.fields == {"endpoint": 0x01, "status": INVAL, "length": 0}
        # interrupt OUT larger than max_packet_size (64)
        reply = await guest.request(T.INTERRUPT_PACKET, data=bytes(65), endpoint=0x03, status=0, length=65)
        assert reply.fields == {"endpoint": 0x03, "status": INVAL, "length": 0}
        assert device.stats().intr_out_bytes == 0 and device.stats().bulk_out_bytes == 0
        assert guest.parse_errors == []


async def test_interrupt_out_and_bulk_loopback(loopback) -> None:
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        reply = await guest.request(T.INTERRUPT_PACKET, data=b"ping!", endpoint=0x03, status=0, length=5)
        assert reply.fields == {"endpoint": 0x03, "status": SUCCESS, "length": 5} and reply.data == b""
        assert device.stats().intr_out_bytes == 5
        out = await guest.bulk(0x01, data=b"hello loopback")
        assert out.fields["status"] == SUCCESS and out.fields["length"] == 14
        back = await guest.bulk(0x81, 512)
        assert back.fields == {"endpoint": 0x81, "status": SUCCESS, "length": 14, "stream_id": 0}
        assert back.data == b"hello loopback"
        # vendor control requests reach the device: GET_MODE
        mode = await guest.control(0xC0, 0x02, 0, 0, 1)
        assert (mode.fields["status"], mode.data) == (SUCCESS, bytes([LoopbackMode.LOOPBACK]))
        assert guest.parse_errors == []


async def test_cancel_pending_bulk_in(loopback) -> None:
    backend, _device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        pending_id = 0xABC
        await guest.send(T.BULK_PACKET, pending_id, endpoint=0x81, status=0, length=512, stream_id=0)
        await processed(guest)  # the read is blocked in the device: nothing answered
        assert guest.unconsumed() == []
        await guest.send(T.CANCEL_DATA_PACKET, pending_id)
        reply = await guest.expect(T.BULK_PACKET, lambda e: e.id == pending_id)
        assert reply.fields == {"endpoint": 0x81, "status": CANCELLED, "length": 0, "stream_id": 0}
        assert reply.data == b""
        # unknown id: nothing; cancelling again: nothing
        await guest.send(T.CANCEL_DATA_PACKET, 0xDEAD)
        await guest.send(T.CANCEL_DATA_PACKET, pending_id)
        # data arriving later must not complete the cancelled read (its
        # slices stop) and must stay for the next request
        out = await guest.bulk(0x01, data=b"later")
        assert out.fields["status"] == SUCCESS
        # the cancelled read's last slice (in a worker thread) has ended
        await until(lambda: s.engine.device.limiter.borrowed_tokens == 0, "the cancelled read's slice to end")
        back = await guest.bulk(0x81, 512)
        assert back.fields["status"] == SUCCESS and back.data == b"later"
        assert [e.id for e in guest.of_type(T.BULK_PACKET)].count(pending_id) == 1
        assert guest.unconsumed() == []
        assert guest.parse_errors == []


async def test_every_request_gets_exactly_one_reply(storage, loopback) -> None:
    """A mixed burst sent without waiting: control, bulk and interrupt on the
    loopback, config/alt requests, a cancel; one reply per id, no more."""
    backend, device = loopback
    device.mode = LoopbackMode.LOOPBACK
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        sent: dict[int, int] = {}

        async def send(msg_type: int, data: bytes = b"", **fields: object) -> int:
            msg_id = guest.next_id()
            sent[msg_id] = REPLY_TYPE[msg_type]
            await guest.send(msg_type, msg_id, data, **fields)
            return msg_id

        for i in range(20):
            await send(T.BULK_PACKET, bytes([i]) * (100 + i), endpoint=0x01, status=0, length=100 + i, stream_id=0)
            await send(
                T.CONTROL_PACKET,
                endpoint=0x80,
                request=6,
                requesttype=0x80,
                status=0,
                value=0x0100,
                index=0,
                length=18,
            )
            await send(T.INTERRUPT_PACKET, bytes([i]) * 8, endpoint=0x03, status=0, length=8)
            await send(T.GET_CONFIGURATION)
            await send(T.GET_ALT_SETTING, interface=i % 3)
        for _ in range(20):
            await send(T.BULK_PACKET, endpoint=0x81, status=0, length=512, stream_id=0)
        blocked = await send(T.BULK_PACKET, endpoint=0x81, status=0, length=512, stream_id=0)
        await send(T.BULK_PACKET, endpoint=0x8F, status=0, length=8, stream_id=0)  # inval
        await until(
            lambda: len({e.id for e in guest.events if e.id in sent and e.type == sent[e.id]}) == len(sent) - 1,
            "a reply to every request but the blocked one",
        )
        await guest.send(T.CANCEL_DATA_PACKET, blocked)
        await guest.expect(T.BULK_PACKET, lambda e: e.id == blocked)
        await processed(guest)  # a second reply to anything would have come before this one
        replies = collections.Counter(e.id for e in guest.events if e.id in sent and e.type == sent[e.id])
        assert set(replies) == set(sent)
        assert all(count == 1 for count in replies.values()), replies
        # bulk IN answers come back in request order with the looped data
        ins = [e for e in guest.of_type(T.BULK_PACKET) if e.fields["endpoint"] == 0x81]
        assert [e.data for e in ins[:20]] == [bytes([i]) * (100 + i) for i in range(20)]
        assert ins[20].fields["status"] == CANCELLED
        assert guest.parse_errors == []


# ------------------------------------------------ transfers on the event loop
# (emulated devices without I/O in their hooks: client/usb/device.py)


def _count_thread_transfers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every pyusb transfer that UsbDevice sends to a worker thread."""
    calls: list[str] = []
    original = UsbDevice.call

    async def counting_call(self: UsbDevice, fn: Callable[..., Any], *args: Any) -> Any:
        name = getattr(fn, "__name__", "")
        if name in ("read", "write", "ctrl_transfer"):
            calls.append(name)
        return await original(self, fn, *args)

    monkeypatch.setattr(UsbDevice, "call", counting_call)
    return calls


async def test_emulated_transfers_that_complete_at_once_skip_worker_threads(loopback, monkeypatch) -> None:
    backend, _device = loopback
    calls = _count_thread_transfers(monkeypatch)
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        assert s.engine.device is not None and s.engine.device.inline_transfers
        for mode in (LoopbackMode.SOURCE, LoopbackMode.SINK):
            reply = await guest.control(0x40, 0x01, int(mode), 0, 0)
            assert reply.fields["status"] == SUCCESS
            for _ in range(10):
                desc = await guest.control(0x80, 6, 0x0100, 0, 18)
                assert desc.fields["status"] == SUCCESS and len(desc.data) == 18
                if mode == LoopbackMode.SOURCE:
                    back = await guest.bulk(0x81, 65536)
                    assert back.fields["length"] == 65536 and back.data == source_pattern(65536)
                else:
                    out = await guest.bulk(0x01, data=bytes(65536))
                    assert (out.fields["status"], out.fields["length"]) == (SUCCESS, 65536)
        assert calls == []
        # the device NAKs (SINK mode IN): that read goes to a thread
        pending = guest.next_id()
        await guest.send(T.BULK_PACKET, pending, endpoint=0x81, status=0, length=512, stream_id=0)
        await until(lambda: calls, "the read to go to a worker thread")
        await guest.send(T.CANCEL_DATA_PACKET, pending)
        reply = await guest.expect(T.BULK_PACKET, lambda e: e.id == pending)
        assert reply.fields["status"] == CANCELLED
        assert guest.parse_errors == []


async def test_storage_transfers_stay_in_worker_threads(storage, monkeypatch) -> None:
    """The drive's hooks do file I/O: none of its transfers runs on the loop."""
    backend, _device, _image = storage
    calls = _count_thread_transfers(monkeypatch)
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        assert s.engine.device is not None and not s.engine.device.inline_transfers
        await scsi_write(guest, 7, 0, bytes(4 * BLOCK))
        assert sorted(set(calls)) == ["read", "write"]


@pytest.mark.parametrize("transport", ["tcp", "memory"])
async def test_out_the_device_takes_in_part_finishes_in_a_thread(transport: str, monkeypatch) -> None:
    """A 6 KiB OUT into a 4 KiB loopback buffer: the device takes 4 KiB at
    once, the rest waits (in a worker thread) until an IN makes room; the
    guest gets one reply with the whole length and the bytes in order."""
    device = LoopbackDevice(buffer_bytes=4096)
    backend = VirtualBackend([device])
    data = os.urandom(6144)
    calls = _count_thread_transfers(monkeypatch)
    try:
        async with engine_session(source_for(backend), transport=transport) as s:
            guest = s.guest
            await configure(guest)
            out_id = guest.next_id()
            await guest.send(T.BULK_PACKET, out_id, data, endpoint=0x01, status=0, length=len(data), stream_id=0)
            await processed(guest)
            assert guest.of_type(T.BULK_PACKET) == []  # still waiting for room
            first = await guest.bulk(0x81, 8192)
            assert first.fields["status"] == SUCCESS and first.data == data[:4096]
            out = await guest.expect(T.BULK_PACKET, lambda e: e.id == out_id)
            assert (out.fields["status"], out.fields["length"]) == (SUCCESS, len(data))
            rest = await guest.bulk(0x81, 8192)
            assert rest.data == data[4096:]
            assert device.stats().bulk_out_bytes == len(data)
            assert calls == ["write"]  # only the rest of the OUT waited in a thread
            assert guest.parse_errors == []
    finally:
        backend.close()


async def test_a_stall_on_the_fast_path_is_reported_and_cleared(loopback) -> None:
    """Errors of transfers run inline map to statuses as in a thread: a halted
    bulk IN answers STALL, CLEAR_FEATURE(ENDPOINT_HALT) lets it work again."""
    backend, device = loopback
    device.mode = LoopbackMode.SOURCE
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        halt = await guest.control(0x02, 0x03, 0, 0x81, 0)  # SET_FEATURE(ENDPOINT_HALT)
        assert halt.fields["status"] == SUCCESS
        stalled = await guest.bulk(0x81, 512)
        assert stalled.fields == {"endpoint": 0x81, "status": STALL, "length": 0, "stream_id": 0}
        clear = await guest.control(0x02, 0x01, 0, 0x81, 0)  # CLEAR_FEATURE(ENDPOINT_HALT)
        assert clear.fields["status"] == SUCCESS
        back = await guest.bulk(0x81, 512)
        assert back.fields["status"] == SUCCESS and back.data == source_pattern(512)
        assert guest.parse_errors == []


async def test_reset_with_a_read_in_flight_waits_for_it_to_come_back(loopback, monkeypatch) -> None:
    """The read is answered `cancelled` at once; the reset runs only once the
    read's worker thread gave the device back, and a request sent meanwhile
    is answered after it (HostState holds it)."""
    backend, _device = loopback
    busy_at_reset: list[int] = []
    original = UsbDevice.reset_blocking

    def reset_blocking(self: UsbDevice, alts: dict[int, int]) -> None:
        busy_at_reset.append(self.limiter.borrowed_tokens)  # this call's own thread: 1
        original(self, alts)

    monkeypatch.setattr(UsbDevice, "reset_blocking", reset_blocking)
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        busy_at_reset.clear()  # the initial reset
        blocked = guest.next_id()
        await guest.send(T.BULK_PACKET, blocked, endpoint=0x81, status=0, length=512, stream_id=0)
        await processed(guest)  # the read waits in the device
        await guest.send(T.RESET)
        after = guest.next_id()
        await guest.send(T.GET_CONFIGURATION, after)
        cancelled = await guest.expect(T.BULK_PACKET, lambda e: e.id == blocked)
        assert cancelled.fields["status"] == CANCELLED
        status = await guest.expect(T.CONFIGURATION_STATUS, lambda e: e.id == after)
        assert status.fields["status"] == SUCCESS
        assert busy_at_reset == [1]
        assert guest.parse_errors == []


async def test_requests_answered_at_once_leave_turns_to_other_tasks(loopback, monkeypatch) -> None:
    """One read that carries several requests the device answers at once (eight 64 KiB bulk IN
    reads of a SOURCE-mode loopback, about 0.25 ms each) is not handled in one step of the loop:
    past `STEP_BUDGET_NS` the reader lets the other tasks run, so another device's request on the
    same client waits for one request, not for the whole read.  Budget 0 here: a turn after
    each request (with the rule off, no other task ran until all eight were answered)."""
    monkeypatch.setattr(engine_module, "STEP_BUDGET_NS", 0)
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        assert (await guest.control(0x40, 0x01, int(LoopbackMode.SOURCE), 0, 0)).fields["status"] == SUCCESS
        ids = [guest.next_id() for _ in range(8)]
        seen: list[int] = []  # the device's bulk IN bytes each time another task gets a turn
        done = trio.Event()

        async def other_task() -> None:
            while not done.is_set():
                seen.append(device.stats().bulk_in_bytes)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            for msg_id in ids:  # one write: the engine reads all eight at once
                fields = {"endpoint": 0x81, "status": 0, "length": 65536, "stream_id": 0}
                guest.parser.send(T.BULK_PACKET, msg_id, fields, b"")
            await guest.flush()
            for msg_id in ids:
                reply = await guest.expect(T.BULK_PACKET, lambda e, i=msg_id: e.id == i)
                assert reply.fields["length"] == 65536
            done.set()
        # trio runs the ready tasks of a batch in random order: the other task may see two requests
        # answered between two of its turns, never more (the reader yields after each one)
        between = {n for n in seen if 0 < n < 8 * 65536}
        assert len(between) >= 3, f"other tasks ran only at {sorted(between)} bytes"
