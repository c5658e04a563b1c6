"""atheris target: the usbredir codec (redirgate.proto.usbredir.UsbredirConnection).

Like usbredir's own usbredirparserfuzz.cc, the first input bytes choose the
negotiation, so every header layout (32/64-bit ids, long/short connect and
bulk headers, ep_info sizes, cap-gated types) gets fuzzed:

  byte 0   bit 0: our role (0 host, 1 guest); bit 1: receive through
           get_receive_buffer/commit_received instead of receive_data
  byte 1   our caps (the 8 known cap bits)
  byte 2   the peer's caps; its hello, built by a real peer-role connection,
           is fed before the stream
  byte 3   k = low 4 bits: k chunk sizes follow (each byte + 1), cycled over
           the stream; k = 0 feeds it whole
  rest     the byte stream from the peer

The stream is fed three ways - in those chunks, whole, and byte at a time -
each followed by EOF, with next_event() drained after every feed.  A
RemoteProtocolError is expected (the codec skips the bad message and goes on);
anything else escaping is a crash, and so is any difference between the three
event sequences.  Every parsed message is re-sent by a connection in the
peer's role with the same caps and must parse back equal on a fresh
connection in our role.

Run: python fuzz/usbredir_fuzz.py [libFuzzer options] [corpus dirs]
"""

from __future__ import annotations

import dataclasses
import sys

import atheris

with atheris.instrument_imports():
    from redirgate.proto.usbredir import (
        CLOSED,
        NEED_DATA,
        Cap,
        LocalProtocolError,
        RemoteProtocolError,
        Role,
        UsbredirConnection,
        messages,
    )

#: Byte-at-a-time feeding is quadratic-ish in Python; beyond this the stream
#: is fed in chunks and whole only.
BYTEWISE_LIMIT = 16 * 1024
VERSION = "redirgate-fuzz"


class Mismatch(AssertionError):
    """A property of the codec does not hold for this input."""


def snapshot(message: object) -> tuple:
    """A comparable copy of a message that outlives its payload views."""
    fields = tuple(
        (f.name, bytes(v) if isinstance(v, (memoryview, bytearray)) else v)
        for f in dataclasses.fields(message)  # type: ignore[arg-type]  # every message is a dataclass
        for v in (getattr(message, f.name),)
    )
    return (type(message).__name__, fields)


class Resender:
    """A peer-role sender and an our-role receiver, hellos exchanged, with the
    caps of the connection under test."""

    def __init__(self, role: Role, our_caps: Cap, peer_caps: Cap) -> None:
        self.sender = UsbredirConnection(role.peer, caps=peer_caps, version=VERSION)
        self.receiver = UsbredirConnection(role, caps=our_caps, version=VERSION)
        self.receiver.receive_data(self.sender.hello_bytes())
        self.sender.receive_data(self.receiver.hello_bytes())
        for conn in (self.sender, self.receiver):
            if not isinstance(conn.next_event(), messages.Hello):
                raise Mismatch("hello exchange failed")

    def check(self, message: object, snap: tuple) -> None:
        if isinstance(message, messages.Hello):
            return  # sent once, by hello_bytes(); never re-sendable
        try:
            wire = self.sender.send(message)  # type: ignore[arg-type]  # a message parsed just before
        except LocalProtocolError as exc:
            raise Mismatch(f"parsed {snap} but the same caps refuse to send it: {exc}") from exc
        self.receiver.receive_data(wire)
        again = self.receiver.next_event()
        if again is NEED_DATA or again is CLOSED or snapshot(again) != snap:
            raise Mismatch(f"re-sent {snap} parsed back as {again!r}")
        rest = self.receiver.next_event()
        if rest is not NEED_DATA:
            raise Mismatch(f"re-sent {snap} left {rest!r} behind")


def drain(conn: UsbredirConnection, out: list, resender: Resender | None, budget: list[int]) -> bool:
    """next_event() until NEED_DATA or CLOSED; record everything.  True at CLOSED."""
    while True:
        budget[0] -= 1
        if budget[0] < 0:
            raise Mismatch("next_event() makes no progress")
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            out.append(("error", type(exc).__name__, exc.msg_type, exc.offset))
            continue
        if event is NEED_DATA:
            return False
        if event is CLOSED:
            out.append(("closed",))
            return True
        snap = snapshot(event)
        out.append(snap)
        if resender is not None:
            resender.check(event, snap)


def run(
    role: Role,
    our_caps: Cap,
    peer_hello: bytes,
    stream: bytes,
    sizes: list[int],
    recv_into: bool,
    resender: Resender | None,
) -> list:
    conn = UsbredirConnection(role, caps=our_caps, version=VERSION)
    conn.hello_bytes()
    events: list = []
    budget = [len(stream) + len(peer_hello) + 16]
    pos = 0
    chunks = [peer_hello]
    i = 0
    while pos < len(stream):
        size = sizes[i % len(sizes)] if sizes else len(stream)
        chunks.append(stream[pos : pos + size])
        pos += size
        i += 1
    for n, chunk in enumerate(chunks):
        if recv_into and n % 2:
            buf = conn.get_receive_buffer(len(chunk))
            buf[: len(chunk)] = chunk
            del buf
            conn.commit_received(len(chunk))
        else:
            conn.receive_data(chunk)
        drain(conn, events, resender, budget)
    conn.receive_data(b"")
    if not drain(conn, events, resender, budget):
        raise Mismatch("no CLOSED after EOF")
    if conn.next_event() is not CLOSED:
        raise Mismatch("CLOSED is not sticky")
    return events


