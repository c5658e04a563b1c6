"""The resume layer (proto/tunnel/resume.py) and its messages.

Table tests pin each rule; the hypothesis tests run two real channel ends
over a simulated data connection that is cut at random points (whatever is
in flight is lost, acks on the control connection may be lost too) and
resumed through the real credential exchange: each side's output must be
the other side's input exactly once, in order, and no replay buffer may
ever exceed its bound or hold storage with nothing unacknowledged.
"""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redirgate.proto.tunnel import (
    ATTACH_MAX_MESSAGE_SIZE,
    ATTACH_MESSAGES,
    AttachConnection,
    AttachResult,
    ClientHello,
    CloseChannel,
    GatewayHello,
    InvalidMessageError,
    LocalProtocolError,
    Opening,
    OpeningClassifier,
    RemoteProtocolError,
    TunnelConnection,
    decode_message,
    encode_message,
)
from redirgate.proto.tunnel.messages import (
    RESUME_CAPABILITY,
    RESUME_MESSAGES,
    ChannelAck,
    ResumeAnswer,
    ResumeChannel,
)
from redirgate.proto.tunnel.resume import (
    DEFAULT_REPLAY_LIMIT,
    AckPolicy,
    ReplayBuffer,
    ResumableChannel,
    ResumeCredentials,
    ResumeError,
)

SECRET = bytes(range(32))
OWNER = "thin-client-7"
CRED = bytes(32)


def wire(message: object) -> bytes:
    return encode_message(message, ATTACH_MAX_MESSAGE_SIZE)[4:]  # type: ignore[arg-type]  # any message


# ------------------------------------------------------------------ messages


@pytest.mark.parametrize(
    "message",
    [
        ChannelAck(1, 0),
        ChannelAck(0xFFFFFFFF, 2**64 - 1),
        ResumeChannel(3, CRED, 12345),
        ResumeAnswer(True, 99, CRED),
        ResumeAnswer(False, reason="x" * 256),
        ResumeAnswer(False, reason="é" * 256),  # the largest answer fits the attach limit
    ],
)
def test_resume_messages_round_trip_within_the_attach_limit(message):
    again = decode_message(wire(message), RESUME_MESSAGES)
    assert again == message and type(again) is type(message)


@pytest.mark.parametrize(
    ("cls", "kwargs", "words"),
    [
        (ChannelAck, {"channel_id": 0, "received": 0}, "channel_id"),
        (ChannelAck, {"channel_id": 1, "received": -1}, "received"),
        (ChannelAck, {"channel_id": 1, "received": 2**64}, "received"),
        (ChannelAck, {"channel_id": 1, "received": True}, "received"),
        (ResumeChannel, {"channel_id": 1, "credential": bytes(31)}, "credential"),
        (ResumeChannel, {"channel_id": 1, "credential": bytes(33)}, "credential"),
        (ResumeChannel, {"channel_id": 1, "credential": "x" * 32}, "credential"),
        (ResumeChannel, {"channel_id": 1, "credential": CRED, "received": 2**64}, "received"),
        (ResumeAnswer, {"ok": True}, "credential"),  # an accepted resume always carries the next credential
        (ResumeAnswer, {"ok": False, "credential": CRED}, "credential"),  # a refusal never does
        (ResumeAnswer, {"ok": 1, "credential": CRED}, "ok"),
        (ResumeAnswer, {"ok": False, "reason": "a\nb"}, "reason"),
        (ResumeAnswer, {"ok": False, "reason": "x" * 257}, "reason"),
    ],
)
def test_bad_fields_are_refused_by_constructor_and_decoder(cls, kwargs, words):
    with pytest.raises(LocalProtocolError, match=words):
        cls(**kwargs)
    if any(type(x) is int and x >= 2**64 for x in kwargs.values()):
        return  # msgpack cannot even carry it: the constructor's refusal is the whole rule
    body = msgpack.packb({"kind": cls.KIND, **kwargs})
    with pytest.raises(InvalidMessageError, match=words):
        decode_message(body, RESUME_MESSAGES)


