"""HostEngine from the VM side, device and connection life cycle (protocol
reference §4.9, §4.11, §6): unplug with a request pending, the reference
guest's automatic device_disconnect_ack, replug on the same connection, the
guest's filter (filter_filter, filter_reject), and malformed input closing
the connection with the device released.  The peer is libusbredirparser in
the guest role over loopback TCP.
"""

from __future__ import annotations

import logging
import struct

import pytest
import trio
import usb.core
import usb.util

from redirgate.client.virtual import VirtualBackend
from tests.support.engine_lab import (
    INVAL,
    IOERROR,
    STALL,
    SUCCESS,
    processed,
    set_configuration_1,
    source_for,
)
from tests.support.refguest import T, VirtualDeviceSource, engine_session
from tests.support.waiting import until, until_async

pytestmark = pytest.mark.usefixtures("reference_parser")

ANY = -1


def claimable(backend: VirtualBackend) -> bool:
    """Another handle can claim interface 0: the engine released the device.
    (An unconfigured device is configured first, which needs no claims.)"""
    dev = usb.core.find(backend=backend)
    assert dev is not None
    try:
        if backend.devices[0].configuration_value == 0:
            dev.set_configuration(1)
        usb.util.claim_interface(dev, 0)
        return True
    except usb.core.USBError:
        return False
    finally:
        usb.util.dispose_resources(dev)


async def wait_claimable(backend: VirtualBackend) -> None:
    await until_async(lambda: trio.to_thread.run_sync(claimable, backend), "the engine to release the device")


async def test_unplug_with_pending_request_then_replug(loopback) -> None:
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest, engine = s.guest, s.engine
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        await set_configuration_1(guest)
        assert (await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x83)).fields["status"] == SUCCESS
        pending = 0x5150
        await guest.send(T.BULK_PACKET, pending, endpoint=0x81, status=0, length=512, stream_id=0)
        await processed(guest)  # the read is pending in the device
        backend.unplug(device)
        reply = await guest.expect_next(T.BULK_PACKET)
        assert (reply.id, reply.fields) == (
            pending,
            {"endpoint": 0x81, "status": IOERROR, "length": 0, "stream_id": 0},
        )
        await guest.expect_next(T.DEVICE_DISCONNECT)
        # the reference guest acked by itself (cap 3), before the request below
        await processed(guest)
        assert not engine.wait_ack
        # while gone: requests get ioerror, stops are ignored, resets too
        late = await guest.bulk(0x81, 512)
        assert late.fields["status"] == IOERROR and late.fields["length"] == 0
        ctrl = await guest.control(0x80, 6, 0x0100, 0, 18)
        assert ctrl.fields["status"] == IOERROR and ctrl.data == b""
        start = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x83)
        assert start.fields == {"status": STALL, "endpoint": 0x83}
        await guest.send(T.STOP_INTERRUPT_RECEIVING, guest.next_id(), endpoint=0x83)
        await guest.send(T.RESET)
        alt = await guest.request(T.GET_ALT_SETTING, interface=0)
        assert alt.fields == {"status": IOERROR, "interface": 0, "alt": 255}
        assert guest.unconsumed() == []
        assert [e.id for e in guest.of_type(T.BULK_PACKET)].count(pending) == 1

        # replug: announced again on the same connection, usable again
        backend.plug(device)
        info, _eps, connect = await guest.expect_announcement()
        assert info.fields["interface_count"] == 0  # enumerates unconfigured
        assert connect.fields["product_id"] == 0x0003
        await set_configuration_1(guest)
        out = await guest.bulk(0x01, data=b"after replug")
        assert out.fields["status"] == SUCCESS
        back = await guest.bulk(0x81, 512)
        assert back.fields["status"] == SUCCESS and back.data == b"after replug"
        assert len(guest.of_type(T.DEVICE_CONNECT)) == 2
        assert len(guest.of_type(T.DEVICE_DISCONNECT)) == 1
        assert guest.unconsumed() == []
        assert guest.parse_errors == []


async def test_idle_unplug_and_replug_three_times(loopback) -> None:
    """No transfer pending: the unplug is still noticed; each replug opens the
    device afresh (a new generation in the backend)."""
    backend, device = loopback
    source = VirtualDeviceSource(backend, device)
    async with engine_session(source) as s:
        guest = s.guest
        await guest.expect_next(T.HELLO)
        for round_ in range(3):
            await guest.expect_announcement()
            await set_configuration_1(guest)
            reply = await guest.request(T.INTERRUPT_PACKET, data=bytes([round_]), endpoint=0x03, status=0, length=1)
            assert reply.fields["status"] == SUCCESS
            backend.unplug(device)
            await guest.expect_next(T.DEVICE_DISCONNECT)
            backend.plug(device)
        await guest.expect_announcement()
        assert source.acquired == 4
        assert guest.parse_errors == []


