"""A gateway restart without an unplug (issue 16 step 3): one process hands its sockets and channels to the next.

On SIGUSR2 (or `redirgate gateway restart`) the running gateway, the
*predecessor*, starts its *successor*: the same command line (the same
config file, and whatever redirgate is installed now), with one end of a
Unix socket pair in `REDIRGATE_HANDOVER_FD`.  Then:

1. The successor loads and checks its config and says `ready` (or exits:
   the predecessor logs one line and goes on serving, having touched
   nothing).
2. The predecessor stops accepting (`AcceptPause`: new connections wait in
   the kernel's backlog, which the successor inherits), refuses control
   sessions and resumes that are half-way in (`TunnelServer.handing_over`),
   cuts every client connection at the TCP level (no close_notify: the
   clients see a broken connection and resume, as after a network fault),
   and waits until every resumable channel rests: its relay waits for the
   client's new connection, nothing is in flight towards QEMU (a USB
   channel's reactor gave its sockets back and delivered what it had read;
   a raw channel's reader is frozen, `RawFreezer`).
3. It sends the listening sockets and each resting channel's hypervisor
   socket (SCM_RIGHTS) with a `proto.tunnel.HandoverState` (in a memfd: the
   replay buffers may hold megabytes), and waits for the successor's
   `serving`.  Then it exits at once (`os._exit` after the logs are
   flushed): its teardown would close what now belongs to the successor
   (the admin socket's file, QEMU's sockets with a shutdown).
4. The successor serves the inherited listeners, puts each channel back on
   its route (QEMU's socket never closed) as an orphan that waits, within
   its grace period, for the client to resume it, and the clients redial
   and resume against it: nothing lost, nothing twice, no unplug.

A failure before the predecessor exits - the successor dies, says nothing
in time, or a channel does not come to rest - thaws everything: accepting
resumes, the cut clients resume against the predecessor, one ERROR line
says why.  Channels that cannot be handed over (not resumable: an old
client, `resume_grace_s = 0`; TLS towards the hypervisor, whose session
cannot move between processes; a hypervisor still waiting for its device)
end with the predecessor as at any restart; the log says how many.

Under systemd (`NotifyAccess=all`) the successor tells the manager
`MAINPID=` its own pid before the predecessor exits.

Threads: none beyond the gateway's; everything here runs on the trio loop.
"""

from __future__ import annotations

import array
import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from redirgate.gateway.errors import GatewayError
from redirgate.gateway.registry import Channel
from redirgate.gateway.resume import ChannelResume
from redirgate.proto import tunnel as t
from redirgate.proto.usbredir.walker import HostStreamGuard
from redirgate.transport import PlainSocketStream

if TYPE_CHECKING:
    from redirgate.gateway.route_server import RouteServer
    from redirgate.gateway.service import Gateway

__all__ = ["HANDOVER_ENV", "HandoverFailed", "Inheritance", "hand_over", "successor_argv"]

log = logging.getLogger(__name__)

#: What a handed-over channel's log line says about its connection ending.
RESTART_REASON = "the gateway is restarting (USR2): the channel goes to the new process"

#: The environment variable that names the successor's end of the socket pair.
HANDOVER_ENV = "REDIRGATE_HANDOVER_FD"
#: The successor imports redirgate and checks its config: seconds on a loaded machine.
READY_TIMEOUT_S = 120.0
#: Every resumable channel's relay comes to rest this soon after the cut (or the restart is called off).
SETTLE_TIMEOUT_S = 10.0
#: The successor serves this soon after it got everything.
SERVING_TIMEOUT_S = 60.0
_FDS_PER_MESSAGE = 200  # SCM_MAX_FD is 253
_MESSAGE_BYTES = 4096


class HandoverFailed(GatewayError):
    """A restart was called off; `reason` says why (the predecessor goes on serving)."""


