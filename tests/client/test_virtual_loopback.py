"""The virtual loopback/source/sink device through pyusb's public API."""

from __future__ import annotations

import array
import errno
import time
from collections.abc import Iterator

import pytest
import usb.core
import usb.util

from redirgate.client.virtual import (
    LoopbackDevice,
    LoopbackMode,
    Speed,
    VirtualBackend,
    iso_pattern,
    source_pattern,
)

BULK_OUT, BULK_IN, INTR_OUT, INTR_IN, ISO_OUT, ISO_IN = 0x01, 0x81, 0x03, 0x83, 0x02, 0x82


@pytest.fixture
def loop() -> Iterator[tuple[LoopbackDevice, usb.core.Device]]:
    device = LoopbackDevice(buffer_bytes=4096)
    backend = VirtualBackend([device])
    (dev,) = usb.core.find(backend=backend, find_all=True)
    dev.set_configuration()
    yield device, dev
    usb.util.dispose_resources(dev)
    backend.close()


def test_bulk_echo_keeps_transfer_boundaries(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    device, dev = loop
    assert dev.write(BULK_OUT, b"hello", 1000) == 5
    assert dev.write(BULK_OUT, b"world!", 1000) == 6
    assert bytes(dev.read(BULK_IN, 512, 1000)) == b"hello"
    assert bytes(dev.read(BULK_IN, 3, 1000)) == b"wor"
    assert bytes(dev.read(BULK_IN, 512, 1000)) == b"ld!"
    with pytest.raises(usb.core.USBTimeoutError) as info:
        dev.read(BULK_IN, 512, 50)
    assert info.value.errno == errno.ETIMEDOUT and info.value.backend_error_code == -7
    stats = device.stats()
    assert stats.bulk_out_bytes == 11 and stats.bulk_in_bytes == 11


def test_full_buffer_naks_then_times_out_or_returns_partial(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    _, dev = loop
    assert dev.write(BULK_OUT, bytes(4096), 1000) == 4096
    with pytest.raises(usb.core.USBTimeoutError):
        dev.write(BULK_OUT, b"x", 50)
    assert len(dev.read(BULK_IN, 1024, 1000)) == 1024
    # Partially accepted before the timeout: the count comes back, as libusb1's backend does.
    assert dev.write(BULK_OUT, bytes(2048), 50) == 1024


def test_source_and_sink_modes(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    device, dev = loop
    dev.ctrl_transfer(0x40, 0x01, LoopbackMode.SOURCE, 0, None)
    assert device.mode == LoopbackMode.SOURCE
    assert bytes(dev.ctrl_transfer(0xC0, 0x02, 0, 0, 1)) == b"\x01"
    assert bytes(dev.read(BULK_IN, 100_000, 1000)) == source_pattern(100_000)
    dev.ctrl_transfer(0x40, 0x01, LoopbackMode.SINK, 0, None)
    assert dev.write(BULK_OUT, bytes(1 << 16), 1000) == 1 << 16  # never fills up
    with pytest.raises(usb.core.USBTimeoutError):
        dev.read(BULK_IN, 512, 50)
    with pytest.raises(usb.core.USBError) as info:
        dev.ctrl_transfer(0x40, 0x01, 7, 0, None)
    assert info.value.errno == errno.EPIPE


def test_interrupt_loopback(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    device, dev = loop
    dev.write(INTR_OUT, b"\x01\x02\x03", 1000)
    assert bytes(dev.read(INTR_IN, 64, 1000)) == b"\x01\x02\x03"
    assert device.stats().intr_in_bytes == 3


def test_iso_needs_alternate_setting_and_counts(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    device, dev = loop
    with pytest.raises(ValueError):  # alt 0 has no endpoints: pyusb refuses the address
        dev.read(ISO_IN, 3072, 1000)
    dev.set_interface_altsetting(interface=1, alternate_setting=1)
    ep = usb.util.find_descriptor(dev.get_active_configuration()[(1, 1)], bEndpointAddress=ISO_IN)
    assert ep.wMaxPacketSize == 0x1400 and ep.bInterval == 1
    buf = array.array("B", bytes(3072 * 4))
    start = time.monotonic()
    assert dev.read(ISO_IN, buf, 1000) == 3072 * 4
    assert time.monotonic() - start >= 4 * 125e-6
    for i in range(4):
        assert bytes(buf[i * 3072 : (i + 1) * 3072]) == iso_pattern(i, 3072)
    assert dev.write(ISO_OUT, bytes(3072 * 2 + 100), 1000) == 3072 * 2 + 100
    stats = device.stats()
    assert (stats.iso_in_packets, stats.iso_in_bytes) == (4, 3072 * 4)
    assert (stats.iso_out_packets, stats.iso_out_bytes) == (3, 3072 * 2 + 100)
    assert iso_pattern(0x01020304, 6) == b"\x04\x03\x02\x01\x08\x09"
    # Back to alternate 0: the iso endpoints are gone again.
    dev.set_interface_altsetting(interface=1, alternate_setting=0)
    with pytest.raises(ValueError):
        dev.write(ISO_OUT, bytes(10), 1000)


def test_full_speed_variant_and_qualifier() -> None:
    device = LoopbackDevice(speed=Speed.FULL, iso_realtime=False)
    backend = VirtualBackend([device])
    try:
        (dev,) = usb.core.find(backend=backend, find_all=True)
        assert dev.speed == Speed.FULL
        cfg = dev[0]
        assert cfg[(0, 0)][0].wMaxPacketSize == 64
        assert cfg[(1, 1)][0].wMaxPacketSize == 1023
        # A high-speed capable device at full speed: qualifier and other-speed config.
        qual = bytes(dev.ctrl_transfer(0x80, 6, 0x0600, 0, 10))
        assert qual[:2] == b"\x0a\x06" and qual[8] == 1
        other = bytes(dev.ctrl_transfer(0x80, 6, 0x0700, 0, 255))
        assert other[1] == 7 and b"\x07\x05\x01\x02\x00\x02" in other  # bulk OUT, 512 bytes
        assert usb.util.get_string(dev, cfg[(0, 0)].iInterface) == "Loopback"
    finally:
        backend.close()
