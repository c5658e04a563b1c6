"""UsbDevice's transfer calls on an emulated device: attempted on the event
loop first, finished in a worker thread where the device makes them wait,
with the results one libusb transfer would give."""

from __future__ import annotations

import array
import os
from collections.abc import Iterator

import pytest
import trio
import usb.core

from redirgate.client.usb.device import UsbDevice
from redirgate.client.virtual import LoopbackDevice, LoopbackMode, VirtualBackend

BULK_OUT, BULK_IN = 0x01, 0x81


@pytest.fixture
def loop() -> Iterator[tuple[LoopbackDevice, usb.core.Device]]:
    device = LoopbackDevice(buffer_bytes=4096)
    backend = VirtualBackend([device])
    (dev,) = usb.core.find(backend=backend, find_all=True)
    dev.set_configuration()
    yield device, dev
    backend.close()


async def _opened(dev: usb.core.Device) -> UsbDevice:
    device = await UsbDevice.open(dev)
    assert device.inline_transfers
    return device


async def test_partial_out_then_timeout_returns_the_count(loop) -> None:
    """libusb semantics: an OUT that timed out after part of it went returns
    that part (the 4 KiB taken at once), not an error."""
    _, dev = loop
    device = await _opened(dev)
    try:
        assert await device.write(BULK_OUT, bytes(6144), 100) == 4096
        with pytest.raises(usb.core.USBTimeoutError):
            await device.write(BULK_OUT, b"x", 50)  # nothing taken: the error
    finally:
        await device.release()


async def test_out_waiting_in_a_thread_completes_when_room_appears(loop) -> None:
    _, dev = loop
    data = os.urandom(10_000)
    device = await _opened(dev)
    got = bytearray()
    try:
        async with trio.open_nursery() as nursery:
            written: list[int] = []

            async def writer() -> None:
                written.append(await device.write(BULK_OUT, data, 5000))

            nursery.start_soon(writer)
            while len(got) < len(data):
                buf = array.array("B", bytes(4096))
                n = await device.read(BULK_IN, buf, 5000)  # inline, or waits in a thread
                got += buf[:n]
        assert written == [len(data)] and bytes(got) == data
    finally:
        await device.release()


async def test_in_that_naks_waits_in_a_thread_and_control_runs_inline(loop) -> None:
    loopback, dev = loop
    device = await _opened(dev)
    try:
        buf = array.array("B", bytes(64))
        with pytest.raises(usb.core.USBTimeoutError):
            await device.read(BULK_IN, buf, 50)
        n = await device.control(0x40, 0x01, int(LoopbackMode.SOURCE), 0, array.array("B"), 1000)
        assert n == 0 and loopback.mode == LoopbackMode.SOURCE
        assert await device.read(BULK_IN, buf, 50) == 64
        assert bytes(buf[:3]) == b"\x00\x01\x02"
    finally:
        await device.release()
