"""atheris target: a USB route's first bytes (redirgate.proto.usbredir.HelloGate).

A hypervisor-facing USB route hands its device only to a connection whose
first bytes are a complete, valid usbredir hello (gateway/route_server.py
reads them through `HelloGate`).  The input:

  byte 0   k = low 4 bits: k chunk sizes follow (each byte + 1), cycled
           over the stream; k = 0 feeds it whole
           bit 4: a small limit (64 bytes) instead of HELLO_GATE_LIMIT
  rest     the bytes the hypervisor sends, then EOF

The stream is fed in those chunks, whole, and byte at a time.  Nothing may
escape the gate (a malformed hello is a refusal, not an exception); each
way must reach a verdict by EOF; an accepted connection's bytes are exactly
what was fed; and every way must agree with a reference: the codec's own
`UsbredirConnection` (host role) fed the stream byte by byte.  Its first
event being a hello that ends within the limit means every way accepts;
no valid hello first means every way refuses; a hello that ends past the
limit is refused byte by byte and may be accepted by a read that carried
it whole.

Run: python fuzz/route_hello_fuzz.py [libFuzzer options] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from redirgate.proto.usbredir import (
        HELLO_GATE_LIMIT,
        NEED_DATA,
        HelloGate,
        HelloVerdict,
        RemoteProtocolError,
        Role,
        UsbredirConnection,
    )
    from redirgate.proto.usbredir.messages import Hello

SMALL_LIMIT = 64


def judge(stream: bytes, sizes: list[int], limit: int) -> tuple[HelloVerdict, int]:
    """The gate's verdict and how many bytes it had been fed when it gave it."""
    gate = HelloGate(limit)
    pos, i = 0, 0
    while pos < len(stream):
        step = sizes[i % len(sizes)] if sizes else len(stream)
        verdict = gate.receive_data(stream[pos : pos + step])
        pos += step
        i += 1
        if verdict is not None:
            return verdict, min(pos, len(stream))
    verdict = gate.receive_data(b"")
    assert verdict is not None, "no verdict at EOF"
    return verdict, len(stream)


def hello_end(stream: bytes) -> int | None:
    """Where the peer's hello ends, if its first message is a valid hello (the reference)."""
    parser = UsbredirConnection(Role.HOST)
    for index in range(len(stream)):
        parser.receive_data(stream[index : index + 1])
        try:
            event = parser.next_event()
        except RemoteProtocolError:
            return None
        if isinstance(event, Hello):
            return index + 1
        if event is not NEED_DATA:
            return None
    return None


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    k, limit = data[0] & 15, SMALL_LIMIT if data[0] & 16 else HELLO_GATE_LIMIT
    sizes = [b + 1 for b in data[1 : 1 + k]]
    stream = data[1 + k :]
    end = hello_end(stream)
    for way in (sizes, [], [1]):
        verdict, fed = judge(stream, way, limit)
        if verdict.ok:
            assert end is not None and end <= fed, ("accepted without a valid hello first", way)
            assert verdict.received == stream[:fed], "the accepted bytes are not what was fed"
        else:
            assert verdict.reason, "a refusal without a reason"
            assert end is None or end > limit, ("refused a valid hello within the limit", way, verdict.reason)
        # byte by byte the gate sees the limit exactly; a larger read may carry a
        # hello that completes past it, and that read is accepted
        if way == [1]:
            assert verdict.ok == (end is not None and end <= limit), (end, verdict)


# ---------------------------------------------------------------- seeds
def seed_inputs() -> dict[str, bytes]:
    """A real hello (QEMU's role: the guest) and the ways a first message goes wrong."""
    hello = UsbredirConnection(Role.GUEST).hello_bytes()
    return {
        "hello": bytes([0]) + hello,
        "hello-chunked": bytes([3, 0, 6, 30]) + hello + b"\x00" * 40,
        "hello-then-more": bytes([1, 99]) + hello + hello,
        "hello-cut": bytes([0]) + hello[:-3],
        "hello-small-limit": bytes([16]) + hello,
        "http": bytes([0]) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "tls-client-hello": bytes([0]) + bytes.fromhex("160301020001000200030300") + bytes(64),
        "huge-length": bytes([0]) + (0).to_bytes(4, "little") + (0x7FFFFFFF).to_bytes(4, "little") + bytes(8),
        "empty": bytes([0]),
    }


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
