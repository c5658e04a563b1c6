"""The reference usbredir parser as an async VM-side peer of our host engine.

Owns `RefGuest`: a `RefParser` in the guest role (libusbredirparser, as QEMU
uses it) pumped over a trio stream, with awaitable look-ups of what the host
sent (`expect`, `expect_next`, `request`), and `engine_session`, which starts a
`HostEngine` for a device source and connects a `RefGuest` to it over a real
loopback TCP connection (through `serve_listen`, the standalone serve path)
or over a trio memory stream pair.  Also a few device-side helpers shared by
the engine tests (`VirtualDeviceSource`, Bulk-Only wrappers).

It never fakes a reply: every byte the host reads is produced by the
reference library's own send functions, and every byte the host writes is
parsed by it (a message the reference rejects shows up in `parse_errors`,
and tests assert there are none).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
import usb.core

from redirgate.client.usb.device import UsbDevice
from redirgate.client.usb.engine import DeviceSource, HostEngine
from redirgate.client.usb.serve import serve_listen
from redirgate.client.virtual import VirtualBackend, VirtualDevice
from tests.support.refparser import ParseError, RefEvent, RefParser

__all__ = [
    "REPLY_TYPE",
    "RefGuest",
    "Session",
    "T",
    "VirtualDeviceSource",
    "cbw",
    "engine_session",
    "parse_csw",
]


class T:
    """usbredir message type numbers (protocol reference §3.3)."""

    HELLO, DEVICE_CONNECT, DEVICE_DISCONNECT, RESET = 0, 1, 2, 3
    INTERFACE_INFO, EP_INFO = 4, 5
    SET_CONFIGURATION, GET_CONFIGURATION, CONFIGURATION_STATUS = 6, 7, 8
    SET_ALT_SETTING, GET_ALT_SETTING, ALT_SETTING_STATUS = 9, 10, 11
    START_ISO_STREAM, STOP_ISO_STREAM, ISO_STREAM_STATUS = 12, 13, 14
    START_INTERRUPT_RECEIVING, STOP_INTERRUPT_RECEIVING, INTERRUPT_RECEIVING_STATUS = 15, 16, 17
    ALLOC_BULK_STREAMS, FREE_BULK_STREAMS, BULK_STREAMS_STATUS = 18, 19, 20
    CANCEL_DATA_PACKET, FILTER_REJECT, FILTER_FILTER, DEVICE_DISCONNECT_ACK = 21, 22, 23, 24
    START_BULK_RECEIVING, STOP_BULK_RECEIVING, BULK_RECEIVING_STATUS = 25, 26, 27
    CONTROL_PACKET, BULK_PACKET, ISO_PACKET, INTERRUPT_PACKET, BUFFERED_BULK_PACKET = 100, 101, 102, 103, 104


#: request type -> the type of the host's reply
REPLY_TYPE = {
    T.SET_CONFIGURATION: T.CONFIGURATION_STATUS,
    T.GET_CONFIGURATION: T.CONFIGURATION_STATUS,
    T.SET_ALT_SETTING: T.ALT_SETTING_STATUS,
    T.GET_ALT_SETTING: T.ALT_SETTING_STATUS,
    T.START_ISO_STREAM: T.ISO_STREAM_STATUS,
    T.STOP_ISO_STREAM: T.ISO_STREAM_STATUS,
    T.START_INTERRUPT_RECEIVING: T.INTERRUPT_RECEIVING_STATUS,
    T.STOP_INTERRUPT_RECEIVING: T.INTERRUPT_RECEIVING_STATUS,
    T.ALLOC_BULK_STREAMS: T.BULK_STREAMS_STATUS,
    T.FREE_BULK_STREAMS: T.BULK_STREAMS_STATUS,
    T.START_BULK_RECEIVING: T.BULK_RECEIVING_STATUS,
    T.STOP_BULK_RECEIVING: T.BULK_RECEIVING_STATUS,
    T.CONTROL_PACKET: T.CONTROL_PACKET,
    T.BULK_PACKET: T.BULK_PACKET,
    T.INTERRUPT_PACKET: T.INTERRUPT_PACKET,
}

DEFAULT_TIMEOUT_S = 5.0


class RefGuest:
    """libusbredirparser in the guest role, talking to a host over `stream`.

    `events` is everything the reference accepted from the host, in order.
    `expect()` returns (and consumes) the first not yet consumed event that
    matches; `expect_next()` insists it is the very next one.
    """

    def __init__(self, stream: trio.abc.Stream, *, caps: int = 0xFF, version: str = "refguest") -> None:
        self.stream = stream
        self.parser = RefParser("guest", caps, version)
        self.events: list[RefEvent] = []
        self.parse_errors: list[ParseError] = []
        self.eof = False
        self._consumed: set[int] = set()
        self._changed = trio.Event()
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ pumping
    async def run(self) -> None:
        """Send our hello, then feed whatever the host sends to the parser."""
        await self.flush()
        try:
            while True:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    break
                for event in self.parser.feed(data):
                    if isinstance(event, ParseError):
                        self.parse_errors.append(event)
                    else:
                        self.events.append(event)
                await self.flush()  # the reference acks a device_disconnect by itself
                self._notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.eof = True
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def flush(self) -> None:
        """Write everything the parser has queued, in order."""
        async with self._send_lock:
            data = self.parser.output()
            if data:
                await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        """Bytes past the reference parser (for malformed input)."""
        async with self._send_lock:
            await self.stream.send_all(data)

    def close(self) -> None:
        self.parser.close()

    # ------------------------------------------------------------ sending
    def next_id(self) -> int:
        return next(self._ids)

    async def send(self, msg_type: int, msg_id: int = 0, data: bytes = b"", **fields: Any) -> None:
        self.parser.send(msg_type, msg_id, fields, data)
        await self.flush()

    async def request(
        self,
        msg_type: int,
        msg_id: int | None = None,
        data: bytes = b"",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        **fields: Any,
    ) -> RefEvent:
        """Send a request and wait for the reply of the matching type and id."""
        if msg_id is None:
            msg_id = self.next_id()
        reply_type = REPLY_TYPE[msg_type]
        await self.send(msg_type, msg_id, data, **fields)
        return await self.expect(reply_type, lambda e: e.id == msg_id, timeout_s=timeout_s)

    async def control(
        self,
        requesttype: int,
        request: int,
        value: int = 0,
        index: int = 0,
        length: int = 0,
        data: bytes = b"",
        msg_id: int | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> RefEvent:
        endpoint = 0x80 if requesttype & 0x80 else 0x00
        return await self.request(
            T.CONTROL_PACKET,
            msg_id,
            data,
            timeout_s=timeout_s,
            endpoint=endpoint,
            request=request,
            requesttype=requesttype,
            status=0,
            value=value,
            index=index,
            length=length if requesttype & 0x80 else len(data),
        )

    async def bulk(
        self,
        endpoint: int,
        length: int = 0,
        data: bytes = b"",
        msg_id: int | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> RefEvent:
        return await self.request(
            T.BULK_PACKET,
            msg_id,
            data,
            timeout_s=timeout_s,
            endpoint=endpoint,
            status=0,
            length=length if endpoint & 0x80 else len(data),
            stream_id=0,
        )

    # ------------------------------------------------------------ receiving
    def _find(self, msg_type: int, pred: Callable[[RefEvent], bool] | None) -> RefEvent | None:
        for index, event in enumerate(self.events):
            if index in self._consumed or event.type != msg_type:
                continue
            if pred is None or pred(event):
                self._consumed.add(index)
                return event
        return None

    async def expect(
        self,
        msg_type: int,
        pred: Callable[[RefEvent], bool] | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> RefEvent:
        """The first unconsumed event of `msg_type` matching `pred`, waiting for it."""
        with trio.move_on_after(timeout_s):
            while True:
                found = self._find(msg_type, pred)
                if found is not None:
                    return found
                if self.eof:
                    break
                await self._changed.wait()
        raise AssertionError(
            f"no message of type {msg_type} matching within {timeout_s}s (eof={self.eof}); "
            f"unconsumed: {self.unconsumed()[:20]}"
        )

    async def expect_next(self, msg_type: int, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> RefEvent:
        """The next unconsumed event, which must be of `msg_type`."""
        with trio.move_on_after(timeout_s):
            while True:
                pending = [i for i in range(len(self.events)) if i not in self._consumed]
                if pending:
                    event = self.events[pending[0]]
                    assert event.type == msg_type, f"expected type {msg_type} next, got {event}"
                    self._consumed.add(pending[0])
                    return event
                if self.eof:
                    break
                await self._changed.wait()
        raise AssertionError(f"no message within {timeout_s}s (eof={self.eof}), wanted type {msg_type}")

    async def wait_eof(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        with trio.fail_after(timeout_s):
            while not self.eof:
                await self._changed.wait()

    def unconsumed(self) -> list[RefEvent]:
        return [e for i, e in enumerate(self.events) if i not in self._consumed]

    def of_type(self, msg_type: int) -> list[RefEvent]:
        return [e for e in self.events if e.type == msg_type]

    async def expect_announcement(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[RefEvent, RefEvent, RefEvent]:
        """interface_info, ep_info, device_connect - next, in this order."""
        info = await self.expect_next(T.INTERFACE_INFO, timeout_s=timeout_s)
        eps = await self.expect_next(T.EP_INFO, timeout_s=timeout_s)
        connect = await self.expect_next(T.DEVICE_CONNECT, timeout_s=timeout_s)
        return info, eps, connect


# ---------------------------------------------------------------- sessions


@dataclass
class Session:
    guest: RefGuest
    engine: HostEngine
    #: the guest's end of the connection, as the host names its peer
    guest_name: str


@asynccontextmanager
async def engine_session(
    source: DeviceSource, *, caps: int = 0xFF, transport: str = "tcp", version: str = "refguest"
) -> AsyncIterator[Session]:
    """A HostEngine serving `source` and a RefGuest connected to it.

    transport "tcp": `serve_listen` on 127.0.0.1 port 0 and a real TCP client;
    "memory": a trio memory stream pair and `HostEngine.run()` directly.
    On exit everything is cancelled and the guest's parser destroyed.
    """
    engines: list[HostEngine] = []
    engine_started = trio.Event()

    def on_session(engine: HostEngine) -> None:
        engines.append(engine)
        engine_started.set()

    guest: RefGuest | None = None
    try:
        async with trio.open_nursery() as nursery:
            stream: trio.abc.Stream
            if transport == "tcp":
                listeners = await nursery.start(
                    lambda task_status: serve_listen(
                        "127.0.0.1", 0, source, task_status=task_status, on_session=on_session
                    )
                )
                port = listeners[0].socket.getsockname()[1]
                client = await trio.open_tcp_stream("127.0.0.1", port)
                host, local_port = client.socket.getsockname()[:2]
                name = f"{host}:{local_port}"
                stream = client
                await engine_started.wait()
            elif transport == "memory":
                stream, host_end = trio.testing.memory_stream_pair()
                name = "memory-guest"
                engines.append(HostEngine(host_end, source, peer=name))
                nursery.start_soon(engines[0].run)
            else:
                raise ValueError(f"unknown transport {transport!r}")
            guest = RefGuest(stream, caps=caps, version=version)
            nursery.start_soon(guest.run)
            try:
                yield Session(guest, engines[0], name)
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await stream.aclose()
    finally:
        # only once guest.run has ended: a run woken by data just before the
        # cancel would otherwise feed a parser that is already gone
        if guest is not None:
            guest.close()


# ---------------------------------------------------------------- devices


class VirtualDeviceSource:
    """A DeviceSource for one emulated device on a VirtualBackend: waits
    while it is unplugged, opens it through pyusb when it is plugged in.
    `acquired` counts the opens (one per plug-in served).  With
    `os_configuration` the device is first set to that configuration, as an
    OS that enumerates devices (Linux) leaves it."""

    def __init__(
        self,
        backend: VirtualBackend,
        device: VirtualDevice,
        *,
        poll_interval_s: float = 0.02,
        os_configuration: int | None = None,
    ) -> None:
        self.backend = backend
        self.device = device
        self.poll_interval_s = poll_interval_s
        self.os_configuration = os_configuration
        self.acquired = 0

    def describe(self) -> str:
        return f"virtual device {self.device.name}"

    def find(self) -> usb.core.Device | None:
        for dev in usb.core.find(find_all=True, backend=self.backend) or []:
            if dev.idVendor == self.device.descriptors.device_descriptor.idVendor and (
                dev.idProduct == self.device.descriptors.device_descriptor.idProduct
            ):
                return dev
        return None

    async def acquire(self) -> UsbDevice:
        while True:
            if self.device in self.backend.devices:
                dev = await trio.to_thread.run_sync(self.find)
                if dev is not None:
                    try:
                        if self.os_configuration and not self.device.configuration_value:
                            await trio.to_thread.run_sync(dev.set_configuration, self.os_configuration)
                        opened = await UsbDevice.open(dev)
                    except usb.core.USBError:
                        pass  # unplugged again meanwhile
                    else:
                        self.acquired += 1
                        return opened
            await trio.sleep(self.poll_interval_s)  # a source that looks again, as the real one does


# ---------------------------------------------------------------- Bulk-Only Transport

_CBW = struct.Struct("<IIIBBB16s")
_CSW = struct.Struct("<IIIB")


def cbw(tag: int, length: int, data_in: bool, cdb: bytes) -> bytes:
    """A Command Block Wrapper (USB MSC BOT 1.0 §5.1), LUN 0."""
    return _CBW.pack(0x43425355, tag, length, 0x80 if data_in else 0, 0, len(cdb), cdb.ljust(16, b"\0"))


def parse_csw(raw: bytes) -> tuple[int, int, int]:
    """(tag, residue, status) of a Command Status Wrapper (BOT §5.2)."""
    signature, tag, residue, status = _CSW.unpack(raw)
    assert signature == 0x53425355, raw.hex()
    return tag, residue, status
