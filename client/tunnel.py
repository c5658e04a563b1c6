"""The client service: keep a mutual-TLS tunnel to the gateway and serve its channels.

`TunnelClient.run()` dials the gateway, speaks the control protocol
(`redirgate.proto.tunnel`): hello, the inventory of what the export policy
allows (rescanned when `request_rescan` says a device came or went - kernel
uevents, ClientService - and every `rescan_interval_s` besides; sent as
updates), heartbeats both ways, and `OpenChannel` requests.  Each channel
dials its own data connection (same certificate, the one-time token), then
runs the usbredir host engine on it - the same engine as `serve-usb` - or a
serial or parallel channel handler.  After any loss it reconnects with jittered
exponential backoff; the gateway brings the routes back by itself.

Several gateways acting as one (a cluster, issue 18): `gateway` may list
several addresses, and the gateway's hello names the other live nodes; after
losing its node the client dials the others in random order, each at once
after the one before failed, and honours a busy node's retry hint at that
node (`client/redial.py`), so a dead node's clients spread over the live ones
and are back within their first reconnect delay and the live nodes' pacing.  An `OpenChannel` whose
`attach` names another node has its data connection dialled there (same
certificate and token rules; that node's certificate must carry the
advertised host name).

The control session is `redirgate.transport.ControlSession`'s (the read
loop, heartbeats both ways, shielded sends); this module gives it the
handlers.  A lost gateway is one error, `PeerGone`, whatever the stream said.

Cancellation: the control session's nursery holds the heartbeat and inventory
tasks, and every channel of a gateway without resumable channels, so a lost
control connection ends those channels too (the gateway ends them anyway,
and QEMU sees the unplug).  With a gateway that names `RESUME_CAPABILITY`
in its hello (issue 16), channels run in `run()`'s own nursery and outlive
control connections: a broken data connection is redialled and resumed
(`client/resume.py`), and the next control connection carries the acks and
the channels' ends.  Each channel releases its device in the engine's
finally.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import trio
from cryptography import x509

from redirgate.client.config import ClientConfig
from redirgate.client.inventory import DeviceInventory, diff
from redirgate.client.redial import Redial, reconnect_delay
from redirgate.client.resume import ChannelResumer
from redirgate.client.usb.engine import HostEngine
from redirgate.client.usb.errors import SelectorError
from redirgate.client.usb.selector import parse_selector
from redirgate.client.usb.source import SelectorSource
from redirgate.proto import tunnel as t
from redirgate.transport import (
    BusyTickets,
    ClientContext,
    ControlSession,
    CrlError,
    NewestCrl,
    PeerGone,
    PrefixedStream,
    TlsRefused,
    ZeroCopyTLSStream,
    client_context,
    open_tls_connection,
    parse_crl,
    peer_gone,
)

__all__ = [
    "ChannelHandler",
    "GatewayRevoked",
    "TunnelClient",
    "TunnelClientError",
    "reconnect_delay",
    "revocation_view",
    "usb_channel_handler",
]

log = logging.getLogger(__name__)

_RECEIVE_BYTES = 65536
SOFTWARE = "redirgate client"
#: how often the channels' drop counts are looked at and, when they changed, told to the gateway
DROP_REPORT_INTERVAL_S = 2.0

#: (OpenChannel, attached data stream) -> serves the channel until it ends.
ChannelHandler = Callable[[t.OpenChannel, trio.abc.Stream], Awaitable[None]]


class TunnelClientError(Exception):
    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


class GatewayRevoked(TunnelClientError):
    """The gateway's certificate is on the newest CRL we hold: we refuse it."""


def revocation_view(config: ClientConfig, previous: NewestCrl | None = None) -> NewestCrl:
    """The client's CRL view for `config` (its CA, its local `crl` file), keeping
    the newest CRL of `previous` when the CA is the same.  Blocking file reads
    (small files, at start and on reload); CrlError for a bad local CRL."""
    ca = x509.load_pem_x509_certificate(config.ca.read_bytes())
    view = NewestCrl(ca, config.crl)
    if previous is not None and previous.ca == ca and previous.current is not None:
        view.offer(previous.current, previous.source)
    return view


