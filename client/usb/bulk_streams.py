"""USB 3 bulk streams (UAS) on a real device, through libusb.

The host state (proto/usbredir/host_bulk_streams.py) decides; this module
does what it asks for on the device handle pyusb's libusb1 backend opened:
``libusb_alloc_streams`` / ``libusb_free_streams`` (blocking ioctls: the
engine runs them in the device's worker threads, like a configuration
change), and `mark_stream` turns a bulk transfer built by
client/usb/aio.py into a stream transfer (what ``libusb_fill_bulk_stream_transfer``
does: the type ``LIBUSB_TRANSFER_TYPE_BULK_STREAM`` and
``libusb_transfer_set_stream_id``, which pyusb does not declare).

Streams need libusb's asynchronous path: a synchronous pyusb transfer
cannot name a stream.  So a real device with streams takes that path even
while worker threads are the default (`wants_async`: unless
``REDIRGATE_USB_TRANSFERS`` names a path).  Where a device has no
asynchronous path (an emulated device, or ``REDIRGATE_USB_TRANSFERS=threads``),
`ep_info` hides the endpoints' streams from the guest, so it never
allocates any (usbredirhost built against a libusb without streams does the
same by not reading them).

Threads: `alloc_blocking` and `free_blocking` run in a worker thread;
`mark_stream` on the loop thread, before the transfer is submitted.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import usb.backend.libusb1 as libusb1

from redirgate.proto.usbredir import messages as m

if TYPE_CHECKING:
    from redirgate.client.usb.descriptors import DeviceSnapshot
    from redirgate.client.usb.device import UsbDevice

__all__ = ["BULK_STREAM", "alloc_blocking", "ep_info", "free_blocking", "mark_stream", "usable", "wants_async"]

#: libusb_transfer_type LIBUSB_TRANSFER_TYPE_BULK_STREAM (libusb.h, since 1.0.19)
BULK_STREAM = 4
_CALLS = ("libusb_alloc_streams", "libusb_free_streams", "libusb_transfer_set_stream_id")
_NO_STREAMS = (0,) * 32
_declared: set[int] = set()


def _lib() -> Any | None:
    """pyusb's libusb with the stream calls declared, or None where it has none."""
    lib = libusb1._lib
    if lib is None or not all(hasattr(lib, name) for name in _CALLS):
        return None
    if id(lib) not in _declared:
        lib.libusb_alloc_streams.argtypes = [
            libusb1._libusb_device_handle,
            ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_ubyte),
            ctypes.c_int,
        ]
        lib.libusb_alloc_streams.restype = ctypes.c_int
        lib.libusb_free_streams.argtypes = [
            libusb1._libusb_device_handle,
            ctypes.POINTER(ctypes.c_ubyte),
            ctypes.c_int,
        ]
        lib.libusb_free_streams.restype = ctypes.c_int
        lib.libusb_transfer_set_stream_id.argtypes = [libusb1._libusb_transfer_p, ctypes.c_uint32]
        lib.libusb_transfer_set_stream_id.restype = None
        _declared.add(id(lib))
    return lib


def wants_async(snap: DeviceSnapshot, chosen: str | None) -> bool:
    """Whether a device must take libusb's asynchronous path for its streams:
    it has bulk streams and no transfer path was chosen (`chosen`: the
    ``REDIRGATE_USB_TRANSFERS`` setting, None when unset)."""
    if chosen is not None:
        return False
    return any(
        endpoint.max_streams
        for config in snap.configs.values()
        for alts in config.interfaces.values()
        for alt in alts
        for endpoint in alt.endpoints
    )


def usable(device: UsbDevice) -> bool:
    """Whether bulk streams can be driven on `device` (libusb's asynchronous path, a libusb with streams)."""
    return device.aio is not None and _lib() is not None


def ep_info(device: UsbDevice, info: m.EpInfo) -> m.EpInfo:
    """`info` as the guest may see it: without max_streams where the device cannot drive streams."""
    if usable(device) or not any(info.max_streams):
        return info
    return dataclasses.replace(info, max_streams=_NO_STREAMS)


def _endpoint_array(endpoints: Sequence[int]) -> Any:
    return (ctypes.c_ubyte * len(endpoints))(*endpoints)


def alloc_blocking(device: UsbDevice, streams: int, endpoints: Sequence[int]) -> int:
    """Allocate `streams` streams on each of `endpoints`; how many the device
    gave (maybe fewer).  usb.core.USBError as pyusb raises it when libusb refuses."""
    lib = _lib()
    if lib is None:
        raise NotImplementedError("this libusb has no bulk streams")
    rc = int(lib.libusb_alloc_streams(device.libusb_handle(), streams, _endpoint_array(endpoints), len(endpoints)))
    libusb1._check(rc)
    return rc


def free_blocking(device: UsbDevice, endpoints: Sequence[int]) -> None:
    """Free the streams of `endpoints`."""
    lib = _lib()
    if lib is None:
        raise NotImplementedError("this libusb has no bulk streams")
    libusb1._check(lib.libusb_free_streams(device.libusb_handle(), _endpoint_array(endpoints), len(endpoints)))


def mark_stream(transfer_p: Any, stream_id: int) -> None:
    """Make the filled bulk transfer `transfer_p` one on stream `stream_id`
    (libusb_fill_bulk_stream_transfer's last two steps)."""
    lib = _lib()
    if lib is None:
        raise NotImplementedError("this libusb has no bulk streams")
    transfer_p.contents.type = BULK_STREAM
    lib.libusb_transfer_set_stream_id(transfer_p, stream_id)
