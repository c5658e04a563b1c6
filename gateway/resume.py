"""The gateway's side of a resumable channel (issue 16): credentials, the grace period, the new connection.

`ChannelResume` belongs to one channel whose client advertised
`RESUME_CAPABILITY` and whose route has a grace period
(`resume_grace_s`).  It issues the credentials (the first one goes out in
the `AttachResult`), wraps the channel's data connection in a
`transport.ResumableStream`, and is that stream's `reconnect`: when the
client's data connection breaks, the relay above simply waits in a read or
a write while this waits up to the grace period for the client's
`ResumeChannel` on a new connection (`offer`, from the tunnel listener once
the credential was redeemed), answers it, and hands the new connection
over with what the client has not received yet.  QEMU's socket stays open
all the while: a USB route does not read it meanwhile (usb-redir waits),
a raw route keeps reading it as always (`raw_relay`: buffer, then discard,
counted).  Past the grace period the stream breaks for good, the relay
ends and the hypervisor socket closes as for any channel end.

Acks for what the gateway received go out on the client's control
connection: `pending_ack` is set every `ack_every` bytes and the session's
ack task (`tunnel_server.ClientControl`) sends it, or an idle one.

Owner: the trio loop (the route's relay task uses the stream; the tunnel
listener's connection task offers and waits until the offer is taken).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from redirgate.proto import tunnel as t
from redirgate.transport import PrefixedStream, ResumableStream, ZeroCopyTLSStream

__all__ = ["ChannelResume"]

log = logging.getLogger(__name__)

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(eq=False)
class _Offer:
    stream: ZeroCopyTLSStream
    attach: t.AttachConnection
    request: t.ResumeChannel
    taken: trio.Event = field(default_factory=trio.Event)
    used: bool = False


class ChannelResume:
    """See the module docstring."""

    def __init__(self, channel_id: int, identity: str, grace_s: float, *, wake_acks: Callable[[], None]) -> None:
        self.channel_id = channel_id
        self.identity = identity
        self.grace_s = grace_s
        self.credentials = t.ResumeCredentials(channel_id, identity, secrets.token_bytes(32))
        self._wake_acks = wake_acks
        self.stream: ResumableStream | None = None
        #: an ack due now (every `ack_every` bytes), for the session's ack task
        self.pending_ack: t.ChannelAck | None = None
        self._offer: _Offer | None = None
        self._offered = trio.Event()
        self._ended = False
        #: the relay waits here for the client's new connection (a restart's freeze waits for this)
        self.waiting = False
        self.waiting_changed = trio.lowlevel.ParkingLot()
        #: set while the client has no control session (heartbeat loss, a broken connection)
        self._orphaned = trio.Event()
        self._adopted = trio.Event()

    def wrap(self, inner: trio.abc.Stream, *, peer: str, channel: t.ResumableChannel | None = None) -> ResumableStream:
        """The channel's data stream; `channel`: the state a predecessor handed over (restart)."""
        state = t.ResumableChannel(self.channel_id) if channel is None else channel
        self.stream = ResumableStream(inner, state, self._reconnect, peer=peer, on_ack=self._ack_due)
        return self.stream

    @classmethod
    def restored(cls, handed: t.HandedChannel, *, wake_acks: Callable[[], None]) -> ChannelResume:
        """A channel's resume side taken over from the process before a restart:
        its credential in force, its counts and replay; the client's connection
        to the old process is gone, so the first use of the stream waits for
        the client's `ResumeChannel` here."""
        resume = cls(handed.channel_id, handed.client, handed.grace_s, wake_acks=wake_acks)
        resume.credentials = t.ResumeCredentials.restored(
            handed.channel_id, handed.client, handed.secret, handed.generation
        )
        stream = resume.wrap(_Gone(), peer=f"{handed.client} channel {handed.channel_id}", channel=handed.channel())
        stream.resumes = handed.resumes
        return resume

    def export(self) -> tuple[bytes, int]:
        """(secret, generation) of the credential in force, for a successor."""
        return self.credentials.export()

    def _ack_due(self, ack: t.ChannelAck) -> None:
        self.pending_ack = ack
        self._wake_acks()

    def take_ack(self) -> t.ChannelAck | None:
        """The ack to send now (a due one, else one for anything unacknowledged)."""
        ack, self.pending_ack = self.pending_ack, None
        if self.stream is None:
            return ack
        return self.stream.ack_now() or ack

    @property
    def orphaned(self) -> bool:
        """The client's control session ended here and no other took the channel up yet."""
        return self._orphaned.is_set()

    @property
    def suspended(self) -> bool:
        return self.stream is not None and self.stream.suspended

    def orphan(self) -> None:
        """The client's control session ended: `watch` starts the grace period."""
        self._adopted = trio.Event()
        self._orphaned.set()

    def adopt(self) -> None:
        """The client is back with a new control session: it gets our count again
        (acks sent on the old one may be lost, and the client may be waiting for room).
        Also when the client's acks come through another node of a cluster: it is not away."""
        if self._orphaned.is_set():  # else `watch` waits on this very event: keep it
            self._orphaned = trio.Event()
            self._adopted.set()
        if self.stream is not None:
            # while the reactor holds the channel this races with its count: at worst one ack more
            self.stream.channel.acks_lost()
        self._wake_acks()

    async def watch(self, end: Callable[[str], None]) -> None:
        """Run beside the relay: `end` the channel once its client has had no
        control session for the grace period (heartbeat loss means suspended,
        not gone - until then)."""
        while True:
            await self._orphaned.wait()
            adopted = self._adopted
            with trio.move_on_after(self.grace_s):
                await adopted.wait()
            if not adopted.is_set():
                log.warning(
                    "channel %d of %s: the client stayed away longer than %g s (resume_grace_s); ending it",
                    self.channel_id,
                    self.identity,
                    self.grace_s,
                )
                end(f"the client did not come back within {self.grace_s:g} s (resume_grace_s)")
                return

    def end(self) -> None:
        """The channel is over: an offer waiting now or later is not taken."""
        self._ended = True
        if self._offer is not None:
            self._offer.taken.set()

    async def offer(self, stream: ZeroCopyTLSStream, attach: t.AttachConnection, request: t.ResumeChannel) -> bool:
        """The client's new data connection (its credential already redeemed):
        wait until the channel takes it (True: it owns the stream now) or ends."""
        if self._ended or self.stream is None:
            return False
        if self._offer is not None:
            self._offer.taken.set()  # a newer connection replaces one not taken yet
        offer = self._offer = _Offer(stream, attach, request)
        self._offered.set()
        self.stream.interrupt("the client came back on a new connection")  # the old one may still look alive
        await offer.taken.wait()
        return offer.used

    async def _reconnect(self, why: str) -> tuple[trio.abc.Stream, bytes]:
        assert self.stream is not None
        log.warning(
            "channel %d of %s suspended (%s): waiting up to %g s (resume_grace_s) for the client to resume it",
            self.channel_id,
            self.identity,
            why,
            self.grace_s,
        )
        started = trio.current_time()
        deadline = started + self.grace_s
        while True:
            self.waiting = True
            self.waiting_changed.unpark_all()
            try:
                with trio.move_on_at(deadline):
                    await self._offered.wait()
            finally:
                self.waiting = False
            offer = self._offer
            if offer is None:
                raise trio.BrokenResourceError(
                    f"the client did not resume channel {self.channel_id} within {self.grace_s:g} s (resume_grace_s)"
                )
            self._offer, self._offered = None, trio.Event()
            offer.used = True
            offer.taken.set()
            channel = self.stream.channel
            try:
                replay = channel.resume(offer.request.received)
            except t.ResumeError as exc:
                refusal = t.ResumeAnswer(False, reason=exc.reason[:200])
                with trio.move_on_after(1.0):
                    try:
                        await offer.stream.send_all(offer.attach.send(refusal))
                    except _GONE:
                        pass
                await trio.aclose_forcefully(offer.stream)
                raise trio.BrokenResourceError(f"channel {self.channel_id} cannot resume: {exc.reason}") from exc
            answer = t.ResumeAnswer(True, channel.incoming.received, self.credentials.current(self.identity))
            try:
                await offer.stream.send_all(offer.attach.send(answer))
            except _GONE:
                await trio.aclose_forcefully(offer.stream)
                continue  # the client redials (its credential is spent: it will be refused)
            trailing, _ = offer.attach.trailing_data()
            log.info(
                "channel %d of %s resumed after %.2f s: %d byte(s) sent again",
                self.channel_id,
                self.identity,
                trio.current_time() - started,
                len(replay),
            )
            stream: trio.abc.Stream = PrefixedStream(offer.stream, trailing) if trailing else offer.stream
            return stream, replay


class _Gone(trio.abc.Stream):
    """The data connection of a channel taken over at a restart: it went with the old process."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("the connection went with the gateway's previous process")

    async def receive_into(self, buffer: object) -> int:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("the connection went with the gateway's previous process")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("the connection went with the gateway's previous process")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