async def test_filter_rejecting_before_the_device_appears(loopback) -> None:
    backend, device = loopback
    backend.unplug(device)
    source = VirtualDeviceSource(backend, device, os_configuration=1)
    async with engine_session(source) as s:
        guest, engine = s.guest, s.engine
        await guest.expect_next(T.HELLO)
        # vendor-specific interfaces (0xff) refused, everything else allowed
        await guest.send(T.FILTER_FILTER, rules=[(0xFF, ANY, ANY, ANY, 0), (ANY, ANY, ANY, ANY, 1)])
        await processed(guest)  # the filter is in force
        backend.plug(device)
        await until(lambda: engine.rejected, "the engine to reject the device")
        ctrl = await guest.control(0x80, 6, 0x0100, 0, 18)  # anything sent before it came first
        assert ctrl.fields["status"] == IOERROR
        assert guest.of_type(T.DEVICE_CONNECT) == []
        assert guest.of_type(T.DEVICE_DISCONNECT) == []
        assert source.acquired == 1
        await wait_claimable(backend)  # released, not kept claimed
        assert guest.parse_errors == []


async def test_filter_rejecting_the_connected_device(loopback) -> None:
    backend, device = loopback
    source = VirtualDeviceSource(backend, device)
    async with engine_session(source) as s:
        guest, engine = s.guest, s.engine
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        await set_configuration_1(guest)
        # a filter that allows it changes nothing
        await guest.send(T.FILTER_FILTER, rules=[(0x03, ANY, ANY, ANY, 0), (ANY, ANY, ANY, ANY, 1)])
        get = await guest.request(T.GET_CONFIGURATION)
        assert get.fields == {"status": SUCCESS, "configuration": 1}
        await guest.send(T.FILTER_FILTER, rules=[(ANY, 0x1209, 0x0003, ANY, 0), (ANY, ANY, ANY, ANY, 1)])
        await guest.expect_next(T.DEVICE_DISCONNECT)
        get = await guest.request(T.GET_CONFIGURATION)  # after the guest's automatic ack
        assert get.fields["status"] == IOERROR and not engine.wait_ack
        await wait_claimable(backend)  # released: the engine's device loop is past its last offer
        await processed(guest)
        assert len(guest.of_type(T.DEVICE_CONNECT)) == 1  # not offered again
        assert source.acquired == 1
        await wait_claimable(backend)
        assert guest.parse_errors == []


async def test_filter_reject_from_the_guest(loopback) -> None:
    backend, device = loopback
    source = VirtualDeviceSource(backend, device)
    async with engine_session(source) as s:
        guest, engine = s.guest, s.engine
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        pending = 0x77
        await guest.send(T.BULK_PACKET, pending, endpoint=0x81, status=0, length=64, stream_id=0)
        await guest.send(T.FILTER_REJECT)
        # the pending request is answered, the device is dropped quietly
        reply = await guest.expect(T.BULK_PACKET, lambda e: e.id == pending)
        assert reply.fields["status"] in (IOERROR, INVAL)
        await until(lambda: engine.rejected, "the engine to drop the device")
        await guest.send(T.FILTER_REJECT)  # again, while disconnected: ignored
        ctrl = await guest.control(0x80, 6, 0x0100, 0, 18)
        assert ctrl.fields["status"] == IOERROR
        await wait_claimable(backend)  # released once its pending read ended
        # replugging does not bring it back on this connection
        backend.unplug(device)
        backend.plug(device)
        # a negative check with no event to wait for: a rejected device is never
        # looked for again; the source would have looked 10 times (every 20 ms)
        await trio.sleep(0.2)
        assert len(guest.of_type(T.DEVICE_CONNECT)) == 1
        assert source.acquired == 1
        assert guest.unconsumed() == []
        assert guest.parse_errors == []


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<IIQ", 0x7777, 0, 1),  # unknown type
        struct.pack("<IIQ", 1, 10, 0) + bytes(10),  # device_connect: host-to-guest only
        struct.pack("<IIQBBHIH", 101, 10 + 5, 9, 0x02, 0, 6, 0, 0) + b"short",  # data length 5 != 6
    ],
    ids=["unknown-type", "wrong-direction", "data-length"],
)
async def test_malformed_input_closes_and_releases(loopback, caplog: pytest.LogCaptureFixture, raw: bytes) -> None:
    backend, _device = loopback
    caplog.set_level(logging.INFO)
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        await set_configuration_1(guest)  # interfaces claimed now
        assert not claimable(backend)
        await guest.send_raw(raw)
        await guest.wait_eof()
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(s.guest_name in w and "malformed" in w for w in warnings), warnings
        await wait_claimable(backend)
        assert guest.parse_errors == []
