"""The tunnel port: TLS from thin clients, control and data connections.

Every connection is mutual TLS 1.3; the client's identity comes from its
certificate (`verify_peer`, with the CRL), never from a message.  The first
frame says what the connection is (`OpeningClassifier`): a `client_hello`
starts a control session (hellos, inventory, heartbeats both ways, channel
answers), an `attach` hands a data connection to the channel waiting for it,
a `resume_channel` (issue 16, `gateway/resume.py`) a new data connection to
a resumable channel whose old one broke: the credential is redeemed here,
against the certificate's identity, before the channel hears of it.

The control session runs on `redirgate.transport.ControlSession` (read loop,
heartbeats, shielded sends); this module gives it the gateway's handlers.
A client that went away is one error, `PeerGone`.

Any refusal - no or wrong certificate, garbage, a stalled handshake, a
malformed or oversized message, a wrong token - ends that one connection
with one log line naming the peer and the reason; nothing else is touched.

Shutdown: the listener's nursery is cancelled by the service; sessions end
with their connections, and `Registry.remove` fails their channels so the
hypervisor sockets close too.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import ssl
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from redirgate.gateway.admission import HandshakeGate, take_ticket_line
from redirgate.gateway.errors import ChannelError
from redirgate.gateway.limits import ClientLimits, Every, HandshakeLimits, RefusalLog, clip_ids
from redirgate.gateway.pki import RevocationList
from redirgate.gateway.registry import ClientSession, Registry
from redirgate.gateway.resume import ChannelResume
from redirgate.proto import tunnel as t
from redirgate.transport import (
    ControlSession,
    Handler,
    PeerGone,
    PeerKind,
    PeerSilent,
    PrefixedStream,
    QuietReader,
    Refusal,
    SignedCrl,
    TimerWheel,
    TlsRefused,
    ZeroCopyTLSStream,
    accept_tls,
    peer_gone,
    peer_label,
    verify_peer,
)

if TYPE_CHECKING:
    from redirgate.gateway.cluster.acks import RemoteAcks
    from redirgate.gateway.cluster.identity import ClusterIdentity
    from redirgate.gateway.events import GatewayEvents

__all__ = ["ClientControl", "TunnelServer"]

log = logging.getLogger(__name__)

_RECEIVE_BYTES = 65536
#: Unacknowledged bytes of a resumable channel below `ack_every` are acknowledged after this long.
ACK_IDLE_S = 0.5
#: The sessions' revocation checks look at the CRL file at most this often (or every heartbeat interval).
CRL_LOOK_S = 1.0
#: A client must finish its first frame this soon after the handshake.
FIRST_FRAME_TIMEOUT_S = 10.0
#: A connection turned away waits this long at most for its ClientHello, then for the busy line to go.
BUSY_WAIT_S = 2.0
#: ... and at most this many wait for their ClientHello at once.
BUSY_WAITING = 256
#: The sessions' shared heartbeat timers wake at most once per this share of the interval (a timer
#: fires up to 1 % of an interval late, never early): 20,000 idle clients cost ~100 wake-ups a
#: minute instead of one each per interval.
TIMER_RESOLUTION = 0.01


class TunnelServer:
    """Serves one tunnel listener's connections (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        context: ssl.SSLContext,
        *,
        revocation: RevocationList | None = None,
        handshake_timeout_s: float = 10.0,
        heartbeat_interval_s: float = 10.0,
        heartbeat_timeout_s: float = 30.0,
        heartbeat_rtt_every: int = 6,
        software: str = "redirgate gateway",
        limits: ClientLimits | None = None,
        handshake_limits: HandshakeLimits | None = None,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or ClientLimits()
        #: what the bounds refused or held back, over the gateway's life (`gateway status` "counters")
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters
        self.gate = HandshakeGate(handshake_limits or HandshakeLimits(), "tunnel", self.counters, pace=True)
        #: failed handshakes and refused certificates: a few lines and a summary per interval
        self.refusal_log = RefusalLog(log, "tunnel", self.limits.log_interval_s)
        #: once-per-interval warnings about a duplicate identity, by identity
        self._duplicates: dict[str, Every] = {}
        self.context = context
        self.revocation = revocation
        self.handshake_timeout_s = handshake_timeout_s
        #: every control session's heartbeats and timeout: one task (`run_timers`) for all of them
        self.timers = TimerWheel()
        #: the sessions waiting for their client: one task reads them all and answers heartbeats
        self.quiet = QuietReader()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        #: our own heartbeat to a client that spoke within the interval only every Nth interval
        #: (its heartbeats and our answers keep both sides alive; ours times the round trip)
        self.heartbeat_rtt_every = heartbeat_rtt_every
        self.software = software
        #: what our hello advertises (without RESUME_CAPABILITY: no channel is resumable)
        self.capabilities = frozenset({t.RESUME_CAPABILITY, t.STREAM_DROPS_CAPABILITY})
        self.refusals = 0
        #: connections to be turned away that wait for their first bytes: a ticket line (`_queue_ticket`), or the
        #: ClientHello before the busy line (`_busy`)
        self.busy_waiting = 0
        #: metrics and audit (set by the Gateway; None in bare tests)
        self.events: GatewayEvents | None = None
        #: the other nodes' tunnel addresses, told to clients that can use them (a cluster sets it)
        self.peers: Callable[[], tuple[str, ...]] = tuple
        #: a cluster: the acks of channels whose halves are on two nodes
        self.remote_acks: RemoteAcks | None = None
        #: a cluster: one live session per identity across the nodes
        self.cluster_identity: ClusterIdentity | None = None
        #: when the sessions' revocation checks look at the CRL file next (`_revoked`)
        self._crl_look_at = -math.inf
        #: every client connection past its handshake (weak: they go with the stream), for `cut_all`
        self._live: weakref.WeakSet[ZeroCopyTLSStream] = weakref.WeakSet()
        #: a restart is handing this gateway's channels to its successor: no session or resume starts here
        self.handing_over = False

    async def run_timers(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The tasks every session shares: its heartbeat timers, the reader of quiet sessions
        (the service starts them before the listener)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.timers.run)
            await nursery.start(self.quiet.run)
            task_status.started()

    @property
    def heartbeat_interval_s(self) -> float:
        return self._heartbeat_interval_s

    @heartbeat_interval_s.setter
    def heartbeat_interval_s(self, value: float) -> None:  # a reload may change it
        self._heartbeat_interval_s = value
        self.timers.resolution_s = value * TIMER_RESOLUTION

    def cut_all(self) -> int:
        """Break every client connection at once, without close_notify (a
        restart: the clients resume against the successor); returns how many."""
        live = list(self._live)
        for stream in live:
            stream.cut()
        return len(live)

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One accepted TCP connection on the tunnel port."""
        peer = peer_label(tcp.socket)
        # a client may first send back its place in the pacer's queue (`proto.tunnel.busy`): read before
        # the admission when it would be turned away without one, else within the handshake's slot
        looked, place, silent = False, None, False
        if self.gate.pacer is not None and self.gate.turns_away(peer):
            looked, place, here = await self._queue_ticket(tcp)
            if not here:
                await trio.aclose_forcefully(tcp)
                return
            silent = not looked  # not a byte within BUSY_WAIT_S (or too many waiting): no more waiting for it
        with self.gate.admit(peer, place) as ticket:
            if ticket:  # the slot is held for the handshake only
                try:
                    deadline = trio.current_time() + self.handshake_timeout_s  # for the ticket line and the handshake
                    if not looked:  # (also with pacing off: a client may hold a ticket from before a reload)
                        with trio.fail_at(deadline):
                            await take_ticket_line(tcp.socket)
                    left = max(0.0, deadline - trio.current_time())
                    stream = await accept_tls(tcp, self.context, handshake_timeout_s=left)
                except trio.TooSlowError:
                    ticket.abandon()
                    self._tls_refused(TlsRefused(peer, Refusal.HANDSHAKE_TIMEOUT, "no ClientHello"))
                    await trio.aclose_forcefully(tcp)
                    return
                except TlsRefused as refused:
                    if refused.refusal in (Refusal.HANDSHAKE_TIMEOUT, Refusal.CLOSED):
                        ticket.abandon()  # started, never finished: counted as handshakes_abandoned
                    self._tls_refused(refused)
                    return
        if not ticket:
            if ticket.retry_after_s is not None:
                await self._busy(tcp, ticket.retry_after_s, ticket.queue_ticket, wait=not silent)
            await trio.aclose_forcefully(tcp)
            return
        self._live.add(stream)
        peer = stream.peer
        try:
            identity = verify_peer(stream.getpeercert(), peer=peer, kind=PeerKind.CLIENT, revocation=self.revocation)
        except TlsRefused as refused:
            self._tls_refused(refused)
            if refused.refusal in (Refusal.REVOKED, Refusal.CRL_STALE):  # told, so the client can say why
                await _goodbye(stream, t.Error(code=t.ErrorCode.UNAUTHORIZED, message=refused.reason[:500]))
            await trio.aclose_forcefully(stream)
            return
        handed_over = False
        try:
            with peer_gone(peer):
                opening = t.OpeningClassifier()
                with trio.move_on_after(FIRST_FRAME_TIMEOUT_S) as waited:
                    kind = None
                    while kind is None:
                        data = await stream.receive_some(_RECEIVE_BYTES)
                        opening.receive_data(data)
                        kind = opening.result()
                if waited.cancelled_caught:
                    log.warning(
                        "tunnel: %s (%s) sent no first message in %.0f s; closed", identity, peer, FIRST_FRAME_TIMEOUT_S
                    )
                    return
                if kind is t.Opening.CONTROL:
                    await self._control(stream, identity, peer, opening.buffered())
                else:
                    handed_over = await self._data(stream, identity, peer, opening.buffered())
        except t.RemoteProtocolError as exc:
            log.warning("tunnel: %s (%s) broke the protocol: %s; closed", identity, peer, exc)
        except PeerGone as exc:
            log.info("tunnel: connection from %s (%s) lost: %s", identity, peer, exc.reason)
        finally:
            if not handed_over:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await stream.aclose()

    async def _queue_ticket(self, tcp: trio.SocketStream) -> tuple[bool, bytes | None, bool]:
        """The ticket line a connection that would be turned away may start with: (whether its first
        bytes were looked at, the ticket if any, whether it is still there).  Waits at most BUSY_WAIT_S,
        and at most BUSY_WAITING connections wait at once (with the busy line's); the others are
        not looked at (no ticket: a new place at the end)."""
        if self.busy_waiting >= BUSY_WAITING:
            return False, None, True
        self.busy_waiting += 1
        try:
            with trio.move_on_after(BUSY_WAIT_S):
                place, here = await take_ticket_line(tcp.socket)
                return True, place, here
            return False, None, True  # silent so far: a stranger, or a client slow to speak (the busy line at once)
        finally:
            self.busy_waiting -= 1

    async def _busy(
        self, tcp: trio.SocketStream, retry_after_s: float, place: bytes | None = None, *, wait: bool = True
    ) -> None:
        """Turn a connection away before its handshake: the busy line with the hint and the
        client's place in the queue (`proto.tunnel.busy`); the caller closes it then.  The
        line goes out once the client's ClientHello is here (read and dropped), so the client
        is waiting for our answer and peeks at it before its OpenSSL reads: a line that came
        earlier could be read as a bad TLS record.  At most BUSY_WAITING connections wait for
        that at once (strangers that never speak cost a descriptor for BUSY_WAIT_S each); the
        others get the line at once, and so does one that was silent for BUSY_WAIT_S already
        (not `wait`)."""
        if wait and self.busy_waiting < BUSY_WAITING:
            self.busy_waiting += 1
            try:
                with trio.move_on_after(BUSY_WAIT_S):
                    if not await tcp.receive_some(_RECEIVE_BYTES):
                        return  # gone already
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            finally:
                self.busy_waiting -= 1
        with trio.move_on_after(BUSY_WAIT_S):
            try:
                await tcp.send_all(t.busy_line(retry_after_s, place))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # ------------------------------------------------------------- data
    async def _data(self, stream: ZeroCopyTLSStream, identity: str, peer: str, first: bytes) -> bool:
        attach = t.AttachConnection("gateway")
        attach.receive_data(first)
        message = attach.next_event()
        while message is t.NEED_DATA:
            attach.receive_data(await stream.receive_some(_RECEIVE_BYTES))
            message = attach.next_event()
        if isinstance(message, t.ResumeChannel):
            return await self._resume(stream, identity, peer, attach, message)
        if not isinstance(message, t.Attach):
            return False  # CLOSED
        try:
            # a channel this node expects for a client whose control connection is on
            # another node of the cluster is found by the token this node issued
            remote = self.registry.remote_for_attach(identity, message.channel_id, message.token_matches)
            channel = remote or self.registry.channel_for_attach(identity, message.channel_id)
            if remote is None and not message.token_matches(channel.token):
                raise _AttachRefused(identity, f"wrong attach token for channel {message.channel_id}", "wrong_token")
            why = channel.claim()
            if why:
                raise _AttachRefused(identity, why, "replayed" if "already used" in why else "channel_ended")
        except ChannelError as exc:
            self.refusals += 1
            why = getattr(exc, "counter", "no_channel")
            self.counters[f"attach_refused_{why}"] += 1
            log.warning("tunnel: refused data connection from %s (%s): %s", identity, peer, exc.reason)
            if self.events is not None:
                self.events.refused(f"attach_{why}", peer=peer, detail=exc.reason, client=identity)
            await stream.send_all(attach.send(t.AttachResult(ok=False, reason=exc.reason[:200])))
            return False
        trailing, _eof = attach.trailing_data()
        session = self.registry.clients.get(identity)
        resume = None
        if remote is not None:
            # the client's node says whether its session can resume: wait for its answer
            # (the client dials here once it told its node, so the answer is near)
            with trio.move_on_after(FIRST_FRAME_TIMEOUT_S):
                await remote.answered.wait()
            if remote.client_resumes and remote.resume_grace_s > 0 and self.remote_acks is not None:
                resume = ChannelResume(
                    channel.channel_id, identity, channel.resume_grace_s, wake_acks=self.remote_acks.wake
                )
        elif session is not None and session.resumable and channel.resume_grace_s > 0:
            wake = functools.partial(self.registry.wake_acks, identity)  # whichever session is up then
            resume = ChannelResume(channel.channel_id, identity, channel.resume_grace_s, wake_acks=wake)
            session.wake_acks()  # the ack task starts (or looks again): its idle acks free the client's replay
        credential = resume.credentials.current(identity) if resume is not None else b""
        await stream.send_all(attach.send(t.AttachResult(ok=True, credential=credential)))
        data: Any = stream
        if resume is not None:
            inner = PrefixedStream(stream, trailing) if trailing else stream
            data, trailing = resume.wrap(inner, peer=f"{identity} channel {channel.channel_id}"), b""
            channel.resume = resume
        if remote is not None and resume is not None:
            self.registry.remote_resumable[(identity, channel.channel_id)] = channel
            if self.remote_acks is not None:
                self.remote_acks.wake()
        if not channel.attach(data, trailing):
            self.registry.remote_resumable.pop((identity, channel.channel_id), None)
            log.info(
                "tunnel: data connection for channel %d of %s arrived after the route gave up",
                message.channel_id,
                identity,
            )
            return False
        log.info("tunnel: %s attached channel %d (%s)", identity, channel.channel_id, channel.device)
        return True

    async def _resume(
        self, stream: ZeroCopyTLSStream, identity: str, peer: str, attach: t.AttachConnection, request: t.ResumeChannel
    ) -> bool:
        """A new data connection for a resumable channel: True once the channel took it."""
        if self.handing_over:  # unanswered, the credential unspent: the client redials the successor
            log.info(
                "tunnel: %s (%s) resumes channel %d during a restart; it will reach the new process",
                identity,
                peer,
                request.channel_id,
            )
            stream.cut()
            return False
        channel = self.registry.channel_for_resume(identity, request.channel_id)
        resume = channel.resume if channel is not None else None
        if resume is None or not resume.credentials.redeem(identity, request.credential):
            self.refusals += 1
            self.counters["resume_refused"] += 1
            why = f"channel {request.channel_id} is not resumable (ended, or a wrong or used credential)"
            log.warning("tunnel: refused to resume from %s (%s): %s", identity, peer, why)
            await stream.send_all(attach.send(t.ResumeAnswer(False, reason=why)))
            return False
        self.counters["channels_resumed"] += 1
        log.info("tunnel: %s (%s) resumes channel %d", identity, peer, request.channel_id)
        return await resume.offer(stream, attach, request)

    # ---------------------------------------------------------- control
    async def _control(self, stream: ZeroCopyTLSStream, identity: str, peer: str, first: bytes) -> None:
        control = ClientControl(self, stream, identity, peer, first)
        hello = await control.receive()  # the classifier saw the whole first frame: no read here
        if isinstance(hello, t.Error):
            log.warning("tunnel: %s (%s) opened with an error: %s %s", identity, peer, hello.code, hello.message)
            return
        assert isinstance(hello, t.ClientHello)  # the state table allows nothing else first
        if self.handing_over:
            log.info("tunnel: %s (%s) connected during a restart; it will reach the new process", identity, peer)
            stream.cut()
            return
        old = self.registry.clients.get(identity)
        if old is not None and not old.closed and self.alive(old):
            await self._refuse_duplicate(control, identity, peer, old.peer)
            return
        if self.cluster_identity is not None:  # the same rule across the nodes of a cluster
            elsewhere = await self.cluster_identity.live_elsewhere(identity)
            if elsewhere is not None:
                node, other = elsewhere
                await self._refuse_duplicate(control, identity, peer, other, node)
                return
        clustered = t.CLUSTER_CAPABILITY in hello.capabilities
        await control.send(
            t.GatewayHello(
                software=self.software,
                capabilities=self.capabilities,
                heartbeat_interval_s=self.heartbeat_interval_s,
                heartbeat_timeout_s=self.heartbeat_timeout_s,
                gateways=self.peers() if clustered else (),
            )
        )
        if t.CRL_CAPABILITY in hello.capabilities:
            control.wants_crl = True
            await control.send_crl()
        session = control.client
        session.capabilities = hello.capabilities
        session.resumable = t.RESUME_CAPABILITY in hello.capabilities & self.capabilities
        session.start_acks = control.start_acks  # before `add`: adopted channels start it
        old = self.registry.add(session)
        if old is not None:
            log.info(
                "tunnel: %s reconnected from %s; its previous session from %s (silent for %.0f s) ends",
                identity,
                peer,
                old.peer,
                trio.current_time() - old.last_heard(),
            )
            old.close("replaced by a new connection")
        log.info("tunnel: client %s online from %s (%s)", identity, peer, hello.software or "unknown software")
        reason = "replaced by a new connection"
        try:
            with session.scope:
                reason = await control.serve(
                    ClientControl.HANDLERS,
                    heartbeat_interval_s=self.heartbeat_interval_s,
                    heartbeat_timeout_s=self.heartbeat_timeout_s,
                    before_heartbeat=control.check_revocation,
                    rtt_every=self._rtt_every,
                    tasks=[control.send_acks] if control.acking else (),
                    timers=self.timers,
                    quiet=self.quiet,
                )
        except PeerSilent as exc:
            reason = exc.reason
            log.warning("tunnel: %s (%s): %s; closing", identity, peer, reason)
        except PeerGone as exc:
            reason = f"connection lost: {exc.reason}"
        except t.RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("tunnel: %s (%s) broke the protocol: %s; closed", identity, peer, exc)
            with trio.move_on_after(1.0):
                try:
                    await control.send(t.Error(code=t.ErrorCode.PROTOCOL, message=str(exc)[:500]), timeout_s=1.0)
                except (PeerGone, t.LocalProtocolError):
                    pass
        finally:
            self.registry.remove(session, f"client {identity} went offline ({reason})")
            log.info("tunnel: client %s offline: %s", identity, reason)

    def _rtt_every(self) -> int:
        return self.heartbeat_rtt_every

    def _tls_refused(self, refused: TlsRefused) -> None:
        """One failed handshake or refused certificate: counted, logged (a storm: summed up), metered."""
        self.refusals += 1
        self.refusal_log.refused(
            trio.current_time(), refused.refusal.value, "tunnel: refused %s: %s", refused.peer, refused.reason
        )
        if self.events is not None:
            self.events.tls_failed(refused.refusal.name.lower(), peer=refused.peer, detail=refused.reason)

    # One session per identity.  The rule: the live session stays.  A second
    # connection with the same certificate while the first was heard from
    # within 1.5 heartbeat intervals (two thin clients with one certificate,
    # e.g. a cloned image) is refused with an Error naming the other address,
    # counted, and logged at WARNING once per interval per identity; a
    # session silent for longer is presumed dead (a client reconnecting after
    # its connection broke) and is replaced.
    #
    # In a cluster the same rule holds across nodes (`cluster.identity`): a
    # node asks the node that holds the identity whether that session is
    # alive before it answers a hello, and a node that finds one of its
    # clients registered on another node too (both accepted while Redis was
    # away, or at the same instant) keeps the older live session and closes
    # the newer one, or closes its own if it is the silent one.
    def alive(self, session: ClientSession) -> bool:
        """Heard from within 1.5 heartbeat intervals (the rule above)."""
        return trio.current_time() - session.last_heard() < 1.5 * self.heartbeat_interval_s

    def duplicate(self, identity: str, peer: str, live_peer: str, *, node: str = "", live_node: str = "") -> str:
        """Count and log (once per interval per identity) a second session of `identity` from `peer`
        while the one from `live_peer` lives; the message its client is told."""
        self.counters["duplicate_identity_refused"] += 1
        here = f" on node {node}" if node else ""
        there = f" on node {live_node}" if live_node else ""
        if self.events is not None:
            self.events.refused(
                "duplicate_identity", peer=peer, detail=f"live session from {live_peer}{there}", client=identity
            )
        every = self._duplicates.get(identity)
        if every is None:
            if len(self._duplicates) > 10_000:  # bounded: forget the oldest intervals
                self._duplicates.clear()
            every = self._duplicates[identity] = Every(self.limits.log_interval_s)
        if every.due(trio.current_time()):
            log.warning(
                "tunnel: client %s connected from %s%s while its session from %s%s is alive: two clients with one "
                "certificate? The live session stays, the new connection is refused (%d more since the last line)",
                identity,
                peer,
                here,
                live_peer,
                there,
                every.take_held(),
            )
        return f"client {identity} is already connected from {live_peer}{there}; one connection per certificate"

    async def _refuse_duplicate(
        self, control: ClientControl, identity: str, peer: str, live_peer: str, live_node: str = ""
    ) -> None:
        node = self.cluster_identity.node.name if self.cluster_identity is not None else ""
        message = self.duplicate(identity, peer, live_peer, node=node, live_node=live_node)
        with trio.move_on_after(1.0):
            try:
                await control.send(t.Error(code="duplicate_identity", message=message), timeout_s=1.0)
            except (PeerGone, t.LocalProtocolError):
                pass

    def _revoked(self, control: ClientControl) -> bool:
        """A revocation that arrived while the session was up.  Each heartbeat interval costs
        a session no I/O and no parsing: the CRL file is looked at (a stat) at most every
        CRL_LOOK_S for all sessions together and re-read only when it changed, and a session's
        certificate is parsed and checked only against a CRL it was not checked against yet."""
        revocation = self.revocation
        if revocation is None:
            return False
        now = trio.current_time()
        if now >= self._crl_look_at:
            self._crl_look_at = now + min(CRL_LOOK_S, self.heartbeat_interval_s)
            revocation.refresh()
        crl = revocation.current
        if control.crl_checked is crl:
            return False
        control.crl_checked = crl
        cert = control.tls.peer_certificate()
        return cert is not None and crl.revokes(cert)


async def _goodbye(stream: ZeroCopyTLSStream, error: t.Error) -> None:
    """Send `error` as the gateway's first and last control message (bounded in time),
    and read what the client sent meanwhile so that closing does not reset the
    connection before the client read it."""
    with trio.move_on_after(1.0):
        try:
            await stream.send_all(t.TunnelConnection("gateway").send(error))
            while await stream.receive_some(_RECEIVE_BYTES):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


class _AttachRefused(ChannelError):
    """An attach refused for `counter` (the status counter's suffix)."""

    def __init__(self, peer: str, reason: str, counter: str) -> None:
        super().__init__(peer, reason)
        self.counter = counter


class ClientControl(ControlSession):
    """One client's control session at the gateway: the driver, the client as
    the registry sees it (`client`), and the gateway's handlers (`HANDLERS`,
    one table for every session)."""

    __slots__ = ("acking", "client", "crl_checked", "crl_sent", "server", "tls", "wants_crl")

    def __init__(self, server: TunnelServer, stream: ZeroCopyTLSStream, identity: str, peer: str, first: bytes):
        super().__init__(stream, "gateway", peer=f"{identity} ({peer})", received=first)
        self.server = server
        self.tls = stream
        self.client = ClientSession(identity, peer, self.send, server.limits)
        self.client.last_heard = self._last_heard
        self.client.rtt_s = self._rtt_s
        #: the ack task runs (or is in `serve`'s tasks)
        self.acking = False
        #: the client named CRL_CAPABILITY: it gets the CRL now and whenever it changes
        self.wants_crl = False
        #: the number of the CRL it was sent last
        self.crl_sent: int | None = None
        #: the CRL its certificate was last checked against (`TunnelServer._revoked`)
        self.crl_checked: SignedCrl | None = None

    def _rtt_s(self) -> float | None:
        """Read when asked (no handler per acknowledged heartbeat: the quiet reader times it alone)."""
        tracker = self.tracker
        return tracker.rtt_s if tracker is not None else None

    def _last_heard(self) -> float:
        tracker = self.tracker
        return tracker.last_received if tracker is not None else trio.current_time()

    async def send_crl(self) -> None:
        """Hand the client the CRL in force if it has not had this one (it checks
        our certificate against it: revocation both ways)."""
        revocation = self.server.revocation
        if not self.wants_crl or revocation is None or revocation.current.number == self.crl_sent:
            return
        crl = revocation.current
        self.crl_sent = crl.number
        if len(crl.der) > t.MAX_CRL_BYTES:
            log.error(
                "tunnel: CRL #%d is %d bytes, more than a control message carries (%d); clients do not get it",
                crl.number,
                len(crl.der),
                t.MAX_CRL_BYTES,
            )
            return
        await self.send(t.Revocations(crl.der))

    def check_revocation(self) -> None:
        """Every heartbeat interval: end the session if its certificate was revoked meanwhile
        (the client is told so first); else hand it a CRL that changed."""
        if self.server._revoked(self):  # re-reads the CRL file if it changed
            log.warning(
                "tunnel: %s (%s): certificate revoked; closing its session", self.client.identity, self.client.peer
            )
            if self.server.events is not None:
                self.server.events.revoked(client=self.client.identity, peer=self.client.peer)
            self.start_soon(self._revoked_goodbye)
            return
        revocation = self.server.revocation
        if revocation is not None and self.wants_crl and revocation.current.number != self.crl_sent:
            self.start_soon(self.send_crl)

    async def _revoked_goodbye(self) -> None:
        with trio.move_on_after(1.0):
            try:
                await self.send(t.Error(code=t.ErrorCode.UNAUTHORIZED, message="certificate revoked"), timeout_s=1.0)
            except (PeerGone, t.LocalProtocolError):
                pass
        self.finish("its certificate was revoked")

    def start_acks(self) -> None:
        """Start the ack task once (a session with resumable channels): in
        `serve`'s tasks if it has not started yet, else now."""
        if self.acking:
            return
        self.acking = True
        if self._nursery is not None:
            self.start_soon(self.send_acks)

    async def send_acks(self) -> None:
        """The ack task of a resumable session: an ack at once when one is due
        (`ack_every` bytes), else after ACK_IDLE_S for anything unacknowledged."""
        session = self.client
        while True:
            # every ACK_IDLE_S while it has resumable channels: bytes below `ack_every` wake nobody
            live = any(c.resume is not None for c in session.channels.values())
            with trio.move_on_after(ACK_IDLE_S if live else float("inf")):
                await session.acks_wanted.wait()
            session.acks_wanted = trio.Event()
            for channel in list(session.channels.values()):
                if channel.resume is not None:
                    ack = channel.resume.take_ack()
                    if ack is not None:
                        await self.send(ack)

    async def _channel_ack(self, event: t.ChannelAck) -> None:
        session = self.client
        session.adopted.discard(event.channel_id)
        if not session.inventoried:
            session.named.add(event.channel_id)
        channel = session.channels.get(event.channel_id)
        if channel is not None and channel.resume is not None and channel.resume.stream is not None:
            channel.resume.stream.acked(event)  # ResumeError (a protocol error) for bytes never sent
            return
        if channel is None:
            # a channel opened through another node of a cluster, which the client still serves
            # (its node died, it came here): the ids this session gives start above it
            session.skip_ids(event.channel_id)
        remote_acks = self.server.remote_acks
        if remote_acks is not None and (channel is None or channel.remote):
            remote_acks.from_client(session.identity, event)  # relayed here or on another node

    async def _inventory(self, event: t.Inventory) -> None:
        session = self.client
        remote_acks = self.server.remote_acks
        if not session.inventoried:
            session.inventoried = True
            if remote_acks is not None:  # before the inventory counts: no attach for this session precedes it
                await remote_acks.client_serves(session.identity, session.named)
        if session.adopted:  # the client came back without them: it restarted, its device state is gone
            for cid in sorted(session.adopted):
                channel = session.channels.get(cid)
                if channel is not None:
                    log.info("tunnel: %s no longer serves channel %d (it restarted); ending it", session.identity, cid)
                    channel.fail("the client restarted")
            session.adopted.clear()
        self._refused(session.set_inventory(event.devices))
        self._changed(f"exports {len(session.inventory)} device(s): {clip_ids(sorted(session.inventory))}")

    async def _inventory_update(self, event: t.InventoryUpdate) -> None:
        refused = self.client.update_inventory(event.added, event.removed)
        self._refused(refused)
        self._changed(f"inventory: +[{clip_ids(e.id for e in event.added)}] -[{clip_ids(event.removed)}]")

    # The bounds on inventories (`ClientLimits`).  Every change is applied at
    # once to the session's inventory (bounded, so nothing a client declares
    # within the bounds is lost); what the token bucket paces is what a change
    # costs everyone else: waking every waiting route and a log line.  Over
    # the rate, a change is coalesced: no wake-up, no line, counted; one flush
    # when the bucket has a token again wakes the routes once for all of them.
    def _changed(self, what: str) -> None:
        session, server = self.client, self.server
        now = trio.current_time()
        if not session.flush_scheduled and session.bucket.take(now):
            log.info("tunnel: %s %s", session.identity, what)
            server.registry.changed()
            return
        session.updates_coalesced += 1
        server.counters["inventory_updates_coalesced"] += 1
        if session.coalesced_log.due(now):
            log.warning(
                "tunnel: %s (%s) sends inventory updates faster than %g/s (inventory_updates_per_s): "
                "%d more coalesced since the last such line; they are applied, woken and logged together",
                session.identity,
                session.peer,
                session.limits.updates_per_s,
                session.coalesced_log.take_held(),
            )
        if not session.flush_scheduled:
            session.flush_scheduled = True
            self.start_soon(self._flush)

    async def _flush(self) -> None:
        session = self.client
        await trio.sleep_until(session.bucket.next_token_at(trio.current_time()))
        session.bucket.take(trio.current_time())
        session.flush_scheduled = False
        log.info(
            "tunnel: %s inventory now %d device(s) (coalesced updates applied)",
            session.identity,
            len(session.inventory),
        )
        self.server.registry.changed()

    def _refused(self, refused: int) -> None:
        if not refused:
            return
        session = self.client
        self.server.counters["devices_refused"] += refused
        if session.refused_log.due(trio.current_time()):
            log.warning(
                "tunnel: %s (%s): %d device(s) refused: a client keeps at most %d USB device(s) "
                "(max_devices_per_client) and %d serial/parallel port(s) (max_ports_per_client); "
                "%d refused in all; the session is kept",
                session.identity,
                session.peer,
                refused,
                session.limits.max_devices,
                session.limits.max_ports,
                session.devices_refused,
            )

    async def _channel_opened(self, event: t.ChannelOpened) -> None:
        channel = self.client.channels.get(event.channel_id)
        if channel is not None:
            channel.opened()

    async def _channel_failed(self, event: t.ChannelFailed) -> None:
        channel = self.client.channels.get(event.channel_id)
        if channel is not None:
            channel.fail(f"the client could not open {channel.device}: {event.reason}")
            if channel.remote:  # nobody here waits for it
                self.client.forget(channel)

    async def _close_channel(self, event: t.CloseChannel) -> None:
        channel = self.client.channels.get(event.channel_id)
        if channel is not None:
            channel.fail(f"closed by the client: {event.reason}")
            if channel.remote:
                self.client.forget(channel)

    async def _stream_drops(self, event: t.StreamDrops) -> None:
        self.client.stream_drops(event.channel_id, event.counts)

    async def _error(self, event: t.Error) -> None:
        session = self.client
        log.warning(
            "tunnel: %s (%s) reported an error: %s %s", session.identity, session.peer, event.code, event.message
        )
        self.finish("the client said goodbye")

    HANDLERS: ClassVar[Mapping[type[t.TunnelMessage], Handler]] = {
        t.ChannelAck: _channel_ack,
        t.Inventory: _inventory,
        t.InventoryUpdate: _inventory_update,
        t.ChannelOpened: _channel_opened,
        t.ChannelFailed: _channel_failed,
        t.CloseChannel: _close_channel,
        t.StreamDrops: _stream_drops,
        t.Error: _error,
    }
