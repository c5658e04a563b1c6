"""Resumable channels, sans-IO (issue 16, part 1): byte counts, acks, replay, credentials.

A channel's data connection may break (a NAT timeout, a Wi-Fi roam, a new
address) while both ends are alive.  This layer lets the two ends carry on
over a new connection with nothing lost, nothing duplicated, in order:

- Each direction counts its bytes from the channel's first byte (offsets).
- The sender keeps every byte it sent in a `ReplayBuffer` until the peer
  acknowledges it.  The buffer is bounded (`DEFAULT_REPLAY_LIMIT`, 4 MiB;
  configurable) and holds no storage while everything is acknowledged.
  When it is full the caller stops reading from its source (QEMU's socket,
  the device) until an ack makes room: `room()` says how much it may send.
- The receiver counts what it delivered and says so with `ChannelAck` every
  `ack_every` bytes (`AckPolicy.on_received`) or when the caller decides
  (`AckPolicy.flush`, e.g. from its heartbeat timer or when its read loop
  goes idle).  No clock here: the caller's events decide.  Acks travel on
  the control connection; when it breaks, `acks_lost()` makes the next
  flush repeat the count, since the sender may be waiting for it.
- After a break, the client sends `ResumeChannel` (its received count and
  its credential) on a new data connection; the gateway checks the
  credential, answers `ResumeAnswer` (its received count and a fresh
  credential), and each side sends again what the other has not received
  (`ResumableChannel.resume`).  Whatever was in flight on the old connection
  is gone with it: the caller must have stopped reading the old connection
  before it states its count (the gateway closes the old data connection
  before it answers).
- `ResumeCredentials` (the gateway's) binds a credential to the client's
  certificate identity and the channel: an HMAC-SHA256 over both and a
  generation number, keyed by a per-channel secret the gateway generated
  (with `secrets`, outside this package).  Each successful resume moves the
  generation on, so a credential works once; another identity's credential
  never matches; comparisons are constant-time.

How it is meant to be wired (not yet: client/tunnel.py and the gateway are
changing under other hands):

- Capability `RESUME_CAPABILITY` in both hellos; without it, today's
  behaviour.  The first credential travels in the `AttachResult` of the
  channel's first data connection (a new optional field, sent only to a
  client that advertised the capability); `ChannelAck` joins
  `CONTROL_MESSAGES` and travels on the control connection, so the data
  connection stays raw bytes (no framing cost on the hot path); the state
  table allows it for open (and recently closed) channels.  `ResumeChannel`
  and `ResumeAnswer` join the data-connection preamble as the alternative
  to `Attach` / `AttachResult`, with the same 1 KiB limit.
- Gateway: one `ResumableChannel` per channel, owned by the task that owns
  the channel's relay in `transport/reactor.py`.  The replay buffer sits
  between the reactor's QEMU-side read and its write to the client: each
  chunk read from QEMU is `sent()` (recorded) as it is written to the data
  connection; the reactor's own buffers are transient (bytes are in one
  of them or in the socket), the replay buffer is the copy that survives
  the connection.  When `room()` is 0 the reactor stops reading QEMU's
  socket (QEMU waits), which is the issue's "the VM never notices".  Bytes
  from the client are `received()` as the reactor writes them to QEMU; the
  acks it yields go to the control session (transport/control.py) to send.
  A `ChannelAck` from the client arrives on the control session and is
  handed to the channel's owner, which calls `acked()`.
- Client: the same on its side (device results written to the data
  connection are `sent()`), and on a break it keeps the device claimed,
  redials, sends `resume_request()`, feeds the answer to `resume_answered()`
  and writes the returned replay before anything new.

Every error the peer can cause is a `ResumeError` (a `RemoteProtocolError`):
an ack or a resume count beyond what was sent, or behind what was already
acknowledged (bytes the sender no longer has).  Our caller's mistakes
(sending past `room()`) are `LocalProtocolError`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from redirgate.proto.tunnel import validate as v
from redirgate.proto.tunnel.errors import LocalProtocolError, RemoteProtocolError
from redirgate.proto.tunnel.framing import Buffer
from redirgate.proto.tunnel.messages import (
    RESUME_CREDENTIAL_BYTES,
    ChannelAck,
    ResumeAnswer,
    ResumeChannel,
)

__all__ = [
    "DEFAULT_ACK_EVERY",
    "DEFAULT_REPLAY_LIMIT",
    "MIN_SECRET_BYTES",
    "AckPolicy",
    "ReplayBuffer",
    "ResumableChannel",
    "ResumeCredentials",
    "ResumeError",
]

#: Bytes a channel keeps per direction for replay, at most (issue 16's default).
DEFAULT_REPLAY_LIMIT: Final = 4 * 1024 * 1024
#: A receiver acknowledges at least every this many bytes: half the default
#: replay limit, so a sender still has 2 MiB of room while the ack travels
#: (at 400 MB/s, 5 ms).  An ack costs each end's trio loop a wake-up (about
#: 0.3 ms of CPU on the gateway's loop, measured on a loaded two-core machine:
#: a fifth of its relay reactor's CPU for bulk at one ack per MiB); halving them
#: halves that.
DEFAULT_ACK_EVERY: Final = DEFAULT_REPLAY_LIMIT // 2
#: The smallest ring a replay buffer allocates (it doubles from there as needed, up to its limit).
_MIN_RING: Final = 4096
#: A channel's HMAC key: at least 128 random bits.
MIN_SECRET_BYTES: Final = 16
_CREDENTIAL_LABEL: Final = b"redirgate resume credential v1\0"


class ResumeError(RemoteProtocolError):
    """The peer's count or credential cannot be honoured; the channel is lost."""


