"""`redirgate selfcheck`: prove the install works, with no device and no VM.

1. The codec: a host and a guest `UsbredirConnection` exchange hellos and then
   every message type each may send, once with every capability and once with
   none (12-byte headers, short layouts); each side must read back exactly
   what the other wrote, and malformed input must be refused.
2. The USB path: an emulated flash drive (on a temporary image) is served by
   the real host engine on a loopback TCP port, exactly as `client
   serve-usb` does, and probed from the VM side like `redirgate probe`.
"""

from __future__ import annotations

import argparse
from typing import Any

from redirgate.proto.usbredir import (
    NEED_DATA,
    Cap,
    RemoteProtocolError,
    Role,
    UsbredirConnection,
)
from redirgate.proto.usbredir import (
    messages as m,
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("selfcheck", help="check the usbredir codec in both roles (no device or VM needed)")
    parser.set_defaults(run=run)


def _sample_messages() -> tuple[list[m.Message], list[m.Message]]:
    from_guest: list[m.Message] = [
        m.Reset(),
        m.SetConfiguration(1, id=1),
        m.GetConfiguration(id=2),
        m.SetAltSetting(0, 1, id=3),
        m.GetAltSetting(0, id=4),
        m.StartIsoStream(0x82, 8, 4, id=5),
        m.StopIsoStream(0x82, id=6),
        m.StartInterruptReceiving(0x81, id=7),
        m.StopInterruptReceiving(0x81, id=8),
        m.AllocBulkStreams(1 << 2, 4, id=9),
        m.FreeBulkStreams(1 << 2, id=10),
        m.CancelDataPacket(id=11),
        m.FilterFilter("0x08,-1,-1,-1,1|-1,-1,-1,-1,0"),
        m.FilterReject(),
        m.DeviceDisconnectAck(),
        m.StartBulkReceiving(0, 512, 0x81, 5, id=12),
        m.StopBulkReceiving(0, 0x81, id=13),
        m.ControlPacket(0x80, 6, 0x80, 0, 0x0100, 0, 18, id=14),
        m.ControlPacket(0x00, 9, 0x21, 0, 0x0200, 0, 2, id=15, data=b"\x01\x02"),
        m.BulkPacket(0x02, 0, 5, 0, id=16, data=b"hello"),
        m.BulkPacket(0x81, 0, 512, 0, id=17),
        m.IsoPacket(0x02, 0, 3, id=18, data=b"iso"),
        m.InterruptPacket(0x03, 0, 2, id=19, data=b"hi"),
    ]
    from_host: list[m.Message] = [
        m.InterfaceInfo(1, (0,) * 32, (8,) + (0,) * 31, (6,) + (0,) * 31, (0x50,) + (0,) * 31),
        m.EpInfo(),
        m.DeviceConnect(2, 0, 0, 0, 0x1D6B, 0x0104, 0x0100),
        m.ConfigurationStatus(0, 1, id=1),
        m.AltSettingStatus(0, 0, 1, id=3),
        m.IsoStreamStatus(0, 0x82, id=5),
        m.InterruptReceivingStatus(0, 0x81, id=7),
        m.BulkStreamsStatus(1 << 2, 4, 0, id=9),
        m.BulkReceivingStatus(0, 0x81, 0, id=12),
        m.ControlPacket(0x80, 6, 0x80, 0, 0x0100, 0, 4, id=14, data=b"\x12\x01\x00\x02"),
        m.BulkPacket(0x81, 0, 3, 0, id=17, data=b"abc"),
        m.IsoPacket(0x82, 0, 2, id=0, data=b"ok"),
        m.InterruptPacket(0x81, 0, 1, id=0, data=b"k"),
        m.BufferedBulkPacket(0, 4, 0x81, 0, id=0, data=b"data"),
        m.DeviceDisconnect(),
    ]
    return from_guest, from_host


def _exchange(caps: Cap) -> list[str]:
    problems: list[str] = []
    host = UsbredirConnection(Role.HOST, caps, "selfcheck host")
    guest = UsbredirConnection(Role.GUEST, caps, "selfcheck guest")
    host.receive_data(guest.hello_bytes())
    guest.receive_data(host.hello_bytes())
    host.next_event()
    guest.next_event()
    from_guest, from_host = _sample_messages()
    for sender, receiver, msgs in ((guest, host, from_guest), (host, guest, from_host)):
        for msg in msgs:
            if Cap.FILTER not in caps and isinstance(msg, (m.FilterFilter, m.FilterReject)):
                continue
            if Cap.BULK_RECEIVING not in caps and type(msg).__name__.find("BulkReceiving") >= 0:
                continue
            if Cap.BULK_RECEIVING not in caps and isinstance(msg, m.BufferedBulkPacket):
                continue
            if Cap.DEVICE_DISCONNECT_ACK not in host.our_caps and isinstance(msg, m.DeviceDisconnectAck):
                continue
            wire = sender.send(msg)
            for byte in range(len(wire)):  # one byte at a time
                receiver.receive_data(wire[byte : byte + 1])
            got = receiver.next_event()
            if got is NEED_DATA or type(got) is not type(msg):
                problems.append(f"{type(msg).__name__}: read back {got!r}")
    host.receive_data(b"\xff" * 16)
    try:
        host.next_event()
        problems.append("garbage was not refused")
    except RemoteProtocolError:
        pass
    return problems


async def _usb_path_check() -> str:
    import tempfile

    import trio

    from redirgate.client.usb.selector import parse_selector
    from redirgate.client.usb.serve import serve_listen
    from redirgate.client.usb.source import SelectorSource
    from redirgate.client.virtual import make_backend
    from redirgate.vmside.probe import probe

    with tempfile.TemporaryDirectory() as tmp:
        image = f"{tmp}/stick.img"
        async with await trio.open_file(image, "wb") as f:
            await f.truncate(8 * 1024 * 1024)
        spec = f"virtual:storage:{image}"
        backend = make_backend([spec])
        try:
            source = SelectorSource(parse_selector(spec), backend=backend)
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(serve_listen, "127.0.0.1", 0, source)
                port = listeners[0].socket.getsockname()[1]
                result = await probe("127.0.0.1", port, timeout_s=20)
                nursery.cancel_scope.cancel()
        finally:
            backend.close()
    return result.summary()


def run(args: argparse.Namespace) -> int:
    import trio

    from redirgate.vmside.probe import ProbeError

    failures = 0
    for label, caps in (("all capabilities", Cap.all_known()), ("no capabilities", Cap(0))):
        problems = _exchange(caps)
        status = "ok" if not problems else "FAILED"
        print(f"usbredir codec, {label}: {status}")
        for problem in problems:
            print(f"  {problem}")
        failures += len(problems)
    try:
        summary = trio.run(_usb_path_check)
    except (ProbeError, OSError) as exc:
        print(f"USB path (emulated stick, host engine, probe over TCP): FAILED: {exc}")
        return 1
    print("USB path (emulated stick served by the host engine, probed over loopback TCP): ok")
    print("\n".join("  " + line for line in summary.splitlines()))
    return 1 if failures else 0
