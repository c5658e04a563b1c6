"""HostEngine from the VM side, endpoint streams and reset (protocol reference
§4.6, §4.8): interrupt receiving from a keyboard, iso IN and OUT on the
loopback device, buffered bulk receiving, start validation, and what a reset
does to running streams.  The peer is libusbredirparser in the guest role
over loopback TCP.
"""

from __future__ import annotations

import itertools
import logging
import re
import struct

import pytest

from redirgate.client.usb import streams
from redirgate.client.virtual import (
    LoopbackMode,
    iso_pattern,
    source_pattern,
)
from redirgate.client.virtual.keyboard import keyboard_reports
from tests.support.engine_lab import (
    INVAL,
    STALL,
    SUCCESS,
    configure,
    iso_alt,
    processed,
    source_for,
)
from tests.support.refguest import RefGuest, T, engine_session
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("reference_parser")

ISO_PACKET_BYTES = 3 * 1024  # the loopback's high-speed iso endpoints: 0x1400


async def packets(guest: RefGuest, msg_type: int, endpoint: int, count: int, timeout_s: float = 5.0) -> list:
    got = []
    for _ in range(count):
        got.append(await guest.expect(msg_type, lambda e: e.fields["endpoint"] == endpoint, timeout_s=timeout_s))
    return got


async def test_interrupt_receiving_keyboard(keyboard) -> None:
    backend, device = keyboard
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        start = await guest.request(T.START_INTERRUPT_RECEIVING, 0x77, endpoint=0x81)
        assert (start.id, start.fields) == (0x77, {"status": SUCCESS, "endpoint": 0x81})
        device.type_text("Hi!")
        got = await packets(guest, T.INTERRUPT_PACKET, 0x81, 6)
        assert [e.id for e in got] == list(range(6))
        assert all(e.fields == {"endpoint": 0x81, "status": SUCCESS, "length": 8} for e in got)
        assert [e.data for e in got] == keyboard_reports("Hi!")
        stop = await guest.request(T.STOP_INTERRUPT_RECEIVING, 0x78, endpoint=0x81)
        assert (stop.id, stop.fields) == (0x78, {"status": SUCCESS, "endpoint": 0x81})
        # stopped: keys typed now are not sent (the read running when the
        # stop came may take one report; the engine keeps it)
        device.type_text("x")
        await until(lambda: s.engine.device.limiter.borrowed_tokens == 0, "the stopped stream's last read to end")
        await processed(guest)
        assert device.pending_reports >= 1
        assert guest.unconsumed() == []
        # started again: ids restart at 0, nothing was lost
        start = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x81)
        assert start.fields["status"] == SUCCESS
        got = await packets(guest, T.INTERRUPT_PACKET, 0x81, 2)
        assert [e.id for e in got] == [0, 1] and [e.data for e in got] == keyboard_reports("x")
        # duplicate start: inval, the running stream is left alone
        dup = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x81)
        assert dup.fields == {"status": INVAL, "endpoint": 0x81}
        device.type_text("y")
        got = await packets(guest, T.INTERRUPT_PACKET, 0x81, 2)
        assert [e.id for e in got] == [2, 3]
        assert guest.parse_errors == []


async def test_interrupt_receiving_bad_starts(loopback) -> None:
    backend, _device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        for endpoint in (0x81, 0x8F):  # bulk IN, not there
            bad = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=endpoint)
            assert bad.fields == {"status": STALL, "endpoint": endpoint}
        ok = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x83)
        assert ok.fields == {"status": SUCCESS, "endpoint": 0x83}
        # interrupt OUT on the loopback comes back on the interrupt IN stream
        reply = await guest.request(T.INTERRUPT_PACKET, data=b"echo", endpoint=0x03, status=0, length=4)
        assert reply.fields["status"] == SUCCESS
        (echo,) = await packets(guest, T.INTERRUPT_PACKET, 0x83, 1)
        assert (echo.id, echo.data, echo.fields["length"]) == (0, b"echo", 4)
        assert guest.parse_errors == []