_NO_VIEW: Final = memoryview(b"")


def _ring_size(size: int) -> int:
    """The smallest ring (a power of two, at least _MIN_RING) that holds `size` bytes."""
    cap = _MIN_RING
    while cap < size:
        cap *= 2
    return cap


class ReplayBuffer:
    """What one side sent on one direction of a channel and the peer has not
    acknowledged yet.  `sent_total` and `acked` are offsets from the
    channel's first byte; the buffer holds exactly the bytes between them.
    Storage exists only while `pending() > 0`: the ack that acknowledges
    everything releases it.

    The storage is one ring (a bytearray) that grows by doubling, from what
    the first write needs up to `limit`, and is dropped when everything is
    acknowledged.  Two ways in: `push` copies bytes in (the trio streams),
    `window` + `commit` let a reader put them there itself (the gateway's
    relay reactor reads QEMU's socket straight into the ring and writes the
    client's connection from it: no copy on the hot path, which measured
    +60 % of the reactor's CPU per 64 KiB as `bytes(chunk)` per chunk)."""

    def __init__(self, limit: int = DEFAULT_REPLAY_LIMIT) -> None:
        self.limit = v.uint("ReplayBuffer", "limit", limit, v.U64, low=1)
        self.sent_total = 0
        self.acked = 0
        self._ring: bytearray | None = None
        #: ring index of the byte at offset `acked`, and of the next byte sent
        self._head = 0
        self._tail = 0
        #: the ring `window()` last handed out (a commit into another one is refused)
        self._window: bytearray | None = None
        #: the ring a reader's `window(want)` needs for itself (its read buffer), kept while it reads
        self._reader_ring = 0
        self._want = 0
        #: a view of the ring (windows are slices of it)
        self._view = _NO_VIEW
        #: the ring size the last burst needed (its most bytes held at once) when
        #: an ack released its ring: the next burst starts there instead of
        #: doubling up from the first write's size
        self._last_capacity = 0
        #: the most bytes held at once since the ring was allocated
        self._peak = 0

    @property
    def allocated(self) -> bool:
        """Whether storage is held for replay: only while data is unacknowledged.
        (A reader that reads into the ring keeps one no bigger than what it
        reads into while nothing is held: its read buffer, not replay.)"""
        return self._ring is not None and (self.sent_total > self.acked or len(self._ring) > self._reader_ring)

    @property
    def capacity(self) -> int:
        """The ring's size now (0 when none is held)."""
        return 0 if self._ring is None else len(self._ring)

    def pending(self) -> int:
        """Bytes sent and not acknowledged."""
        return self.sent_total - self.acked

    def room(self) -> int:
        """Bytes the caller may still send before an ack must make room."""
        return self.limit - self.pending()

    def _reserve(self, size: int, *, read_buffer: bool = False) -> bytearray:
        """A ring with room for `size` more bytes (grown, data kept in order, if needed).
        `read_buffer`: a reader's first window, which a quiet channel keeps as its
        read buffer: sized for what it reads, not for the last burst."""
        ring = self._ring
        pending = self.pending()
        if ring is not None and len(ring) - pending >= size:
            return ring
        want = _ring_size(pending + size)
        if want < self._last_capacity and not read_buffer:
            # A flow that drains its buffer between bursts (bulk IN that waits
            # for acks) used to free the ring at each full ack and double it back
            # up, 4 KiB .. 4 MiB, copying what it held at every step: 69 such
            # cycles in 3 s of 64 KiB bulk IN (×4 in flight), 8 MiB allocated and
            # about 4 MiB copied per cycle; the client's CPU per transfer was
            # 1.2-1.3x a channel that does not resume.  One ring of last time's
            # peak per burst instead (the storage still goes with the full ack),
            # and a ring that must grow grows to that size at once.
            want = self._last_capacity
        new = bytearray(min(want, self.limit))
        if ring is not None and pending:
            new[:pending] = self._held(ring)
        self._ring, self._head, self._tail = new, 0, pending
        self._view = memoryview(new)
        return new

    def _held(self, ring: bytearray) -> bytes | bytearray:
        pending = self.pending()
        head = self._head
        if head + pending <= len(ring):
            return ring[head : head + pending]
        return ring[head:] + ring[: pending - (len(ring) - head)]

    def push(self, data: Buffer) -> None:
        """Record `data` as sent (the caller writes it to the connection): copied in."""
        size = len(data)
        if size > self.room():
            raise LocalProtocolError(f"{size} bytes exceed the replay buffer's room ({self.room()} of {self.limit})")
        if not size:
            return
        self._window = None  # the tail moves: a window handed out before is stale
        ring = self._reserve(size)
        tail, cap = self._tail, len(ring)
        first = min(size, cap - tail)
        if first == size:
            ring[tail : tail + size] = data
        else:
            with memoryview(data) as view:
                ring[tail:] = view[:first]
                ring[: size - first] = view[first:]
        self._tail = (tail + size) % cap
        self.sent_total += size
        if self.sent_total - self.acked > self._peak:
            self._peak = self.sent_total - self.acked

    def window(self, want: int) -> memoryview:
        """Where the next bytes to send may be read into: contiguous free space of
        the ring, at most `want` and `room()` bytes (empty when there is no room).
        `commit(n)` then records its first n bytes as sent.  The window stays
        valid until the next `push`, `window` or an ack that acknowledges everything."""
        if want > self._want:  # the reader's read buffer: what it asks for at most
            self._want = want
            self._reader_ring = max(self._reader_ring, _ring_size(want))
        pending = self.sent_total - self.acked
        size = self.limit - pending
        if want < size:
            size = want
        if size <= 0:
            self._window = None
            return memoryview(bytearray())
        ring = self._ring
        if ring is None:
            ring = self._reserve(size, read_buffer=True)
        if not pending:
            self._head = self._tail = 0  # nothing held: the whole ring is free
        cap, tail = len(ring), self._tail
        if pending and self._head >= tail:  # wrapped: free space is tail..head
            free = self._head - tail
        else:
            free = cap - tail  # up to the ring's end; the rest comes after the wrap
        if cap - pending < size // 2 and cap < self.limit:  # a ring too small for this flow: double it
            ring = self._reserve(cap - pending + 1)
            cap, tail = len(ring), self._tail
            free = cap - tail
        self._window = ring
        return self._view[tail : tail + (size if size < free else free)]

    def commit(self, size: int) -> None:
        """The first `size` bytes of the last `window()` hold bytes being sent."""
        if not size:
            return
        ring = self._window
        if ring is None or ring is not self._ring or size > self.limit - self.sent_total + self.acked:
            raise LocalProtocolError(f"commit of {size} bytes without a window for them")
        self._tail = (self._tail + size) % len(ring)
        self.sent_total += size
        if self.sent_total - self.acked > self._peak:
            self._peak = self.sent_total - self.acked
        self._window = None

    def check_offset(self, offset: int, what: str) -> None:
        """ResumeError unless acked <= offset <= sent_total."""
        if type(offset) is not int or offset > self.sent_total:
            raise ResumeError(f"{what} {offset!r} is beyond the {self.sent_total} bytes sent")
        if offset < self.acked:
            raise ResumeError(f"{what} {offset} is behind the {self.acked} bytes already acknowledged")

    def ack(self, offset: int) -> None:
        """The peer has received everything up to `offset`: drop it.
        An ack may repeat an older one (acks cross resumes on the wire)."""
        if type(offset) is int and offset <= self.acked:
            return
        self.check_offset(offset, "acknowledged offset")
        ring = self._ring
        assert ring is not None  # offset > acked means pending() > 0
        self._head = (self._head + offset - self.acked) % len(ring)
        self.acked = offset
        if offset == self.sent_total:
            # Everything acknowledged: the storage goes, unless a reader reads into
            # it (the reactor's window) and it is no bigger than what that reader
            # reads into anyway (its read buffer, which a channel that does not
            # resume holds too): no new ring for each message of a quiet channel.
            if self._window is None or len(ring) > self._reader_ring:
                # what this burst held at most: a channel back to small messages
                # after a bulk burst gets small rings again from its next burst on
                self._last_capacity, self._peak = _ring_size(self._peak), 0
                self._ring = self._window = None
                self._view = _NO_VIEW
                self._head = self._tail = 0

    def unacknowledged(self) -> bytes:
        """The bytes held now (sent, not acknowledged), oldest first: a gateway
        restart hands them to its successor (`proto.tunnel.handover`)."""
        if self._ring is None:
            return b""
        return bytes(self._held(self._ring))

    def restore(self, sent_total: int, acked: int, held: bytes) -> None:
        """Take over a predecessor's buffer: `held` is what it had sent up to
        `sent_total` past `acked` (LocalProtocolError if the counts disagree)."""
        if not 0 <= acked <= sent_total or sent_total - acked != len(held) or len(held) > self.limit:
            raise LocalProtocolError(
                f"a replay buffer of {len(held)} bytes does not fit sent {sent_total} / acked {acked}"
                f" (limit {self.limit})"
            )
        self._ring = self._window = None
        self._view = _NO_VIEW
        self._head = self._tail = 0
        self.sent_total = self.acked = acked
        self.push(held)
        self.sent_total = sent_total

    def replay_from(self, offset: int) -> bytes:
        """Everything sent from `offset` on (the peer received up to there),
        dropping what comes before it; the bytes to send again.  Unlike an
        ack, a count behind what the peer already acknowledged is an error:
        the bytes in between are gone on both sides."""
        self.check_offset(offset, "the peer's received count")
        self.ack(offset)
        return self.unacknowledged()


