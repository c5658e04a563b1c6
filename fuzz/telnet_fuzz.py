"""atheris target: the telnet + RFC 2217 codec (redirgate.proto.telnet).

The first input bytes choose what is fuzzed:

  byte 0   bit 0: role under test (0 access server, 1 client)
           bit 1: accept BINARY/SGA/COM-PORT both ways (else accept nothing)
           bit 2: a tiny subnegotiation limit (8 bytes) instead of the default
           bit 3: ask for COM-PORT (and BINARY) first, as a real peer does
  byte 1   k = low 4 bits: k chunk sizes follow (each byte + 1), cycled
           over the stream; k = 0 feeds it whole
  rest     the byte stream from the peer

The stream is fed three ways - in those chunks, whole, and byte at a time -
then EOF, draining next_event() after every feed and after every error (the
codec skips a bad part and goes on).  Only the codec's RemoteProtocolError
may escape (anything else is a crash), and all three ways must give the same
events, the same errors in the same places, and the same replies.

Run: python fuzz/telnet_fuzz.py [libFuzzer options] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from redirgate.proto.telnet.connection import CLOSED, NEED_DATA, Role, TelnetConnection
    from redirgate.proto.telnet.constants import DO, IAC, SB, SE, WILL, ComPortCommand, Option
    from redirgate.proto.telnet.errors import RemoteProtocolError

BYTEWISE_LIMIT = 8 * 1024
_OPTIONS = (Option.BINARY, Option.SGA, Option.COM_PORT)


def make(flags: int) -> TelnetConnection:
    role = Role.CLIENT if flags & 1 else Role.SERVER
    accept = _OPTIONS if flags & 2 else ()
    conn = TelnetConnection(
        role, accept_local=accept, accept_remote=accept, max_subnegotiation_bytes=8 if flags & 4 else 4096
    )
    if flags & 8:
        conn.request(Option.BINARY, local=True)
        conn.request(Option.COM_PORT, local=role is Role.CLIENT)
    return conn


def drain(conn: TelnetConnection, out: list[object]) -> None:
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            out.append(("error", type(exc).__name__))
            continue
        if event is NEED_DATA or event is CLOSED:
            return
        out.append(event)


def run(flags: int, stream: bytes, sizes: list[int]) -> tuple[list[object], bytes]:
    conn = make(flags)
    events: list[object] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = sizes[i % len(sizes)] if sizes else len(stream)
        conn.receive_data(stream[pos : pos + step])
        drain(conn, events)
        pos += step
        i += 1
    conn.receive_data(b"")
    drain(conn, events)
    return _merge_data(events), conn.data_to_send()


def _merge_data(events: list[object]) -> list[object]:
    """Data events split differently by chunking become one ("data", bytes)."""
    merged: list[object] = []
    for event in events:
        if type(event).__name__ == "Data":
            data = bytes(event.data)  # type: ignore[attr-defined]  # a Data event (by name above)
            last = merged[-1] if merged else None
            if isinstance(last, tuple) and last[0] == "data":
                merged[-1] = ("data", last[1] + data)
            else:
                merged.append(("data", data))
        else:
            merged.append(event)
    return merged


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, k = data[0], data[1] & 15
    sizes = [b + 1 for b in data[2 : 2 + k]]
    stream = data[2 + k :]
    chunked = run(flags, stream, sizes)
    whole = run(flags, stream, [])
    assert chunked == whole, (chunked, whole)
    if len(stream) <= BYTEWISE_LIMIT:
        bytewise = run(flags, stream, [1])
        assert bytewise == whole, (bytewise, whole)


# ---------------------------------------------------------------- seeds
def seed_inputs() -> dict[str, bytes]:
    com = Option.COM_PORT
    set_baud = bytes([IAC, SB, com, ComPortCommand.SET_BAUDRATE]) + (57600).to_bytes(4, "big") + bytes([IAC, SE])
    return {
        "server-negotiation": bytes([2, 0, IAC, WILL, Option.BINARY, IAC, DO, Option.BINARY, IAC, WILL, com])
        + set_baud,
        "server-chunked": bytes([10, 3, 2, 0, 5, IAC, WILL, com]) + set_baud + b"hello \xff\xff world",
        "client-answers": bytes([3, 0, IAC, DO, com, IAC, SB, com, 101, 0, 0, 0x96, 0, IAC, SE]),
        "unterminated-sb": bytes([2, 0, IAC, SB, com, 1, 2, 3, IAC, 241, b"x"[0]]),
        "tiny-limit": bytes([6, 0, IAC, SB, com, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, IAC, SE]),
        "garbage": bytes([0, 0]) + bytes(range(256)),
    }


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