def parse_input(data: bytes) -> tuple[Role, bool, Cap, Cap, list[int], bytes]:
    head = data[:4].ljust(4, b"\0")
    role = Role.GUEST if head[0] & 1 else Role.HOST
    recv_into = bool(head[0] & 2)
    our_caps, peer_caps = Cap(head[1]), Cap(head[2])
    k = head[3] & 0x0F
    sizes = [b + 1 for b in data[4 : 4 + k]]
    return role, recv_into, our_caps, peer_caps, sizes, data[4 + k :]


def TestOneInput(data: bytes) -> None:
    role, recv_into, our_caps, peer_caps, sizes, stream = parse_input(data)
    peer_hello = UsbredirConnection(role.peer, caps=peer_caps, version=VERSION).hello_bytes()
    resender = Resender(role, our_caps, peer_caps)
    chunked = run(role, our_caps, peer_hello, stream, sizes, recv_into, resender)
    whole = run(role, our_caps, peer_hello, stream, [], False, None)
    if whole != chunked:
        raise Mismatch(f"chunks {sizes} give {chunked}, whole gives {whole}")
    if len(stream) <= BYTEWISE_LIMIT:
        bytewise = run(role, our_caps, peer_hello, stream, [1], not recv_into, None)
        if bytewise != whole:
            raise Mismatch(f"byte at a time gives {bytewise}, whole gives {whole}")


# ---------------------------------------------------------------- seeds

_Z32 = (0,) * 32


def _guest_to_host() -> list:
    m = messages
    return [
        m.GetConfiguration(id=1),
        m.SetConfiguration(1, id=2),
        m.SetAltSetting(0, 1, id=3),
        m.GetAltSetting(0, id=4),
        m.ControlPacket(0x80, 6, 0x80, 0, 0x0100, 0, 18, id=5),
        m.ControlPacket(0x00, 9, 0x00, 0, 1, 0, 4, id=6, data=b"\x01\x02\x03\x04"),
        m.BulkPacket(0x02, 0, 5, 0, id=7, data=b"hello"),
        m.BulkPacket(0x81, 0, 512, 0, id=8),
        m.StartInterruptReceiving(0x83, id=9),
        m.InterruptPacket(0x04, 0, 2, id=10, data=b"\xaa\xbb"),
        m.StartIsoStream(0x85, 8, 4, id=11),
        m.IsoPacket(0x06, 0, 3, id=12, data=b"iso"),
        m.AllocBulkStreams(0x81, 4, id=13),
        m.CancelDataPacket(id=8),
        m.FilterFilter("0x03,-1,-1,-1,1|-1,-1,-1,-1,0", id=0),
        m.StartBulkReceiving(1, 4096, 0x81, 4, id=14),
        m.StopBulkReceiving(1, 0x81, id=15),
        m.Reset(id=16),
    ]


def _host_to_guest() -> list:
    m = messages
    iface = (0, 1) + (0,) * 30
    return [
        m.DeviceConnect(3, 0, 0, 0, 0x046D, 0xC077, 0x7200, id=0),
        m.InterfaceInfo(2, iface, (3, 3) + (0,) * 30, (1, 0) + (0,) * 30, (2, 0) + (0,) * 30, id=0),
        m.EpInfo(id=0),
        m.ConfigurationStatus(0, 1, id=2),
        m.AltSettingStatus(0, 0, 1, id=3),
        m.ControlPacket(0x80, 6, 0x80, 0, 0x0100, 0, 4, id=5, data=b"\x12\x01\x00\x02"),
        m.BulkPacket(0x81, 0, 3, 0, id=8, data=b"abc"),
        m.BulkPacket(0x02, 0, 5, 0, id=7),
        m.InterruptReceivingStatus(0, 0x83, id=9),
        m.InterruptPacket(0x83, 0, 1, id=10, data=b"\x01"),
        m.IsoStreamStatus(0, 0x85, id=11),
        m.IsoPacket(0x85, 0, 2, id=12, data=b"\x00\x01"),
        m.BulkStreamsStatus(0x81, 4, 0, id=13),
        m.BulkReceivingStatus(1, 0x81, 0, id=14),
        m.BufferedBulkPacket(1, 4, 0x81, 0, id=15, data=b"\xde\xad\xbe\xef"),
        m.FilterReject(id=0),
        m.DeviceDisconnect(id=0),
    ]


def seed_inputs() -> dict[str, bytes]:
    """Valid streams for a few negotiations, serialised by the real codec."""
    seeds = {}
    for role in (Role.HOST, Role.GUEST):
        for label, our, peer, sizes in (
            ("all-caps", 0xFF, 0xFF, []),
            ("no-caps", 0x00, 0x00, [7, 1, 30]),
            ("ids32-longbulk", 0xDF, 0xFF, [16]),
            ("mixed", 0x6E, 0xB5, [3, 200]),
        ):
            resender = Resender(role, Cap(our), Cap(peer))
            stream = b""
            source = _guest_to_host() if role is Role.HOST else _host_to_guest()
            for message in source:
                try:
                    stream += resender.sender.send(message)
                except LocalProtocolError:
                    continue  # gated by a cap this negotiation lacks
            head = bytes([role is Role.GUEST, our, peer, len(sizes)]) + bytes(s - 1 for s in sizes)
            seeds[f"{role.value}-{label}"] = head + stream
    return seeds


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