class AckPolicy:
    """A receiver's byte count, and when to tell the sender."""

    def __init__(self, ack_every: int = DEFAULT_ACK_EVERY) -> None:
        self.ack_every = v.uint("AckPolicy", "ack_every", ack_every, v.U64, low=1)
        self.received = 0
        #: the count in the last ack handed out
        self.acknowledged = 0

    def on_received(self, size: int) -> int | None:
        """`size` bytes were delivered onwards: the offset to acknowledge now,
        or None while less than `ack_every` is unacknowledged."""
        self.received += size
        if self.received - self.acknowledged >= self.ack_every:
            return self.flush()
        return None

    def flush(self) -> int | None:
        """The offset to acknowledge if anything is unacknowledged (the
        caller's timer or idle read loop asks), else None."""
        if self.received == self.acknowledged:
            return None
        self.acknowledged = self.received
        return self.received

    def acks_lost(self) -> None:
        """The connection that carried our acks broke: any of them may be
        lost, so the next `flush` repeats the count even if unchanged
        (else a sender whose buffer is full would wait for ever)."""
        self.acknowledged = -1


class ResumableChannel:
    """Both directions of one channel at one end: our replay buffer for what
    we send, our count of what we receive.  The caller moves the bytes."""

    def __init__(
        self, channel_id: int, *, replay_limit: int = DEFAULT_REPLAY_LIMIT, ack_every: int = DEFAULT_ACK_EVERY
    ) -> None:
        self.channel_id = v.uint("ResumableChannel", "channel_id", channel_id, v.U32, low=1)
        self.outgoing = ReplayBuffer(replay_limit)
        self.incoming = AckPolicy(ack_every)
        #: the credential for our next resume (client side)
        self.credential: bytes | None = None

    def room(self) -> int:
        return self.outgoing.room()

    def sent(self, data: Buffer) -> None:
        """We are writing `data` to the data connection."""
        self.outgoing.push(data)

    def received(self, size: int) -> ChannelAck | None:
        """We delivered `size` bytes from the peer onwards; an ack to send, or None."""
        offset = self.incoming.on_received(size)
        return None if offset is None else ChannelAck(self.channel_id, offset)

    def ack_now(self) -> ChannelAck | None:
        """An ack for anything unacknowledged (timer, idle), or None."""
        offset = self.incoming.flush()
        return None if offset is None else ChannelAck(self.channel_id, offset)

    def acks_lost(self) -> None:
        """The control connection broke: call `ack_now()` once it is back."""
        self.incoming.acks_lost()

    def acked(self, message: ChannelAck) -> None:
        """The peer's `ChannelAck` for this channel arrived."""
        if message.channel_id != self.channel_id:
            raise LocalProtocolError(f"ack for channel {message.channel_id} given to channel {self.channel_id}")
        self.outgoing.ack(message.received)

    def resume(self, peer_received: int) -> bytes:
        """The new connection is up and the peer received `peer_received`
        bytes: what to send again, before anything new.  Our own count is
        what `received` was told: it is final for the old connection."""
        return self.outgoing.replay_from(peer_received)

    def export(self) -> dict[str, object]:
        """The channel's counts and replay as plain data (a gateway restart: `handover`)."""
        out, inc = self.outgoing, self.incoming
        return {
            "channel_id": self.channel_id,
            "replay_limit": out.limit,
            "ack_every": inc.ack_every,
            "sent_total": out.sent_total,
            "acked": out.acked,
            "replay": out.unacknowledged(),
            "received": inc.received,
        }

    @classmethod
    def restored(cls, state: dict[str, object]) -> ResumableChannel:
        """The channel `export` described, in a new process (LocalProtocolError if it is not one)."""
        owner = "ResumableChannel state"
        channel = cls(
            v.uint(owner, "channel_id", state.get("channel_id"), v.U32, low=1),
            replay_limit=v.uint(owner, "replay_limit", state.get("replay_limit"), v.U64, low=1),
            ack_every=v.uint(owner, "ack_every", state.get("ack_every"), v.U64, low=1),
        )
        channel.outgoing.restore(
            v.uint(owner, "sent_total", state.get("sent_total"), v.U64),
            v.uint(owner, "acked", state.get("acked"), v.U64),
            v.blob(owner, "replay", state.get("replay"), 0, channel.outgoing.limit),
        )
        channel.incoming.received = v.uint(owner, "received", state.get("received"), v.U64)
        # what we told the peer may not have reached it: the next ack repeats the count
        channel.incoming.acks_lost()
        return channel

    # --- client side
    def resume_request(self) -> ResumeChannel:
        """The client's first frame on the new data connection."""
        if self.credential is None:
            raise LocalProtocolError(f"channel {self.channel_id} has no resume credential")
        return ResumeChannel(self.channel_id, self.credential, self.incoming.received)

    def resume_answered(self, answer: ResumeAnswer) -> bytes:
        """The gateway's answer: the replay to send (ResumeError if refused).
        The credential is used up either way; the answer's is the next one."""
        self.credential = None
        if not answer.ok:
            raise ResumeError(f"the gateway refused to resume channel {self.channel_id}: {answer.reason}")
        self.credential = answer.credential
        return self.resume(answer.received)

    # --- gateway side
    def answer(
        self, request: ResumeChannel, credentials: ResumeCredentials, identity: str
    ) -> tuple[ResumeAnswer, bytes]:
        """The gateway's answer to a client's `ResumeChannel` and the replay
        to write after it.  A refusal (wrong identity, channel or credential,
        or a count we cannot honour) is an `ok=False` answer and no replay;
        the caller sends it, closes, and ends the channel only if the
        identity is the channel's own (a stranger cannot end it)."""
        if request.channel_id != self.channel_id or not credentials.redeem(identity, request.credential):
            return ResumeAnswer(False, reason="unknown channel or resume credential"), b""
        try:
            replay = self.resume(request.received)
        except ResumeError as exc:
            return ResumeAnswer(False, reason=exc.reason[:200]), b""
        return ResumeAnswer(True, self.incoming.received, credentials.current(identity)), replay


