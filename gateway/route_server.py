"""One route's hypervisor-facing listener: hold, open a channel, relay.

A QEMU chardev socket sends no preamble, so the port is the route.  For each
connection: the source address must be allowed (else closed at once, with a
log line); with `[route.tls]` the hypervisor must present a certificate from
our CA (`pki issue-hypervisor`) whose name is in the route's `hypervisors`
list when it has one; on a USB route it must then send a valid usbredir
hello within `usb_hello_timeout_s` (QEMU sends its hello at once).  Only a
connection that passed all of that takes the route: a stranger's handshake
or a silent socket never holds a device, and a real hypervisor arriving
meanwhile is served.  One hypervisor at a time per route: a newcomer on a
taken route is refused at once.  While
the client or its device is away the connection is *held*: QEMU's usb-redir
simply waits, and what it sends meanwhile is kept (bounded) and delivered
first.  For raw (serial/parallel) routes the gateway never stops reading a
held hypervisor socket - QEMU's UART and parallel models freeze the vCPU on
a peer that does not read - so past the bound it discards and counts.

Then: `OpenChannel` to the client, wait for its data connection, relay:
`relay_usbredir` with the guard for USB, `relay_raw` for raw routes (it
keeps reading the hypervisor while the client side does not take bytes:
bounded buffering, then counted discards, never a stalled VM), and the
plain lossless pump for RFC 2217 (a telnet consumer, not a VM, whose
commands a discard would cut).  Discards of both phases add up in
`discarded_bytes`.  When
the channel ends, for whatever reason, the hypervisor socket is closed: QEMU
sees the device unplugged and, with `reconnect=`, comes back later.
"""

from __future__ import annotations

import collections
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from redirgate.gateway.admission import HandshakeGate
from redirgate.gateway.config import Route
from redirgate.gateway.guarded_relay import GuardViolation, relay_usbredir
from redirgate.gateway.limits import Every, HandshakeLimits
from redirgate.gateway.raw_relay import RawFreezer, relay_raw
from redirgate.gateway.registry import Channel, Registry, describe_device
from redirgate.proto import tunnel as t
from redirgate.proto.usbredir import HelloGate
from redirgate.proto.usbredir.walker import HostStreamGuard
from redirgate.transport import (
    PeerGone,
    PeerKind,
    PlainSocketStream,
    PrefixedStream,
    ReceiveIntoStream,
    RelayReactor,
    RevocationChecker,
    TlsRefused,
    accept_tls,
    peer_label,
    relay,
    set_nodelay,
    verify_peer,
)

if TYPE_CHECKING:
    from redirgate.gateway.cluster.channels import RemoteChannels
    from redirgate.gateway.events import GatewayEvents

__all__ = ["LiveRelay", "RouteServer"]

log = logging.getLogger(__name__)

#: What a held hypervisor may send before the device is there.
HOLD_BUFFER_BYTES = 64 * 1024
#: QEMU's socket chardev reads at most 4096 bytes per call (READ_BUF_LEN in
#: chardev/char-socket.c) and, in 7.2, only wakes up on socket readiness: the
#: rest of a bigger TLS record stays inside GnuTLS and the channel stalls.
#: So TLS records towards a hypervisor carry at most this much
#: (ZeroCopyTLSStream's max_send_bytes, on the trio path and in the reactor).
HYPERVISOR_TLS_RECORD_BYTES = 4096
#: A hello is 64 bytes of version and a few capability words: more than this without one is not usbredir.
HELLO_MAX_BYTES = 4096
#: a route logs the iso OUT packets its client dropped at most this often
DROP_LOG_INTERVAL_S = 10.0


@dataclass(eq=False)
class LiveRelay:
    """What a restart needs of a channel's running relay (gateway/handover.py):
    the hypervisor's stream, and the relay's state a successor takes over."""

    hypervisor: PrefixedStream
    #: the usbredir guard of a USB channel
    guard: HostStreamGuard | None = None
    #: stops a raw channel's relay where nothing is in flight
    freezer: RawFreezer | None = None


