"""The virtual loopback/source/sink device through pyusb's public API."""

from __future__ import annotations

import array
import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import usb.core
import usb.util

from redirgate.client.virtual import (
    LoopbackDevice,
    LoopbackMode,
    LoopbackStats,
    Speed,
    VirtualBackend,
    iso_pattern,
    make_backend,
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


@pytest.mark.parametrize("size", [0, 1, 62, 63, 64, 512, 65536, 100_000])
def test_source_pattern_is_i_mod_63(size: int) -> None:
    assert source_pattern(size) == bytes(i % 63 for i in range(size))


@pytest.mark.parametrize("seq", [0, 1, 251, 252, 255, 256, 0x01020304, 0xFFFFFFFF, 1 << 33])
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 256, 1023, 3072])
def test_iso_pattern_is_the_counter_then_a_ramp(seq: int, size: int) -> None:
    head = (seq & 0xFFFFFFFF).to_bytes(4, "little")[:size]
    assert iso_pattern(seq, size) == head + bytes((seq + i) & 0xFF for i in range(len(head), size))


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


# ------------------------------------------------------------ no-wait attempts
# (what lets the host engine run a transfer on its event loop: see
# client/virtual/device.py and client/usb/device.py)


def test_no_wait_turns_a_nak_into_blocking_io_error(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    device, dev = loop
    backend = dev.backend
    with pytest.raises(BlockingIOError) as info:
        backend.call_nowait(dev.read, BULK_IN, array.array("B", bytes(512)), 1000)
    assert info.value.characters_written == 0
    assert device.stats() == LoopbackStats()
    # what the device has comes back at once, as without the switch
    assert dev.write(BULK_OUT, b"now", 1000) == 3
    buf = array.array("B", bytes(512))
    assert backend.call_nowait(dev.read, BULK_IN, buf, 1000) == 3 and bytes(buf[:3]) == b"now"
    assert backend.call_nowait(dev.write, INTR_OUT, b"x", 1000) == 1
    assert bytes(backend.call_nowait(dev.ctrl_transfer, 0xC0, 0x02, 0, 0, 1)) == b"\x00"
    # a stall is still an error, not "would block"
    dev.ctrl_transfer(0x02, 0x03, 0, BULK_IN, None)  # SET_FEATURE(ENDPOINT_HALT)
    with pytest.raises(usb.core.USBError) as stalled:
        backend.call_nowait(dev.read, BULK_IN, buf, 1000)
    assert stalled.value.errno == errno.EPIPE


def test_no_wait_out_reports_the_part_the_device_took(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    device, dev = loop  # 4096-byte loopback buffer
    data = bytes(range(256)) * 24  # 6144 bytes
    with pytest.raises(BlockingIOError) as info:
        dev.backend.call_nowait(dev.write, BULK_OUT, data, 1000)
    assert info.value.characters_written == 4096
    assert device.stats().bulk_out_bytes == 4096
    assert bytes(dev.read(BULK_IN, 8192, 1000)) == data[:4096]
    assert dev.write(BULK_OUT, data[4096:], 1000) == 2048  # the rest, as the engine sends it
    assert bytes(dev.read(BULK_IN, 8192, 1000)) == data[4096:]


def test_no_wait_is_per_thread(loop: tuple[LoopbackDevice, usb.core.Device]) -> None:
    """A worker thread's transfer still waits while another thread attempts one."""
    _, dev = loop
    outcome: list[BaseException | int] = []

    def waiting_read() -> None:
        try:
            outcome.append(dev.read(BULK_IN, array.array("B", bytes(512)), 2000))
        except usb.core.USBError as exc:  # pragma: no cover - reported below
            outcome.append(exc)

    worker = threading.Thread(target=waiting_read)

    def attempt_beside_it() -> None:
        worker.start()
        time.sleep(0.1)  # a negative check: a refused read would have ended by now
        assert worker.is_alive()  # waiting for data, not refused
        with pytest.raises(BlockingIOError):
            dev.read(BULK_IN, array.array("B", bytes(512)), 1000)

    dev.backend.call_nowait(attempt_beside_it)  # this thread's switch is on meanwhile
    dev.write(BULK_OUT, b"late", 1000)
    worker.join(5)
    assert outcome == [4]


def test_inline_device_says_which_devices_may_run_inline(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(64 * 512))
    backend = make_backend([f"virtual:storage:{image}", "virtual:keyboard", "virtual:loopback"])
    try:
        found = {d.idProduct: d for d in usb.core.find(backend=backend, find_all=True)}
        inline = {pid: backend.inline_device(d) for pid, d in found.items()}
        # the drive's hooks read and write its image file: never on the loop
        assert inline == {0x0001: False, 0x0002: True, 0x0003: True}
    finally:
        for d in found.values():
            usb.util.dispose_resources(d)
        backend.close()