class TunnelClient:
    """One thin client's tunnel to its gateway (see the module docstring).

    Revocation both ways: the gateway checks our certificate; we check
    the gateway's against the newest CRL we have seen (`revocations`: the
    config's `crl` file and every CRL the gateway hands us, accepted only
    when our CA signed it and never older than the one held).  A revoked
    gateway is refused right after the handshake of every connection, and
    a CRL that revokes it ends the live session.
    """

    def __init__(
        self,
        config: ClientConfig,
        inventory: DeviceInventory,
        *,
        context: ClientContext | None = None,
        serial: Any = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.context = context or client_context(config.cert, config.key, config.ca, config.server_name)
        self.revocations = revocation_view(config)
        #: a `client.serial.exports.SerialExports`, a `client.exports.PortExports`
        #: (serial and parallel ports), or None: no ports
        self.serial = serial
        self.connect_timeout_s = connect_timeout_s
        self.peer = f"{config.gateway_host}:{config.gateway_port}"
        #: the gateways of a cluster the gateway told us of (its hello), tried after the configured ones
        self.learned: tuple[str, ...] = ()
        #: a busy gateway's place in its queue for us, per address: sent back on the next dial there
        self.busy_tickets = BusyTickets()
        #: the address the next connection tries (one of `addresses()`; `client/redial.py` chooses)
        self._next: tuple[str, int, str] = self.addresses()[0]
        #: the address of the control connection's gateway (None: the configured one)
        self._where: tuple[str, int, str] | None = None
        self.connected = trio.Event()
        self.online = False
        self.sessions = 0
        self.channels: dict[int, str] = {}
        self._rescan = trio.Event()
        #: seconds between inventory rescans when nothing asks for one: the
        #: config's interval (polling), or a slow safety net once kernel
        #: uevents ask (ClientService sets it)
        self.rescan_interval_s = config.inventory_interval_s
        #: when to look once more after a hotplug event (udev may still be
        #: setting the new device node's permissions at the first look)
        self._followup_at: float | None = None
        #: what our hello advertises (without RESUME_CAPABILITY: channels end with their connections)
        self.capabilities = frozenset(
            {t.CLUSTER_CAPABILITY, t.RESUME_CAPABILITY, t.CRL_CAPABILITY, t.STREAM_DROPS_CAPABILITY}
        )
        #: the usbredir engines of the live USB channels, by channel id (their drop counts)
        self.engines: dict[int, HostEngine] = {}
        #: the drop counts last told to the gateway, by channel id
        self._drops_told: dict[int, tuple[int, int]] = {}
        #: the control connection up now takes `StreamDrops` (both hellos name the capability)
        self._drops_wanted = False
        self.drop_report_interval_s = DROP_REPORT_INTERVAL_S
        #: channel id -> the cancel scope of its task, over control connections
        self._scopes: dict[int, trio.CancelScope] = {}
        #: channel id -> why the client itself ends it (`end_channels`), told to the gateway
        self._ending: dict[int, str] = {}
        #: the control connection up now, when it is a resumable one (channels outlive it)
        self._control: ControlSession | None = None
        self._channel_nursery: trio.Nursery | None = None
        self.resumer = ChannelResumer(
            self._dial,
            peer=self.peer,
            connect_timeout_s=connect_timeout_s,
            min_s=config.reconnect_min_s,
            max_s=config.reconnect_max_s,
        )

    def request_rescan(self, *, followup_s: float | None = None) -> None:
        """Rescan the inventory now (trio thread only), and again after
        `followup_s` when given."""
        self._rescan.set()
        if followup_s is not None:
            self._followup_at = trio.current_time() + followup_s

    def end_channels(self, devices: Collection[str], reason: str) -> list[int]:
        """End the channels that serve any of `devices` (trio thread only); the
        gateway is told `reason`.  Returns their ids."""
        ended = []
        for cid, device in list(self.channels.items()):
            scope = self._scopes.get(cid)
            if device in devices and scope is not None:
                log.info("channel %d: ending it (%s): %s", cid, device, reason)
                self._ending[cid] = reason
                scope.cancel()
                ended.append(cid)
        return ended

    # ------------------------------------------------------------ reconnect loop
    async def run(self) -> None:
        """Stay connected until cancelled."""
        async with trio.open_nursery() as nursery:
            self._channel_nursery = nursery
            await self._reconnect_loop()

    async def _reconnect_loop(self) -> None:
        redial: Redial[tuple[str, int, str]] = Redial(
            min_s=self.config.reconnect_min_s, max_s=self.config.reconnect_max_s, now=trio.current_time()
        )
        self._next = redial.first(self.addresses())
        while True:
            started = trio.current_time()
            tried = self._next
            was_up = False
            level = logging.WARNING
            hint: float | None = None
            try:
                await self._session()
                reason = "the gateway closed the connection"
            except TlsRefused as exc:
                reason = f"TLS refused: {exc.reason}"
                hint = exc.retry_after_s
                if hint is not None:  # the gateway sheds load and said when to come back: expected, no failure
                    level = logging.INFO
            except GatewayRevoked as exc:
                reason = exc.reason
                level = logging.ERROR
            except (TunnelClientError, PeerGone) as exc:
                reason = exc.reason
            except t.TunnelProtocolError as exc:
                reason = f"protocol error: {exc}"
            finally:
                was_up = self.online
                self.online = False
            now = trio.current_time()
            step = redial.after(
                self.addresses(),
                tried,
                now=now,
                lasted_s=now - started,
                was_up=was_up,
                hint=hint,
                configured=1 + len(self.config.more_gateways),
            )
            self._next = step.address
            host, port, _ = step.address
            if step.why == "next":
                log.log(level, "tunnel to %s lost: %s; trying %s:%d at once", self.peer, reason, host, port)
                continue
            elsewhere = "" if (host, port) == tried[:2] else f" to {host}:{port}"
            log.log(
                level, "tunnel to %s lost: %s; reconnecting%s in %.1f s", self.peer, reason, elsewhere, step.delay_s
            )
            await trio.sleep(step.delay_s)

    # ------------------------------------------------------------ one session
    def addresses(self) -> list[tuple[str, int, str]]:
        """(host, port, name its certificate must carry) of every gateway to try, in turn: the
        configured ones (checked against `server_name`), then those a cluster told of (against
        their own host name)."""
        config = self.config
        found = [(h, p, config.server_name) for h, p in ((config.gateway_host, config.gateway_port),)]
        found += [(h, p, config.server_name) for h, p in config.more_gateways]
        known = {(h, p) for h, p, _ in found}
        for text in self.learned:
            host, _, port = text.rpartition(":")
            host = host.strip("[]")
            if port.isdigit() and (host, int(port)) not in known:
                found.append((host, int(port), host))
        return found

    async def _dial(self, where: tuple[str, int, str] | None = None) -> ZeroCopyTLSStream:
        """A new mutual-TLS connection to the gateway (control or data alike); `where`: a node of a
        cluster (None: the gateway of the control connection).  Refused (GatewayRevoked) if the
        newest CRL we hold revokes its certificate."""
        where = where or self._where
        if where is None:
            stream = await open_tls_connection(
                self.config.gateway_host,
                self.config.gateway_port,
                self.context,
                handshake_timeout_s=self.connect_timeout_s,
                tickets=self.busy_tickets,
            )
        else:
            host, port, name = where
            context = (
                self.context if name == self.context.server_name else ClientContext(self.context.ssl_context, name)
            )
            stream = await open_tls_connection(
                host, port, context, handshake_timeout_s=self.connect_timeout_s, tickets=self.busy_tickets
            )
        try:
            self._check_gateway(stream)
        except GatewayRevoked:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    async def _dial_waiting_out_busy(self, where: tuple[str, int, str] | None) -> ZeroCopyTLSStream:
        """`_dial` for a data connection: a gateway that is busy (it sheds handshakes) is dialled
        again after its hint, until the caller's deadline."""
        while True:
            try:
                return await self._dial(where)
            except TlsRefused as exc:
                if exc.retry_after_s is None:
                    raise
                log.info("tunnel to %s: data connection: %s; dialling again then", self.peer, exc.reason)
                await trio.sleep(exc.retry_after_s)

    def _check_gateway(self, stream: ZeroCopyTLSStream) -> None:
        cert = stream.peer_certificate()
        crl = self.revocations.revoking(cert) if cert is not None else None
        if cert is not None and crl is not None:
            raise GatewayRevoked(
                self.peer,
                f"refusing the gateway: its certificate {cert.subject.rfc4514_string()} (serial "
                f"{cert.serial_number:x}) is revoked by CRL #{crl.number} (from {self.revocations.source})",
            )

    async def _revocations(self, control: ControlSession, event: t.Revocations, stream: ZeroCopyTLSStream) -> None:
        """The gateway's CRL: kept if our CA signed it and it is newer; a CRL that
        revokes this very gateway ends the session (GatewayRevoked)."""
        try:
            crl = parse_crl(event.crl, self.revocations.ca, source=f"the gateway {self.peer}")
        except CrlError as exc:
            log.warning("tunnel to %s: ignoring the CRL it sent: %s", self.peer, exc.reason)
            return
        if self.revocations.offer(crl, f"the gateway {self.peer}"):
            log.info("tunnel to %s: CRL #%d with %d revoked certificate(s)", self.peer, crl.number, len(crl.serials))
            self._check_gateway(stream)

    async def _session(self) -> None:
        where = self._next if len(self.addresses()) > 1 else None
        if where is not None:
            self.peer = f"{where[0]}:{where[1]}"
        # the control connection's gateway: data connections go there too unless told otherwise
        self._where = where
        with trio.move_on_after(self.connect_timeout_s) as dialing, peer_gone(self.peer):
            stream = await self._dial()
        if dialing.cancelled_caught:
            raise PeerGone(self.peer, f"no connection within {self.connect_timeout_s:g} s")
        try:
            await self._run_control(ControlSession(stream, "client", peer=self.peer), stream)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()

    async def _run_control(self, control: ControlSession, stream: ZeroCopyTLSStream) -> None:
        await control.send(t.ClientHello(software=SOFTWARE, capabilities=self.capabilities))
        hello = await control.receive()
        if isinstance(hello, t.Error):
            raise TunnelClientError(self.peer, f"the gateway refused us: {hello.code}: {hello.message}")
        if not isinstance(hello, t.GatewayHello):
            raise TunnelClientError(self.peer, "the gateway closed the connection before its hello")
        if hello.gateways and hello.gateways != self.learned:
            log.info(
                "tunnel: the gateway's cluster has %d other node(s): %s", len(hello.gateways), ", ".join(hello.gateways)
            )
        if hello.gateways:
            # a hello without them (a gateway alone, or a node that has not seen the others yet,
            # e.g. just after Redis came back) keeps what we knew: they are our way out when it dies
            self.learned = hello.gateways
        resumable = t.RESUME_CAPABILITY in hello.capabilities
        if resumable:
            # the channels that outlived the last control connection, before
            # the inventory: a gateway ends the ones we do not name here
            for ack in self.resumer.repeat_acks():
                await control.send(ack)
        else:
            for scope in self._scopes.values():  # resumed channels cannot live on with this gateway
                scope.cancel()
        try:
            self._control = control if resumable else None
            self._drops_wanted = t.STREAM_DROPS_CAPABILITY in hello.capabilities & self.capabilities
            await self._serve_control(control, hello, resumable, stream)
        finally:
            self._control = None
            self._drops_wanted = False
            self.resumer.control_lost()

    async def _send_current(self, message: t.TunnelMessage) -> None:
        """Send on the control connection up now (a resumable channel's messages)."""
        control = self._control
        if control is None:
            raise PeerGone(self.peer, "no control connection")
        await control.send(message)

    async def _serve_control(
        self, control: ControlSession, hello: t.GatewayHello, resumable: bool, stream: ZeroCopyTLSStream
    ) -> None:
        current = await self._scan()
        await control.send(t.Inventory(tuple(current.values())))
        self.online = True
        self.sessions += 1
        self.connected.set()
        log.info("tunnel to %s up; exporting %s", self.peer, ", ".join(sorted(current)) or "nothing yet")
        scopes = self._scopes

        async def inventory_updates() -> None:
            # USB devices are looked at again when asked (hotplug, a channel
            # opened or closed) and every `rescan_interval_s`; the port
            # exports' entries (a printer's state, a serial port come or gone)
            # cost no I/O and are looked at every `inventory_interval_s`
            nonlocal current
            usb = {key: entry for key, entry in current.items() if key not in self._port_ids()}
            usb_at = trio.current_time()
            while True:
                deadline = min(usb_at + self.rescan_interval_s, trio.current_time() + self.config.inventory_interval_s)
                if self._followup_at is not None:
                    deadline = min(deadline, self._followup_at)
                with trio.move_on_at(deadline):
                    await self._rescan.wait()
                now = trio.current_time()
                asked = self._rescan.is_set()
                due = asked or now >= usb_at + self.rescan_interval_s
                if self._followup_at is not None and now >= self._followup_at:
                    self._followup_at = None
                    due = True
                if due:
                    self._rescan = trio.Event()
                    # a look nothing asked for is the safety net: also for
                    # libusb's device list, which no uevent may have refreshed
                    usb = await self.inventory.scan(fresh_libusb=not asked)
                    usb_at = now
                new = {**usb, **self._port_entries()}
                added, removed = diff(current, new)
                if added or removed:
                    await control.send(t.InventoryUpdate(added, removed))
                    log.info("inventory: +%s -%s", [e.id for e in added], list(removed))
                current = new

        async def open_channel(control: ControlSession, event: t.OpenChannel) -> None:
            if event.channel_id in scopes:  # a channel opened through a node of a cluster we left still runs
                why = f"channel id {event.channel_id} is in use by a channel another gateway node opened"
                await control.send(t.ChannelFailed(event.channel_id, why))
                return
            scope = scopes[event.channel_id] = trio.CancelScope()
            if resumable and self._channel_nursery is not None:
                self._channel_nursery.start_soon(self._channel, event, self._send_current, scope, scopes, True)
            else:
                control.start_soon(self._channel, event, control.send, scope, scopes, False)

        async def channel_ack(control: ControlSession, event: t.ChannelAck) -> None:
            self.resumer.acked(event)

        async def send_acks() -> None:
            await self.resumer.send_acks(control.send, self._where)

        async def report_drops() -> None:
            while True:
                await trio.sleep(self.drop_report_interval_s)
                for cid in list(self.engines):
                    await self._tell_drops(cid, control.send)

        async def close_channel(control: ControlSession, event: t.CloseChannel) -> None:
            scope = scopes.get(event.channel_id)
            if scope is not None:
                log.info("channel %d closed by the gateway: %s", event.channel_id, event.reason)
                scope.cancel()

        async def error(control: ControlSession, event: t.Error) -> None:
            raise TunnelClientError(self.peer, f"the gateway reported {event.code}: {event.message}")

        async def revocations(control: ControlSession, event: t.Revocations) -> None:
            await self._revocations(control, event, stream)

        handlers: dict[type[t.TunnelMessage], Any] = {
            t.OpenChannel: open_channel,
            t.CloseChannel: close_channel,
            t.Error: error,
            t.Revocations: revocations,
        }
        tasks = [inventory_updates]
        if self._drops_wanted:
            tasks.append(report_drops)
        if resumable:
            handlers[t.ChannelAck] = channel_ack
            tasks.append(send_acks)
        await control.serve(
            handlers,
            heartbeat_interval_s=hello.heartbeat_interval_s,
            heartbeat_timeout_s=hello.heartbeat_timeout_s,
            tasks=tasks,
        )

    async def _tell_drops(self, cid: int, send: Callable[[t.TunnelMessage], Awaitable[None]]) -> None:
        """Tell the gateway channel `cid`'s drop counts if they changed since it was last told."""
        engine = self.engines.get(cid)
        if engine is None or not self._drops_wanted:
            return
        counts = engine.drop_counts()
        if counts != self._drops_told.get(cid, (0, 0)):
            await send(t.StreamDrops(cid, *counts))
            self._drops_told[cid] = counts

    async def _scan(self) -> dict[str, t.DeviceEntry]:
        return {**await self.inventory.scan(), **self._port_entries()}

    def _port_entries(self) -> dict[str, t.DeviceEntry]:
        """The serial and parallel exports' entries now (no I/O)."""
        found: dict[str, t.DeviceEntry] = {}
        if self.serial is not None:
            for entry in self.serial.entries():
                busy = entry.id in self.inventory.busy
                found[entry.id] = dataclasses.replace(entry, busy=True) if busy else entry
        return found

    def _port_ids(self) -> set[str]:
        return set(self._port_entries())

    # ------------------------------------------------------------ channels
    async def _channel(
        self,
        request: t.OpenChannel,
        send: Callable[[t.TunnelMessage], Awaitable[None]],
        scope: trio.CancelScope,
        scopes: dict[int, trio.CancelScope],
        resumable: bool,
    ) -> None:
        cid = request.channel_id
        reason = "done"
        try:
            with scope, peer_gone(f"{self.peer} channel {cid}"):
                reason = await self._serve_channel(request, send, resumable)
        except PeerGone as exc:
            reason = exc.reason
            log.warning("channel %d (%s) failed: %s", cid, request.device_selector, reason)
        except (TlsRefused, TunnelClientError, t.TunnelProtocolError, trio.TooSlowError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("channel %d (%s) failed: %s", cid, request.device_selector, reason)
        finally:
            reason = self._ending.pop(cid, reason)
            scopes.pop(cid, None)
            self.resumer.forget(cid)
            self.channels.pop(cid, None)
            self.inventory.busy.discard(request.device_selector)
            self._rescan.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await self._tell_drops(cid, send)  # the last ones too: never silent
                    await send(t.CloseChannel(cid, reason[:250]))
                except (PeerGone, t.LocalProtocolError):
                    pass
            self.engines.pop(cid, None)
            self._drops_told.pop(cid, None)

    async def _serve_channel(
        self, request: t.OpenChannel, send: Callable[[t.TunnelMessage], Awaitable[None]], resumable: bool
    ) -> str:
        cid, device = request.channel_id, request.device_selector
        if request.protocol is t.ChannelProtocol.USBREDIR:
            try:
                selector = parse_selector(device)
            except SelectorError as exc:
                await send(t.ChannelFailed(cid, str(exc)[:250]))
                return "bad selector"
            source = SelectorSource(selector, backends=self.inventory.backends, allowed=self.inventory.policy_allows)
            found, _, refused = await trio.to_thread.run_sync(source.look)
            if found is None:
                why = "; ".join(f"refusing {name}: {reason}" for name, reason in refused.items())
                await send(t.ChannelFailed(cid, (why or f"{device} is not present or not exported")[:250]))
                return "device refused" if refused else "device not present"
            handler: ChannelHandler = usb_channel_handler(source, self.engines)
        elif self.serial is not None and self.serial.knows(device):
            handler = self.serial.serve
        elif self.serial is not None:
            await send(t.ChannelFailed(cid, f"{device} is not exported by this client"))
            return "unknown serial port"
        else:
            await send(t.ChannelFailed(cid, f"{request.protocol} channels are not served by this client"))
            return "unsupported protocol"
        self.inventory.busy.add(device)
        self.channels[cid] = device
        self._rescan.set()
        await send(t.ChannelOpened(cid))
        stream = await self._attach(request, resumable)
        log.info("channel %d: serving %s to the gateway", cid, device)
        try:
            await handler(request, stream)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()
        return "the hypervisor side ended"

    async def _attach(self, request: t.OpenChannel, resumable: bool) -> trio.abc.Stream:
        # the gateway of the control connection now: resumed there even once the control
        # connection went to another node of a cluster
        where = self._where
        if request.attach:  # a cluster: the node that holds the hypervisor's socket, checked against its own name
            host, _, port = request.attach.rpartition(":")
            where = (host.strip("[]"), int(port), host.strip("[]"))
        with trio.fail_after(self.connect_timeout_s):
            stream = await self._dial_waiting_out_busy(where)
            try:
                attach = t.AttachConnection("client")
                await stream.send_all(attach.send(t.Attach(request.channel_id, request.token)))
                while True:
                    result = attach.next_event()
                    if result is not t.NEED_DATA:
                        break
                    attach.receive_data(await stream.receive_some(_RECEIVE_BYTES))
                if not isinstance(result, t.AttachResult):
                    raise TunnelClientError(self.peer, "the gateway closed the data connection during attach")
                if not result.ok:
                    raise TunnelClientError(self.peer, f"attach refused: {result.reason}")
                trailing, _ = attach.trailing_data()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        # bytes the gateway sent right behind the attach reply come first
        data: trio.abc.Stream = PrefixedStream(stream, trailing) if trailing else stream
        if resumable and result.credential:
            return self.resumer.wrap(request.channel_id, data, result.credential, where)
        return data


def usb_channel_handler(source: SelectorSource, engines: dict[int, HostEngine] | None = None) -> ChannelHandler:
    """A channel handler that runs the usbredir host engine for `source`; the engine goes into
    `engines` under its channel id (the caller takes it out when the channel ended)."""

    async def serve(request: t.OpenChannel, stream: trio.abc.Stream) -> None:
        engine = HostEngine(stream, source, peer=f"gateway channel {request.channel_id}")
        if engines is not None:
            engines[request.channel_id] = engine
        await engine.run()

    return serve