async def test_iso_in_stream(loopback) -> None:
    backend, _device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        await iso_alt(guest)
        start = await guest.request(T.START_ISO_STREAM, 0x51, endpoint=0x82, pkts_per_urb=8, no_urbs=4)
        assert (start.id, start.fields) == (0x51, {"status": SUCCESS, "endpoint": 0x82})
        got = await packets(guest, T.ISO_PACKET, 0x82, 40)
        assert got[0].id == 0 and _increasing([e.id for e in got])
        assert all(e.fields == {"endpoint": 0x82, "status": SUCCESS, "length": ISO_PACKET_BYTES} for e in got)
        first = struct.unpack_from("<I", got[0].data)[0]
        # the device's packet counter and the ids advance together (a packet dropped for a slow reader keeps its id)
        assert [e.data for e in got] == [iso_pattern(first + e.id, ISO_PACKET_BYTES) for e in got]
        dup = await guest.request(T.START_ISO_STREAM, endpoint=0x82, pkts_per_urb=8, no_urbs=4)
        assert dup.fields == {"status": INVAL, "endpoint": 0x82}
        stop = await guest.request(T.STOP_ISO_STREAM, 0x52, endpoint=0x82)
        assert (stop.id, stop.fields) == (0x52, {"status": SUCCESS, "endpoint": 0x82})
        after = len(guest.events)
        await until(lambda: s.engine.device.limiter.borrowed_tokens == 0, "the stream's reading thread to end")
        await processed(guest)
        assert [e for e in guest.events[after:] if e.type == T.ISO_PACKET] == []
        ids = [e.id for e in guest.of_type(T.ISO_PACKET)]
        assert ids[0] == 0 and _increasing(ids)  # in order, no duplicate
        # on a loaded machine this process's guest can read too slowly and the engine drops iso
        # packets as the reference does (a hysteresis on queued bytes): every one missing is counted
        missing = ids[-1] + 1 - len(ids)
        assert missing <= s.engine.outbox.dropped.get(0x82, 0), f"{missing} iso packet(s) lost uncounted"
        assert guest.parse_errors == []


def _increasing(ids: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(ids))


async def test_iso_start_validation(loopback) -> None:
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        # alt 0 has no iso endpoints
        bad = await guest.request(T.START_ISO_STREAM, endpoint=0x82, pkts_per_urb=8, no_urbs=4)
        assert bad.fields == {"status": STALL, "endpoint": 0x82}
        await iso_alt(guest)
        for pkts, urbs in ((0, 4), (33, 4), (8, 0), (8, 17)):
            bad = await guest.request(T.START_ISO_STREAM, endpoint=0x82, pkts_per_urb=pkts, no_urbs=urbs)
            assert bad.fields == {"status": STALL, "endpoint": 0x82}, (pkts, urbs)
        bad = await guest.request(T.START_ISO_STREAM, endpoint=0x81, pkts_per_urb=8, no_urbs=4)  # bulk
        assert bad.fields == {"status": STALL, "endpoint": 0x81}
        # iso packets for an OUT stream that is not started: inval with the packet's id
        await guest.send(T.ISO_PACKET, 0x99, bytes(16), endpoint=0x02, status=0, length=16)
        rejected = await guest.expect(T.ISO_STREAM_STATUS, lambda e: e.id == 0x99)
        assert rejected.fields == {"status": INVAL, "endpoint": 0x02}
        assert device.stats().iso_out_packets == 0
        assert guest.parse_errors == []


async def test_iso_out_stream(loopback) -> None:
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        await iso_alt(guest)
        start = await guest.request(T.START_ISO_STREAM, endpoint=0x02, pkts_per_urb=4, no_urbs=4)
        assert start.fields == {"status": SUCCESS, "endpoint": 0x02}
        # the stream starts once half of pkts_per_urb x no_urbs (8) is buffered
        seq = 0
        for _ in range(8):
            await guest.send(T.ISO_PACKET, seq, bytes([seq]) * 1000, endpoint=0x02, status=0, length=1000)
            seq += 1
        await until(lambda: device.stats().iso_out_packets >= 8, "the first half to be written")
        for _ in range(4):
            await guest.send(T.ISO_PACKET, seq, bytes([seq]) * 1000, endpoint=0x02, status=0, length=1000)
            seq += 1
        await processed(guest)
        stats = device.stats()
        # 4 + 4 reached half: written; the third 4 waits for the next half
        assert (stats.iso_out_packets, stats.iso_out_bytes) == (8, 8000)
        for _ in range(4):
            await guest.send(T.ISO_PACKET, seq, bytes(1000), endpoint=0x02, status=0, length=1000)
            seq += 1
        await processed(guest)
        await until(lambda: device.stats().iso_out_packets >= 16, "the second half to be written")
        assert device.stats().iso_out_bytes == 16000
        # a packet larger than max_packet_size: inval, the packet's id
        await guest.send(
            T.ISO_PACKET, 0x4242, bytes(ISO_PACKET_BYTES + 1), endpoint=0x02, status=0, length=ISO_PACKET_BYTES + 1
        )
        rejected = await guest.expect(T.ISO_STREAM_STATUS, lambda e: e.id == 0x4242)
        assert rejected.fields == {"status": INVAL, "endpoint": 0x02}
        stop = await guest.request(T.STOP_ISO_STREAM, endpoint=0x02)
        assert stop.fields == {"status": SUCCESS, "endpoint": 0x02}
        assert guest.unconsumed() == []
        assert guest.parse_errors == []


