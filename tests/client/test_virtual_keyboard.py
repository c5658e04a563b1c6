"""The virtual HID boot keyboard through pyusb's public API."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator

import pytest
import usb.control
import usb.core
import usb.util

from redirgate.client.virtual import KeyboardDevice, Speed, VirtualBackend
from redirgate.client.virtual.keyboard import BOOT_KEYBOARD_REPORT_DESCRIPTOR, keyboard_reports

EP = 0x81


@pytest.fixture
def keyboard() -> Iterator[tuple[KeyboardDevice, usb.core.Device]]:
    kbd = KeyboardDevice()
    backend = VirtualBackend([kbd])
    (dev,) = usb.core.find(backend=backend, find_all=True)
    dev.set_configuration()
    yield kbd, dev
    usb.util.dispose_resources(dev)
    backend.close()


def test_descriptors_are_a_boot_keyboard(keyboard: tuple[KeyboardDevice, usb.core.Device]) -> None:
    _, dev = keyboard
    assert dev.speed == Speed.FULL and dev.bDeviceClass == 0 and dev.bMaxPacketSize0 == 8
    intf = dev.get_active_configuration()[(0, 0)]
    assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (3, 1, 1)
    (ep,) = intf.endpoints()
    assert (ep.bEndpointAddress, ep.bmAttributes, ep.wMaxPacketSize, ep.bInterval) == (EP, 3, 8, 10)
    # The HID descriptor sits between interface and endpoint: libusb's "extra".
    hid = bytes(intf.extra_descriptors)
    assert hid[:2] == b"\x09\x21" and hid[7] == len(BOOT_KEYBOARD_REPORT_DESCRIPTOR)
    report = bytes(dev.ctrl_transfer(0x81, 6, 0x2200, 0, 256))
    assert report == BOOT_KEYBOARD_REPORT_DESCRIPTOR and len(report) == 63
    # Full-speed only: DEVICE QUALIFIER stalls (USB 2.0 9.6.2).
    with pytest.raises(usb.core.USBError) as info:
        usb.control.get_descriptor(dev, 10, 6, 0)
    assert info.value.errno == errno.EPIPE


def test_type_text_produces_press_release_reports(keyboard: tuple[KeyboardDevice, usb.core.Device]) -> None:
    kbd, dev = keyboard
    kbd.type_text("Hi!\n")
    reports = [bytes(dev.read(EP, 8, 1000)) for _ in range(8)]
    assert reports == [
        bytes([2, 0, 0x0B, 0, 0, 0, 0, 0]),
        bytes(8),  # H (shift + h)
        bytes([0, 0, 0x0C, 0, 0, 0, 0, 0]),
        bytes(8),  # i
        bytes([2, 0, 0x1E, 0, 0, 0, 0, 0]),
        bytes(8),  # ! (shift + 1)
        bytes([0, 0, 0x28, 0, 0, 0, 0, 0]),
        bytes(8),  # Enter
    ]
    assert kbd.pending_reports == 0
    with pytest.raises(usb.core.USBTimeoutError):
        dev.read(EP, 8, 50)
    # GET_REPORT returns the last report sent.
    assert bytes(dev.ctrl_transfer(0xA1, 0x01, 0x0100, 0, 8)) == bytes(8)


def test_blocked_read_wakes_when_text_is_typed(keyboard: tuple[KeyboardDevice, usb.core.Device]) -> None:
    kbd, dev = keyboard
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(bytes(dev.read(EP, 8, 5000))))
    reader.start()
    threading.Timer(0.1, kbd.type_text, ("a",)).start()
    reader.join(10)
    assert not reader.is_alive()
    assert got == [bytes([0, 0, 0x04, 0, 0, 0, 0, 0])]


def test_hid_class_requests(keyboard: tuple[KeyboardDevice, usb.core.Device]) -> None:
    kbd, dev = keyboard
    dev.ctrl_transfer(0x21, 0x0A, 0, 0, None)  # SET_IDLE(0)
    assert kbd.idle_rate == 0
    assert bytes(dev.ctrl_transfer(0xA1, 0x02, 0, 0, 1)) == b"\x00"
    dev.ctrl_transfer(0x21, 0x0B, 0, 0, None)  # SET_PROTOCOL(boot)
    assert bytes(dev.ctrl_transfer(0xA1, 0x03, 0, 0, 1)) == b"\x00"
    dev.ctrl_transfer(0x21, 0x09, 0x0200, 0, b"\x02")  # SET_REPORT(output): Caps Lock LED
    assert kbd.leds == 2
    with pytest.raises(usb.core.USBError) as info:
        dev.ctrl_transfer(0x21, 0x42, 0, 0, None)
    assert info.value.errno == errno.EPIPE


def test_press_release_and_bad_input() -> None:
    kbd = KeyboardDevice()
    kbd.press([0x04, 0x05], modifiers=0x01)
    kbd.release()
    assert kbd.pending_reports == 2
    with pytest.raises(ValueError):
        kbd.type_text("é")
    with pytest.raises(ValueError):
        kbd.queue_report(b"\x00")
    assert keyboard_reports("A~") == [
        bytes([2, 0, 0x04, 0, 0, 0, 0, 0]),
        bytes(8),
        bytes([2, 0, 0x35, 0, 0, 0, 0, 0]),
        bytes(8),
    ]
