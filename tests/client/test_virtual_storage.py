"""The virtual flash drive driven through pyusb's public API only, the way
Linux usb-storage and SeaBIOS drive a real one (Bulk-Only Transport)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import usb.core
import usb.util

from redirgate.client.virtual import MassStorageDevice, Speed, VirtualBackend

BLOCKS = 2048  # 1 MiB image
OUT, IN = 0x02, 0x81
TIMEOUT_MS = 2000


class Csw:
    def __init__(self, raw: bytes, tag: int) -> None:
        sig, rtag, self.residue, self.status = struct.unpack("<IIIB", raw)
        assert sig == 0x53425355
        assert rtag == tag


class BotHost:
    """A minimal Bulk-Only host on top of usb.core.Device (stall recovery as
    Linux usb-storage does it: clear the halt, read the CSW again)."""

    def __init__(self, dev: usb.core.Device) -> None:
        self.dev = dev
        self.tag = 0x1000
        self.stalls = 0

    def _read(self, ep: int, size: int) -> bytes | None:
        try:
            return bytes(self.dev.read(ep, size, TIMEOUT_MS))
        except usb.core.USBError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self.stalls += 1
            self.dev.clear_halt(ep)
            return None

    def command(
        self, cdb: bytes, length: int = 0, *, data_in: bool = True, data: bytes = b"", flags: int | None = None
    ) -> tuple[bytes, Csw]:
        self.tag += 1
        fl = (0x80 if data_in else 0) if flags is None else flags
        cbw = struct.pack("<IIIBBB16s", 0x43425355, self.tag, length, fl, 0, len(cdb), cdb)
        assert self.dev.write(OUT, cbw, TIMEOUT_MS) == 31
        got = b""
        if length and data_in:
            got = self._read(IN, length) or b""
        elif length:
            try:
                self.dev.write(OUT, data, TIMEOUT_MS)
            except usb.core.USBError as exc:
                assert exc.errno == errno.EPIPE
                self.stalls += 1
                self.dev.clear_halt(OUT)
        raw = self._read(IN, 13)
        if raw is None:
            raw = self._read(IN, 13)
        assert raw is not None
        return got, Csw(raw, self.tag)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (BLOCKS * 2))
    return path


@pytest.fixture
def drive(image: Path) -> Iterator[tuple[MassStorageDevice, usb.core.Device]]:
    device = MassStorageDevice(image, serial="0123456789ABCDEF")
    backend = VirtualBackend([device])
    (dev,) = usb.core.find(backend=backend, find_all=True)
    dev.set_configuration()
    yield device, dev
    usb.util.dispose_resources(dev)
    backend.close()


def test_enumeration_looks_like_a_flash_drive(drive: tuple[MassStorageDevice, usb.core.Device]) -> None:
    _device, dev = drive
    assert dev.speed == Speed.HIGH and dev.bcdUSB == 0x0200
    intf = dev.get_active_configuration()[(0, 0)]
    assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (8, 6, 0x50)
    eps = {ep.bEndpointAddress: ep for ep in intf}
    assert set(eps) == {IN, OUT}
    assert all(ep.wMaxPacketSize == 512 and ep.bmAttributes == 2 for ep in eps.values())
    assert dev.serial_number == "0123456789ABCDEF"
    # GET MAX LUN: one LUN.
    assert bytes(dev.ctrl_transfer(0xA1, 0xFE, 0, 0, 1)) == b"\x00"


def test_inquiry_capacity_write_read_round_trip(drive: tuple[MassStorageDevice, usb.core.Device], image: Path) -> None:
    _device, dev = drive
    host = BotHost(dev)
    data, csw = host.command(bytes([0x12, 0, 0, 0, 36, 0]), 36)
    assert csw.status == 0 and csw.residue == 0 and len(data) == 36
    assert data[0] == 0 and data[1] & 0x80  # direct access, removable
    assert data[8:16] == b"Redirgat"
    _, csw = host.command(bytes(6), 0)  # TEST UNIT READY
    assert csw.status == 0
    data, csw = host.command(bytes([0x25]) + bytes(9), 8)
    last, block = struct.unpack(">II", data)
    assert (last, block, csw.status) == (BLOCKS - 1, 512, 0)

    payload = os.urandom(8 * 512)
    write10 = struct.pack(">BBIBHB", 0x2A, 0, 100, 0, 8, 0)
    _, csw = host.command(write10, len(payload), data_in=False, data=payload)
    assert csw.status == 0 and csw.residue == 0
    _, csw = host.command(bytes([0x35]) + bytes(9), 0)  # SYNCHRONIZE CACHE
    assert csw.status == 0
    with open(image, "rb") as f:
        f.seek(100 * 512)
        assert f.read(len(payload)) == payload
    read10 = struct.pack(">BBIBHB", 0x28, 0, 100, 0, 8, 0)
    data, csw = host.command(read10, len(payload))
    assert data == payload and csw.status == 0
    assert host.stalls == 0


def test_read16_write16_and_capacity16(drive: tuple[MassStorageDevice, usb.core.Device], image: Path) -> None:
    _, dev = drive
    host = BotHost(dev)
    data, csw = host.command(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0), 32)
    assert struct.unpack_from(">QI", data) == (BLOCKS - 1, 512) and csw.status == 0
    payload = b"\xa5" * 512
    _, csw = host.command(struct.pack(">BBQIBB", 0x8A, 0, BLOCKS - 1, 1, 0, 0), 512, data_in=False, data=payload)
    assert csw.status == 0
    data, csw = host.command(struct.pack(">BBQIBB", 0x88, 0, BLOCKS - 1, 1, 0, 0), 512)
    assert data == payload and csw.status == 0
    assert image.read_bytes()[-512:] == payload


def test_linux_probe_sequence(drive: tuple[MassStorageDevice, usb.core.Device]) -> None:
    """The opcodes usb-storage sends on a mount (0x12 0x00 0x25 0x28 0x1a 0x1e)."""
    device, dev = drive
    host = BotHost(dev)
    _, csw = host.command(bytes([0x1A, 0, 0x3F, 0, 192, 0]), 192)  # MODE SENSE(6), all pages
    assert csw.status == 0 and csw.residue == 192 - 24
    data, _ = host.command(bytes([0x1A, 0, 0x3F, 0, 4, 0]), 4)
    assert data[2] & 0x80 == 0  # not write-protected
    data, csw = host.command(bytes([0x5A, 0, 0x08, 0, 0, 0, 0, 0, 64, 0]), 64)  # MODE SENSE(10) caching
    assert csw.status == 0 and data[8] == 0x08
    for cdb in (
        bytes([0x1E, 0, 0, 0, 1, 0]),
        bytes([0x1B, 0, 0, 0, 1, 0]),
        struct.pack(">BBIBHB", 0x2F, 0, 0, 0, 1, 0),
        bytes([0x23]) + bytes(6) + b"\x00\xfc\x00",
    ):
        _, csw = host.command(cdb, 0xFC if cdb[0] == 0x23 else 0)
        assert csw.status == 0, hex(cdb[0])
    assert device.disk.prevent_removal
    assert host.stalls > 0  # MODE SENSE returned less than asked: stall, then CSW


def test_unknown_opcode_and_request_sense(drive: tuple[MassStorageDevice, usb.core.Device]) -> None:
    _, dev = drive
    host = BotHost(dev)
    _, csw = host.command(bytes([0xA0]) + bytes(11), 0)  # REPORT LUNS: not supported
    assert csw.status == 1
    data, csw = host.command(bytes([0x03, 0, 0, 0, 18, 0]), 18)
    assert csw.status == 0
    assert data[0] == 0x70 and data[2] & 0x0F == 0x05 and data[12] == 0x20  # ILLEGAL REQUEST/INVALID OPCODE
    data, _ = host.command(bytes([0x03, 0, 0, 0, 18, 0]), 18)
    assert data[2] == 0 and data[12] == 0  # sense was consumed
    # VPD pages: supported list, serial, and an unsupported page.
    data, csw = host.command(bytes([0x12, 1, 0x00, 0, 255, 0]), 255)
    assert csw.status == 0 and data[4:] == b"\x00\x80"
    data, _ = host.command(bytes([0x12, 1, 0x80, 0, 255, 0]), 255)
    assert data[4:] == b"0123456789ABCDEF"
    _, csw = host.command(bytes([0x12, 1, 0x83, 0, 255, 0]), 255)
    assert csw.status == 1


def test_out_of_range_read_fails_with_lba_sense(drive: tuple[MassStorageDevice, usb.core.Device]) -> None:
    _, dev = drive
    host = BotHost(dev)
    _, csw = host.command(struct.pack(">BBIBHB", 0x28, 0, BLOCKS, 0, 1, 0), 512)
    assert csw.status == 1 and csw.residue == 512
    data, _ = host.command(bytes([0x03, 0, 0, 0, 18, 0]), 18)
    assert (data[2], data[12]) == (0x05, 0x21)


def test_phase_errors(drive: tuple[MassStorageDevice, usb.core.Device]) -> None:
    _, dev = drive
    host = BotHost(dev)
    # Case 2 (Hn < Di): INQUIRY with no data stage.
    _, csw = host.command(bytes([0x12, 0, 0, 0, 36, 0]), 0)
    assert csw.status == 2
    # Case 7 (Hi < Di): READ 10 of 2 blocks into 512 bytes.
    data, csw = host.command(struct.pack(">BBIBHB", 0x28, 0, 0, 0, 2, 0), 512)
    assert len(data) == 512 and csw.status == 2
    # Case 10 (Hi <> Do): WRITE 10 sent as an IN command.
    _, csw = host.command(struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0), 512)
    assert csw.status == 2 and csw.residue == 512


def test_short_packet_mode_has_no_stalls(image: Path) -> None:
    device = MassStorageDevice(image, stall_on_residue=False)
    backend = VirtualBackend([device])
    try:
        (dev,) = usb.core.find(backend=backend, find_all=True)
        dev.set_configuration()
        host = BotHost(dev)
        data, csw = host.command(bytes([0x12, 0, 0, 0, 96, 0]), 96)
        assert len(data) == 36 and csw.residue == 60 and csw.status == 0
        _, csw = host.command(bytes([0x00]) + bytes(5), 64)  # case 4: Hi > Dn, zero-length packet
        assert csw.residue == 64
        assert host.stalls == 0
    finally:
        backend.close()


def test_invalid_cbw_needs_reset_recovery(drive: tuple[MassStorageDevice, usb.core.Device]) -> None:
    _, dev = drive
    with pytest.raises(usb.core.USBError) as info:
        dev.write(OUT, b"garbage", TIMEOUT_MS)
    assert info.value.errno == errno.EPIPE
    # Clearing the halts alone does not help (BOT 6.6.1) ...
    dev.clear_halt(OUT)
    dev.clear_halt(IN)
    with pytest.raises(usb.core.USBError) as info:
        dev.read(IN, 13, TIMEOUT_MS)
    assert info.value.errno == errno.EPIPE
    # ... reset recovery does: Mass Storage Reset, then clear both halts.
    dev.ctrl_transfer(0x21, 0xFF, 0, 0, None)
    dev.clear_halt(IN)
    dev.clear_halt(OUT)
    _, csw = BotHost(dev).command(bytes(6), 0)
    assert csw.status == 0


def test_read_only_image(image: Path) -> None:
    device = MassStorageDevice(image, read_only=True, speed=Speed.FULL)
    backend = VirtualBackend([device])
    try:
        (dev,) = usb.core.find(backend=backend, find_all=True)
        assert dev.speed == Speed.FULL
        dev.set_configuration()
        assert all(ep.wMaxPacketSize == 64 for ep in dev.get_active_configuration()[(0, 0)])
        host = BotHost(dev)
        data, _ = host.command(bytes([0x1A, 0, 0x3F, 0, 4, 0]), 4)
        assert data[2] & 0x80  # write-protected
        _, csw = host.command(struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0), 512, data_in=False, data=bytes(512))
        assert csw.status == 1
        data, _ = host.command(bytes([0x03, 0, 0, 0, 18, 0]), 18)
        assert (data[2], data[12]) == (0x07, 0x27)
    finally:
        backend.close()


def test_seabios_style_reconfigure_and_usb_reset_mid_command(drive: tuple[MassStorageDevice, usb.core.Device]) -> None:
    """A second SET_CONFIGURATION or a port reset drops a half-done command."""
    _, dev = drive
    tag_cbw = struct.pack("<IIIBBB16s", 0x43425355, 7, 36, 0x80, 0, 6, bytes([0x12, 0, 0, 0, 36, 0]))
    dev.write(OUT, tag_cbw, TIMEOUT_MS)
    usb.util.release_interface(dev, 0)
    dev.set_configuration()
    _, csw = BotHost(dev).command(bytes(6), 0)
    assert csw.status == 0
    dev.write(OUT, tag_cbw, TIMEOUT_MS)
    dev.reset()
    _, csw = BotHost(dev).command(bytes(6), 0)
    assert csw.status == 0


def test_image_closed_on_backend_close(image: Path) -> None:
    device = MassStorageDevice(image)
    backend = VirtualBackend([device])
    backend.close()
    assert device.disk._fd == -1