async def test_iso_out_drops_are_counted_and_logged(loopback, caplog: pytest.LogCaptureFixture) -> None:
    """A guest ahead of the device: the packets that do not fit are dropped, never silently."""
    caplog.set_level(logging.INFO, logger="redirgate.client.usb.engine")
    backend, device = loopback
    metric_before = streams.dropped_totals["iso_out"]
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        await iso_alt(guest)
        start = await guest.request(T.START_ISO_STREAM, endpoint=0x02, pkts_per_urb=2, no_urbs=2)
        assert start.fields == {"status": SUCCESS, "endpoint": 0x02}
        sent = 200  # far more than the 4 slots, in one go: the device cannot keep up
        for seq in range(sent):
            await guest.send(T.ISO_PACKET, seq, bytes(100), endpoint=0x02, status=0, length=100)
        await processed(guest)
        dropped = s.engine.stream_drops()["iso_out"].get(0x02, 0)
        assert dropped > 0
        await until(lambda: device.stats().iso_out_packets + dropped >= sent, "the kept packets to be written")
        # every packet was either written or counted as dropped
        assert device.stats().iso_out_packets + dropped == sent
        assert any("dropped" in r.getMessage() and "iso OUT" in r.getMessage() for r in caplog.records)
        assert streams.dropped_totals["iso_out"] - metric_before == dropped  # redirgate_iso_out_packets_dropped
        stop = await guest.request(T.STOP_ISO_STREAM, endpoint=0x02)
        assert stop.fields == {"status": SUCCESS, "endpoint": 0x02}
        # the stream's end reports every drop, also those after the last interval's line
        summary = f"iso OUT stream on 0x02 ended: {sent} packets from the guest, {sent - dropped} taken by the device"
        await until(lambda: any(summary in r.getMessage() for r in caplog.records), "the stream's summary")
        logged = [int(m.group(1)) for r in caplog.records if (m := re.search(r"dropped (\d+) iso OUT", r.getMessage()))]
        assert sum(logged) == dropped
        assert guest.parse_errors == []


async def test_bulk_receiving_source_mode(loopback) -> None:
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        mode = await guest.control(0x40, 0x01, int(LoopbackMode.SOURCE), 0, 0)  # SET_MODE
        assert mode.fields["status"] == SUCCESS
        assert device.mode == LoopbackMode.SOURCE
        bad = await guest.request(
            T.START_BULK_RECEIVING, stream_id=0, bytes_per_transfer=1000, endpoint=0x81, no_transfers=4
        )
        assert bad.fields == {"stream_id": 0, "endpoint": 0x81, "status": STALL}  # not a multiple of 512
        bad = await guest.request(
            T.START_BULK_RECEIVING, stream_id=0, bytes_per_transfer=4096, endpoint=0x83, no_transfers=4
        )
        assert bad.fields == {"stream_id": 0, "endpoint": 0x83, "status": STALL}  # interrupt endpoint
        start = await guest.request(
            T.START_BULK_RECEIVING, 0x31, stream_id=0, bytes_per_transfer=4096, endpoint=0x81, no_transfers=4
        )
        assert (start.id, start.fields) == (0x31, {"stream_id": 0, "endpoint": 0x81, "status": SUCCESS})
        got = await packets(guest, T.BUFFERED_BULK_PACKET, 0x81, 10)
        assert [e.id for e in got] == list(range(10))
        assert all(e.fields == {"stream_id": 0, "length": 4096, "endpoint": 0x81, "status": SUCCESS} for e in got)
        assert all(e.data == source_pattern(4096) for e in got)
        stop = await guest.request(T.STOP_BULK_RECEIVING, 0x32, stream_id=0, endpoint=0x81)
        assert (stop.id, stop.fields) == (0x32, {"stream_id": 0, "endpoint": 0x81, "status": SUCCESS})
        after = len(guest.events)
        await until(lambda: s.engine.device.limiter.borrowed_tokens == 0, "the receiving thread to end")
        await processed(guest)
        assert [e for e in guest.events[after:] if e.type == T.BUFFERED_BULK_PACKET] == []
        assert guest.parse_errors == []