def test_unknown_and_missing_fields_are_refused():
    with pytest.raises(InvalidMessageError, match="unknown field"):
        decode_message(msgpack.packb({"kind": "channel_ack", "channel_id": 1, "received": 0, "x": 1}), RESUME_MESSAGES)
    with pytest.raises(InvalidMessageError, match="missing field 'received'"):
        decode_message(msgpack.packb({"kind": "channel_ack", "channel_id": 1}), RESUME_MESSAGES)


def test_credential_is_not_in_repr():
    assert "credential" not in repr(ResumeChannel(1, b"\x07" * 32)) and "\\x07" not in repr(ResumeAnswer(True, 0, CRED))


# ------------------------------------------------------------- replay buffer


def test_replay_buffer_holds_exactly_the_unacknowledged_bytes():
    buf = ReplayBuffer(10)
    assert not buf.allocated and buf.room() == 10
    buf.push(b"abcd")
    buf.push(b"efg")
    assert buf.allocated and buf.pending() == 7 and buf.room() == 3
    buf.ack(2)  # inside the first chunk
    assert buf.pending() == 5 and buf.replay_from(2) == b"cdefg"
    buf.ack(5)  # across a chunk boundary
    assert buf.replay_from(5) == b"fg"
    buf.ack(4)  # an older ack, crossed on the wire: ignored
    assert buf.acked == 5
    buf.ack(7)
    assert buf.pending() == 0 and not buf.allocated and buf.replay_from(7) == b""


