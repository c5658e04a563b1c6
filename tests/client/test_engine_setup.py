"""HostEngine from the VM side, start-up and configuration: the reference parser
(libusbredirparser, guest role) against emulated devices over loopback TCP.

Covers the hello exchange and the announcement order (protocol reference
§4.2), 64-bit and 32-bit ids, descriptors read with control packets,
set/get configuration and alternate settings (§4.5) and the replies given
while no device is present (§4.3, §4.6, §4.9 rule 2).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from redirgate.client.usb.engine import HOST_CAPS, HostEngine
from redirgate.client.virtual import VirtualBackend
from redirgate.proto.usbredir import Cap, Role, UsbredirConnection
from redirgate.proto.usbredir import messages as m
from tests.support.engine_lab import (
    INVAL,
    IOERROR,
    STALL,
    SUCCESS,
    set_configuration,
    source_for,
)
from tests.support.refguest import T, engine_session

pytestmark = pytest.mark.usefixtures("reference_parser")

CAP_64BITS_IDS = 1 << 5
CONTROL, ISO, BULK, INTERRUPT, UNUSED = 0, 1, 2, 3, 255


@pytest.mark.parametrize("transport", ["tcp", "memory"])
@pytest.mark.parametrize("guest_caps", [0xFF, 0xFF & ~CAP_64BITS_IDS], ids=["64bit-ids", "32bit-ids"])
async def test_hello_then_announcement_in_order(storage, transport: str, guest_caps: int) -> None:
    backend, _device, _ = storage
    async with engine_session(source_for(backend), caps=guest_caps, transport=transport) as s:
        guest = s.guest
        hello = await guest.expect_next(T.HELLO)
        assert hello.fields["version"] == "redirgate usbredir host"
        assert guest.parser.peer_caps == int(HOST_CAPS) == 0xFF
        info, eps, connect = await guest.expect_announcement()
        # unconfigured after plug-in: no interfaces, only the control slots
        assert info.fields["interface_count"] == 0
        assert eps.fields["type"] == tuple(CONTROL if i in (0, 16) else UNUSED for i in range(32))
        assert connect.fields == {
            "speed": 2,
            "device_class": 0,
            "device_subclass": 0,
            "device_protocol": 0,
            "vendor_id": 0x1209,
            "product_id": 0x0001,
            "device_version_bcd": 0x0100,
        }
        # ids: all 64 bits echoed with 64bits_ids, else the low 32 bits
        big = 0x1_2345_6789
        await guest.send(T.GET_CONFIGURATION, big)
        reply = await guest.expect(T.CONFIGURATION_STATUS)
        assert reply.id == (big if guest_caps & CAP_64BITS_IDS else big & 0xFFFFFFFF)
        assert reply.fields == {"status": SUCCESS, "configuration": 0}
        assert guest.parse_errors == []


async def test_descriptors_through_control_packets(storage) -> None:
    backend, device, _ = storage
    d = device.descriptors
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        # QEMU's order: device (8), config (9), config (full)
        short = await guest.control(0x80, 6, 0x0100, 0, 8)
        assert short.fields["status"] == SUCCESS and short.fields["length"] == 8
        assert short.data == d.device[:8]
        full = await guest.control(0x80, 6, 0x0100, 0, 18)
        assert full.fields["length"] == 18 and full.data == d.device
        head = await guest.control(0x80, 6, 0x0200, 0, 9)
        total = int.from_bytes(head.data[2:4], "little")
        config = await guest.control(0x80, 6, 0x0200, 0, total)
        assert config.data == d.configurations[0] and config.fields["length"] == total
        # fields of the request are echoed in the reply
        assert config.fields["requesttype"] == 0x80 and config.fields["request"] == 6
        assert config.fields["value"] == 0x0200 and config.fields["index"] == 0
        product = await guest.control(0x80, 6, 0x0300 | d.device[15], 0x0409, 255)
        assert product.data[2:].decode("utf-16-le") == "Virtual Flash Drive"
        # a request the device stalls
        missing = await guest.control(0x80, 6, 0x0300 | 0x7F, 0x0409, 255)
        assert missing.fields["status"] == STALL and missing.fields["length"] == 0 and missing.data == b""
        assert guest.parse_errors == []


async def test_set_configuration_then_same_config_shortcut(storage) -> None:
    backend, device, _ = storage
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        info, eps, status = await set_configuration(guest, 1)
        assert status.fields == {"status": SUCCESS, "configuration": 1}
        assert info.fields["interface_count"] == 1
        assert info.fields["interface"][:1] == (0,)
        assert (
            info.fields["interface_class"][0],
            info.fields["interface_subclass"][0],
            info.fields["interface_protocol"][0],
        ) == (0x08, 0x06, 0x50)
        types = eps.fields["type"]
        assert types[2] == BULK and types[17] == BULK  # OUT 0x02 -> slot 2, IN 0x81 -> slot 17
        assert eps.fields["max_packet_size"][2] == eps.fields["max_packet_size"][17] == 512
        assert [i for i, t in enumerate(types) if t != UNUSED] == [0, 2, 16, 17]
        assert device.configuration_value == 1
        # the same value again: status only, nothing re-sent (§4.5)
        again = await guest.request(T.SET_CONFIGURATION, configuration=1)
        assert again.fields == {"status": SUCCESS, "configuration": 1}
        get = await guest.request(T.GET_CONFIGURATION)
        assert get.fields == {"status": SUCCESS, "configuration": 1}
        assert guest.unconsumed() == []
        assert len(guest.of_type(T.INTERFACE_INFO)) == 2  # announcement + first set
        assert guest.parse_errors == []


async def test_alt_settings(loopback) -> None:
    backend, device = loopback
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await guest.expect_next(T.HELLO)
        await guest.expect_announcement()
        info, eps, _ = await set_configuration(guest, 1)
        assert info.fields["interface_count"] == 2
        assert eps.fields["type"][2] == UNUSED and eps.fields["type"][18] == UNUSED  # alt 0: no iso
        get = await guest.request(T.GET_ALT_SETTING, interface=1)
        assert get.fields == {"status": SUCCESS, "interface": 1, "alt": 0}

        msg_id = guest.next_id()
        await guest.send(T.SET_ALT_SETTING, msg_id, interface=1, alt=1)
        info = await guest.expect_next(T.INTERFACE_INFO)
        eps = await guest.expect_next(T.EP_INFO)
        status = await guest.expect_next(T.ALT_SETTING_STATUS)
        assert (status.id, status.fields) == (msg_id, {"status": SUCCESS, "interface": 1, "alt": 1})
        assert info.fields["interface_count"] == 2
        assert eps.fields["type"][2] == ISO and eps.fields["type"][18] == ISO
        assert eps.fields["max_packet_size"][18] == 3 * 1024  # 0x1400: 3 x 1024 per microframe
        assert eps.fields["interface"][18] == 1 and eps.fields["interval"][18] == 1
        assert device.alternate_setting(1) == 1
        get = await guest.request(T.GET_ALT_SETTING, interface=1)
        assert get.fields == {"status": SUCCESS, "interface": 1, "alt": 1}

        # unknown interface: inval, alt 255, no interface/ep info
        bad = await guest.request(T.SET_ALT_SETTING, interface=7, alt=0)
        assert bad.fields == {"status": INVAL, "interface": 7, "alt": 255}
        bad = await guest.request(T.GET_ALT_SETTING, interface=7)
        assert bad.fields == {"status": INVAL, "interface": 7, "alt": 255}
        # an alt the interface does not have: an error, the alt stays
        bad = await guest.request(T.SET_ALT_SETTING, interface=1, alt=9)
        assert bad.fields["status"] != SUCCESS and bad.fields["alt"] == 1
        get = await guest.request(T.GET_ALT_SETTING, interface=1)
        assert get.fields == {"status": SUCCESS, "interface": 1, "alt": 1}
        assert guest.unconsumed() == []
        assert guest.parse_errors == []


async def test_requests_while_no_device() -> None:
    backend = VirtualBackend([])
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await guest.expect_next(T.HELLO)
        ctrl = await guest.control(0x80, 6, 0x0100, 0, 18)
        assert ctrl.fields["status"] == IOERROR and ctrl.fields["length"] == 0 and ctrl.data == b""
        bulk = await guest.bulk(0x81, 512)
        assert bulk.fields["status"] == IOERROR and bulk.fields["length"] == 0
        out = await guest.bulk(0x02, data=b"x" * 31)
        assert out.fields["status"] == IOERROR and out.fields["length"] == 0
        intr = await guest.request(T.INTERRUPT_PACKET, data=b"ab", endpoint=0x03, status=0, length=2)
        assert intr.fields["status"] == IOERROR and intr.fields["length"] == 0
        cfg = await guest.request(T.SET_CONFIGURATION, configuration=1)
        assert cfg.fields == {"status": IOERROR, "configuration": 0}
        cfg = await guest.request(T.GET_CONFIGURATION)
        assert cfg.fields == {"status": IOERROR, "configuration": 0}
        alt = await guest.request(T.SET_ALT_SETTING, interface=0, alt=0)
        assert alt.fields == {"status": IOERROR, "interface": 0, "alt": 255}
        alt = await guest.request(T.GET_ALT_SETTING, interface=0)
        assert alt.fields == {"status": IOERROR, "interface": 0, "alt": 255}
        iso = await guest.request(T.START_ISO_STREAM, endpoint=0x82, pkts_per_urb=8, no_urbs=4)
        assert iso.fields == {"status": STALL, "endpoint": 0x82}
        intr = await guest.request(T.START_INTERRUPT_RECEIVING, endpoint=0x83)
        assert intr.fields == {"status": STALL, "endpoint": 0x83}
        recv = await guest.request(
            T.START_BULK_RECEIVING, stream_id=0, bytes_per_transfer=512, endpoint=0x81, no_transfers=2
        )
        assert recv.fields == {"stream_id": 0, "endpoint": 0x81, "status": STALL}
        # stops and resets are not answered while disconnected (§4.6, §4.8)
        await guest.send(T.STOP_INTERRUPT_RECEIVING, guest.next_id(), endpoint=0x83)
        await guest.send(T.STOP_ISO_STREAM, guest.next_id(), endpoint=0x82)
        await guest.send(T.RESET)
        await guest.send(T.CANCEL_DATA_PACKET, 12345)
        last = await guest.request(T.GET_CONFIGURATION)  # a marker: everything before is processed
        assert last.fields["status"] == IOERROR
        assert guest.unconsumed() == []
        assert guest.parse_errors == []


async def test_no_answer_that_needs_a_cap_the_guest_did_not_offer(loopback) -> None:
    """A guest without bulk_receiving may still send start/stop_bulk_receiving
    (its parser checks only ours); the answer would need its cap, so none is
    sent (as usbredirparser) and the connection goes on."""
    backend, _device = loopback
    host_end, guest_end = trio.testing.memory_stream_pair()
    engine = HostEngine(host_end, source_for(backend), peer="capless guest")
    guest = UsbredirConnection(Role.GUEST, Cap.all_known() & ~Cap.BULK_RECEIVING, "capless guest")
    seen: list[m.Message] = []

    async def next_message() -> m.Message:
        while True:
            event = guest.next_event()
            if isinstance(event, m.Message):
                seen.append(event)
                return event
            guest.receive_data(await guest_end.receive_some(65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await guest_end.send_all(guest.hello_bytes())
        with trio.fail_after(10):
            assert isinstance(await next_message(), m.Hello)
            await guest_end.send_all(
                guest.send(m.StartBulkReceiving(0, 512, 0x81, 2, id=1))
                + guest.send(m.StopBulkReceiving(0, 0x81, id=2))
                + guest.send(m.GetConfiguration(id=3))
            )
            while not isinstance(await next_message(), m.ConfigurationStatus):
                pass
        nursery.cancel_scope.cancel()
    assert not any(isinstance(x, m.BulkReceivingStatus) for x in seen)
    backend.close()