async def test_reset_stalls_streams_and_second_reset_is_a_noop(keyboard) -> None:
    backend, device = keyboard
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        # QEMU's two boot resets right after the announcement: no-ops (§4.2)
        await guest.send(T.RESET)
        await guest.send(T.RESET)
        await processed(guest)
        assert guest.unconsumed() == []
        await guest.send(T.SET_CONFIGURATION, guest.next_id(), configuration=1)
        for t in (T.INTERFACE_INFO, T.EP_INFO, T.CONFIGURATION_STATUS):
            await guest.expect_next(t)
        set_protocol = await guest.control(0x21, 0x0B, 0, 0)  # SET_PROTOCOL(boot)
        assert set_protocol.fields["status"] == SUCCESS and device.protocol == 0
        start = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x81)
        assert start.fields["status"] == SUCCESS
        device.type_text("a")
        await packets(guest, T.INTERRUPT_PACKET, 0x81, 2)
        # reset: no reply, the running stream gets a stall status with id 0
        await guest.send(T.RESET, 0x1234)
        stalled = await guest.expect_next(T.INTERRUPT_RECEIVING_STATUS)
        assert (stalled.id, stalled.fields) == (0, {"status": STALL, "endpoint": 0x81})
        await processed(guest)
        assert device.protocol == 1  # the device was reset (HID 7.2.6)
        # nothing used the device since: the second reset does nothing
        set_protocol = await guest.control(0x21, 0x0B, 0, 0)
        assert device.protocol == 0
        await guest.send(T.RESET)
        await processed(guest)
        assert device.protocol == 1  # the control transfer cleared the flag: reset ran
        await guest.send(T.RESET)
        await processed(guest)
        assert guest.unconsumed() == []
        # the guest restarts its stream after a reset, as QEMU does
        start = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x81)
        assert start.fields["status"] == SUCCESS
        device.type_text("b")
        got = await packets(guest, T.INTERRUPT_PACKET, 0x81, 2)
        assert [e.id for e in got] == [0, 1] and [e.data for e in got] == keyboard_reports("b")
        assert guest.parse_errors == []


async def test_reset_with_iso_stream_then_restart(loopback) -> None:
    backend, _device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        await iso_alt(guest)
        start = await guest.request(T.START_ISO_STREAM, endpoint=0x82, pkts_per_urb=8, no_urbs=2)
        assert start.fields["status"] == SUCCESS
        await packets(guest, T.ISO_PACKET, 0x82, 5)
        await guest.send(T.RESET)
        stalled = await guest.expect(T.ISO_STREAM_STATUS, lambda e: e.fields["status"] == STALL)
        assert (stalled.id, stalled.fields) == (0, {"status": STALL, "endpoint": 0x82})
        await processed(guest)
        # the alt setting survives a reset (the OS restores it): restart works
        get = await guest.request(T.GET_ALT_SETTING, interface=1)
        assert get.fields == {"status": SUCCESS, "interface": 1, "alt": 1}
        before = len(guest.of_type(T.ISO_PACKET))
        start = await guest.request(T.START_ISO_STREAM, endpoint=0x82, pkts_per_urb=8, no_urbs=2)
        assert start.fields["status"] == SUCCESS
        await until(lambda: len(guest.of_type(T.ISO_PACKET)) >= before + 5, "5 fresh iso packets")
        fresh = guest.of_type(T.ISO_PACKET)[before:]
        assert [e.id for e in fresh[:5]] == [0, 1, 2, 3, 4]
        assert all(e.fields["status"] == SUCCESS and e.fields["length"] == ISO_PACKET_BYTES for e in fresh)
        assert guest.parse_errors == []