def test_a_channel_with_everything_acknowledged_holds_no_replay_memory():
    """Issue 16's floor: a channel's replay buffer exists only while data is
    unacknowledged.  Measured as memory the channel keeps (tracemalloc), not as
    an attribute: a buffer kept (or cleared but not released) after the last
    ack fails this."""
    chunk = memoryview(bytearray(64 * 1024))  # as the relay passes them: a view of a reused buffer
    channel = ResumableChannel(1)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(16):  # 1 MiB sent, acknowledged in two steps
            channel.sent(chunk)
        held = tracemalloc.get_traced_memory()[0] - base
        channel.acked(ChannelAck(1, 512 * 1024))
        channel.acked(ChannelAck(1, 1024 * 1024))
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held >= 1024 * 1024  # the replay was really held while unacknowledged
    assert left < 4096, f"{left} bytes kept after everything was acknowledged"
    assert not channel.outgoing.allocated and channel.outgoing.unacknowledged() == b""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.one_of(st.integers(1, 3000), st.integers(1, 40_000)), st.integers(0, 100)),
        min_size=1,
        max_size=60,
    )
)
def test_the_replay_buffer_holds_what_a_plain_model_holds(ops):
    """Pushes of any size (small ones share a chunk, big ones do not) and partial acks
    (inside and across chunks): the buffer holds exactly the model's unacknowledged
    bytes, and storage only while some are."""
    limit = 100_000
    buf = ReplayBuffer(limit)
    model = bytearray()  # every byte sent, offset = index
    for is_push, size, percent in ops:
        if is_push:
            size = min(size, buf.room())
            chunk = bytes((len(model) + i) % 251 for i in range(size))
            buf.push(memoryview(bytearray(chunk)))
            model += chunk
        else:
            buf.ack(buf.acked + buf.pending() * percent // 100)
        assert buf.unacknowledged() == bytes(model[buf.acked :])
        assert buf.allocated == (buf.pending() > 0)
    assert buf.replay_from(buf.acked) == bytes(model[buf.acked :])


_PATTERN = bytes(range(251)) * 300


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 70_000), st.integers(0, 100)),
        min_size=1,
        max_size=80,
    )
)
def test_bytes_read_into_the_window_are_held_as_pushed_ones(ops):
    """The relay reactor's way in (`window`, a read into it, `commit`) beside
    `push` and partial acks, across the ring's wrap and growth: the buffer holds
    exactly the model's unacknowledged bytes, and storage only while some are."""
    limit = 100_000
    buf = ReplayBuffer(limit)
    model = bytearray()
    for kind, size, percent in ops:
        data = _PATTERN[len(model) % 251 :][:size]  # byte k of the channel is k % 251
        if kind == 0:
            window = buf.window(size)
            n = len(window) * percent // 100 if len(window) else 0
            window[:n] = data[:n]
            buf.commit(n)
            assert len(window) <= min(size, buf.room() + n)
            model += data[:n]
        elif kind == 1:
            data = data[: buf.room()]
            buf.push(data)
            model += data
        else:
            buf.ack(buf.acked + buf.pending() * percent // 100)
        assert buf.unacknowledged() == bytes(model[buf.acked :])
        assert buf.allocated == (buf.pending() > 0) and buf.capacity <= limit
    assert buf.replay_from(buf.acked) == bytes(model[buf.acked :])


def test_a_burst_after_a_full_ack_starts_at_the_last_burst_s_size():
    """A flow that drains between bursts gets one ring per burst, of the size
    the last burst needed, not a doubling chain with a copy at every step; the
    storage still goes with each full ack, and a channel back to small
    messages gets small rings again."""
    buf = ReplayBuffer(1 << 20)
    for _ in range(16):
        buf.push(bytes(65536))
    assert buf.capacity == 1 << 20
    buf.ack(buf.sent_total)
    assert not buf.allocated and buf.capacity == 0
    buf.push(b"x" * 100)
    assert buf.capacity == 1 << 20 and buf.unacknowledged() == b"x" * 100
    buf.ack(buf.sent_total)
    assert buf.capacity == 0
    # back to small messages: that burst held 100 bytes at most, so the next ring is small
    buf.push(b"y" * 100)
    assert buf.capacity == 4096 and buf.unacknowledged() == b"y" * 100


def test_a_window_is_refused_once_stale():
    buf = ReplayBuffer(1 << 20)
    window = buf.window(100)
    buf.push(b"x")  # the tail moved
    with pytest.raises(LocalProtocolError, match="window"):
        buf.commit(1)
    window = buf.window(100)
    window[:2] = b"ab"
    buf.commit(2)
    buf.ack(3)  # everything acknowledged: the ring is gone
    with pytest.raises(LocalProtocolError, match="window"):
        buf.commit(1)
    assert not buf.allocated and buf.window(10).nbytes == 10


def test_a_reader_keeps_a_ring_no_bigger_than_its_read_buffer_and_drops_a_bigger_one():
    """Acknowledged to the last byte: a ring read into (the reactor's window) is kept
    while it is no bigger than what the reader reads into anyway; one that grew for a
    burst goes (idle channels hold no replay), and so does any ring nobody reads into."""
    buf = ReplayBuffer(1 << 22)
    window = buf.window(256 * 1024)
    window[:64] = bytes(64)
    buf.commit(64)  # a small message
    buf.window(256 * 1024)  # the reader's next read goes there
    buf.ack(buf.sent_total)
    assert buf.capacity == 256 * 1024 and not buf.allocated  # kept as the read buffer: no replay held
    sent = 0
    while sent < 1 << 20:  # a burst: the ring grows past the read buffer
        window = buf.window(256 * 1024)
        buf.commit(len(window))
        sent += len(window)
    buf.window(256 * 1024)
    assert buf.allocated and buf.capacity > 256 * 1024
    buf.ack(buf.sent_total)
    assert not buf.allocated and buf.capacity == 0  # the burst is over: its ring is gone
    buf.push(b"x")
    buf.ack(buf.sent_total)  # no reader's window: dropped
    assert not buf.allocated and buf.capacity == 0


def test_a_full_window_fills_the_ring_then_waits_for_acks():
    buf = ReplayBuffer(8192)
    got = 0
    while window := buf.window(3000):
        got += len(window)
        buf.commit(len(window))
    assert got == 8192 and buf.room() == 0 and buf.capacity == 8192
    buf.ack(5000)
    window = buf.window(10_000)  # from the wrap point up to the oldest byte held
    assert len(window) == 5000


def test_replay_buffer_refuses_to_exceed_its_bound():
    buf = ReplayBuffer(4)
    buf.push(b"abcd")
    with pytest.raises(LocalProtocolError, match="room"):
        buf.push(b"e")
    buf.ack(1)
    buf.push(b"e")
    assert buf.replay_from(1) == b"bcde"


@pytest.mark.parametrize(
    ("op", "offset", "words"),
    [("ack", 5, "beyond"), ("replay_from", 5, "beyond"), ("replay_from", 1, "behind")],
)
def test_counts_the_sender_cannot_honour_are_resume_errors(op, offset, words):
    buf = ReplayBuffer()
    buf.push(b"abcd")
    buf.ack(2)
    with pytest.raises(ResumeError, match=words):
        getattr(buf, op)(offset)


def test_default_replay_limit_is_4_mib():
    assert ReplayBuffer().limit == DEFAULT_REPLAY_LIMIT == 4 * 1024 * 1024


def test_acks_come_every_n_bytes_or_on_flush():
    policy = AckPolicy(ack_every=10)
    assert [policy.on_received(n) for n in (4, 5, 1, 3)] == [None, None, 10, None]
    assert policy.flush() == 13 and policy.flush() is None
    assert policy.on_received(0) is None
    policy.acks_lost()  # the control connection broke: the count is said again
    assert policy.flush() == 13 and policy.flush() is None


# --------------------------------------------------------------- credentials


def resumed_pair(data: bytes = b"hello") -> tuple[ResumableChannel, ResumableChannel, ResumeCredentials]:
    client, gateway = ResumableChannel(4), ResumableChannel(4)
    creds = ResumeCredentials(4, OWNER, SECRET)
    client.credential = creds.current(OWNER)
    client.sent(data)
    return client, gateway, creds


def test_a_good_credential_resumes_once_and_the_answer_carries_the_next():
    client, gateway, creds = resumed_pair()
    request = client.resume_request()
    answer, replay = gateway.answer(request, creds, OWNER)
    assert answer.ok and replay == b"" and answer.credential != request.credential
    assert client.resume_answered(answer) == b"hello"
    again, _ = gateway.answer(request, creds, OWNER)  # the same credential replayed
    assert not again.ok and again.credential == b""
    second, _ = gateway.answer(client.resume_request(), creds, OWNER)  # the fresh one works
    assert second.ok


@pytest.mark.parametrize(
    "presenter",
    [
        pytest.param(lambda req: (req, "thin-client-8"), id="another identity"),
        pytest.param(lambda req: (ResumeChannel(5, req.credential), OWNER), id="another channel"),
        pytest.param(lambda req: (ResumeChannel(4, bytes(32)), OWNER), id="a guessed credential"),
    ],
)
def test_a_credential_is_useless_to_anyone_else(presenter):
    client, gateway, creds = resumed_pair()
    request, identity = presenter(client.resume_request())
    answer, replay = gateway.answer(request, creds, identity)
    assert not answer.ok and replay == b""
    assert gateway.answer(client.resume_request(), creds, OWNER)[0].ok  # the owner's is still good


def test_another_identity_cannot_present_the_owners_own_mac():
    # the identity is in the MAC and checked: the owner's credential computed
    # for a stranger's name is a different value, and the stranger gets none
    creds = ResumeCredentials(4, OWNER, SECRET)
    with pytest.raises(LocalProtocolError, match="belongs to"):
        creds.current("thin-client-8")
    assert not creds.redeem("thin-client-8", creds.current(OWNER))


def test_the_mac_itself_binds_identity_channel_and_secret():
    # even a gateway that keyed many channels alike gives each identity and channel its own value
    base = ResumeCredentials(4, OWNER, SECRET).current(OWNER)
    assert base != ResumeCredentials(4, "thin-client-8", SECRET).current("thin-client-8")
    assert base != ResumeCredentials(5, OWNER, SECRET).current(OWNER)
    assert base != ResumeCredentials(4, OWNER, bytes(32)).current(OWNER)
    assert base == ResumeCredentials(4, OWNER, SECRET).current(OWNER)


def test_a_refused_answer_raises_on_the_client_and_uses_the_credential_up():
    client, _, _ = resumed_pair()
    with pytest.raises(ResumeError, match=r"refused.*expired"):
        client.resume_answered(ResumeAnswer(False, reason="expired"))
    with pytest.raises(LocalProtocolError, match="no resume credential"):
        client.resume_request()


def test_a_count_the_gateway_cannot_honour_is_refused_in_the_answer():
    client, gateway, creds = resumed_pair()
    request = ResumeChannel(4, client.credential or b"", received=10)  # the gateway sent nothing
    answer, replay = gateway.answer(request, creds, OWNER)
    assert not answer.ok and "beyond" in answer.reason and replay == b""


def test_secret_must_be_long_enough():
    with pytest.raises(LocalProtocolError, match="secret"):
        ResumeCredentials(4, OWNER, bytes(15))


# ------------------------------------------------------- property: the stream

OPS = st.sampled_from(["send", "deliver", "ack", "flush", "cut", "cut_control"])


class End:
    """One side of the simulated channel and its outgoing stream."""

    def __init__(self, channel: ResumableChannel, data: bytes) -> None:
        self.channel = channel
        self.data = data
        self.pos = 0  # how much of data was handed to the channel
        self.output = bytearray()  # what arrived from the peer, in order


def check_bounds(end: End, limit: int) -> None:
    out = end.channel.outgoing
    assert 0 <= out.pending() <= limit
    assert out.allocated == (out.pending() > 0)


@settings(max_examples=200, deadline=None)
@given(
    up=st.binary(max_size=3000),
    down=st.binary(max_size=3000),
    limit=st.integers(1, 700),
    ack_every=st.integers(1, 400),
    ops=st.lists(st.tuples(OPS, st.booleans(), st.integers(1, 900)), max_size=120),
)
def test_every_byte_arrives_once_in_order_across_random_cuts(up, down, limit, ack_every, ops):
    creds = ResumeCredentials(9, OWNER, SECRET)
    client = End(ResumableChannel(9, replay_limit=limit, ack_every=ack_every), up)
    gateway = End(ResumableChannel(9, replay_limit=limit, ack_every=ack_every), down)
    client.channel.credential = creds.current(OWNER)
    # in flight: bytes on the data connection (to the key's end), acks on the control connection
    wires: dict[int, bytearray] = {id(client): bytearray(), id(gateway): bytearray()}
    acks: dict[int, list[ChannelAck]] = {id(client): [], id(gateway): []}

    def send(src: End, dst: End, n: int) -> None:
        take = min(n, src.channel.room(), len(src.data) - src.pos)
        chunk = src.data[src.pos : src.pos + take]
        src.channel.sent(chunk)
        wires[id(dst)] += chunk
        src.pos += take

    def deliver(src: End, dst: End, n: int) -> None:
        chunk = bytes(wires[id(dst)][:n])
        del wires[id(dst)][:n]
        dst.output += chunk
        ack = dst.channel.received(len(chunk))
        if ack is not None:
            acks[id(src)].append(ack)

    def cut() -> None:
        for w in wires.values():
            w.clear()
        answer, replay_down = gateway.channel.answer(client.channel.resume_request(), creds, OWNER)
        assert answer.ok
        replay_up = client.channel.resume_answered(answer)
        wires[id(client)] += replay_down
        wires[id(gateway)] += replay_up

    for op, upward, n in ops:
        src, dst = (client, gateway) if upward else (gateway, client)
        if op == "send":
            send(src, dst, n)
        elif op == "deliver":
            deliver(src, dst, n)
        elif op == "ack" and acks[id(src)]:
            src.channel.acked(acks[id(src)].pop(0))
        elif op == "flush":
            ack = dst.channel.ack_now()
            if ack is not None:
                acks[id(src)].append(ack)
        elif op == "cut":
            cut()
        elif op == "cut_control":  # acks in flight are lost with the control connection
            acks[id(src)].clear()
            dst.channel.acks_lost()
        check_bounds(client, limit)
        check_bounds(gateway, limit)
        assert bytes(dst.output) == dst_expected_prefix(src, dst)

    for _ in range(2 * (len(up) + len(down)) + 4):  # drain: the protocol must make progress
        for src, dst in ((client, gateway), (gateway, client)):
            send(src, dst, 1 << 20)
            deliver(src, dst, 1 << 20)
            ack = dst.channel.ack_now()
            if ack is not None:
                acks[id(src)].append(ack)
            while acks[id(src)]:
                src.channel.acked(acks[id(src)].pop(0))
        if client.pos == len(up) and gateway.pos == len(down) and not any(wires.values()):
            break
    assert bytes(gateway.output) == up
    assert bytes(client.output) == down
    assert client.channel.outgoing.pending() == gateway.channel.outgoing.pending() == 0


def dst_expected_prefix(src: End, dst: End) -> bytes:
    """What `dst` may have received by now: a prefix of src's stream."""
    return src.data[: len(dst.output)]


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20), st.integers(1, 64))
def test_random_splits_give_the_same_counts_and_acks_as_whole(data, cuts, ack_every):
    pieces, prev = [], 0
    for c in sorted(min(c, len(data)) for c in cuts):
        pieces.append(data[prev:c])
        prev = c
    pieces.append(data[prev:])
    policy = AckPolicy(ack_every)
    acked = [a for p in pieces if (a := policy.on_received(len(p))) is not None]
    assert policy.received == len(data)
    assert acked == sorted(set(acked))  # acks strictly increase
    assert all(b - a >= ack_every for a, b in zip([0, *acked], acked, strict=False))
    assert len(data) - (acked[-1] if acked else 0) < ack_every  # never more than N unacknowledged


