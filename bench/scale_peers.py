"""The load generators of bench/scale.py: many simulated thin clients, many hypervisor sockets.

Run as ``python bench/scale_peers.py ROLE ...`` by :mod:`bench.scale`, one
process per role, so the gateway's CPU and memory are read from its own
/proc entries and the load generators' cost is their own.  Roles:

``clients``      N simulated thin clients on one trio loop.  Each has its
                 own certificate and does what ``client/tunnel.py`` does on
                 the wire, on the same control-session driver
                 (``redirgate.transport.ControlSession``): mutual TLS 1.3 to
                 the tunnel port, ClientHello, a small Inventory (one
                 emulated USB device, one serial port ``serial:bench``),
                 heartbeats both ways, and on ``OpenChannel``:
                 ChannelOpened, a data connection with the attach preamble,
                 then it sinks and counts every byte.  After any loss it
                 reconnects as the real client does (`client/redial.py`,
                 the same policy object: the window is the backoff, 0.5 s
                 doubling to 30 s, or how long the gateway was away,
                 whichever is longer, drawn from all of it; reset after a
                 session that lasted 10 s; a busy gateway's retry hint is
                 honoured instead; with several ports, after a loss the
                 others in random order, each at once after a failure).  It counts the hints and the dials it
                 gave up in the middle (abandoned handshakes).  Driven by lines on stdin,
                 answered with one JSON line each on stdout:
                 ``connect K`` (start clients 0..K-1; the first handshakes
                 at most ``--connect-concurrency`` at a time; answers once
                 all are online or after ``--connect-timeout-s``),
                 ``mark [K]`` (clients online, sessions, connection
                 attempts and heartbeats sent so far, and the
                 byte counters of clients 0..K-1), ``restart-mark`` (right
                 before the gateway is killed: the clients online now are
                 the ones to come back), ``back`` (since then: each
                 returned client's seconds, attempts, hints, abandoned
                 dials), ``disconnect``.  ``--first`` offsets the client
                 names, so several processes share one N.
``hypervisors``  plain TCP connections to the given ports (the "QEMU"
                 side of 200 routes).  Prints READY once connected; on
                 ``go`` every connection writes 64 KiB blocks flat out; on
                 ``stop`` (or EOF) prints the bytes each connection sent.

Never listens or dials anywhere but 127.0.0.1; never asserts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import trio

from redirgate.client.redial import Redial
from redirgate.gateway.pki import client_dir
from redirgate.proto import tunnel as t
from redirgate.transport import (
    BusyTickets,
    ClientContext,
    ControlSession,
    PeerGone,
    QuietReader,
    Refusal,
    TimerWheel,
    TlsRefused,
    ZeroCopyTLSStream,
    client_context,
    open_tls_connection,
    peer_gone,
)

LOOPBACK = "127.0.0.1"
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 30.0  # client/config.py defaults
CONNECT_TIMEOUT_S = 10.0
RECEIVE_BYTES = 65536
SIM_SOFTWARE = "redirgate bench simulated client"
SESSION_ERRORS = (PeerGone, trio.TooSlowError, TlsRefused, t.TunnelProtocolError)


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns (soft, hard) now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def client_name(index: int) -> str:
    return f"sim-{index:05d}"


class SimError(Exception):
    pass


class SimClient:
    """One simulated thin client (see the module docstring)."""

    def __init__(
        self,
        index: int,
        context: ClientContext,
        port: int,
        more_ports: tuple[int, ...] = (),
        timers: TimerWheel | None = None,
        quiet: QuietReader | None = None,
    ) -> None:
        self.index = index
        self.context = context
        #: the process's one heartbeat task for all its clients (None: a task per session, as the real client)
        self.timers = timers
        #: the process's one reader of quiet sessions (None: each session reads alone)
        self.quiet = quiet
        #: the gateways to try in turn (a cluster's nodes: the real client's `gateway` list)
        self.ports = (port, *more_ports)
        self._port = port
        self.devices = (
            t.DeviceEntry(
                id=f"usb:1209:0003:SIM{index:05d}",
                kind=t.DeviceKind.USB,
                vendor_id=0x1209,
                product_id=3,
                serial=f"SIM{index:05d}",
                port_path="1-1",
                description="simulated loopback",
            ),
            t.DeviceEntry(
                id="serial:bench",
                kind=t.DeviceKind.SERIAL,
                port_path="/dev/ttyBENCH",
                description="simulated serial port",
            ),
        )
        self.online = False
        self.sessions = 0
        self.attempts = 0
        self.channel_bytes = 0
        self.channels = 0
        #: heartbeats sent by the sessions that ended, and the live session (None between sessions)
        self.heartbeats_ended = 0
        self.control: ControlSession | None = None
        self.t_start: float | None = None
        self.t_tls: float | None = None
        self.t_online: float | None = None
        #: set when t_online is (a `connect` command makes a new one)
        self.first_online = trio.Event()
        self.last_error = ""
        #: the gateway's busy lines (retry hints) received, and dials given up in the middle of
        #: the TCP connect or TLS handshake (CONNECT_TIMEOUT_S): "abandoned" on the client side
        self.hints = 0
        self.abandoned = 0
        #: the retry hints received since the last `restart-mark`, s
        self.hint_values: list[float] = []
        #: a busy gateway's ticket (our place in its queue), sent back on the next dial, as the real client does
        self.tickets = BusyTickets()
        #: perf_counter() of the first session up after the last `restart-mark` (None: not back yet)
        self.t_back: float | None = None
        #: ... and when that session's TLS handshake had finished (the rest is its hello's wait)
        self.t_back_tls: float | None = None
        self.t_last_tls = 0.0
        self.marked = False

    @property
    def port(self) -> int:
        """The gateway the session up now (or the next dial) is on."""
        return self._port

    async def run(self, first_limiter: trio.CapacityLimiter | None) -> None:
        """The real client's reconnect policy (`client/redial.py`, the same object): one gateway's
        jittered backoff whose window grows with how long it was away, a busy gateway's hint honoured
        at that gateway; with several ports (a cluster's nodes), after a loss the others in random
        order, each at once after the one before failed."""
        redial: Redial[int] = Redial(min_s=RECONNECT_MIN_S, max_s=RECONNECT_MAX_S, now=trio.current_time())
        self._port = redial.first(self.ports)
        limiter = first_limiter
        while True:
            started = trio.current_time()
            hint = None
            try:
                await self._session(limiter)
                self.last_error = "the gateway closed the connection"
            except TlsRefused as exc:
                self.last_error = f"TlsRefused: {exc}"
                hint = exc.retry_after_s
            except SESSION_ERRORS as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            except SimError as exc:
                self.last_error = str(exc)
            finally:
                was_up = self.online
                self.online = False
            limiter = None  # only the first connection of a `connect` is paced
            now = trio.current_time()
            step = redial.after(self.ports, self._port, now=now, lasted_s=now - started, was_up=was_up, hint=hint)
            self._port = step.address
            if step.delay_s > 0:
                await trio.sleep(step.delay_s)

    async def _dial(self) -> ZeroCopyTLSStream:
        with trio.fail_after(CONNECT_TIMEOUT_S), peer_gone(f"{LOOPBACK}:{self.port}"):
            return await open_tls_connection(
                LOOPBACK, self.port, self.context, handshake_timeout_s=CONNECT_TIMEOUT_S, tickets=self.tickets
            )

    async def _timed_dial(self) -> ZeroCopyTLSStream:
        """`_dial`, noting when the first one of this `connect` began and ended."""
        if self.t_start is None:
            self.t_start = time.perf_counter()
        self.attempts += 1
        try:
            stream = await self._dial()
        except trio.TooSlowError:
            self.abandoned += 1
            raise
        except TlsRefused as exc:
            if exc.refusal is Refusal.HANDSHAKE_TIMEOUT:
                self.abandoned += 1
            elif exc.retry_after_s is not None:
                self.hints += 1
                self.hint_values.append(exc.retry_after_s)
            raise
        self.t_last_tls = time.perf_counter()
        if self.t_tls is None:
            self.t_tls = self.t_last_tls
        return stream

    async def _session(self, limiter: trio.CapacityLimiter | None) -> None:
        if limiter is not None:
            async with limiter:
                stream = await self._timed_dial()
        else:
            stream = await self._timed_dial()
        control = self.control = ControlSession(stream, "client", peer=f"{LOOPBACK}:{self.port}")
        try:
            await self._control(control)
        finally:
            self.control = None
            self.heartbeats_ended += self.heartbeats_of(control)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()

    @property
    def heartbeats(self) -> int:
        """Heartbeats sent so far, over all sessions."""
        live = self.control
        return self.heartbeats_ended + (self.heartbeats_of(live) if live is not None else 0)

    @staticmethod
    def heartbeats_of(control: ControlSession) -> int:
        return control.tracker.next_seq if control.tracker is not None else 0

    async def _control(self, control: ControlSession) -> None:
        # resume-capable, like the real client: the gateway's idle-client memory includes what that costs
        await control.send(t.ClientHello(software=SIM_SOFTWARE, capabilities=frozenset({t.RESUME_CAPABILITY})))
        with trio.fail_after(CONNECT_TIMEOUT_S):
            hello = await control.receive()
        if not isinstance(hello, t.GatewayHello):
            raise SimError(f"no gateway hello: {hello!r}")
        await control.send(t.Inventory(self.devices))
        self.online = True
        self.sessions += 1
        if self.marked and self.t_back is None:
            self.t_back = time.perf_counter()
            self.t_back_tls = self.t_last_tls
        if self.t_online is None:
            self.t_online = time.perf_counter()
            self.first_online.set()
        scopes: dict[int, trio.CancelScope] = {}

        async def open_channel(control: ControlSession, event: t.OpenChannel) -> None:
            scope = scopes[event.channel_id] = trio.CancelScope()
            control.start_soon(self._channel, event, control, scope, scopes)

        async def close_channel(control: ControlSession, event: t.CloseChannel) -> None:
            if (open_scope := scopes.get(event.channel_id)) is not None:
                open_scope.cancel()

        async def ignore(control: ControlSession, event: t.ChannelAck) -> None:
            pass  # the sims send nothing on their channels: no replay to free

        async def error(control: ControlSession, event: t.Error) -> None:
            raise SimError(f"the gateway reported {event.code}: {event.message}")

        await control.serve(
            {t.OpenChannel: open_channel, t.CloseChannel: close_channel, t.Error: error, t.ChannelAck: ignore},
            heartbeat_interval_s=hello.heartbeat_interval_s,
            heartbeat_timeout_s=hello.heartbeat_timeout_s,
            timers=self.timers,
            quiet=self.quiet,
        )

    async def _channel(
        self,
        request: t.OpenChannel,
        control: ControlSession,
        scope: trio.CancelScope,
        scopes: dict[int, trio.CancelScope],
    ) -> None:
        cid = request.channel_id
        try:
            with scope, peer_gone(f"{LOOPBACK}:{self.port} channel {cid}"):
                await control.send(t.ChannelOpened(cid))
                data = await self._dial()
                try:
                    attach = t.AttachConnection("client")
                    await data.send_all(attach.send(t.Attach(cid, request.token)))
                    while (result := attach.next_event()) is t.NEED_DATA:
                        attach.receive_data(await data.receive_some(RECEIVE_BYTES))
                    if not isinstance(result, t.AttachResult) or not result.ok:
                        raise SimError(f"attach refused: {result!r}")
                    trailing, _ = attach.trailing_data()
                    self.channels += 1
                    self.channel_bytes += len(trailing)
                    buf = bytearray(RECEIVE_BYTES)
                    # a resumable channel (a credential): acknowledge, or the gateway's replay fills and it stops
                    resumable, received, acked = bool(result.credential), len(trailing), 0
                    while n := await data.receive_into(buf):
                        self.channel_bytes += n
                        received += n
                        if resumable and received - acked >= t.DEFAULT_ACK_EVERY:
                            await control.send(t.ChannelAck(cid, received))
                            acked = received
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await data.aclose()
        except (*SESSION_ERRORS, SimError):
            pass  # the channel is over; the session goes on
        finally:
            scopes.pop(cid, None)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await control.send(t.CloseChannel(cid, "done"))
                except (PeerGone, t.LocalProtocolError):
                    pass


# ------------------------------------------------------------------ roles
async def _lines(stdin: trio.lowlevel.FdStream) -> Any:
    buffered = b""
    while True:
        while b"\n" not in buffered:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                return
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        yield line.decode().strip()


def _say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _totals(clients: list[SimClient]) -> dict[str, int]:
    return {
        "attempts": sum(c.attempts for c in clients),
        "hints": sum(c.hints for c in clients),
        "abandoned": sum(c.abandoned for c in clients),
    }


async def clients_role(args: argparse.Namespace) -> None:
    base = Path(args.pki)
    ca = base / "ca-cert.pem"
    started = time.perf_counter()
    contexts = []
    for i in range(args.first, args.first + args.count):
        d = client_dir(base, client_name(i))
        contexts.append(client_context(d / "client-cert.pem", d / "client-key.pem", ca, args.server_name))
    more = tuple(args.more_ports or ())
    # one timer task and one reader for all of this process's clients (the gateway's way): the load generators' own
    # CPU stays well below the gateway's, so they are not what an idle measurement measures
    timers, quiet = TimerWheel(resolution_s=0.1), QuietReader()
    clients = [SimClient(args.first + i, ctx, args.port, more, timers, quiet) for i, ctx in enumerate(contexts)]
    marked_at = time.perf_counter()
    base_totals: dict[str, int] = {}
    soft, hard = raise_nofile()
    _say({"ready": True, "contexts_s": time.perf_counter() - started, "nofile": [soft, hard]})
    scope: trio.CancelScope | None = None
    done = trio.Event()
    done.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        await nursery.start(quiet.run)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        async with stdin:
            async for line in _lines(stdin):
                words = line.split()
                if not words:
                    continue
                if words[0] == "connect" and scope is None:
                    k = min(int(words[1]), len(clients))
                    for c in clients[:k]:
                        c.t_start = c.t_tls = c.t_online = None
                        c.first_online = trio.Event()
                        c.sessions = c.attempts = c.channel_bytes = c.channels = 0
                    limiter = trio.CapacityLimiter(args.connect_concurrency)
                    scope, done = trio.CancelScope(), trio.Event()

                    async def run_all(
                        scope: trio.CancelScope, done: trio.Event, k: int, limiter: trio.CapacityLimiter
                    ) -> None:
                        try:
                            with scope:
                                async with trio.open_nursery() as inner:
                                    for c in clients[:k]:
                                        inner.start_soon(c.run, limiter)
                        finally:
                            done.set()

                    nursery.start_soon(run_all, scope, done, k, limiter)
                    with trio.move_on_after(args.connect_timeout_s):
                        for c in clients[:k]:
                            await c.first_online.wait()
                    tls = sorted(c.t_tls - c.t_start for c in clients[:k] if c.t_tls and c.t_start)
                    t0 = min((c.t_start for c in clients[:k] if c.t_start), default=0.0)
                    _say(
                        {
                            "asked": k,
                            "online": sum(c.t_online is not None for c in clients[:k]),
                            "last_tls_s": max((c.t_tls - t0 for c in clients[:k] if c.t_tls), default=None),
                            "last_online_s": max((c.t_online - t0 for c in clients[:k] if c.t_online), default=None),
                            "tls_p50_ms": tls[len(tls) // 2] * 1e3 if tls else None,
                            "tls_p99_ms": tls[min(len(tls) - 1, len(tls) * 99 // 100)] * 1e3 if tls else None,
                            "errors": sorted({c.last_error for c in clients[:k] if c.last_error})[:5],
                        }
                    )
                elif words[0] == "mark":
                    k = int(words[1]) if len(words) > 1 else 0
                    _say(
                        {
                            "t": time.perf_counter(),
                            "online": sum(c.online for c in clients),
                            "sessions": sum(c.sessions for c in clients),
                            "attempts": sum(c.attempts for c in clients),
                            "channels": sum(c.channels for c in clients),
                            "heartbeats": sum(c.heartbeats for c in clients),
                            "bytes": [c.channel_bytes for c in clients[:k]],
                            "errors": sorted({c.last_error for c in clients if c.last_error and not c.online})[:5],
                        }
                    )
                elif words[0] == "restart-mark":  # right before the gateway (the one on PORT, if given) is killed
                    marked_at = time.perf_counter()
                    base_totals = _totals(clients)
                    on = int(words[1]) if len(words) > 1 else None
                    for c in clients:
                        c.t_back, c.marked = None, c.online and (on is None or c.port == on)
                        c.hint_values = []
                    _say({"t": marked_at, "marked": sum(c.marked for c in clients)})
                elif words[0] == "back":  # since `restart-mark`: who is back, how long each took
                    now_totals = _totals(clients)
                    back = sorted(c.t_back - marked_at for c in clients if c.marked and c.t_back is not None)
                    _say(
                        {
                            "marked": sum(c.marked for c in clients),
                            "back": back,
                            "back_tls": sorted(
                                c.t_back_tls - marked_at
                                for c in clients
                                if c.marked and c.t_back is not None and c.t_back_tls is not None
                            ),
                            # where the returned clients are now: gateway port -> how many
                            "landed": dict(
                                collections.Counter(str(c.port) for c in clients if c.marked and c.t_back is not None)
                            ),
                            **{key: now_totals[key] - base_totals.get(key, 0) for key in now_totals},
                            "hint_values": [round(h, 2) for c in clients if c.marked for h in c.hint_values],
                            "errors": sorted({c.last_error for c in clients if c.last_error and not c.online})[:5],
                        }
                    )
                elif words[0] == "disconnect":
                    if scope is not None:
                        scope.cancel()
                        with trio.move_on_after(30):
                            await done.wait()
                        scope = None
                    for c in clients:
                        c.last_error = ""
                    _say({"disconnected": True})
                elif words[0] == "quit":
                    break
        nursery.cancel_scope.cancel()


async def hypervisors_role(args: argparse.Namespace) -> None:
    raise_nofile()
    ports = [int(p) for p in (await trio.Path(args.ports).read_text()).split()]
    streams = []
    for port in ports:
        streams.append(await trio.open_tcp_stream(LOOPBACK, port))
    _say({"ready": True, "connections": len(streams)})
    sent = [0] * len(streams)
    block = memoryview(bytes(range(256)) * 256)  # 64 KiB
    go = trio.Event()
    failed: list[str] = []

    async def writer(i: int, stream: trio.SocketStream) -> None:
        await go.wait()
        try:
            while True:
                await stream.send_all(block)
                sent[i] += len(block)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failed.append(f"{ports[i]}: {exc}")

    async with trio.open_nursery() as nursery:
        for i, stream in enumerate(streams):
            nursery.start_soon(writer, i, stream)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        async with stdin:
            with trio.move_on_after(args.max_s):
                async for line in _lines(stdin):
                    if line == "go":
                        go.set()
                    elif line == "stop":
                        break
        nursery.cancel_scope.cancel()
    for stream in streams:
        await trio.aclose_forcefully(stream)
    _say({"sent": sent, "failed": failed[:5]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["clients", "hypervisors"])
    parser.add_argument("--port", type=int, default=0, help="clients: the gateway's tunnel port")
    parser.add_argument("--pki", help="clients: the PKI folder with clients/sim-NNNNN")
    parser.add_argument("--count", type=int, default=0, help="clients: how many contexts to load")
    parser.add_argument(
        "--more-ports", type=int, nargs="*", help="clients: more gateways (a cluster's nodes), tried in turn"
    )
    parser.add_argument("--first", type=int, default=0, help="clients: the index of the first (several processes)")
    parser.add_argument("--server-name", default="gateway.local")
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument("--connect-timeout-s", type=float, default=120.0)
    parser.add_argument("--ports", help="hypervisors: a file of route ports, whitespace-separated")
    parser.add_argument("--max-s", type=float, default=300.0, help="hypervisors: give up after this long")
    args = parser.parse_args(argv)
    try:
        trio.run(clients_role if args.role == "clients" else hypervisors_role, args)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()
