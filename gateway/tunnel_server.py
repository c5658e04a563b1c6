"""The tunnel port: TLS from thin clients, control and data connections.

Every connection is mutual TLS 1.3; the client's identity comes from its
certificate (`verify_peer`, with the CRL), never from a message.  The first
frame says what the connection is (`OpeningClassifier`): a `client_hello`
starts a control session (hellos, inventory, heartbeats both ways, channel
answers), an `attach` hands a data connection to the channel waiting for it.

Any refusal - no or wrong certificate, garbage, a stalled handshake, a
malformed or oversized message, a wrong token - ends that one connection
with one log line naming the peer and the reason; nothing else is touched.

Shutdown: the listener's nursery is cancelled by the service; sessions end
with their connections, and `Registry.remove` fails their channels so the
hypervisor sockets close too.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from typing import Any

import trio

from redirgate.gateway.errors import ChannelError
from redirgate.gateway.registry import ClientSession, Registry
from redirgate.proto import tunnel as t
from redirgate.transport import (
    PeerKind,
    RevocationChecker,
    TlsRefused,
    ZeroCopyTLSStream,
    accept_tls,
    verify_peer,
)

__all__ = ["TunnelServer"]

log = logging.getLogger(__name__)

_RECEIVE_BYTES = 65536
#: A client must finish its first frame this soon after the handshake.
FIRST_FRAME_TIMEOUT_S = 10.0


class TunnelServer:
    """Serves one tunnel listener's connections (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        context: ssl.SSLContext,
        *,
        revocation: RevocationChecker | None = None,
        handshake_timeout_s: float = 10.0,
        heartbeat_interval_s: float = 10.0,
        heartbeat_timeout_s: float = 30.0,
        software: str = "redirgate gateway",
    ) -> None:
        self.registry = registry
        self.context = context
        self.revocation = revocation
        self.handshake_timeout_s = handshake_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.software = software
        self.refusals = 0
        #: parsed peer certificates of live control sessions (weak: they go with the stream)
        self._certs: weakref.WeakKeyDictionary[ZeroCopyTLSStream, Any] = weakref.WeakKeyDictionary()

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One accepted TCP connection on the tunnel port."""
        try:
            stream = await accept_tls(tcp, self.context, handshake_timeout_s=self.handshake_timeout_s)
        except TlsRefused as refused:
            self.refusals += 1
            log.warning("tunnel: refused %s: %s", refused.peer, refused.reason)
            return
        peer = stream.peer
        try:
            identity = verify_peer(stream.getpeercert(), peer=peer, kind=PeerKind.CLIENT, revocation=self.revocation)
        except TlsRefused as refused:
            self.refusals += 1
            log.warning("tunnel: refused %s: %s", refused.peer, refused.reason)
            await trio.aclose_forcefully(stream)
            return
        handed_over = False
        try:
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
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("tunnel: connection from %s (%s) lost: %s", identity, peer, exc)
        finally:
            if not handed_over:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await stream.aclose()

    # ------------------------------------------------------------- data
    async def _data(self, stream: ZeroCopyTLSStream, identity: str, peer: str, first: bytes) -> bool:
        attach = t.AttachConnection("gateway")
        attach.receive_data(first)
        message = attach.next_event()
        while message is t.NEED_DATA:
            attach.receive_data(await stream.receive_some(_RECEIVE_BYTES))
            message = attach.next_event()
        if not isinstance(message, t.Attach):
            return False  # CLOSED
        try:
            channel = self.registry.channel_for_attach(identity, message.channel_id)
            if not message.token_matches(channel.token):
                raise ChannelError(identity, f"wrong attach token for channel {message.channel_id}")
        except ChannelError as exc:
            self.refusals += 1
            log.warning("tunnel: refused data connection from %s (%s): %s", identity, peer, exc.reason)
            await stream.send_all(attach.send(t.AttachResult(ok=False, reason=exc.reason[:200])))
            return False
        trailing, _eof = attach.trailing_data()
        await stream.send_all(attach.send(t.AttachResult(ok=True)))
        if not channel.attach(stream, trailing):
            log.info(
                "tunnel: data connection for channel %d of %s arrived after the route gave up",
                message.channel_id,
                identity,
            )
            return False
        log.info("tunnel: %s attached channel %d (%s)", identity, channel.channel_id, channel.device)
        return True

    # ---------------------------------------------------------- control
    async def _control(self, stream: ZeroCopyTLSStream, identity: str, peer: str, first: bytes) -> None:
        conn = t.TunnelConnection("gateway")
        conn.receive_data(first)
        hello = conn.next_event()
        if isinstance(hello, t.Error):
            log.warning("tunnel: %s (%s) opened with an error: %s %s", identity, peer, hello.code, hello.message)
            return
        assert isinstance(hello, t.ClientHello)  # the state table allows nothing else first
        send_lock = trio.Lock()

        async def send(message: t.TunnelMessage) -> None:
            wire = conn.send(message)
            async with send_lock:
                await stream.send_all(wire)

        await send(
            t.GatewayHello(
                software=self.software,
                heartbeat_interval_s=self.heartbeat_interval_s,
                heartbeat_timeout_s=self.heartbeat_timeout_s,
            )
        )
        session = ClientSession(identity, peer, send)
        old = self.registry.add(session)
        if old is not None:
            log.info("tunnel: %s reconnected from %s; its previous session ends", identity, peer)
            old.close("replaced by a new connection")
        log.info("tunnel: client %s online from %s (%s)", identity, peer, hello.software or "unknown software")
        reason = "replaced by a new connection"
        try:
            with session.scope:
                reason = await self._run_session(conn, stream, session, send)
        except t.RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("tunnel: %s (%s) broke the protocol: %s; closed", identity, peer, exc)
            with trio.move_on_after(1.0):
                try:
                    await send(t.Error(code=t.ErrorCode.PROTOCOL, message=str(exc)[:500]))
                except (trio.BrokenResourceError, trio.ClosedResourceError, t.LocalProtocolError):
                    pass
        finally:
            self.registry.remove(session, f"client {identity} went offline ({reason})")
            log.info("tunnel: client %s offline: %s", identity, reason)

    async def _run_session(
        self, conn: t.TunnelConnection, stream: ZeroCopyTLSStream, session: ClientSession, send: Any
    ) -> str:
        tracker = t.HeartbeatTracker(self.heartbeat_interval_s, self.heartbeat_timeout_s, trio.current_time())
        outcome = "connection closed"

        failure: list[t.RemoteProtocolError] = []

        async def heartbeats(scope: trio.CancelScope) -> None:
            nonlocal outcome
            try:
                while True:
                    await trio.sleep_until(tracker.next_deadline())
                    now = trio.current_time()
                    if tracker.expired(now):
                        outcome = f"no heartbeat for {self.heartbeat_timeout_s:g} s"
                        log.warning("tunnel: %s (%s): %s; closing", session.identity, session.peer, outcome)
                        break
                    if self._revoked(stream):
                        outcome = "its certificate was revoked"
                        log.warning(
                            "tunnel: %s (%s): certificate revoked; closing its session", session.identity, session.peer
                        )
                        break
                    if tracker.due(now):
                        await send(t.Heartbeat(tracker.on_sent(now)))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                outcome = f"connection lost: {exc}"
            scope.cancel()

        # Errors are caught inside the nursery: trio wraps anything that
        # escapes one in an ExceptionGroup, which the callers do not expect.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeats, nursery.cancel_scope)
            try:
                while True:
                    event = conn.next_event()
                    if event is t.NEED_DATA:
                        data = await stream.receive_some(_RECEIVE_BYTES)
                        conn.receive_data(data)
                        continue
                    if event is t.CLOSED:
                        break
                    tracker.on_received(trio.current_time())
                    if not await self._on_message(event, session, tracker, send):
                        outcome = "the client said goodbye"
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                outcome = f"connection lost: {exc}"
            except t.RemoteProtocolError as exc:
                failure.append(exc)
            finally:
                nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return outcome

    def _revoked(self, stream: ZeroCopyTLSStream) -> bool:
        """A revocation that arrived while the session was up (the CRL file
        is re-read only when it changed; the certificate is parsed once)."""
        if self.revocation is None:
            return False
        cert = self._certs.get(stream)
        if cert is None:
            cert = self._certs[stream] = stream.peer_certificate()
        return cert is not None and self.revocation.is_revoked(cert)

    async def _on_message(self, event: Any, session: ClientSession, tracker: t.HeartbeatTracker, send: Any) -> bool:
        if isinstance(event, t.Heartbeat):
            await send(t.HeartbeatAck(event.seq))
        elif isinstance(event, t.HeartbeatAck):
            rtt = tracker.on_ack(event.seq, trio.current_time())
            if rtt is not None:
                session.rtt_s = rtt
        elif isinstance(event, t.Inventory):
            session.inventory = {e.id: e for e in event.devices}
            log.info("tunnel: %s exports %d device(s): %s", session.identity, len(event.devices),
                     ", ".join(sorted(session.inventory)) or "none")  # fmt: skip
            self.registry.changed()
        elif isinstance(event, t.InventoryUpdate):
            for device_id in event.removed:
                session.inventory.pop(device_id, None)
            for entry in event.added:
                session.inventory[entry.id] = entry
            log.info("tunnel: %s inventory: +%s -%s", session.identity,
                     [e.id for e in event.added], list(event.removed))  # fmt: skip
            self.registry.changed()
        elif isinstance(event, t.ChannelOpened):
            channel = session.channels.get(event.channel_id)
            if channel is not None:
                channel.opened()
        elif isinstance(event, t.ChannelFailed):
            channel = session.channels.get(event.channel_id)
            if channel is not None:
                channel.fail(f"the client could not open {channel.device}: {event.reason}")
        elif isinstance(event, t.CloseChannel):
            channel = session.channels.get(event.channel_id)
            if channel is not None:
                channel.fail(f"closed by the client: {event.reason}")
        elif isinstance(event, t.Error):
            log.warning(
                "tunnel: %s (%s) reported an error: %s %s", session.identity, session.peer, event.code, event.message
            )
            return False
        return True