# ------------------------------------------------------------------ wiring (issue 16)


def _hellos(client_caps: frozenset[str], gateway_caps: frozenset[str]) -> tuple[TunnelConnection, TunnelConnection]:
    client, gateway = TunnelConnection("client"), TunnelConnection("gateway")
    gateway.receive_data(client.send(ClientHello(capabilities=client_caps)))
    client.receive_data(gateway.send(GatewayHello(capabilities=gateway_caps)))
    assert isinstance(gateway.next_event(), ClientHello)
    assert isinstance(client.next_event(), GatewayHello)
    return client, gateway


RESUME = frozenset({RESUME_CAPABILITY})


def test_channel_ack_only_when_both_hellos_name_resume() -> None:
    for client_caps, gateway_caps in ((RESUME, frozenset()), (frozenset(), RESUME)):
        client, gateway = _hellos(client_caps, gateway_caps)
        with pytest.raises(LocalProtocolError):
            client.send(ChannelAck(1, 10))
    client, gateway = _hellos(RESUME, RESUME)
    # any id: the channel may have been opened on an earlier control connection
    gateway.receive_data(client.send(ChannelAck(7, 10)))
    assert gateway.next_event() == ChannelAck(7, 10)
    client.receive_data(gateway.send(ChannelAck(7, 3)))
    assert client.next_event() == ChannelAck(7, 3)


