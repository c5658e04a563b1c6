"""atheris target: the resume messages and layer (redirgate.proto.tunnel.resume).

The real frame decoder (with the data-connection preamble's limit) and the
real message decoder parse a peer's stream of resume messages; every one is
fed to a real `ResumableChannel` that has sent `SENT` and holds a credential:

  byte 0   bit 0: role under test (0 gateway: the peer is a client sending
                  ResumeChannel / ChannelAck; 1 client: the peer is a
                  gateway sending ResumeAnswer / ChannelAck)
           bit 1: a tiny message limit (64 bytes) instead of the attach limit
  byte 1   k = low 4 bits: k chunk sizes follow (each byte + 1), cycled
           over the stream; k = 0 feeds it whole
  rest     the byte stream from the peer

Only TunnelProtocolError (ResumeError is one) may escape; the stream fed in
chunks, whole and byte at a time must give the same events; every parsed
message must encode and decode back equal; after every message the replay
buffer stays within its bound, holds storage only while something is
unacknowledged, and any replay is exactly the unacknowledged tail of `SENT`.

Run: python fuzz/resume_fuzz.py [libFuzzer options] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from redirgate.proto.tunnel import ATTACH_MAX_MESSAGE_SIZE, TunnelProtocolError, decode_message, encode_message
    from redirgate.proto.tunnel.errors import UnexpectedMessageError
    from redirgate.proto.tunnel.framing import FrameDecoder, check_limit
    from redirgate.proto.tunnel.messages import RESUME_MESSAGES, ChannelAck, ResumeAnswer, ResumeChannel
    from redirgate.proto.tunnel.resume import ResumableChannel, ResumeCredentials

BYTEWISE_LIMIT = 8 * 1024
SMALL_LIMIT = 64
CHANNEL = 7
OWNER = "fuzz-client"
SECRET = bytes(range(32))
SENT = bytes(range(256)) * 3
REPLAY_LIMIT = 1024


class Mismatch(AssertionError):
    """A property of the layer does not hold for this input."""


def parse_input(data: bytes) -> tuple[bool, bool, list[int], bytes]:
    head = data[:2].ljust(2, b"\0")
    k = head[1] & 0x0F
    sizes = [b + 1 for b in data[2 : 2 + k]]
    return bool(head[0] & 1), bool(head[0] & 2), sizes, data[2 + k :]


def check_round_trip(message: object) -> None:
    wire = encode_message(message, 1 << 20)  # type: ignore[arg-type]  # an event parsed just before
    again = decode_message(wire[4:], RESUME_MESSAGES)
    if again != message or type(again) is not type(message):
        raise Mismatch(f"{message!r} encodes and decodes as {again!r}")


def check_channel(channel: ResumableChannel, replay: bytes | None) -> None:
    out = channel.outgoing
    if not 0 <= out.pending() <= out.limit or out.allocated != (out.pending() > 0):
        raise Mismatch(f"replay buffer: {out.pending()} pending of {out.limit}, allocated={out.allocated}")
    if replay is not None and replay != SENT[out.acked :]:
        raise Mismatch(f"replay of {len(replay)} bytes is not the unacknowledged tail from {out.acked}")


def handle(message: object, client: bool, channel: ResumableChannel, creds: ResumeCredentials) -> tuple:
    """Feed one peer message to our end; the event it gives."""
    if isinstance(message, ChannelAck):
        if message.channel_id != CHANNEL:
            return ("other channel",)
        channel.acked(message)
        check_channel(channel, None)
        return ("acked", channel.outgoing.acked)
    if isinstance(message, ResumeChannel) and not client:
        answer, replay = channel.answer(message, creds, OWNER)
        check_channel(channel, replay if answer.ok else None)
        if answer.ok and not creds.redeem(OWNER, answer.credential):
            raise Mismatch("the fresh credential in an accepted answer does not redeem")
        return ("answered", answer.ok, answer.reason, len(replay))
    if isinstance(message, ResumeAnswer) and client:
        replay = channel.resume_answered(message)
        check_channel(channel, replay)
        return ("resumed", len(replay))
    raise UnexpectedMessageError("not sent by this peer", kind=message.KIND)  # type: ignore[attr-defined]  # a message


def run(client: bool, small: bool, stream: bytes, sizes: list[int], check: bool) -> list:
    decoder = FrameDecoder(check_limit(SMALL_LIMIT if small else ATTACH_MAX_MESSAGE_SIZE))
    channel = ResumableChannel(CHANNEL, replay_limit=REPLAY_LIMIT, ack_every=100)
    creds = ResumeCredentials(CHANNEL, OWNER, SECRET)
    channel.credential = creds.current(OWNER)
    channel.sent(SENT[:REPLAY_LIMIT])
    events: list = []
    pieces = [stream[i : i + size] for i, size in _cuts(len(stream), sizes)]
    for piece in [*pieces, b""]:
        decoder.receive_data(piece)
        try:
            while (body := decoder.next_frame()) is not None:
                message = decode_message(body, RESUME_MESSAGES)
                if check:
                    check_round_trip(message)
                events.append(handle(message, client, channel, creds))
        except TunnelProtocolError as exc:
            events.append(("error", type(exc).__name__, exc.reason))
            break
    return events


def _cuts(total: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, pos, i = [], 0, 0
    while pos < total:
        size = sizes[i % len(sizes)] if sizes else total
        out.append((pos, size))
        pos, i = pos + size, i + 1
    return out


def TestOneInput(data: bytes) -> None:
    client, small, sizes, stream = parse_input(data)
    chunked = run(client, small, stream, sizes, True)
    whole = run(client, small, stream, [], False)
    if whole != chunked:
        raise Mismatch(f"chunks {sizes} give {chunked}, whole gives {whole}")
    if len(stream) <= BYTEWISE_LIMIT:
        bytewise = run(client, small, stream, [1], False)
        if bytewise != whole:
            raise Mismatch(f"byte at a time gives {bytewise}, whole gives {whole}")


# ---------------------------------------------------------------- seeds


def seed_inputs() -> dict[str, bytes]:
    """Valid (and a few deliberately broken) streams, built by the real encoder."""
    creds = ResumeCredentials(CHANNEL, OWNER, SECRET)

    def enc(*messages: object) -> bytes:
        return b"".join(encode_message(m, ATTACH_MAX_MESSAGE_SIZE) for m in messages)  # type: ignore[arg-type]  # messages

    def head(flags: int, sizes: list[int] | None = None) -> bytes:
        sizes = sizes or []
        return bytes([flags, len(sizes)]) + bytes(s - 1 for s in sizes)

    good = creds.current(OWNER)
    acks = enc(ChannelAck(CHANNEL, 10), ChannelAck(CHANNEL, 5), ChannelAck(CHANNEL, 300), ChannelAck(3, 1))
    return {
        "gateway-acks": head(0) + acks,
        "gateway-acks-chunked": head(0, [3, 1, 9]) + acks,
        "gateway-resume": head(0) + enc(ChannelAck(CHANNEL, 40), ResumeChannel(CHANNEL, good, 40)),
        "gateway-resume-replayed": head(0) + enc(ResumeChannel(CHANNEL, good, 0), ResumeChannel(CHANNEL, good, 0)),
        "gateway-resume-wrong": head(0) + enc(ResumeChannel(CHANNEL, bytes(32), 0), ResumeChannel(8, good, 0)),
        "gateway-ack-beyond": head(0) + enc(ChannelAck(CHANNEL, 5000)),
        "gateway-small-limit": head(2) + enc(ResumeChannel(CHANNEL, good, 0)),
        "client-answers": head(1, [7]) + enc(ResumeAnswer(True, 0, good), ResumeAnswer(True, 200, good)),
        "client-refused": head(1) + enc(ResumeAnswer(False, reason="expired")),
        "client-behind": head(1) + enc(ChannelAck(CHANNEL, 100), ResumeAnswer(True, 50, good)),
        "huge-length": head(0) + b"\x40\x00\x00\x00",
    }


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