# ---------------------------------------------------------------- the wire
async def _send(sock: trio.socket.SocketType, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    payload = msgpack.packb(message)
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    await sock.sendmsg([payload], ancillary)


async def _receive(sock: trio.socket.SocketType) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors with it; HandoverFailed at the peer's end."""
    data, ancillary, flags, _ = await sock.recvmsg(_MESSAGE_BYTES, socket.CMSG_SPACE(_FDS_PER_MESSAGE * 4))
    fds: list[int] = []
    for level, kind, blob in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            carried = array.array("i")
            carried.frombytes(blob[: len(blob) - len(blob) % carried.itemsize])
            fds.extend(carried)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        raise HandoverFailed("handover", "a message came truncated")
    if not data:
        raise HandoverFailed("handover", "the other process closed the handover socket")
    try:
        message = msgpack.unpackb(data)
    except Exception as exc:
        raise HandoverFailed("handover", f"not a handover message: {exc}") from exc
    if not isinstance(message, dict) or "kind" not in message:
        raise HandoverFailed("handover", f"not a handover message: {message!r:.100}")
    return message, fds


def successor_argv() -> list[str]:
    """The command line that started this gateway, run by the Python and redirgate installed now."""
    return [sys.executable, "-m", "redirgate.cli", *sys.argv[1:]]


# ------------------------------------------------------- the predecessor
@dataclass
class _Resting:
    server: RouteServer
    channel: Channel


async def hand_over(gateway: Gateway, argv: list[str] | None = None) -> int:
    """Start a successor and hand it everything (module docstring); its pid once
    it serves (the caller exits at once), or HandoverFailed after thawing."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", HANDOVER_ENV)}
    env[HANDOVER_ENV] = str(theirs.fileno())
    try:
        process = await trio.lowlevel.open_process(argv or successor_argv(), env=env, pass_fds=(theirs.fileno(),))
    except OSError as exc:
        ours.close()
        theirs.close()
        raise HandoverFailed("restart", f"cannot start the new process: {exc}") from None
    theirs.close()
    sock = trio.socket.from_stdlib_socket(ours)
    with sock:
        try:
            return await _hand_over(gateway, sock, process)
        except HandoverFailed:
            _reap(process)
            raise


def _reap(process: trio.Process) -> None:
    """A successor that failed: stopped by pid if it still runs (it serves nothing)."""
    if process.returncode is None:
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGKILL)


async def _exit_code(process: trio.Process) -> str:
    with trio.move_on_after(5):
        await process.wait()
    return f"exit code {process.returncode}" if process.returncode is not None else "still running; stopped"


async def _child_says(
    sock: trio.socket.SocketType, process: trio.Process, timeout_s: float, when: str
) -> dict[str, Any] | None:
    """The new process's next message; None if none came in `timeout_s`; HandoverFailed if it ended `when`."""
    with trio.move_on_after(timeout_s):
        try:
            message, _ = await _receive(sock)
        except (HandoverFailed, OSError):
            raise HandoverFailed(
                "restart",
                f"the new process (pid {process.pid}) ended {when} ({await _exit_code(process)}); "
                "its own log lines say why",
            ) from None
        return message
    return None


async def _hand_over(gateway: Gateway, sock: trio.socket.SocketType, process: trio.Process) -> int:
    pid = process.pid
    message = await _child_says(sock, process, READY_TIMEOUT_S, "before taking over")
    if message is None or message.get("kind") != "ready":
        raise HandoverFailed("restart", f"the new process (pid {pid}) did not get ready in {READY_TIMEOUT_S:g} s")
    log.info("gateway: restart: the new process (pid %d) is ready; handing over", pid)
    frozen: list[_Resting] = []
    gateway.pause_accepting()
    gateway.tunnel.handing_over = True
    try:
        frozen, left = await _settle(gateway)
        state, fds, memfd = _document(gateway, frozen)
        try:
            for start in range(0, len(fds), _FDS_PER_MESSAGE):
                await _send(sock, {"kind": "fds"}, fds[start : start + _FDS_PER_MESSAGE])
            await _send(sock, {"kind": "state", "channels": len(state.channels)}, [memfd])
        except OSError as exc:
            raise HandoverFailed(
                "restart", f"the new process (pid {pid}) went away during the handover: {exc}"
            ) from None
        finally:
            os.close(memfd)
        message = await _child_says(sock, process, SERVING_TIMEOUT_S, "while taking over")
        if message is not None and message.get("kind") == "serving":
            log.info(
                "gateway: restart: pid %d serves now, with %d channel(s) handed over%s; this process (pid %d) exits",
                pid,
                len(state.channels),
                f" ({left} other channel(s) end here: not resumable, or TLS to the hypervisor)" if left else "",
                os.getpid(),
            )
            return pid
        raise HandoverFailed("restart", f"the new process (pid {pid}) did not say it serves in {SERVING_TIMEOUT_S:g} s")
    except BaseException:
        for resting in frozen:
            live = resting.server.live
            if live is not None and live.freezer is not None:
                live.freezer.thaw()
        gateway.tunnel.handing_over = False
        gateway.resume_accepting()
        raise


def _handable(server: RouteServer) -> Channel | None:
    """The route's channel if a successor can take it over."""
    channel, live = server.channel, server.live
    if server.state != "active" or channel is None or live is None or not channel.resumable or channel.remote:
        return None
    hv = live.hypervisor.inner
    return channel if isinstance(hv, PlainSocketStream) else None


def _rests(resting: _Resting) -> bool:
    live = resting.server.live
    resume = resting.channel.resume
    if live is None or resume is None or resting.channel.state != "active":
        return False
    if live.freezer is not None:
        relay = live.freezer.relay
        if relay is not None and (not relay.reader_parked or relay.delivering):
            return False
    return resume.waiting


async def _settle(gateway: Gateway) -> tuple[list[_Resting], int]:
    """Cut the clients, bring every handable channel to rest; (those, how many others there are)."""
    resting = []
    others = 0
    for server in gateway.routes:
        channel = _handable(server)
        if channel is not None:
            resting.append(_Resting(server, channel))
        elif server.state == "active":
            others += 1
    for item in resting:  # before the cut, so each channel's log line names the restart, not the break it sees
        stream = item.channel.resume.stream if item.channel.resume is not None else None
        if stream is not None:
            stream.interrupt(RESTART_REASON)
    cut = gateway.tunnel.cut_all()
    log.info("gateway: restart: %d client connection(s) cut; %d channel(s) to hand over", cut, len(resting))
    with trio.move_on_after(SETTLE_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for item in resting:
                nursery.start_soon(_bring_to_rest, item)
        return resting, others
    stuck = [f"route {item.server.name}" for item in resting if not _rests(item)]
    raise HandoverFailed("restart", f"{', '.join(stuck) or 'a channel'} did not come to rest in {SETTLE_TIMEOUT_S:g} s")


async def _bring_to_rest(item: _Resting) -> None:
    """Until the channel's relay waits for its client (the old connection closed: nothing more
    comes from it) and, on a raw route, its reader is frozen with no write to QEMU under way."""
    live, resume = item.server.live, item.channel.resume
    assert live is not None and resume is not None and resume.stream is not None
    while True:
        if live.freezer is not None:
            await live.freezer.freeze()
        while not resume.waiting:
            await resume.waiting_changed.park()
        if _rests(item):
            return


def _document(gateway: Gateway, resting: list[_Resting]) -> tuple[t.HandoverState, list[int], int]:
    """The state and the descriptors it names, and a memfd holding the state (taken at once: nothing awaits)."""
    state = t.HandoverState(os.getpid(), next_ids=gateway.registry.next_ids())
    fds: list[int] = []
    for name, listener in gateway.listeners():
        state.listeners.append(t.HandedListener(name, len(fds)))
        fds.append(listener.socket.fileno())
    for item in resting:
        channel, live = item.channel, item.server.live
        assert live is not None and channel.resume is not None and channel.resume.stream is not None
        stream = channel.resume.stream
        hv = live.hypervisor.inner
        assert isinstance(hv, PlainSocketStream)
        to_client = b""
        if live.freezer is not None:
            to_client = live.freezer.unsent(stream.channel.outgoing.sent_total)
        secret, generation = channel.resume.export()
        state.channels.append(
            t.HandedChannel(
                route=item.server.name,
                channel_id=channel.channel_id,
                client=channel.client,
                device=channel.device,
                hypervisor=channel.hypervisor,
                protocol=item.server.route.protocol,
                fd=len(fds),
                grace_s=channel.resume.grace_s,
                secret=secret,
                generation=generation,
                resume=stream.channel.export(),
                to_client=to_client + live.hypervisor.pending_prefix(),
                guard=live.guard.export() if live.guard is not None else None,
                bytes_to_device=channel.stats.a_to_b,
                bytes_to_hypervisor=channel.stats.b_to_a,
                started_at=channel.started_at,
                resumes=stream.resumes,
            )
        )
        fds.append(hv.socket.fileno())
    document = state.encode()
    memfd = os.memfd_create("redirgate-handover", os.MFD_CLOEXEC)
    view = memoryview(document)
    while view:
        view = view[os.write(memfd, view) :]
    os.lseek(memfd, 0, os.SEEK_SET)
    return state, fds, memfd


# --------------------------------------------------------- the successor
@dataclass
class Inheritance:
    """What the successor got: listeners by name, channels with their hypervisor sockets.
    (Or, `from_listeners`, what systemd's file-descriptor store gave back: listeners only.)"""

    sock: trio.socket.SocketType | None
    state: t.HandoverState
    listeners: dict[str, list[trio.SocketListener]] = field(default_factory=dict)
    sockets: dict[int, trio.socket.SocketType] = field(default_factory=dict)
    #: names of listeners this config did not take (closed by `close_unused`)
    closed: list[str] = field(default_factory=list)

    @classmethod
    def from_listeners(cls, named: dict[str, list[socket.socket]]) -> Inheritance:
        """Listening sockets by listener name (systemd's fd store after a stop and start):
        taken like a predecessor's, with no channel (the channels' state died with it)."""
        inheritance = cls(None, t.HandoverState(os.getpid()))
        for name, socks in named.items():
            for sock in socks:
                inheritance.listeners.setdefault(name, []).append(
                    trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                )
        return inheritance

    @classmethod
    async def receive(cls, fd: int) -> Inheritance:
        """Say `ready` to the predecessor on `fd` and take what it hands over (HandoverFailed if anything is off)."""
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
        fds: list[int] = []
        try:
            await _send(sock, {"kind": "ready", "pid": os.getpid()})
            while True:
                message, carried = await _receive(sock)
                if message["kind"] == "fds":
                    fds.extend(carried)
                elif message["kind"] == "state" and len(carried) == 1:
                    document = _read_memfd(carried[0])
                    break
                else:
                    raise HandoverFailed("handover", f"unexpected message {message['kind']!r}")
            try:
                state = t.HandoverState.decode(document, len(fds))
            except t.HandoverError as exc:
                raise HandoverFailed("handover", exc.reason) from None
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            sock.close()
            raise
        inheritance = cls(sock, state)
        for listener in state.listeners:
            inheritance.listeners.setdefault(listener.name, []).append(
                trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fds[listener.fd])))
            )
        for channel in state.channels:
            inheritance.sockets[channel.fd] = trio.socket.from_stdlib_socket(socket.socket(fileno=fds[channel.fd]))
        log.info(
            "gateway: taking over from pid %d: %d listener(s), %d channel(s)",
            state.pid,
            len(state.listeners),
            len(state.channels),
        )
        return inheritance

    def take_listeners(self, name: str) -> list[trio.SocketListener] | None:
        return self.listeners.pop(name, None)

    async def close_unused(self) -> None:
        """Listeners no route of this config wants any more."""
        for name, listeners in self.listeners.items():
            log.info("gateway: the listener %s is not in this config; closed", name)
            self.closed.append(name)
            for listener in listeners:
                await trio.aclose_forcefully(listener)
        self.listeners.clear()

    def channels(self, gateway: Gateway) -> Iterator[tuple[RouteServer, Channel, PlainSocketStream, t.HandedChannel]]:
        """Each handed channel whose route this config still has, as this gateway's object."""
        servers = {server.name: server for server in gateway.routes}
        for handed in self.state.channels:
            sock = self.sockets.pop(handed.fd)
            server = servers.get(handed.route)
            if server is None or server.route.protocol != handed.protocol or server.route.tls is not None:
                log.warning(
                    "gateway: channel %d (route %s) cannot be taken over: this config has no such %s route; "
                    "its hypervisor sees it end",
                    handed.channel_id,
                    handed.route,
                    handed.protocol,
                )
                sock.close()
                continue
            channel = Channel(
                handed.channel_id,
                secrets.token_bytes(32),
                handed.route,
                handed.client,
                handed.device,
                handed.hypervisor,
                state="active",
                claimed=True,
                resume_grace_s=handed.grace_s,
            )
            channel.started_at = handed.started_at
            channel.stats.a_to_b, channel.stats.b_to_a = handed.bytes_to_device, handed.bytes_to_hypervisor
            wake = functools.partial(gateway.registry.wake_acks, handed.client)
            channel.resume = ChannelResume.restored(handed, wake_acks=wake)
            channel.stream = channel.resume.stream
            yield server, channel, PlainSocketStream(trio.SocketStream(sock)), handed

    async def confirm(self) -> None:
        """Tell the predecessor we serve: it exits."""
        if self.sock is None:
            return
        try:
            await _send(self.sock, {"kind": "serving", "pid": os.getpid()})
        except OSError as exc:
            log.warning("gateway: could not tell pid %d that this process serves: %s", self.state.pid, exc)
        self.sock.close()


def guard_of(handed: t.HandedChannel) -> HostStreamGuard | None:
    """The handed USB channel's guard (HandoverFailed if its state is not one)."""
    if handed.guard is None:
        return None
    try:
        return HostStreamGuard.restored(handed.guard)
    except ValueError as exc:
        raise HandoverFailed("handover", f"channel {handed.channel_id}: {exc}") from None


def _read_memfd(fd: int) -> bytes:
    try:
        with os.fdopen(fd, "rb") as file:
            return file.read()
    except OSError as exc:
        raise HandoverFailed("handover", f"cannot read the handover document: {exc}") from None