def test_close_channel_of_an_earlier_connection_only_with_resume() -> None:
    client, gateway = _hellos(RESUME, frozenset())
    with pytest.raises(LocalProtocolError):
        gateway.send(CloseChannel(4, "gone"))
    client, gateway = _hellos(RESUME, RESUME)
    client.receive_data(gateway.send(CloseChannel(4, "gone")))
    assert client.next_event() == CloseChannel(4, "gone")


def test_attach_result_without_credential_is_what_an_older_client_decodes() -> None:
    plain = msgpack.unpackb(wire(AttachResult(ok=True)))
    assert plain == {"kind": "attach_result", "ok": True, "reason": ""}
    with_credential = AttachResult(ok=True, credential=CRED)
    assert decode_message(wire(with_credential), ATTACH_MESSAGES) == with_credential
    with pytest.raises(LocalProtocolError):
        AttachResult(ok=True, credential=b"short")


def test_resume_preamble_on_a_data_connection() -> None:
    opening = OpeningClassifier()
    client = AttachConnection("client")
    request = ResumeChannel(3, CRED, 100)
    first = client.send(request)
    opening.receive_data(first)
    assert opening.result() is Opening.DATA
    gateway = AttachConnection("gateway")
    gateway.receive_data(first)
    assert gateway.next_event() == request
    with pytest.raises(LocalProtocolError):  # an attach is answered AttachResult, a resume ResumeAnswer
        gateway.send(AttachResult(ok=True))
    client.receive_data(gateway.send(ResumeAnswer(True, 5, CRED)) + b"raw")
    assert client.next_event() == ResumeAnswer(True, 5, CRED)
    assert client.trailing_data() == (b"raw", False)


def test_a_client_that_resumed_refuses_an_attach_result() -> None:
    client = AttachConnection("client")
    client.send(ResumeChannel(3, CRED, 0))
    client.receive_data(encode_message(AttachResult(ok=True), ATTACH_MAX_MESSAGE_SIZE))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
