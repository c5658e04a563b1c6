"""`KeyboardDevice`: a full-speed USB HID boot keyboard.

Owns the keyboard's descriptors (device class 0, interface class 3 /
subclass 1 boot / protocol 1 keyboard, one interrupt IN endpoint 0x81 with
8-byte packets and bInterval 10, as real keyboards have), the HID class
requests (HID 1.11 section 7: GET_DESCRIPTOR for the HID and report
descriptors, GET/SET_REPORT, GET/SET_IDLE, GET/SET_PROTOCOL), the queue of
8-byte boot reports (modifiers, reserved, six key codes — HID 1.11 appendix
B.1) and the US-layout ASCII-to-usage table used by `type_text`.

Reports are sent only when queued (as if SET_IDLE(0) were in force: the
device never repeats a report on its own); an interrupt IN read with nothing
queued NAKs until its timeout.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Iterable

from .descriptors import (
    ConfigSpec,
    DescriptorType,
    DeviceIdentity,
    EndpointSpec,
    InterfaceSpec,
    Speed,
    TransferType,
    build_descriptor_set,
)
from .device import RECIPIENT_INTERFACE, TYPE_CLASS, TYPE_STANDARD, Setup, StandardRequest, VirtualDevice
from .errors import Stall

__all__ = ["BOOT_KEYBOARD_REPORT_DESCRIPTOR", "KeyboardDevice", "keyboard_reports"]

# The boot keyboard report descriptor of HID 1.11 appendix B.1 / E.6:
# 8 modifier bits, a reserved byte, 5 LED output bits + 3 padding, 6 keys.
BOOT_KEYBOARD_REPORT_DESCRIPTOR = bytes.fromhex(
    "05010906a101"  # Usage Page (Generic Desktop), Usage (Keyboard), Collection (Application)
    "050719e029e71500250175019508 8102"  # modifiers: 8 x 1 bit
    "95017508 8101"  # reserved byte (constant)
    "95057501050819012905 9102"  # LEDs: 5 x 1 bit output
    "95017503 9101"  # LED padding
    "950675081500256505071900 2965 8100"  # 6 key codes, array
    "c0"
)

HID_GET_REPORT, HID_GET_IDLE, HID_GET_PROTOCOL = 0x01, 0x02, 0x03
HID_SET_REPORT, HID_SET_IDLE, HID_SET_PROTOCOL = 0x09, 0x0A, 0x0B
REPORT_INPUT, REPORT_OUTPUT = 1, 2

MOD_LEFT_SHIFT = 0x02

# US layout: character -> (usage id, shifted) from the HID Usage Tables,
# Keyboard/Keypad page 0x07.
_KEYS: dict[str, tuple[int, bool]] = {}
for _i, _c in enumerate("abcdefghijklmnopqrstuvwxyz"):
    _KEYS[_c] = (0x04 + _i, False)
    _KEYS[_c.upper()] = (0x04 + _i, True)
for _i, (_plain, _shifted) in enumerate(zip("1234567890", "!@#$%^&*()", strict=True)):
    _KEYS[_plain] = (0x1E + _i, False)
    _KEYS[_shifted] = (0x1E + _i, True)
for _usage, _plain, _shifted in (
    (0x2D, "-", "_"),
    (0x2E, "=", "+"),
    (0x2F, "[", "{"),
    (0x30, "]", "}"),
    (0x31, "\\", "|"),
    (0x33, ";", ":"),
    (0x34, "'", '"'),
    (0x35, "`", "~"),
    (0x36, ",", "<"),
    (0x37, ".", ">"),
    (0x38, "/", "?"),
):
    _KEYS[_plain] = (_usage, False)
    _KEYS[_shifted] = (_usage, True)
_KEYS.update(
    {
        "\n": (0x28, False),
        "\r": (0x28, False),
        "\x1b": (0x29, False),
        "\b": (0x2A, False),
        "\t": (0x2B, False),
        " ": (0x2C, False),
    }
)


def keyboard_reports(text: str) -> list[bytes]:
    """The press and release reports that type ``text`` (US layout).
    Raises ValueError naming the first character that has no key."""
    reports = []
    for ch in text:
        key = _KEYS.get(ch)
        if key is None:
            raise ValueError(f"no US-layout key for {ch!r}")
        usage, shifted = key
        reports.append(bytes((MOD_LEFT_SHIFT if shifted else 0, 0, usage, 0, 0, 0, 0, 0)))
        reports.append(bytes(8))
    return reports


def _hid_descriptor(report_length: int) -> bytes:
    # HID 1.11 6.2.1: bcdHID 1.11, country 0, one report descriptor.
    return struct.pack("<BBHBBBH", 9, DescriptorType.HID, 0x0111, 0, 1, DescriptorType.HID_REPORT, report_length)


class KeyboardDevice(VirtualDevice):
    """A HID boot keyboard.

    ``KeyboardDevice(*, serial="KBD0000000001", vendor_id=0x1209,
    product_id=0x0002, manufacturer="redirgate",
    product="Virtual Keyboard", name="keyboard")``.  Interrupt IN 0x81.
    Test side: ``type_text(text)``, ``press(keys, modifiers)``,
    ``release()``, ``queue_report(report)``, ``pending_reports``,
    ``leds``, ``protocol``, ``idle_rate``.
    """

    INTERRUPT_IN = 0x81

    def __init__(
        self,
        *,
        serial: str = "KBD0000000001",
        vendor_id: int = 0x1209,
        product_id: int = 0x0002,
        manufacturer: str = "redirgate",
        product: str = "Virtual Keyboard",
        name: str = "keyboard",
    ) -> None:
        identity = DeviceIdentity(
            vendor_id=vendor_id,
            product_id=product_id,
            bcd_device=0x0100,
            manufacturer=manufacturer,
            product=product,
            serial=serial,
            bcd_usb=0x0110,
            max_packet_size0=8,
        )
        self._hid = _hid_descriptor(len(BOOT_KEYBOARD_REPORT_DESCRIPTOR))
        config = ConfigSpec(
            value=1,
            remote_wakeup=True,
            max_power_ma=100,
            interfaces=(
                InterfaceSpec(
                    number=0,
                    alternate=0,
                    interface_class=0x03,
                    interface_subclass=0x01,
                    interface_protocol=0x01,
                    extra=self._hid,
                    endpoints=(EndpointSpec(self.INTERRUPT_IN, TransferType.INTERRUPT, 8, 10),),
                ),
            ),
        )
        super().__init__(name, build_descriptor_set(identity, Speed.FULL, [config]))
        self._reports: collections.deque[bytes] = collections.deque()
        self._last = bytes(8)
        self.leds = 0
        self.protocol = 1  # report protocol after reset (HID 7.2.6)
        self.idle_rate = 125  # 500 ms in 4 ms units, the keyboard default (HID 7.2.4)

    # ------------------------------------------------------------ test side

    def queue_report(self, report: bytes) -> None:
        """Queue one raw 8-byte boot report."""
        if len(report) != 8:
            raise ValueError(f"a boot keyboard report is 8 bytes, not {len(report)}")
        self._queue([bytes(report)])

    def press(self, keys: Iterable[int] = (), modifiers: int = 0) -> None:
        """Queue a report with up to six usage ids held down."""
        codes = list(keys)
        if len(codes) > 6:
            raise ValueError("a boot report holds at most six keys")
        self._queue([bytes([modifiers & 0xFF, 0, *codes, *([0] * (6 - len(codes)))])])

    def release(self) -> None:
        """Queue the all-keys-up report."""
        self._queue([bytes(8)])

    def type_text(self, text: str) -> None:
        """Queue press/release reports for ``text`` (US layout; shift for
        upper case and symbols; \\n is Enter)."""
        self._queue(keyboard_reports(text))

    @property
    def pending_reports(self) -> int:
        with self.lock:
            return len(self._reports)

    def _queue(self, reports: list[bytes]) -> None:
        with self.lock:
            self._reports.extend(reports)
            self.notify()

    # ------------------------------------------------------------ device side

    def on_reset(self) -> None:
        self.protocol = 1
        self.idle_rate = 125

    def handle_in(self, ep: int, size: int) -> bytes | None:
        if not self._reports:
            return None
        report = self._reports.popleft()
        self._last = report
        return report[:size]

    def handle_control(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.recipient != RECIPIENT_INTERFACE or setup.index & 0xFF != 0:
            return super().handle_control(setup, data)
        if setup.type == TYPE_STANDARD and setup.request == StandardRequest.GET_DESCRIPTOR:
            dtype = setup.value >> 8
            if dtype == DescriptorType.HID_REPORT:
                return BOOT_KEYBOARD_REPORT_DESCRIPTOR
            if dtype == DescriptorType.HID:
                return self._hid
            raise Stall(f"no descriptor type {dtype:#04x} on the HID interface")
        if setup.type != TYPE_CLASS:
            return super().handle_control(setup, data)
        report_type = setup.value >> 8
        if setup.request == HID_GET_REPORT and setup.is_in:
            if report_type == REPORT_INPUT:
                return self._last
            if report_type == REPORT_OUTPUT:
                return bytes((self.leds,))
        elif setup.request == HID_SET_REPORT and not setup.is_in:
            if report_type == REPORT_OUTPUT and data:
                self.leds = data[0]
                return None
        elif setup.request == HID_GET_IDLE and setup.is_in:
            return bytes((self.idle_rate,))
        elif setup.request == HID_SET_IDLE and not setup.is_in:
            self.idle_rate = setup.value >> 8
            return None
        elif setup.request == HID_GET_PROTOCOL and setup.is_in:
            return bytes((self.protocol,))
        elif setup.request == HID_SET_PROTOCOL and not setup.is_in:
            self.protocol = setup.value & 0xFF
            return None
        raise Stall(f"HID request {setup.request:#04x} with value {setup.value:#06x} not supported")
