"""atheris target: the tunnel codecs (redirgate.proto.tunnel).

The first input bytes choose what is fuzzed, so roles, limits and the
hello-first rules all get explored:

  byte 0   bit 0: role under test (0 gateway, 1 client)
           bit 1: the attach preamble (AttachConnection) instead of the
                  control connection (TunnelConnection)
           bit 2: a tiny message limit (64 bytes) instead of the default
           bit 3: skip our side's scripted opening (control: our hello,
                  Heartbeat(0), OpenChannel 1-3 or the inventory; attach
                  client: our Attach)
  byte 1   k = low 4 bits: k chunk sizes follow (each byte + 1), cycled
           over the stream; k = 0 feeds it whole
  rest     the byte stream from the peer

The stream is fed three ways - in those chunks, whole, and byte at a time -
each followed by EOF, draining next_event() after every feed.  Only
TunnelProtocolError may escape the codec (anything else is a crash), all
three ways must give the same events, and every parsed message must encode
and decode back equal.

Run: python fuzz/tunnel_fuzz.py [libFuzzer options] [corpus dirs]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import atheris

with atheris.instrument_imports():
    from redirgate.proto.tunnel import (
        ATTACH_MESSAGES,
        CLOSED,
        CONTROL_MESSAGES,
        NEED_DATA,
        Attach,
        AttachConnection,
        AttachResult,
        ChannelFailed,
        ChannelOpened,
        ClientHello,
        CloseChannel,
        DeviceEntry,
        Error,
        GatewayHello,
        Heartbeat,
        HeartbeatAck,
        Inventory,
        InventoryUpdate,
        OpenChannel,
        TunnelConnection,
        TunnelProtocolError,
        decode_message,
        encode_message,
    )

BYTEWISE_LIMIT = 16 * 1024
SMALL_LIMIT = 64
TOKEN = bytes(range(16))
STICK = DeviceEntry("usb:1209:0001:ABC", "usb", 0x1209, 0x0001, "ABC", "1-2", "stick")
PORT = DeviceEntry("serial:ttyS0", "serial", port_path="/dev/ttyS0", description="COM1")


class Mismatch(AssertionError):
    """A property of the codec does not hold for this input."""


def opening(role: str) -> list:
    """What our side sends before the fuzzed stream (unless bit 3)."""
    if role == "gateway":
        return [
            GatewayHello(software="fuzz", heartbeat_interval_s=1, heartbeat_timeout_s=3),
            Heartbeat(0),
            *(OpenChannel(i, STICK.id, TOKEN, "usbredir", {"n": i}) for i in (1, 2, 3)),
        ]
    return [ClientHello(software="fuzz", capabilities={"x"}), Inventory([STICK, PORT]), Heartbeat(0)]


def parse_input(data: bytes) -> tuple[str, bool, bool, bool, list[int], bytes]:
    head = data[:2].ljust(2, b"\0")
    role = "client" if head[0] & 1 else "gateway"
    k = head[1] & 0x0F
    sizes = [b + 1 for b in data[2 : 2 + k]]
    return role, bool(head[0] & 2), bool(head[0] & 4), not head[0] & 8, sizes, data[2 + k :]


def check_round_trip(message: object, attach: bool) -> None:
    registry = ATTACH_MESSAGES if attach else CONTROL_MESSAGES
    wire = encode_message(message, 1 << 20)  # type: ignore[arg-type]  # an event parsed just before
    again = decode_message(wire[4:], registry)
    if again != message or type(again) is not type(message):
        raise Mismatch(f"{message!r} encodes and decodes as {again!r}")


def make(role: str, attach: bool, small: bool, scripted: bool) -> TunnelConnection | AttachConnection:
    if attach:
        conn: TunnelConnection | AttachConnection = (
            AttachConnection(role, max_message_size=SMALL_LIMIT) if small else AttachConnection(role)
        )
        if scripted and role == "client":
            conn.send(Attach(1, TOKEN))
        return conn
    conn = TunnelConnection(role, max_message_size=SMALL_LIMIT) if small else TunnelConnection(role)
    if scripted:
        for message in opening(role):
            try:
                conn.send(message)
            except TunnelProtocolError:
                if not small:  # only the tiny limit may refuse our own opening
                    raise
    return conn


def run(role: str, attach: bool, small: bool, scripted: bool, stream: bytes, sizes: list[int], check: bool) -> list:
    conn = make(role, attach, small, scripted)
    events: list = []
    pieces = []
    pos, i = 0, 0
    while pos < len(stream):
        size = sizes[i % len(sizes)] if sizes else len(stream)
        pieces.append(stream[pos : pos + size])
        pos, i = pos + size, i + 1
    budget = len(pieces) + len(stream) // 4 + 8  # one NEED_DATA per piece, frames are >= 5 bytes
    done = False
    for piece in [*pieces, b""]:
        if done:
            break
        if attach and conn.received is not None:  # type: ignore[union-attr]  # attach: conn is the AttachConnection
            events.append(("raw", piece))
            continue
        conn.receive_data(piece)
        while True:
            budget -= 1
            if budget < 0:
                raise Mismatch("next_event() makes no progress")
            try:
                event = conn.next_event()
            except TunnelProtocolError as exc:
                events.append(("error", type(exc).__name__, exc.reason))
                done = True
                break
            if event is NEED_DATA:
                break
            if event is CLOSED:
                events.append(("closed",))
                if conn.next_event() is not CLOSED and not attach:
                    raise Mismatch("CLOSED is not sticky")
                done = True
                break
            events.append(event)
            if check:
                check_round_trip(event, attach)
            if attach:
                rest, eof = conn.trailing_data()  # type: ignore[union-attr]  # attach: conn is the AttachConnection
                events.append(("raw", rest))
                if eof:
                    done = True
                break
    return _merge_raw(events)


def _merge_raw(events: list) -> list:
    """Raw bytes after a preamble, however they were cut, as one item."""
    out: list = []
    for event in events:
        if isinstance(event, tuple) and event[0] == "raw":
            if out and isinstance(out[-1], tuple) and out[-1][0] == "raw":
                out[-1] = ("raw", out[-1][1] + event[1])
                continue
        out.append(event)
    return out


def TestOneInput(data: bytes) -> None:
    role, attach, small, scripted, sizes, stream = parse_input(data)
    chunked = run(role, attach, small, scripted, stream, sizes, True)
    whole = run(role, attach, small, scripted, stream, [], False)
    if whole != chunked:
        raise Mismatch(f"chunks {sizes} give {chunked}, whole gives {whole}")
    if len(stream) <= BYTEWISE_LIMIT:
        bytewise = run(role, attach, small, scripted, stream, [1], False)
        if bytewise != whole:
            raise Mismatch(f"byte at a time gives {bytewise}, whole gives {whole}")


# ---------------------------------------------------------------- seeds


def _peer_stream(role: str, messages: list) -> bytes:
    """`messages` as sent by a real peer of `role` that has heard our opening."""
    us = TunnelConnection(role)
    peer = TunnelConnection("client" if role == "gateway" else "gateway")
    peer.receive_data(b"".join(us.send(m) for m in opening(role)))
    while peer.next_event() is not NEED_DATA:
        pass
    return b"".join(peer.send(m) for m in messages)


def seed_inputs() -> dict[str, bytes]:
    """Valid (and a few deliberately broken) streams, built by the real codec."""
    from_client = [
        ClientHello(software="seed client", capabilities={"x", "y"}),
        Inventory([STICK, PORT]),
        InventoryUpdate(added=[STICK.__class__("usb-port:1-4", "usb", 1, 2, None, "1-4", "hub")], removed=[PORT.id]),
        Heartbeat(7),
        HeartbeatAck(0),
        ChannelOpened(1),
        ChannelFailed(2, "busy"),
        CloseChannel(1, "unplugged"),
        Error("shutdown", "bye"),
    ]
    from_gateway = [
        GatewayHello(software="seed gateway", capabilities={"x"}),
        Heartbeat(1),
        HeartbeatAck(0),
        OpenChannel(4, "usb:1209:0001", TOKEN, "usbredir"),
        OpenChannel(5, PORT.id, TOKEN * 2, "rfc2217", {"baud": 115200, "parity": "N", "flow": False, "x": 1.5}),
        CloseChannel(4),
        Error("protocol", "enough"),
    ]
    up = _peer_stream("gateway", from_client)
    down = _peer_stream("client", from_gateway)
    hello_only = TunnelConnection("client").send(ClientHello())
    attach = AttachConnection("client").send(Attach(1, TOKEN))
    gw = AttachConnection("gateway")
    gw.receive_data(attach)
    gw.next_event()
    result = gw.send(AttachResult(True))
    refusal = AttachConnection("gateway")
    refusal.receive_data(attach)
    refusal.next_event()

    def head(flags: int, sizes: Sequence[int] = ()) -> bytes:
        return bytes([flags, len(sizes)]) + bytes(s - 1 for s in sizes)

    return {
        "gateway-session": head(0) + up,
        "gateway-session-chunked": head(0, [3, 1, 50]) + up,
        "client-session": head(1) + down,
        "client-session-chunked": head(1, [7, 2]) + down,
        "gateway-no-opening": head(8) + up,
        "gateway-small-limit": head(4) + hello_only + up,
        "gateway-huge-length": head(0) + b"\x40\x00\x00\x00",
        "gateway-bad-msgpack": head(0) + b"\x00\x00\x00\x03\x81\xc1\x00",
        "attach-gateway": head(2) + attach + b"raw usbredir bytes",
        "attach-client": head(3, [5]) + result + b"raw bytes from the gateway",
        "attach-client-refused": head(3) + refusal.send(AttachResult(False, "wrong attach token")),
    }


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
