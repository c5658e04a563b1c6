"""`redirgate probe HOST:PORT`: check a usbredir route without a VM.

Speaks the VM side: hello, waits for the device, reads its device and
configuration descriptors and strings with control transfers, and returns an
`lsusb -v`-style summary.  Admins use it on a gateway route or on a
`serve-usb` port; the demo uses it to check its routes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from redirgate.proto.usbredir import Speed, Status
from redirgate.vmside.guest import GuestError, UsbredirGuest

__all__ = ["ProbeError", "ProbeResult", "probe", "probe_stream"]

GET_DESCRIPTOR = 6
DEVICE, CONFIGURATION, STRING = 1, 2, 3
_CLASS_NAMES = {
    0x00: "(Defined at Interface level)",
    0x01: "Audio",
    0x02: "Communications",
    0x03: "Human Interface Device",
    0x05: "Physical",
    0x06: "Image",
    0x07: "Printer",
    0x08: "Mass Storage",
    0x09: "Hub",
    0x0A: "CDC Data",
    0x0B: "Chip/SmartCard",
    0x0E: "Video",
    0xE0: "Wireless",
    0xEF: "Miscellaneous Device",
    0xFE: "Application Specific",
    0xFF: "Vendor Specific Class",
}
_EP_TYPES = {0: "Control", 1: "Isochronous", 2: "Bulk", 3: "Interrupt"}


class ProbeError(GuestError):
    """The route did not produce a usable device."""


@dataclass
class ProbeResult:
    speed: Speed
    vendor_id: int
    product_id: int
    device_class: int
    bcd_usb: int
    bcd_device: int
    manufacturer: str | None
    product: str | None
    serial: str | None
    num_configurations: int
    config_descriptor: bytes
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(self.lines)


async def _string(guest: UsbredirGuest, index: int, lang: int) -> str | None:
    if not index:
        return None
    status, data = await guest.control(0x80, GET_DESCRIPTOR, (STRING << 8) | index, lang, 255)
    if status != Status.SUCCESS or len(data) < 2:
        return None
    return data[2 : data[0]].decode("utf-16-le", "replace")


async def probe_stream(
    stream: trio.abc.Stream, *, peer: str, started: Callable[[UsbredirGuest], None] | None = None
) -> ProbeResult:
    """Probe the device behind a usbredir host on `stream`; `started` is
    given the guest once its hello is sent (to tell how far it got)."""
    async with UsbredirGuest(stream, peer=peer) as guest:
        if started is not None:
            started(guest)
        announced = await guest.wait_device()
        status, dev = await guest.control(0x80, GET_DESCRIPTOR, DEVICE << 8, 0, 18)
        if status != Status.SUCCESS or len(dev) < 18:
            raise ProbeError(peer, f"device descriptor read failed (status {Status(status).name.lower()})")
        (_, _, bcd_usb, dev_class, _dev_sub, _dev_proto, mps0, vid, pid, bcd_dev, i_man, i_prod, i_serial, n_conf) = (
            struct.unpack("<BBHBBBBHHHBBBB", dev[:18])
        )
        status, head = await guest.control(0x80, GET_DESCRIPTOR, CONFIGURATION << 8, 0, 9)
        config = b""
        if status == Status.SUCCESS and len(head) >= 4:
            total = struct.unpack_from("<H", head, 2)[0]
            status, config = await guest.control(0x80, GET_DESCRIPTOR, CONFIGURATION << 8, 0, total)
        lang = 0x0409
        status, langs = await guest.control(0x80, GET_DESCRIPTOR, STRING << 8, 0, 255)
        if status == Status.SUCCESS and len(langs) >= 4:
            lang = struct.unpack_from("<H", langs, 2)[0]
        manufacturer = await _string(guest, i_man, lang)
        product = await _string(guest, i_prod, lang)
        serial = await _string(guest, i_serial, lang)
    result = ProbeResult(
        Speed(announced.connect.speed),
        vid,
        pid,
        dev_class,
        bcd_usb,
        bcd_dev,
        manufacturer,
        product,
        serial,
        n_conf,
        config,
    )
    result.lines = _describe(result, mps0)
    return result


def _describe(r: ProbeResult, mps0: int) -> list[str]:
    lines = [
        f"Device {r.vendor_id:04x}:{r.product_id:04x} {r.manufacturer or ''} {r.product or ''}".rstrip(),
        f"  speed            {r.speed.name.lower()}",
        f"  bcdUSB           {r.bcd_usb >> 8:x}.{r.bcd_usb & 0xFF:02x}",
        f"  bDeviceClass     {r.device_class:3d} {_CLASS_NAMES.get(r.device_class, '')}",
        f"  bMaxPacketSize0  {mps0:3d}",
        f"  bcdDevice        {r.bcd_device >> 8:x}.{r.bcd_device & 0xFF:02x}",
        f"  iSerial          {r.serial or '(none)'}",
        f"  bNumConfigurations {r.num_configurations}",
    ]
    pos = 0
    data = r.config_descriptor
    while pos + 2 <= len(data) and data[pos] >= 2:
        length, kind = data[pos], data[pos + 1]
        body = data[pos : pos + length]
        if kind == 2 and len(body) >= 9:
            lines.append(f"  Configuration {body[5]}: {body[4]} interface(s), MaxPower {body[8] * 2} mA")
        elif kind == 4 and len(body) >= 9:
            lines.append(
                f"    Interface {body[2]} alt {body[3]}: class {body[5]:#04x} {_CLASS_NAMES.get(body[5], '')}, "
                f"subclass {body[6]:#04x}, protocol {body[7]:#04x}, {body[4]} endpoint(s)"
            )
        elif kind == 5 and len(body) >= 7:
            address, attrs = body[2], body[3]
            mps = struct.unpack_from("<H", body, 4)[0]
            lines.append(
                f"      Endpoint {address:#04x} {'IN' if address & 0x80 else 'OUT'} {_EP_TYPES[attrs & 3]}, "
                f"wMaxPacketSize {mps & 0x7FF}{' x' + str(((mps >> 11) & 3) + 1) if mps >> 11 else ''}, bInterval {body[6]}"
            )
        pos += length
    return lines


async def probe(host: str, port: int, *, timeout_s: float = 15.0) -> ProbeResult:
    """Connect to HOST:PORT and probe the device there.  Every failure is
    one `ProbeError` naming the peer once and the likely cause: nothing
    listening, the connection closed at once (the device is served to
    another VM), no usbredir hello, no device announced, the time out."""
    peer = f"{host}:{port}"
    guests: list[UsbredirGuest] = []
    with trio.move_on_after(timeout_s):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise ProbeError(peer, _connect_failure(exc)) from None
        async with stream:
            try:
                return await probe_stream(stream, peer=peer, started=guests.append)
            except GuestError as exc:
                raise ProbeError(peer, _explain(exc, guests)) from None
            except BaseExceptionGroup as group:  # from the guest's nursery
                matched, _ = group.split(GuestError)
                if matched is None:
                    raise
                raise ProbeError(peer, _explain(_first_leaf(matched), guests)) from None
    guest = guests[0] if guests else None
    if guest is None or not guest.hello_received:
        reason = (
            f"connected, but no usbredir hello came within {timeout_s:g} s: not a usbredir port, or a gateway route "
            "holding the connection until its client is there"
        )
    elif guest.device is None:
        reason = f"no device announced within {timeout_s:g} s: the host is waiting for its device (is it plugged in?)"
    else:
        reason = f"the device did not answer within {timeout_s:g} s"
    raise ProbeError(peer, reason)


def _connect_failure(exc: OSError) -> str:
    """Why a connect failed: trio's 'all attempts ... failed' has the real
    errors in its cause."""
    errors: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        errors = list(exc.__cause__.exceptions)
    elif exc.__cause__ is not None:
        errors = [exc.__cause__]
    if any(isinstance(e, ConnectionRefusedError) for e in errors):
        return "nothing is listening there (connection refused)"
    for error in errors:
        if isinstance(error, OSError) and error.strerror:
            return f"cannot connect: {error.strerror.lower()}"
    return f"cannot connect: {exc}"


def _first_leaf(group: BaseExceptionGroup[GuestError]) -> GuestError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _explain(exc: GuestError, guests: list[UsbredirGuest]) -> str:
    """A closed connection before the host's hello is what serve-usb and a
    gateway route do to a second VM: say so."""
    hello = bool(guests) and guests[0].hello_received
    if not hello and "closed the connection" in exc.reason:
        return (
            f"{exc.reason} before its usbredir hello: the device is busy, served to another VM "
            "(a serve-usb port or a gateway route serves one VM at a time), or a gateway route's allow list "
            "leaves out this host"
        )
    if not hello and "reset" in exc.reason.lower():
        return (
            f"{exc.reason} before its usbredir hello: a gateway route's allow list leaves out this host, "
            "or the route is in use by another VM"
        )
    if hello and guests[0].device is None and "closed the connection" in exc.reason:
        return f"{exc.reason} before announcing a device"
    return exc.reason