class ResumeCredentials:
    """The gateway's credentials for one channel: one valid at a time, bound
    to the owner's certificate identity, each redeemable once."""

    def __init__(self, channel_id: int, owner: str, secret: bytes) -> None:
        self.channel_id = v.uint("ResumeCredentials", "channel_id", channel_id, v.U32, low=1)
        self.owner = v.text("ResumeCredentials", "owner", owner, 1024, empty=False)
        self._secret = v.blob("ResumeCredentials", "secret", secret, MIN_SECRET_BYTES, 1024)
        self.generation = 0

    def _mac(self, identity: str, generation: int) -> bytes:
        name = identity.encode("utf-8", "surrogatepass")
        message = b"".join(
            (
                _CREDENTIAL_LABEL,
                len(name).to_bytes(4, "big"),
                name,
                self.channel_id.to_bytes(4, "big"),
                generation.to_bytes(8, "big"),
            )
        )
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        assert len(digest) == RESUME_CREDENTIAL_BYTES
        return digest

    def export(self) -> tuple[bytes, int]:
        """(the channel's secret, the generation in force): a gateway restart hands them over."""
        return self._secret, self.generation

    @classmethod
    def restored(cls, channel_id: int, owner: str, secret: bytes, generation: int) -> ResumeCredentials:
        credentials = cls(channel_id, owner, secret)
        credentials.generation = v.uint("ResumeCredentials", "generation", generation, v.U64)
        return credentials

    def current(self, identity: str) -> bytes:
        """The credential the owner holds now (given in the attach result or
        the last resume answer).  Only the owner gets one."""
        if identity != self.owner:
            raise LocalProtocolError(f"channel {self.channel_id} belongs to {self.owner!r}, not {identity!r}")
        return self._mac(identity, self.generation)

    def redeem(self, identity: str, credential: bytes) -> bool:
        """Whether `credential`, presented by `identity` (from its TLS
        certificate, never from a message), is the current one; if so it is
        used up and a new one becomes current."""
        expected = self._mac(identity, self.generation)
        if not (hmac.compare_digest(expected, credential) and identity == self.owner):
            return False
        self.generation += 1
        return True
