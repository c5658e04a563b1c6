"""USB 3 bulk streams in the client (client/usb/bulk_streams.py and the engine's alloc/free):
the offered cap, a stream transfer on this machine's libusb, and a device that cannot drive
streams (an emulated one) answering the reference guest without ever showing streams.

Streams on a real device (QEMU's usb-uas, the VM side's uas driver) are
tests/e2e/real_usb/test_uas.py."""

from __future__ import annotations

import ctypes

import pytest
import usb.backend.libusb1

from redirgate.client.usb import bulk_streams
from redirgate.client.usb.descriptors import AltSettingDesc, ConfigDesc, DeviceSnapshot, EndpointDesc
from redirgate.client.usb.engine import HOST_CAPS
from redirgate.proto.usbredir import Cap, Speed
from tests.support.engine_lab import INVAL, SUCCESS, configure, source_for
from tests.support.refguest import T, engine_session

#: the emulated stick's bulk pair (0x02, 0x81) as an alloc/free bitmask: slots 2 and 17
BULK_PAIR = (1 << 2) | (1 << 17)


def test_the_engine_offers_bulk_streams() -> None:
    assert Cap.BULK_STREAMS in HOST_CAPS and HOST_CAPS == Cap.all_known()


def _uas_like(max_streams: int) -> DeviceSnapshot:
    """A super-speed device whose bulk pair has `max_streams` streams (QEMU's usb-uas has 16)."""
    endpoints = (EndpointDesc(0x81, 2, 1024, 0, max_streams), EndpointDesc(0x02, 2, 1024, 0, max_streams))
    alt = AltSettingDesc(0, 0, 8, 6, 0x62, endpoints)
    return DeviceSnapshot(
        0x46F4, 3, 0, 0, 0, 0x100, 0x300, Speed.SUPER, 4, 2, "4-6", {1: ConfigDesc(1, {0: (alt,)})}, 1
    )


def test_a_device_with_streams_takes_the_async_path_unless_one_is_chosen() -> None:
    assert bulk_streams.wants_async(_uas_like(16), None)
    assert not bulk_streams.wants_async(_uas_like(16), "threads")  # REDIRGATE_USB_TRANSFERS names the path
    assert not bulk_streams.wants_async(_uas_like(0), None)


def test_a_transfer_is_marked_as_a_stream_transfer_on_this_libusb() -> None:
    assert usb.backend.libusb1.get_backend() is not None, "libusb-1.0 is missing (tests/setup-system.sh)"
    lib = usb.backend.libusb1._lib
    lib.libusb_alloc_transfer.restype = usb.backend.libusb1._libusb_transfer_p
    lib.libusb_transfer_get_stream_id.argtypes = [usb.backend.libusb1._libusb_transfer_p]
    lib.libusb_transfer_get_stream_id.restype = ctypes.c_uint32
    transfer = lib.libusb_alloc_transfer(0)
    try:
        transfer.contents.type = 2  # LIBUSB_TRANSFER_TYPE_BULK, as aio.Transfer fills it
        bulk_streams.mark_stream(transfer, 7)
        assert transfer.contents.type == bulk_streams.BULK_STREAM
        assert lib.libusb_transfer_get_stream_id(transfer) == 7
    finally:
        lib.libusb_free_transfer(transfer)


@pytest.mark.usefixtures("reference_parser")
async def test_a_device_without_streams_refuses_an_alloc_and_frees_nothing(storage) -> None:
    backend, _device, _ = storage
    async with engine_session(source_for(backend)) as s:
        guest = s.guest
        await configure(guest)
        assert guest.parser.peer_caps & 1  # bulk_streams, offered
        (eps,) = guest.of_type(T.EP_INFO)[-1:]
        assert not any(eps.fields["max_streams"])
        # the emulated stick runs on the thread path: no stream can be driven
        reply = await guest.request(T.ALLOC_BULK_STREAMS, endpoints=BULK_PAIR, no_streams=4)
        assert reply.fields == {"endpoints": BULK_PAIR, "no_streams": 4, "status": INVAL}
        reply = await guest.request(T.FREE_BULK_STREAMS, endpoints=BULK_PAIR)
        assert reply.fields == {"endpoints": BULK_PAIR, "no_streams": 0, "status": SUCCESS}
        refused = await guest.request(T.BULK_PACKET, endpoint=0x81, status=0, length=512, stream_id=1, length_high=0)
        assert refused.fields["status"] == INVAL
        assert guest.parse_errors == []
