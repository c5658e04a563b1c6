"""`LoopbackDevice`: a vendor-specific test device with every transfer type.

Owns the loopback device's descriptors and behaviour:

* interface 0 (class 0xFF): bulk OUT 0x01 / bulk IN 0x81 and interrupt
  OUT 0x03 / interrupt IN 0x83.  Bulk works in one of three modes chosen
  with a vendor control request: LOOPBACK (each OUT transfer is queued and
  comes back on IN, split if the IN read is smaller), SOURCE (IN returns
  `source_pattern` of the size asked for, at once; OUT is discarded) and
  SINK (OUT is discarded, IN NAKs).  Interrupt always loops back.
* interface 1: alternate 0 has no endpoints (no bandwidth, USB 2.0 5.6.3),
  alternate 1 has isochronous OUT 0x02 and IN 0x82 (high speed:
  wMaxPacketSize 0x1400 = 3 x 1024 bytes per microframe, bInterval 1).  Iso
  IN packets carry `iso_pattern` with a running packet counter; iso OUT
  bytes and packets are counted.

Vendor requests (bmRequestType 0x40 / 0xC0, recipient device):
SET_MODE (0x01, wValue = mode), GET_MODE (0x02, 1 byte), RESET_STATS (0x03).
Counters are read from Python with `stats()`.
"""

from __future__ import annotations

import collections
import enum
import functools
import struct
from dataclasses import dataclass

from .descriptors import (
    ConfigSpec,
    DeviceIdentity,
    EndpointSpec,
    InterfaceSpec,
    Speed,
    TransferType,
    build_descriptor_set,
)
from .device import TYPE_VENDOR, Setup, VirtualDevice
from .errors import Stall

__all__ = ["LoopbackDevice", "LoopbackMode", "LoopbackStats", "iso_pattern", "source_pattern"]

VENDOR_SET_MODE = 0x01
VENDOR_GET_MODE = 0x02
VENDOR_RESET_STATS = 0x03

ISO_SYNC_ASYNC = 0x04  # bmAttributes bits 3..2 = 01: asynchronous (USB 2.0 table 9-13)


class LoopbackMode(enum.IntEnum):
    LOOPBACK = 0
    SOURCE = 1
    SINK = 2


@dataclass(frozen=True)
class LoopbackStats:
    """Byte and packet counters since plug-in or RESET_STATS."""

    bulk_out_bytes: int = 0
    bulk_in_bytes: int = 0
    intr_out_bytes: int = 0
    intr_in_bytes: int = 0
    iso_out_bytes: int = 0
    iso_out_packets: int = 0
    iso_in_bytes: int = 0
    iso_in_packets: int = 0


_SOURCE_PERIOD = bytes(range(63))


