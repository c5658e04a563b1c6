"""`VirtualDevice`: the USB device side of an emulated device.

Owns what every USB 2.0 device has regardless of its function: the
descriptor set, the device state the host changes (configuration, alternate
settings, endpoint halts, remote wakeup), the standard requests of USB 2.0
chapter 9.4, and the blocking transfer loop.  Subclasses (storage, keyboard,
loopback) only implement the hooks ``handle_control``, ``handle_out``,
``handle_in``, ``handle_iso_out``, ``handle_iso_in`` and ``on_*``.

Concurrency: one ``threading.Condition`` per device guards all state; every
hook runs with it held.  A transfer that has nothing to do (a NAK: the hook
returned None) *waits on the condition*, which releases the lock, so one
thread blocked in an interrupt IN read never blocks another thread's bulk
transfer.  Anything that makes data available (the host writing, a test
calling ``keyboard.type_text``, unplug) calls ``notify_all``.  Waits end at
the transfer's deadline (timeout 0 = forever, as in libusb).

No-wait attempts: inside `run_no_wait()` (a per-thread switch), a bulk or
interrupt transfer that would have to wait for the device raises
``BlockingIOError`` instead, with ``characters_written`` = the OUT bytes the
device accepted before it NAKed, and changes nothing else.  That lets the
host engine run a transfer on its event-loop thread and move only the ones
that really wait to a worker thread.  Only devices whose hooks never do I/O
or sleep say so with ``inline_transfers`` (isochronous transfers sleep to
keep their schedule and are never attempted that way).

Isochronous transfers keep the (micro)frame schedule in real time
(``iso_realtime``): a transfer of N packets takes N frames, and frames
during which the host has no transfer running on the endpoint are lost, as
on the wire.  Only the emulation's own lateness is not counted as lost: a
transfer ends by sleeping until its last frame is over, and ``time.sleep``
returns a little late; the endpoint's next transfer starts that much (at
most `ISO_SLEEP_SLACK_S`) before it is submitted, so back-to-back transfers
lose only the time the host took between them (`_iso_start`).

This module never touches pyusb's objects; `VirtualBackend` translates.  It
raises only `usb_error(...)` errors and never blocks without a deadline.
"""

from __future__ import annotations

import enum
import errno
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .descriptors import (
    ConfigurationDescriptor,
    DescriptorSet,
    DescriptorType,
    EndpointDescriptor,
    Speed,
    TransferType,
    iso_max_packet_bytes,
)
from .errors import LibusbError, Stall, VirtualUSBError, usb_error

__all__ = ["ISO_SLEEP_SLACK_S", "Setup", "StandardRequest", "TransferStatus", "VirtualDevice"]

#: ``time.sleep`` returns late by the timer slack (50 µs on Linux) plus the
#: wait for the GIL, typically 0.1-0.3 ms on an idle machine: up to this much
#: of an iso transfer's lateness is the emulation's, not lost frames
ISO_SLEEP_SLACK_S = 0.5e-3


class StandardRequest(enum.IntEnum):
    """bRequest codes of USB 2.0 table 9-4 and USB 3.2 table 9-5."""

    GET_STATUS = 0
    CLEAR_FEATURE = 1
    SET_FEATURE = 3
    SET_ADDRESS = 5
    GET_DESCRIPTOR = 6
    SET_DESCRIPTOR = 7
    GET_CONFIGURATION = 8
    SET_CONFIGURATION = 9
    GET_INTERFACE = 10
    SET_INTERFACE = 11
    SYNCH_FRAME = 12
    SET_SEL = 0x30
    SET_ISOCH_DELAY = 0x31


class TransferStatus(enum.IntEnum):
    """libusb_transfer_status (libusb.h): the status libusb reports per
    packet of an isochronous transfer (`VirtualDevice.iso_in_packets`)."""

    COMPLETED = 0
    ERROR = 1
    TIMED_OUT = 2
    CANCELLED = 3
    STALL = 4
    NO_DEVICE = 5
    OVERFLOW = 6


FEATURE_ENDPOINT_HALT = 0
FEATURE_DEVICE_REMOTE_WAKEUP = 1
FEATURE_TEST_MODE = 2