class RouteServer:
    """Serves one `[[route]]` (see the module docstring)."""

    def __init__(
        self,
        route: Route,
        registry: Registry,
        *,
        tls_context: ssl.SSLContext | None = None,
        revocation: RevocationChecker | None = None,
        handshake_timeout_s: float = 10.0,
        open_timeout_s: float = 15.0,
        retry_s: float = 1.0,
        options: dict[str, Any] | None = None,
        hold_timeout_s: float = 0.0,
        hello_timeout_s: float = 5.0,
        resume_grace_s: float = 0.0,
        handshake_limits: HandshakeLimits | None = None,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        self.route = route
        #: TLS handshakes in progress on this route's listener, bounded
        self.gate = HandshakeGate(
            handshake_limits or HandshakeLimits(),
            f"route {route.name}",
            collections.Counter() if counters is None else counters,
        )
        #: a USB route's hypervisor must have sent its usbredir hello this soon
        self.hello_timeout_s = hello_timeout_s
        self.registry = registry
        self.tls_context = tls_context
        self.revocation = revocation
        self.handshake_timeout_s = handshake_timeout_s
        self.open_timeout_s = open_timeout_s
        self.retry_s = retry_s
        self.options = options or {}
        #: 0: hold a hypervisor until its device comes; else close it after this long
        self.hold_timeout_s = hold_timeout_s
        #: the gateway's grace period for resuming a channel (the route's own wins)
        self.resume_grace_s = resume_grace_s
        #: the gateway's relay reactor (None: relay in trio tasks)
        self.reactor: RelayReactor | None = None
        #: a cluster: channels through the node that holds the client (None: this gateway alone)
        self.cluster: RemoteChannels | None = None
        self.state = "idle"  # idle | held | active
        self.waiting_for = ""
        self.hypervisor = ""
        self.channel: Channel | None = None
        self.refusals = 0
        self.channels_served = 0
        self.discarded_bytes = 0
        self.last_end = ""
        #: metrics and audit (set by the Gateway; None in bare tests)
        self.events: GatewayEvents | None = None
        #: bytes of channels that ended, each way (the live channel's come on top)
        self.bytes_to_device = 0
        self.bytes_to_hypervisor = 0
        #: packets the client dropped on the route's channels (its `StreamDrops`): iso OUT, to the guest
        self.dropped = [0, 0]
        #: iso OUT drops are logged at most once per interval (status and metrics have every one)
        self._drop_log = Every(DROP_LOG_INTERVAL_S)
        self._drops_unlogged = 0
        self._device: dict[str, Any] = {}
        #: recent refusals, newest last (for `gateway status`)
        self.recent_refusals: deque[dict[str, Any]] = deque(maxlen=5)
        #: the active channel's relay (None while idle or held)
        self.live: LiveRelay | None = None

    @property
    def name(self) -> str:
        return self.route.name

    def bytes_moved(self) -> tuple[int, int]:
        """(to the device, to the hypervisor) over the route's life, the live channel included."""
        ch = self.channel
        live = (ch.stats.a_to_b, ch.stats.b_to_a) if ch is not None and self.state == "active" else (0, 0)
        return self.bytes_to_device + live[0], self.bytes_to_hypervisor + live[1]

    def _dropped(self, iso_out: int, to_guest: int) -> None:
        """The client says its channel dropped more packets (told also after the channel ended)."""
        self.dropped[0] += iso_out
        self.dropped[1] += to_guest
        self._drops_unlogged += iso_out
        if self._drops_unlogged and self._drop_log.due(time.monotonic()):
            log.warning(
                "route %s: client %s dropped %d more iso OUT packet(s) (the device fell behind the VM); %d in all",
                self.route.name,
                self.route.client,
                self._drops_unlogged,
                self.dropped[0],
            )
            self._drops_unlogged = 0

    def snapshot(self) -> dict[str, Any]:
        ch = self.channel
        return {
            "name": self.route.name,
            "listen": str(self.route.listen),
            "client": self.route.client,
            "device": self.route.device.text,
            "protocol": self.route.protocol,
            "tls": self.route.tls is not None,
            "state": self.state,
            "waiting_for": self.waiting_for if self.state == "held" else "",
            "hypervisor": self.hypervisor,
            "channels_served": self.channels_served,
            "refusals": self.refusals,
            "discarded_bytes": self.discarded_bytes,
            "iso_out_dropped": self.dropped[0],
            "to_guest_dropped": self.dropped[1],
            "last_end": self.last_end,
            "recent_refusals": list(self.recent_refusals),
            "channel": ch.snapshot() if ch is not None and self.state == "active" else None,
        }

    async def handle(self, tcp: trio.SocketStream) -> None:
        peer = peer_label(tcp.socket)
        host = peer.rsplit(":", 1)[0].strip("[]")
        route = self.route
        if not route.allows(host):
            nets = ", ".join(str(n) for n in route.allow)
            extra = " (the default: only loopback; set allow = [...] on the route)" if route.allow_defaulted else ""
            self._refused("source_not_allowed", peer, f"source address not allowed by {nets}{extra}")
            await trio.aclose_forcefully(tcp)
            return
        if self.state != "idle":
            self._refuse_busy(peer)
            await trio.aclose_forcefully(tcp)
            return
        # Authenticate before taking the route: handshakes and hellos of
        # several newcomers run side by side, the first to pass takes it.
        set_nodelay(tcp.socket)
        stream: ReceiveIntoStream
        if self.tls_context is not None:
            tls = await self._handshake(tcp, peer)
            if tls is None:
                return
            stream = tls
        else:
            stream = PlainSocketStream(tcp)
        first = b""
        if route.protocol == "usbredir":
            hello = await self._read_hello(stream, peer)
            if hello is None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await stream.aclose()
                return
            first = hello
        if self.state != "idle":
            self._refuse_busy(peer)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()
            return
        self.state, self.hypervisor = "held", peer
        try:
            await self._serve(stream, peer, first)
        finally:
            self.state, self.channel, self.live = "idle", None, None

    def _refuse_busy(self, peer: str) -> None:
        self._refused("route_busy", peer, f"the route is in use by {self.hypervisor}")

    def _refused(
        self, reason: str, peer: str, detail: str, *, tls: TlsRefused | None = None, verb: str = "refused"
    ) -> None:
        """One refused hypervisor: counted, logged, remembered for status, audited."""
        self.refusals += 1
        log.warning("route %s: %s hypervisor %s: %s", self.route.name, verb, peer, detail)
        self.recent_refusals.append({"time": time.time(), "peer": peer, "reason": detail})
        if self.events is not None:
            if tls is not None:
                self.events.tls_failed(tls.refusal.name.lower(), peer=peer, detail=detail, route=self.route.name)
            else:
                self.events.refused(reason, peer=peer, detail=detail, route=self.route.name)

    async def _handshake(self, tcp: trio.SocketStream, peer: str) -> ReceiveIntoStream | None:
        """TLS with the hypervisor, its certificate checked (CA, revocation, the
        route's `hypervisors`); None (logged, counted, closed) if refused."""
        route = self.route
        assert self.tls_context is not None and route.tls is not None
        with self.gate.admit(peer) as admitted:
            if admitted:  # the slot is held for the handshake only
                try:
                    tls = await accept_tls(
                        tcp,
                        self.tls_context,
                        handshake_timeout_s=self.handshake_timeout_s,
                        max_send_bytes=HYPERVISOR_TLS_RECORD_BYTES,
                    )
                except TlsRefused as refused:
                    self._refused("tls", peer, refused.reason, tls=refused)
                    return None
        if not admitted:
            self.refusals += 1
            await trio.aclose_forcefully(tcp)
            return None
        try:
            who = verify_peer(tls.getpeercert(), peer=peer, kind=PeerKind.HYPERVISOR, revocation=self.revocation)
        except TlsRefused as refused:
            self._refused("tls", peer, refused.reason, tls=refused)
            await trio.aclose_forcefully(tls)
            return None
        allowed = route.tls.hypervisors
        if allowed and who not in allowed:
            self._refused(
                "hypervisor_not_allowed",
                peer,
                f"certificate {who!r} is not allowed here (hypervisors = {', '.join(allowed)})",
            )
            await trio.aclose_forcefully(tls)
            return None
        log.info("route %s: hypervisor %s is %r (TLS %s)", route.name, peer, who, tls.version())
        return tls

    async def _read_hello(self, stream: ReceiveIntoStream, peer: str) -> bytes | None:
        """The bytes up to and including the hypervisor's usbredir hello, read
        within `hello_timeout_s`; None (logged, counted) without a valid one."""
        gate = HelloGate(HELLO_MAX_BYTES)
        buf = bytearray(HELLO_MAX_BYTES)
        why = ""
        with trio.move_on_after(self.hello_timeout_s) as waited:
            try:
                verdict = None
                while verdict is None:
                    n = await stream.receive_into(buf)
                    verdict = gate.receive_data(memoryview(buf)[:n])  # b"" (n == 0): the peer closed
                if verdict.ok:
                    return verdict.received
                why = verdict.reason
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                why = f"connection lost before its usbredir hello: {exc}"
        if waited.cancelled_caught:
            why = f"no usbredir hello within {self.hello_timeout_s:g} s (usb_hello_timeout_s)"
        self._refused("no_usbredir_hello", peer, why, verb="dropped")
        return None

    async def _serve(self, stream: ReceiveIntoStream, peer: str, first: bytes = b"") -> None:
        route = self.route
        held = bytearray(first)
        gone = False
        channel: Channel | None = None
        try:
            async with trio.open_nursery() as nursery:
                held_discards = [0, 1]  # bytes discarded while held, next count to log at

                async def hold() -> None:
                    nonlocal gone
                    buf = bytearray(16384)
                    while True:
                        if len(held) >= HOLD_BUFFER_BYTES and route.protocol == "usbredir":
                            await trio.sleep_forever()  # backpressure: usb-redir waits happily
                        try:
                            n = await stream.receive_into(buf)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            n = 0
                        if n == 0:
                            gone = True
                            nursery.cancel_scope.cancel()
                            return
                        room = max(0, HOLD_BUFFER_BYTES - len(held))
                        held.extend(memoryview(buf)[: min(n, room)])
                        if n > room:
                            self.discarded_bytes += n - room
                            held_discards[0] += n - room
                            if held_discards[0] >= held_discards[1]:  # the first, then at each doubling
                                held_discards[1] = held_discards[0] * 2
                                log.warning(
                                    "route %s: discarded %d byte(s) from %s so far while no device was attached",
                                    route.name,
                                    held_discards[0],
                                    peer,
                                )

                nursery.start_soon(hold)
                if self.hold_timeout_s > 0:
                    with trio.move_on_after(self.hold_timeout_s):
                        channel = await self._open_channel(peer)
                    if channel is None:
                        log.warning(
                            "route %s: closing hypervisor %s: no device within hold_timeout_s = %g (%s)",
                            route.name,
                            peer,
                            self.hold_timeout_s,
                            self.waiting_for,
                        )
                else:
                    channel = await self._open_channel(peer)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            gone = True
            log.info("route %s: hypervisor %s lost while held: %s", route.name, peer, exc)
        if channel is None or gone:
            if channel is not None:
                await self._close_channel(channel, "the hypervisor left")
            elif gone:
                log.info("route %s: hypervisor %s left before the device was attached", route.name, peer)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()
            return
        await self._relay(stream, bytes(held), channel, peer)

    async def _open_channel(self, peer: str) -> Channel:
        route = self.route
        logged = ""
        grace_s = self.resume_grace_s if route.resume_grace_s is None else route.resume_grace_s
        while True:
            if self.cluster is not None and not self.registry.online(route.client):
                remote = await self.cluster.open_for_route(
                    route, peer, self.options, self._note_wait(peer), grace_s=grace_s
                )
                if remote is not None:
                    channel, self._device = remote
                    return channel
                continue  # the client is here now
            why = self.registry.describe_wait(route.client, route.device)
            if why != "ready" and why != logged:
                log.info("route %s: holding hypervisor %s: %s", route.name, peer, why)
                logged = why
            self.waiting_for = why
            session, entry = await self.registry.wait_for_device(route.client, route.device)
            self._device = describe_device(entry)
            channel = session.new_channel(route=route.name, device=entry.id, hypervisor=peer)
            channel.resume_grace_s = grace_s
            opened = False
            reason = ""
            try:
                await session.send(
                    t.OpenChannel(
                        channel.channel_id,
                        entry.id,
                        channel.token,
                        protocol=t.ChannelProtocol(route.protocol),
                        options=self.options,
                    )
                )
                with trio.move_on_after(self.open_timeout_s):
                    await channel.ready.wait()
                opened = channel.state == "active"
                reason = channel.reason or f"no data connection within {self.open_timeout_s:g} s"
            except (PeerGone, t.LocalProtocolError) as exc:
                reason = f"control connection failed: {exc}"
            finally:
                if not opened:
                    session.forget(channel)
            if opened:
                return channel
            log.warning(
                "route %s: channel to %s on %s not opened: %s; retrying", route.name, entry.id, route.client, reason
            )
            logged = ""
            await trio.sleep(self.retry_s)

    def _note_wait(self, peer: str) -> Callable[[str], None]:
        """Why a held hypervisor waits, for status, and logged when it changes."""
        logged = ""

        def note(why: str) -> None:
            nonlocal logged
            self.waiting_for = why
            if why != logged:
                log.info("route %s: holding hypervisor %s: %s", self.route.name, peer, why)
                logged = why

        return note

    async def serve_handed(
        self, stream: ReceiveIntoStream, channel: Channel, to_client: bytes, guard: HostStreamGuard | None
    ) -> None:
        """Carry on a channel taken over from the process before a restart
        (gateway/handover.py): QEMU's socket, still open, and the channel
        whose client resumes against this process."""
        self.state, self.hypervisor = "held", channel.hypervisor
        try:
            await self._relay(stream, to_client, channel, channel.hypervisor, handed_guard=guard)
        finally:
            self.state, self.channel, self.live = "idle", None, None

    async def _relay(
        self,
        stream: ReceiveIntoStream,
        held: bytes,
        channel: Channel,
        peer: str,
        *,
        handed_guard: HostStreamGuard | None = None,
    ) -> None:
        route = self.route
        assert channel.stream is not None
        self.channel, self.state = channel, "active"
        self.channels_served += 1
        channel.on_drops = self._dropped
        started = time.monotonic()
        hv = PrefixedStream(stream, held)
        dev = PrefixedStream(channel.stream, channel.trailing)
        resumable = channel.resume.stream if channel.resume is not None else None
        live = self.live = LiveRelay(hv)
        if route.protocol == "usbredir":
            live.guard = handed_guard or HostStreamGuard()
        elif route.protocol == "raw" and resumable is not None:
            live.freezer = RawFreezer(resumable.channel.outgoing.sent_total)
        if self.events is not None:
            self.events.attached(
                route=route.name, client=route.client, device=self._device, hypervisor=peer, channel=channel.channel_id
            )
        log.info(
            "route %s: hypervisor %s <-> %s on client %s (channel %d)",
            route.name,
            peer,
            channel.device,
            route.client,
            channel.channel_id,
        )
        reason = ""
        discarded = 0

        def count_discard(n: int) -> None:
            nonlocal discarded
            discarded += n
            self.discarded_bytes += n

        async def move() -> None:
            if route.protocol == "usbredir":
                if handed_guard is not None and resumable is not None:
                    # taken over at a restart: the client's connection comes first, then
                    # the reactor moves the bytes (QEMU's usb-redir waits meanwhile)
                    try:
                        await resumable.recover("the gateway restarted")
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        channel.stats.ended_by, channel.stats.reason = "b", str(exc)
                        for s in (hv, dev):
                            await trio.aclose_forcefully(s)
                        return
                await relay_usbredir(
                    hv, dev, client=route.client, stats=channel.stats, reactor=self.reactor, guard=live.guard
                )
            elif route.protocol == "raw":
                await relay_raw(
                    hv,
                    dev,
                    label=f"route {route.name}: hypervisor {peer}",
                    stats=channel.stats,
                    on_discard=count_discard,
                    freezer=live.freezer,
                    mover=self.reactor,
                )
            else:
                await relay(hv, dev, stats=channel.stats, mover=self.reactor)

        try:
            with channel.cancel_scope:
                if channel.resume is None:
                    await move()
                else:
                    await _with_watch(move, channel)
            st = channel.stats
            if channel.cancel_scope.cancelled_caught:
                reason = channel.reason or "cancelled"
                for s in (hv, dev):
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await s.aclose()
            else:
                side = {"a": "the hypervisor", "b": "the client"}.get(st.ended_by, "")
                reason = f"{side} ended it ({st.reason})" if side else st.reason
        except GuardViolation as exc:
            reason = exc.reason
            if self.events is not None:
                self.events.guard_violation(route.name)
            log.error(
                "route %s: client %s sent a malformed usbredir message; channel ended before it reached QEMU: %s",
                route.name,
                route.client,
                exc.reason,
            )
        finally:
            channel.state = "ended"
            channel.reason = channel.reason or reason
            self.last_end = reason
            st = channel.stats
            self.bytes_to_device += st.a_to_b
            self.bytes_to_hypervisor += st.b_to_a
            if self.events is not None:
                self.events.detached(
                    route=route.name,
                    client=route.client,
                    device=self._device,
                    hypervisor=peer,
                    channel=channel.channel_id,
                    bytes_to_device=st.a_to_b,
                    bytes_to_hypervisor=st.b_to_a,
                    duration_s=time.monotonic() - started,
                    reason=reason,
                )
            await self._close_channel(channel, reason)
        st = channel.stats
        lost = f", {discarded} discarded (the client side did not take them)" if discarded else ""
        log.info(
            "route %s: channel %d ended after %.1f s: %s; %d byte(s) to the device%s, %d to the hypervisor",
            route.name,
            channel.channel_id,
            time.monotonic() - started,
            reason,
            st.a_to_b,
            lost,
            st.b_to_a,
        )

    async def _close_channel(self, channel: Channel, reason: str) -> None:
        if channel.resume is not None:
            channel.resume.end()
        session = self.registry.release(channel)
        if session is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await session.send(t.CloseChannel(channel.channel_id, reason[:250]))
            except (PeerGone, t.LocalProtocolError):
                pass


async def _with_watch(move: Callable[[], Awaitable[None]], channel: Channel) -> None:
    """`move()` while the channel's resume watch ends it if its client stays
    away past the grace period; what `move` raises comes out as it is."""
    assert channel.resume is not None
    raised: list[BaseException] = []

    async def moving(cancel: trio.CancelScope) -> None:
        try:
            await move()
        except GuardViolation as exc:
            raised.append(exc)
        finally:
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(moving, nursery.cancel_scope)
        nursery.start_soon(channel.resume.watch, channel.fail)
    if raised:
        raise raised[0]