def source_pattern(size: int) -> bytes:
    """SOURCE-mode payload: byte i is i % 63 (63 so the pattern never lines
    up with a power-of-two packet size).

    Built by repeating one period in C, not byte by byte in Python: this is
    the benchmark's bulk IN source, and a generator cost ~2.3 ms per 64 KiB
    (more than the whole transfer path), ~2.5 µs this way.
    """
    return (_SOURCE_PERIOD * -(-size // len(_SOURCE_PERIOD)))[:size]


#: SOURCE reads up to this size reuse the pattern they got last time
_SOURCE_CACHE_BYTES = 1024 * 1024


@functools.lru_cache(maxsize=4)
def _cached_source_pattern(size: int) -> bytes:
    """`source_pattern`, kept for the few sizes a host reads with (bytes are
    immutable): building it anew cost two allocations of the whole size per
    bulk IN transfer."""
    return source_pattern(size)


_RAMP = bytes(range(256))


def iso_pattern(seq: int, size: int) -> bytes:
    """Iso IN packet number ``seq``: its 32-bit little-endian counter, then
    bytes (seq + i) & 0xFF for the remaining positions i (cut from a
    repeated 0..255 ramp: byte by byte this cost ~100 µs per 3 KiB packet,
    more than a high-speed microframe's 125 µs)."""
    head = struct.pack("<I", seq & 0xFFFFFFFF)[:size]
    rest = size - len(head)
    if rest <= 0:
        return head
    start = (seq + len(head)) & 0xFF
    return head + (_RAMP * -(-(start + rest) // len(_RAMP)))[start : start + rest]


def _loopback_config(speed: Speed) -> ConfigSpec:
    high = speed == Speed.HIGH
    bulk = 512 if high else 64
    iso = 0x1400 if high else 1023  # 3 x 1024 per microframe; full speed allows 1023
    iso_attrs = ISO_SYNC_ASYNC
    return ConfigSpec(
        value=1,
        max_power_ma=100,
        interfaces=(
            InterfaceSpec(
                number=0,
                alternate=0,
                interface_class=0xFF,
                name="Loopback",
                endpoints=(
                    EndpointSpec(0x01, TransferType.BULK, bulk),
                    EndpointSpec(0x81, TransferType.BULK, bulk),
                    EndpointSpec(0x03, TransferType.INTERRUPT, 64, 4 if high else 1),
                    EndpointSpec(0x83, TransferType.INTERRUPT, 64, 4 if high else 1),
                ),
            ),
            InterfaceSpec(number=1, alternate=0, interface_class=0xFF, name="Isochronous (off)"),
            InterfaceSpec(
                number=1,
                alternate=1,
                interface_class=0xFF,
                name="Isochronous",
                endpoints=(
                    EndpointSpec(0x02, TransferType.ISOCHRONOUS, iso, 1, iso_attrs),
                    EndpointSpec(0x82, TransferType.ISOCHRONOUS, iso, 1, iso_attrs),
                ),
            ),
        ),
    )


class _Queue:
    """FIFO of OUT transfers with a byte capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: collections.deque[bytes] = collections.deque()
        self.size = 0

    def put(self, data: memoryview) -> int | None:
        room = self.capacity - self.size
        if room <= 0:
            return None
        chunk = bytes(data[:room])
        self.items.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def get(self, size: int) -> bytes | None:
        if not self.items:
            return None
        head = self.items.popleft()
        if len(head) > size:
            self.items.appendleft(head[size:])
            head = head[:size]
        self.size -= len(head)
        return head

    def clear(self) -> None:
        self.items.clear()
        self.size = 0


class LoopbackDevice(VirtualDevice):
    """The loopback/source/sink test device.

    ``LoopbackDevice(*, speed=Speed.HIGH, mode=LoopbackMode.LOOPBACK,
    buffer_bytes=1 << 20, iso_realtime=True, serial="LOOP0000000001",
    vendor_id=0x1209, product_id=0x0003, name="loopback")``.  ``mode`` is
    a read/write property; ``stats()`` returns a `LoopbackStats` snapshot.
    With ``iso_realtime`` an iso transfer of N packets takes N (micro)frames.
    """

    BULK_OUT, BULK_IN = 0x01, 0x81
    INTR_OUT, INTR_IN = 0x03, 0x83
    ISO_OUT, ISO_IN = 0x02, 0x82

    def __init__(
        self,
        *,
        speed: Speed = Speed.HIGH,
        mode: LoopbackMode = LoopbackMode.LOOPBACK,
        buffer_bytes: int = 1 << 20,
        iso_realtime: bool = True,
        serial: str = "LOOP0000000001",
        vendor_id: int = 0x1209,
        product_id: int = 0x0003,
        name: str = "loopback",
    ) -> None:
        if speed not in (Speed.FULL, Speed.HIGH):
            raise ValueError(f"the loopback device runs at full or high speed, not {speed.name}")
        identity = DeviceIdentity(
            vendor_id=vendor_id,
            product_id=product_id,
            bcd_device=0x0100,
            manufacturer="redirgate",
            product="Virtual Loopback",
            serial=serial,
        )
        other = Speed.FULL if speed == Speed.HIGH else Speed.HIGH
        descriptors = build_descriptor_set(identity, speed, [_loopback_config(speed)], other, [_loopback_config(other)])
        super().__init__(name, descriptors)
        self.iso_realtime = iso_realtime
        self._mode = LoopbackMode(mode)
        self._bulk = _Queue(buffer_bytes)
        self._intr = _Queue(buffer_bytes)
        self._counts = collections.Counter[str]()
        self._iso_seq = 0

    @property
    def mode(self) -> LoopbackMode:
        return self._mode

    @mode.setter
    def mode(self, mode: LoopbackMode) -> None:
        with self.lock:
            self._set_mode(LoopbackMode(mode))

    def _set_mode(self, mode: LoopbackMode) -> None:
        self._mode = mode
        self._bulk.clear()
        self.notify()

    def stats(self) -> LoopbackStats:
        with self.lock:
            return LoopbackStats(**self._counts)

    # ------------------------------------------------------------ device side

    def on_reset(self) -> None:
        self._bulk.clear()
        self._intr.clear()

    def on_configuration(self, value: int) -> None:
        self.on_reset()

    def handle_control(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type == TYPE_VENDOR:
            if setup.request == VENDOR_SET_MODE and not setup.is_in:
                try:
                    mode = LoopbackMode(setup.value)
                except ValueError as exc:
                    raise Stall(f"no mode {setup.value}") from exc
                self._set_mode(mode)
                return None
            if setup.request == VENDOR_GET_MODE and setup.is_in:
                return bytes((self._mode,))
            if setup.request == VENDOR_RESET_STATS and not setup.is_in:
                self._counts.clear()
                self._iso_seq = 0
                return None
        return super().handle_control(setup, data)

    def handle_out(self, ep: int, data: memoryview) -> int | None:
        if ep == self.INTR_OUT:
            taken = self._intr.put(data)
            self._counts["intr_out_bytes"] += taken or 0
            return taken
        if self._mode == LoopbackMode.LOOPBACK:
            taken = self._bulk.put(data)
        else:
            taken = len(data)
        self._counts["bulk_out_bytes"] += taken or 0
        return taken

    def handle_in(self, ep: int, size: int) -> bytes | None:
        if ep == self.INTR_IN:
            data = self._intr.get(size)
            key = "intr_in_bytes"
        elif self._mode == LoopbackMode.LOOPBACK:
            data = self._bulk.get(size)
            key = "bulk_in_bytes"
        elif self._mode == LoopbackMode.SOURCE:
            data = _cached_source_pattern(size) if size <= _SOURCE_CACHE_BYTES else source_pattern(size)
            key = "bulk_in_bytes"
        else:
            return None
        if data is not None:
            self._counts[key] += len(data)
        return data

    def handle_iso_out(self, ep: int, packets: list[memoryview]) -> None:
        self._counts["iso_out_packets"] += len(packets)
        self._counts["iso_out_bytes"] += sum(len(p) for p in packets)

    def handle_iso_in(self, ep: int, sizes: list[int]) -> list[bytes]:
        payloads = [iso_pattern(self._iso_seq + i, n) for i, n in enumerate(sizes)]
        self._iso_seq += len(sizes)
        self._counts["iso_in_packets"] += len(sizes)
        self._counts["iso_in_bytes"] += sum(sizes)
        return payloads