TYPE_STANDARD, TYPE_CLASS, TYPE_VENDOR = 0, 1, 2
RECIPIENT_DEVICE, RECIPIENT_INTERFACE, RECIPIENT_ENDPOINT = 0, 1, 2


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Setup:
    """A control request's SETUP packet (USB 2.0 9.3)."""

    request_type: int
    request: int
    value: int
    index: int
    length: int

    @property
    def is_in(self) -> bool:
        return bool(self.request_type & 0x80)

    @property
    def type(self) -> int:
        return (self.request_type >> 5) & 3

    @property
    def recipient(self) -> int:
        return self.request_type & 0x1F


class _NoWait(threading.local):
    """Per-thread switch of `run_no_wait()`."""

    active = False


_NO_WAIT = _NoWait()


def run_no_wait(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with this thread's no-wait switch on: bulk/interrupt
    transfers raise BlockingIOError where they would wait (see the module
    docstring).  The host engine runs every emulated transfer through this;
    a plain function, because a generator context manager costs several
    Python calls per use."""
    state = _NO_WAIT
    previous = state.active
    state.active = True
    try:
        return fn(*args)
    finally:
        state.active = previous


def _would_block(ep: int, done: int) -> BlockingIOError:
    return BlockingIOError(errno.EAGAIN, f"endpoint {ep:#04x} NAKs", done)


class VirtualDevice:
    """Base class of all emulated devices.

    Subclasses build their `DescriptorSet` and pass it here.  The backend
    calls ``attach``/``detach`` on plug/unplug and the ``control``,
    ``transfer_out``, ``transfer_in``, ``iso_out``, ``iso_in``, ``iso_in_packets``,
    ``set_configuration``, ``set_interface``, ``clear_halt`` and ``reset``
    methods; each takes the connection generation the caller opened, so a
    stale handle gets LIBUSB_ERROR_NO_DEVICE after an unplug/replug.
    """

    #: The hooks never do I/O or sleep, so a bulk/interrupt/control transfer
    #: may run on an event-loop thread under `run_no_wait()`.  A subclass whose
    #: hooks touch files (storage) sets it False.
    inline_transfers = True

    def __init__(self, name: str, descriptors: DescriptorSet) -> None:
        self.name = name
        self.descriptors = descriptors
        self.iso_realtime = True
        #: the condition's lock, held directly (``with self._mutex``) where
        #: no wait is involved: Condition's own __enter__/__exit__ are Python
        #: functions wrapping this lock's, two calls per device operation
        self._mutex = threading.RLock()
        self._cond = threading.Condition(self._mutex)
        self._connected = False
        self._generation = 0
        self._configuration = 0
        self._alt: dict[int, int] = {}
        self._halted: set[int] = set()
        self._endpoints: dict[int, EndpointDescriptor] = {}
        self._ep_interface: dict[int, int] = {}
        self._remote_wakeup = False
        #: iso endpoint -> how late its last transfer returned (capped)
        self._iso_late: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.speed.name}>"

    # ------------------------------------------------------------ properties

    @property
    def speed(self) -> Speed:
        return self.descriptors.speed

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def configuration_value(self) -> int:
        """bConfigurationValue of the active configuration (0 = unconfigured)."""
        return self._configuration

    def alternate_setting(self, interface: int) -> int:
        return self._alt.get(interface, 0)

    def close(self) -> None:
        """Release host resources (files); the base class holds none."""

    # ------------------------------------------------------------ subclass hooks

    def handle_control(self, setup: Setup, data: bytes) -> bytes | None:
        """Class/vendor requests and standard ones the base does not know.
        Return the IN data (None for OUT requests) or raise Stall."""
        raise Stall(f"request {setup.request_type:#04x}/{setup.request:#04x} not supported")

    def handle_out(self, ep: int, data: memoryview) -> int | None:
        """Bulk/interrupt OUT data: return bytes accepted (may be partial),
        None to NAK (wait for room), or raise Stall."""
        raise Stall(f"no OUT handler for endpoint {ep:#04x}")

    def handle_in(self, ep: int, size: int) -> bytes | None:
        """Bulk/interrupt IN: return at most ``size`` bytes, None to NAK
        (nothing yet; the caller waits), or raise Stall."""
        raise Stall(f"no IN handler for endpoint {ep:#04x}")

    def handle_iso_out(self, ep: int, packets: list[memoryview]) -> None:
        """Isochronous OUT packets (never NAKed)."""

    def handle_iso_in(self, ep: int, sizes: list[int]) -> Sequence[bytes | TransferStatus]:
        """Isochronous IN: one payload of at most sizes[i] bytes per packet
        (empty is a zero-length packet), or a `TransferStatus` for a packet
        that failed (``ERROR``: the device missed its (micro)frame or the
        packet was corrupt, as a host controller reports it)."""
        return [b"" for _ in sizes]

    def on_configuration(self, value: int) -> None:
        """The host selected configuration ``value`` (0 = deconfigured)."""

    def on_interface(self, interface: int, alternate: int) -> None:
        """The host selected an alternate setting."""

    def on_reset(self) -> None:
        """A USB port reset happened (configuration is kept, as after
        libusb_reset_device on Linux)."""

    # ------------------------------------------------------------ helpers for subclasses

    def halt(self, ep: int) -> None:
        """Set the HALT feature of endpoint ``ep`` (caller holds the lock)."""
        self._halted.add(ep)

    def notify(self) -> None:
        """Wake transfers waiting for data (caller holds the lock)."""
        self._cond.notify_all()

    @property
    def lock(self) -> threading.Condition:
        """The device's condition; hold it to touch subclass state from
        another thread, and call `notify` after adding data."""
        return self._cond

    def error(self, code: LibusbError, reason: str) -> VirtualUSBError:
        return usb_error(code, self.name, reason)

    # ------------------------------------------------------------ backend side: plug state

    def attach(self) -> int:
        """Connect to the virtual bus; returns the new connection generation."""
        with self._mutex:
            self._generation += 1
            self._connected = True
            self._set_configuration_locked(0)
            self._remote_wakeup = False
            self.on_reset()
            return self._generation

    def detach(self) -> None:
        """Disconnect: all current and later operations get NO_DEVICE."""
        with self._mutex:
            self._connected = False
            self._cond.notify_all()

    def _check(self, generation: int) -> None:
        if not self._connected or generation != self._generation:
            raise self.error(LibusbError.NO_DEVICE, "device disconnected")

    # ------------------------------------------------------------ configuration state

    def active_configuration(self) -> ConfigurationDescriptor | None:
        return self.descriptors.configuration_by_value(self._configuration)

    def _set_configuration_locked(self, value: int) -> None:
        if value != 0 and self.descriptors.configuration_by_value(value) is None:
            raise Stall(f"no configuration {value}")
        self._configuration = value
        self._alt = {}
        self._halted.clear()
        self._refresh_endpoints()
        self.on_configuration(value)
        self._cond.notify_all()

    def _refresh_endpoints(self) -> None:
        self._endpoints = {}
        self._ep_interface = {}
        cfg = self.active_configuration()
        if cfg is None:
            return
        for alts in cfg.interfaces:
            for intf in alts:
                if intf.bAlternateSetting != self._alt.get(intf.bInterfaceNumber, 0):
                    continue
                for ep in intf.endpoints:
                    self._endpoints[ep.bEndpointAddress] = ep
                    self._ep_interface[ep.bEndpointAddress] = intf.bInterfaceNumber

    def has_interface(self, interface: int, alternate: int | None = None) -> bool:
        cfg = self.active_configuration()
        if cfg is None:
            return False
        return any(
            i.bInterfaceNumber == interface and (alternate is None or i.bAlternateSetting == alternate)
            for alts in cfg.interfaces
            for i in alts
        )

    def _set_interface_locked(self, interface: int, alternate: int) -> None:
        if not self.has_interface(interface, alternate):
            raise Stall(f"no interface {interface} alternate {alternate}")
        self._alt[interface] = alternate
        for ep, intf in list(self._ep_interface.items()):
            if intf == interface:
                self._halted.discard(ep)
        self._refresh_endpoints()
        self.on_interface(interface, alternate)
        self._cond.notify_all()

    def set_configuration(self, generation: int, value: int) -> None:
        with self._mutex:
            self._check(generation)
            try:
                self._set_configuration_locked(value)
            except Stall as exc:
                raise self.error(LibusbError.NOT_FOUND, exc.reason) from exc

    def set_interface(self, generation: int, interface: int, alternate: int) -> None:
        with self._mutex:
            self._check(generation)
            try:
                self._set_interface_locked(interface, alternate)
            except Stall as exc:
                raise self.error(LibusbError.NOT_FOUND, exc.reason) from exc

    def clear_halt(self, generation: int, ep: int) -> None:
        with self._mutex:
            self._check(generation)
            if ep not in self._endpoints and ep & 0x7F:
                raise self.error(LibusbError.NOT_FOUND, f"no endpoint {ep:#04x}")
            self._halted.discard(ep)
            self._cond.notify_all()

    def reset(self, generation: int) -> None:
        with self._mutex:
            self._check(generation)
            self._halted.clear()
            self.on_reset()
            self._cond.notify_all()

    def endpoint(self, generation: int, ep: int, kind: TransferType) -> EndpointDescriptor:
        """The active endpoint ``ep``, checked against the transfer type."""
        with self._mutex:
            self._check(generation)
            desc = self._endpoints.get(ep)
            if desc is None:
                raise self.error(LibusbError.NOT_FOUND, f"endpoint {ep:#04x} not in the active settings")
            if desc.transfer_type != kind:
                raise self.error(
                    LibusbError.INVALID_PARAM, f"endpoint {ep:#04x} is {desc.transfer_type.name}, not {kind.name}"
                )
            return desc

    # ------------------------------------------------------------ control transfers

    def control(self, generation: int, setup: Setup, data: bytes) -> bytes | None:
        """Run one control request; IN data is cut to wLength.  A STALL
        becomes LIBUSB_ERROR_PIPE, as libusb reports it."""
        with self._mutex:
            self._check(generation)
            try:
                result = self._standard(setup, data) if setup.type == TYPE_STANDARD else _NOT_STANDARD
                if result is _NOT_STANDARD:
                    result = self.handle_control(setup, data)
            except Stall as exc:
                raise self.error(LibusbError.PIPE, f"control request stalled: {exc.reason}") from exc
            if setup.is_in:
                return bytes(cast("bytes | None", result) or b"")[: setup.length]
            return None

    def _descriptor(self, setup: Setup) -> bytes | object:
        dtype, index = setup.value >> 8, setup.value & 0xFF
        d = self.descriptors
        if dtype == DescriptorType.DEVICE:
            return d.device
        if dtype == DescriptorType.CONFIGURATION:
            if index >= len(d.configurations):
                raise Stall(f"no configuration index {index}")
            return d.configurations[index]
        if dtype == DescriptorType.STRING:
            raw = d.string(index)
            if raw is None:
                raise Stall(f"no string {index}")
            return raw
        if dtype == DescriptorType.DEVICE_QUALIFIER:
            if d.qualifier is None:
                raise Stall("not high-speed capable")
            return d.qualifier
        if dtype == DescriptorType.OTHER_SPEED_CONFIGURATION:
            if index >= len(d.other_speed_configurations):
                raise Stall("no other-speed configuration")
            return d.other_speed_configurations[index]
        if dtype == DescriptorType.BOS:
            if d.bos is None:
                raise Stall("no BOS descriptor")
            return d.bos
        return _NOT_STANDARD

    def _standard(self, setup: Setup, data: bytes) -> bytes | object | None:
        req, rcpt = setup.request, setup.recipient
        if req == StandardRequest.GET_DESCRIPTOR and rcpt == RECIPIENT_DEVICE:
            return self._descriptor(setup)
        if req == StandardRequest.GET_STATUS:
            if rcpt == RECIPIENT_DEVICE:
                cfg = self.active_configuration() or self.descriptors.parsed_configurations[0]
                return bytes(((cfg.bmAttributes >> 6) & 1 | self._remote_wakeup << 1, 0))
            if rcpt == RECIPIENT_INTERFACE:
                return b"\0\0"
            if rcpt == RECIPIENT_ENDPOINT:
                return bytes((int(setup.index & 0xFF in self._halted), 0))
        if req in (StandardRequest.CLEAR_FEATURE, StandardRequest.SET_FEATURE):
            on = req == StandardRequest.SET_FEATURE
            if rcpt == RECIPIENT_ENDPOINT and setup.value == FEATURE_ENDPOINT_HALT:
                ep = setup.index & 0xFF
                if ep & 0x7F and ep not in self._endpoints:
                    raise Stall(f"no endpoint {ep:#04x}")
                if on:
                    self._halted.add(ep)
                else:
                    self._halted.discard(ep)
                self._cond.notify_all()  # blocked transfers re-check the halt
                return None
            if rcpt == RECIPIENT_DEVICE and setup.value == FEATURE_DEVICE_REMOTE_WAKEUP:
                self._remote_wakeup = on
                return None
            if rcpt == RECIPIENT_DEVICE and setup.value == FEATURE_TEST_MODE and on:
                return None
            raise Stall(f"feature {setup.value} not supported")
        if rcpt == RECIPIENT_DEVICE:
            if req in (StandardRequest.SET_ADDRESS, StandardRequest.SET_SEL, StandardRequest.SET_ISOCH_DELAY):
                return None
            if req == StandardRequest.GET_CONFIGURATION:
                return bytes((self._configuration,))
            if req == StandardRequest.SET_CONFIGURATION:
                self._set_configuration_locked(setup.value & 0xFF)
                return None
        if rcpt == RECIPIENT_INTERFACE:
            if req == StandardRequest.GET_INTERFACE:
                if not self.has_interface(setup.index):
                    raise Stall(f"no interface {setup.index}")
                return bytes((self._alt.get(setup.index, 0),))
            if req == StandardRequest.SET_INTERFACE:
                self._set_interface_locked(setup.index, setup.value)
                return None
        return _NOT_STANDARD

    # ------------------------------------------------------------ bulk / interrupt

    def _wait(self, deadline: float | None, ep: int) -> None:
        if deadline is None:
            self._cond.wait()
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self.error(LibusbError.TIMEOUT, f"endpoint {ep:#04x} timed out")
        self._cond.wait(remaining)

    def _ready(self, generation: int, ep: int) -> None:
        self._check(generation)
        if ep not in self._endpoints:
            raise self.error(LibusbError.NOT_FOUND, f"endpoint {ep:#04x} not in the active settings")
        if ep in self._halted:
            raise self.error(LibusbError.PIPE, f"endpoint {ep:#04x} halted")

    def transfer_out(self, generation: int, ep: int, data: bytes | memoryview, timeout_ms: int) -> int:
        """Bulk/interrupt OUT.  Returns bytes accepted; on timeout after a
        partial transfer returns the count (as pyusb's libusb1 backend does),
        with nothing accepted raises TIMEOUT."""
        deadline = _deadline(timeout_ms)
        view = memoryview(data).cast("B")
        done = 0
        with self._mutex:
            while True:
                self._ready(generation, ep)
                try:
                    taken = self.handle_out(ep, view[done:])
                except Stall as exc:
                    self._halted.add(ep)
                    raise self.error(LibusbError.PIPE, f"endpoint {ep:#04x} stalled: {exc.reason}") from exc
                if taken is not None:
                    done += taken
                    self._cond.notify_all()
                    if done >= len(view):
                        return done
                if _NO_WAIT.active:
                    raise _would_block(ep, done)
                try:
                    self._wait(deadline, ep)
                except VirtualUSBError as exc:
                    if done and exc.backend_error_code == LibusbError.TIMEOUT:
                        return done
                    raise

    def transfer_in(self, generation: int, ep: int, size: int, timeout_ms: int) -> bytes:
        """Bulk/interrupt IN of at most ``size`` bytes; waits while the
        device NAKs, up to the timeout."""
        deadline = _deadline(timeout_ms)
        with self._mutex:
            while True:
                self._ready(generation, ep)
                try:
                    data = self.handle_in(ep, size)
                except Stall as exc:
                    self._halted.add(ep)
                    raise self.error(LibusbError.PIPE, f"endpoint {ep:#04x} stalled: {exc.reason}") from exc
                if data is not None:
                    if len(data) > size:
                        raise self.error(LibusbError.OVERFLOW, f"{len(data)} bytes for a {size}-byte read")
                    self._cond.notify_all()
                    return data
                if _NO_WAIT.active:
                    raise _would_block(ep, 0)
                self._wait(deadline, ep)

    # ------------------------------------------------------------ isochronous

    def _iso_schedule(self, desc: EndpointDescriptor, count: int) -> float:
        """Seconds ``count`` packets take on the wire (USB 2.0 9.6.6:
        2**(bInterval-1) frames or microframes)."""
        unit = 125e-6 if self.speed >= Speed.HIGH else 1e-3
        return count * unit * (1 << (max(desc.bInterval, 1) - 1))

    def iso_packet_size(self, desc: EndpointDescriptor) -> int:
        return iso_max_packet_bytes(desc.wMaxPacketSize, self.speed)

    def iso_out(self, generation: int, desc: EndpointDescriptor, data: memoryview) -> int:
        """Isochronous OUT split into max-size packets as libusb1's iso
        handler splits it; returns the bytes sent."""
        size = self.iso_packet_size(desc)
        packets = [data[i : i + size] for i in range(0, len(data), size)]
        start = self._iso_start(desc)
        with self._mutex:
            self._ready(generation, desc.bEndpointAddress)
            self.handle_iso_out(desc.bEndpointAddress, packets)
        self._pace(start, desc, len(packets))
        return len(data)

    def iso_in(self, generation: int, desc: EndpointDescriptor, buff: memoryview) -> int:
        """Isochronous IN into ``buff``: packet i lands at offset i*size (the
        libusb layout, not compacted); returns the sum of actual lengths (a
        failed packet counts 0, as in pyusb's libusb1 backend)."""
        size = self.iso_packet_size(desc)
        sizes = [min(size, len(buff) - i) for i in range(0, len(buff), size)]
        start = self._iso_start(desc)
        packets = self._iso_in_packets(generation, desc, sizes)
        total = 0
        for i, (_, payload) in enumerate(packets):
            buff[i * size : i * size + len(payload)] = payload
            total += len(payload)
        self._pace(start, desc, len(sizes))
        return total

    def iso_in_packets(
        self, generation: int, desc: EndpointDescriptor, count: int, packet_size: int
    ) -> list[tuple[TransferStatus, bytes]]:
        """One isochronous IN transfer of ``count`` packets of at most
        ``packet_size`` bytes (cut to the endpoint's maximum), each packet
        with its own status and payload, as libusb's packet descriptors
        report them (a failed packet has no data).  Paced like `iso_in`:
        the whole transfer takes ``count`` (micro)frames from the call
        (`_iso_start`)."""
        size = min(packet_size, self.iso_packet_size(desc))
        start = self._iso_start(desc)
        packets = self._iso_in_packets(generation, desc, [size] * count)
        self._pace(start, desc, count)
        return packets

    def _iso_in_packets(
        self, generation: int, desc: EndpointDescriptor, sizes: list[int]
    ) -> list[tuple[TransferStatus, bytes]]:
        """``handle_iso_in`` for these packet sizes, one (status, payload)
        per packet: a `TransferStatus` from the hook is that packet's
        failure, a payload longer than its packet is OVERFLOW (babble), a
        packet the hook left out is empty."""
        with self._mutex:
            self._ready(generation, desc.bEndpointAddress)
            payloads = self.handle_iso_in(desc.bEndpointAddress, sizes)
        packets: list[tuple[TransferStatus, bytes]] = []
        for i, size in enumerate(sizes):
            payload = payloads[i] if i < len(payloads) else b""
            if isinstance(payload, TransferStatus):
                failed = payload if payload != TransferStatus.COMPLETED else TransferStatus.ERROR
                packets.append((failed, b""))
            elif len(payload) > size:
                packets.append((TransferStatus.OVERFLOW, b""))
            else:
                packets.append((TransferStatus.COMPLETED, bytes(payload)))
        return packets

    def _iso_start(self, desc: EndpointDescriptor) -> float:
        """Where on the clock an iso transfer submitted now starts.

        A host controller runs an endpoint's frames on its own clock and
        reports a transfer done at the end of its last frame; here that
        report is the return from `_pace`'s sleep, which comes late.  That
        lateness (up to `ISO_SLEEP_SLACK_S`) is the emulation's, so the
        next transfer's schedule starts as much before its submission: the
        frames lost between two transfers are the time the host took to
        submit again, not the sleep's overshoot (which would otherwise be
        lost on every transfer).  Lateness beyond the slack (a starved
        thread) is lost, as a host too slow to take its data loses it."""
        return time.monotonic() - self._iso_late.pop(desc.bEndpointAddress, 0.0)

    def _pace(self, start: float, desc: EndpointDescriptor, count: int) -> None:
        """Return when the transfer that started at `start` is over."""
        if self.iso_realtime:
            end = start + self._iso_schedule(desc, count)
            left = end - time.monotonic()
            if left > 0:
                time.sleep(left)
            late = time.monotonic() - end
            self._iso_late[desc.bEndpointAddress] = min(max(late, 0.0), ISO_SLEEP_SLACK_S)


_NOT_STANDARD = object()


def _deadline(timeout_ms: int) -> float | None:
    """libusb semantics: 0 means no timeout."""
    return None if timeout_ms <= 0 else time.monotonic() + timeout_ms / 1000.0
