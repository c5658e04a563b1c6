"""One driver for a tunnel control session, used by the client, the gateway and the scale bench.

`ControlSession` runs one end of a control connection (the sans-IO
`redirgate.proto.tunnel.TunnelConnection`) over a byte stream:

- `send(message)` encodes under the send gate (so the state table sees the
  messages in wire order) and writes the frame *shielded*: a caller cancelled
  half way waits for the rest of the frame instead of leaving half of it on
  the stream.  (A frame that fits the socket buffer is written at once
  through the stream's non-blocking fast path, where nothing can cut it
  short.)  The shielded write has its own deadline (`send_timeout_s`,
  by default the default heartbeat timeout; a caller's shorter deadline does
  not cut it); a write that stalls that long leaves the stream unusable, so
  it ends the session with `PeerGone`.
- `receive()` reads until the connection has the next message (hellos).
- `serve(handlers, ...)` is the session after the hellos: the read loop
  feeds the connection and dispatches each message by type through the
  table (``await handlers[type(message)](session, message)``); a heartbeat
  is answered from the read loop, written at once where the frame fits the
  socket buffer (no task switch).  Our heartbeats and the peer's timeout
  are one timer on a `TimerWheel` (`transport.timers`): the session's own,
  run by a task in its nursery, or one that many sessions share (`timers`:
  the gateway's, one task for every client); the timer fires at the earlier
  of its two deadlines (our next heartbeat, the peer's timeout:
  `HeartbeatTracker.next_deadline`), so a received message costs no timer
  work.  `rtt_every` (the gateway's, whose peers heartbeat anyway): our
  heartbeat goes out only after a whole interval without a word from the
  peer, and at least every `rtt_every()`-th interval to time the round
  trip; the peer's own heartbeats and our answers keep both sides alive,
  so an idle session costs one message each way per interval instead of
  two.  Extra `tasks` and `start_soon` tasks run in the session's
  nursery.  It returns the reason the session ended cleanly
  (EOF, or what `finish(reason)` said) and raises otherwise.

Errors: the raw errors a stream raises when its other end is gone (OSError,
trio's Broken/ClosedResourceError) are mapped once, here, to `PeerGone`
(`PeerSilent` when the peer sent nothing for the heartbeat timeout); callers
catch that one type.  A peer that breaks the protocol raises the proto's
`RemoteProtocolError` (a message with no handler in the table is one,
`UnexpectedMessageError`); `LocalProtocolError` from `send` means nothing
was written.  Handler and task errors end the session and leave `serve`
as they are, never wrapped in an ExceptionGroup.

Threads: none; everything runs on the caller's trio loop.  The stream
stays the caller's: the session never closes it.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import trio

from redirgate.proto import tunnel as t
from redirgate.transport.errors import TransportError
from redirgate.transport.interfaces import nonblocking
from redirgate.transport.quiet import QuietReader
from redirgate.transport.timers import TimerWheel

__all__ = [
    "RECEIVE_BYTES",
    "SEND_TIMEOUT_S",
    "ControlSession",
    "Handler",
    "PeerGone",
    "PeerSilent",
    "peer_gone",
]

#: Bytes asked of the stream per read.
RECEIVE_BYTES: Final = 65536
#: How long one shielded control write may take before the stream counts as dead.
SEND_TIMEOUT_S: Final = 30.0

#: The errors a trio stream raises when the other end went away (or the
#: stream was closed under us).  Only `peer_gone` and this module read it.
_STREAM_GONE: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

#: Handles one received control message: ``await handler(session, message)``;
#: raising ends the session.  Tables can be built once per class: a
#: `ControlSession` subclass's methods fit, and cost no memory per session.
Handler = Callable[[Any, Any], Awaitable[None]]


class PeerGone(TransportError):
    """The peer of a connection is gone: its connection broke, closed or stalled.

    The one "connection lost" error of the client and the gateway; `reason`
    names the cause (the original exception is `__cause__`).
    """


class PeerSilent(PeerGone):
    """Nothing came from the peer for the whole heartbeat timeout."""


def _gone(peer: str, exc: BaseException) -> PeerGone:
    return PeerGone(peer, f"{type(exc).__name__}: {exc}")


def peer_gone(peer: str) -> _PeerGoneBoundary:
    """Map the stream errors that mean "the other end is gone" to `PeerGone`.

    The one boundary for them (``with peer_gone(peer): ...``): a `PeerGone`
    from inside passes unchanged, so nested boundaries never wrap twice.
    """
    return _PeerGoneBoundary(peer)


class _PeerGoneBoundary:
    """`peer_gone`'s context manager: a slotted object rather than a generator,
    since a gateway keeps one per connection for the connection's life."""

    __slots__ = ("peer",)

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def __enter__(self) -> None:
        return None

    def __exit__(self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, _STREAM_GONE):
            raise _gone(self.peer, exc) from exc


class ControlSession:
    """One end of a control connection over `stream` (see the module docstring).

    `received` is what was already read from the stream for this connection
    (the gateway's opening classifier keeps the first frame).
    """

    __slots__ = (
        "_broken",
        "_failure",
        "_held",
        "_nursery",
        "_outcome",
        "_quiet_acks",
        "_send_waiters",
        "_sending",
        "_try_send",
        "conn",
        "peer",
        "send_timeout_s",
        "stream",
        "tracker",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        role: t.Role | str,
        *,
        peer: str,
        received: bytes = b"",
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.conn = t.TunnelConnection(role)
        if received:
            self.conn.receive_data(received)
        self.send_timeout_s = send_timeout_s
        #: heartbeat timing of the running `serve` (None before it)
        self.tracker: t.HeartbeatTracker | None = None
        #: the send gate: a frame is being written (by `send`, or the rest of one `_send_nowait` began)
        self._sending = False
        self._send_waiters = trio.lowlevel.ParkingLot()
        #: the stream's non-blocking write, when it has one (asked once: a Protocol check is slow)
        self._try_send = stream.try_send if nonblocking(stream) else None
        self._broken: PeerGone | None = None
        self._nursery: trio.Nursery | None = None
        self._failure: Exception | None = None
        self._outcome = ""
        #: what the quiet reader left for the read loop: the next message, or the error to raise
        self._held: t.TunnelMessage | Exception | None = None
        #: the quiet reader may take a HeartbeatAck (no handler wants it)
        self._quiet_acks = False

    # ------------------------------------------------------------- send
    async def send(self, message: t.TunnelMessage, *, timeout_s: float | None = None) -> None:
        """Write `message` whole, or raise: `LocalProtocolError` (nothing
        written) or `PeerGone`.  Cancellation before the write starts is
        honoured; once it started, the frame is finished first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._sending:  # one frame at a time, in the order the state table saw them
            await self._send_waiters.park()
        self._sending = True
        try:
            if self._broken is not None:
                raise PeerGone(self.peer, self._broken.reason)
            wire: bytes | memoryview = self.conn.send(message)
            try_send = self._try_send
            if try_send is not None:  # the whole frame fits the socket buffer: no scope, nothing to cut short
                try:
                    sent = try_send(memoryview(wire))
                except _STREAM_GONE as exc:
                    raise self._break(_gone(self.peer, exc)) from exc
                wire = memoryview(wire)[sent or 0 :] if sent != len(wire) else b""
            if wire:
                await self._write_rest(wire, message.KIND, self.send_timeout_s if timeout_s is None else timeout_s)
        finally:
            self._release_send()
        if not wire:  # written without waiting: still a schedule point, as trio's own sends are
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_rest(self, wire: bytes | memoryview, kind: str, limit: float) -> None:
        """The rest of a frame, shielded, within `limit` seconds (the caller holds the gate)."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + limit) as write:
            try:
                await self.stream.send_all(wire)
            except _STREAM_GONE as exc:
                raise self._break(_gone(self.peer, exc)) from exc
        if write.cancelled_caught:
            raise self._break(PeerGone(self.peer, f"a {kind!r} write stalled for {limit:g} s"))

    def _release_send(self) -> None:
        self._sending = False
        if self._send_waiters:
            self._send_waiters.unpark()  # it looks again: a waiter cancelled meanwhile has left the lot

    def _send_nowait(self, message: t.TunnelMessage) -> bool:
        """`send` without waiting, from the read loop or a timer (only while `serve` runs): True
        once `message` is the stream's, False if it must wait for the gate (call `send`).  Where
        the socket takes part of the frame only, a task of the session writes the rest under the
        gate.  Raises as `send` does (`LocalProtocolError`: nothing written; `PeerGone`)."""
        try_send = self._try_send
        if try_send is None or self._sending:
            return False
        if self._broken is not None:
            raise PeerGone(self.peer, self._broken.reason)
        wire = self.conn.send(message)
        try:
            sent = try_send(memoryview(wire))
        except _STREAM_GONE as exc:
            raise self._break(_gone(self.peer, exc)) from exc
        if sent != len(wire):
            self._sending = True
            self.start_soon(self._finish_frame, memoryview(wire)[sent or 0 :], message.KIND)
        return True

    async def _finish_frame(self, rest: memoryview, kind: str) -> None:
        try:
            await self._write_rest(rest, kind, self.send_timeout_s)
        finally:
            self._release_send()

    def _break(self, gone: PeerGone) -> PeerGone:
        """The stream can carry no more frames: later sends fail, `serve` ends."""
        self._broken = self._broken or gone
        self._fail(gone)
        return gone

    # ---------------------------------------------------------- receive
    async def receive(self) -> t.Event:
        """The next message from the peer, or `t.CLOSED` once it closed."""
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is not t.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except _STREAM_GONE as exc:
                raise _gone(self.peer, exc) from exc
            conn.receive_data(data)

    # ------------------------------------------------------------ serve
    async def serve(
        self,
        handlers: Mapping[type[t.TunnelMessage], Handler],
        *,
        heartbeat_interval_s: float,
        heartbeat_timeout_s: float,
        tasks: Sequence[Callable[[], Awaitable[None]]] = (),
        before_heartbeat: Callable[[], None] | None = None,
        rtt_every: Callable[[], int] | None = None,
        timers: TimerWheel | None = None,
        quiet: QuietReader | None = None,
    ) -> str:
        """Read, dispatch and heartbeat until the session ends (module docstring).

        `Heartbeat` and `HeartbeatAck` are answered and timed here first; a
        handler for them, if given, runs afterwards.  `before_heartbeat` runs
        every interval (it may `finish`), whether our heartbeat goes out or
        not.  `rtt_every`: see the module docstring (None, or a value of 1:
        a heartbeat every interval); asked at each interval, so it may change.
        `timers`: a running `TimerWheel` shared with other sessions (None: one
        of the session's own).  `quiet`: a `QuietReader` that reads the session
        while it waits for its peer, where the stream allows (module docstring).
        """
        if self._broken is not None:
            raise PeerGone(self.peer, self._broken.reason)
        if timers is not None and not timers.running:
            raise RuntimeError("ControlSession.serve: the shared TimerWheel is not running")
        self._failure = None
        now = trio.current_time()
        tracker = self.tracker = t.HeartbeatTracker(heartbeat_interval_s, heartbeat_timeout_s, now)
        timer = _HeartbeatTimer(self, tracker, before_heartbeat, rtt_every)
        self._outcome = "connection closed"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if timers is None:
                    timers = TimerWheel()
                    nursery.start_soon(timers.run)
                timers.add(timer, tracker.next_deadline())
                for task in tasks:
                    nursery.start_soon(self._guarded, task)
                try:
                    await self._read_loop(handlers, tracker, quiet)
                except Exception as exc:  # raised below, outside the nursery: never an ExceptionGroup
                    self._fail(exc)
                nursery.cancel_scope.cancel()
        finally:
            timer.close()  # its next firing leaves the wheel
            self._nursery = None
        if self._failure is not None:
            raise self._failure
        return self._outcome

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `fn(*args)` in the session's nursery (only while `serve` runs):
        it ends with the session, and its error ends the session."""
        if self._nursery is None:
            raise RuntimeError("ControlSession.start_soon outside serve()")
        self._nursery.start_soon(self._guarded, fn, *args)

    def finish(self, reason: str) -> None:
        """End `serve` cleanly: it returns `reason`."""
        self._outcome = reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _guarded(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception as exc:  # re-raised by serve() as it is
            self._fail(exc)

    def _ending(self) -> bool:
        """`finish` or a failure has ended `serve` (or it is not running)."""
        nursery = self._nursery
        return nursery is None or nursery.cancel_scope.cancel_called

    async def _read_loop(
        self, handlers: Mapping[type[t.TunnelMessage], Handler], tracker: t.HeartbeatTracker, quiet: QuietReader | None
    ) -> None:
        conn, stream = self.conn, self.stream
        fast = stream if nonblocking(stream) else None
        view = _receive_view() if fast is not None else None
        # the quiet reader may answer heartbeats only where nothing else would handle them
        quiet_fd = getattr(stream, "quiet_fd", None) if quiet is not None and t.Heartbeat not in handlers else None
        self._quiet_acks = t.HeartbeatAck not in handlers
        waited = True
        while True:
            held = self._held
            if held is not None:
                self._held = None
                if isinstance(held, Exception):
                    raise held
                event: t.Event = held
            else:
                event = conn.next_event()
            if event is t.NEED_DATA:
                try:
                    if fast is None or view is None:  # receive(), written out: one coroutine frame less
                        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))
                        continue
                    n = fast.try_receive_into(view)
                    if n is None:
                        fd = quiet_fd() if quiet_fd is not None else None
                        if fd is not None and quiet is not None and quiet.running:
                            await quiet.park(fd, self._quiet_readable)
                        else:
                            await fast.wait_receivable()
                        waited = True
                        continue
                except _STREAM_GONE as exc:
                    raise _gone(self.peer, exc) from exc
                conn.receive_data(view[:n] if n else b"")  # out of the shared buffer before any checkpoint
                if not waited:  # a schedule point per read that did not wait, as receive_some has
                    await trio.lowlevel.cancel_shielded_checkpoint()
                waited = False
                continue
            if event is t.CLOSED:
                return
            assert isinstance(event, t.TunnelMessage)
            now = trio.current_time()
            tracker.on_received(now)  # moves the peer timeout: no timer is touched per message
            builtin = True
            if isinstance(event, t.Heartbeat):
                ack = t.HeartbeatAck(event.seq)
                if not self._send_nowait(ack):  # written at once where it fits: no task switch
                    await self.send(ack)
            elif isinstance(event, t.HeartbeatAck):
                tracker.on_ack(event.seq, now)
            else:
                builtin = False
            handler = handlers.get(type(event))
            if handler is not None:
                await handler(self, event)
            elif not builtin:
                raise t.UnexpectedMessageError(f"{event.KIND!r} is not handled here", kind=event.KIND)

    def _quiet_readable(self) -> bool:
        """The session's socket is readable while it is parked on a `QuietReader` (that reader's
        task calls this): read what came, answer the peer's heartbeats and time its answers to
        ours (where no handler wants those) here; True to stay
        parked, False to let the read loop take over (another message, which it finds in
        `_held`; the end of the stream; an error, which its own read meets again)."""
        fast = self.stream
        assert nonblocking(fast)
        view = _receive_view()
        try:
            n = fast.try_receive_into(view)
        except _STREAM_GONE:
            return False  # the stream stays broken: the read loop's own read raises it
        if n is None:  # nothing after all: stay, where a readable socket is still what it waits for
            quiet_fd = getattr(fast, "quiet_fd", None)
            return quiet_fd is not None and quiet_fd() is not None
        if n == 0:
            return False  # the read loop reads the end itself
        conn, tracker = self.conn, self.tracker
        conn.receive_data(view[:n])
        while True:
            try:
                event = conn.next_event()
            except t.RemoteProtocolError as exc:
                self._held = exc
                return False
            if event is t.NEED_DATA:
                return True
            if event is t.CLOSED:
                return False  # it stays CLOSED: the read loop finds it
            assert isinstance(event, t.TunnelMessage)
            if tracker is not None and type(event) is t.HeartbeatAck and self._quiet_acks:
                tracker.on_ack(event.seq, trio.current_time())
                continue
            if type(event) is not t.Heartbeat or self._sending or tracker is None:
                self._held = event
                return False
            tracker.on_received(trio.current_time())
            try:
                self._send_nowait(t.HeartbeatAck(event.seq))
            except Exception as exc:  # raised by the read loop as send() would have
                self._held = exc
                return False

    async def _send_later(self, timer: _HeartbeatTimer, message: t.TunnelMessage) -> None:
        """A heartbeat that had to wait for the gate (another frame is being written)."""
        try:
            await self.send(message)
        finally:
            timer.sending = False


_local = threading.local()


def _receive_view() -> memoryview:
    """This thread's receive buffer: every session's read is copied out of it at once
    (`receive_data`), so one buffer serves all the sessions of a trio loop."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(RECEIVE_BYTES))
    return view


class _HeartbeatTimer:
    """A session's heartbeats and its peer's timeout, as one `TimerWheel` timer.

    `fire` runs on the wheel's task: it ends the session with `PeerSilent`
    once the peer has been silent for the timeout; when our heartbeat is due
    it runs `before_heartbeat` (which may end the session), then sends ours,
    or skips it (`rtt_every`: the peer spoke since our last one, and it is not
    the interval that times the round trip).  Nothing here waits: the
    heartbeat is written at once where it fits the socket buffer, else by a
    task of the session (`_send_later`; while that one waits, the next is
    skipped).  Errors end the session (`_fail`), never the wheel.
    """

    __slots__ = ("before", "rtt_every", "sending", "session", "skipped", "tracker")

    def __init__(
        self,
        session: ControlSession,
        tracker: t.HeartbeatTracker,
        before: Callable[[], None] | None,
        rtt_every: Callable[[], int] | None,
    ) -> None:
        #: None once the session's `serve` ended: the next `fire` leaves the wheel
        self.session: ControlSession | None = session
        self.tracker = tracker
        self.before = before
        self.rtt_every = rtt_every
        #: our heartbeats skipped in a row (`rtt_every`)
        self.skipped = 0
        #: a heartbeat is waiting in `_send_later`
        self.sending = False

    def close(self) -> None:
        """The session is over: nothing of it stays referenced from the wheel's heap."""
        self.session = self.before = self.rtt_every = None

    def fire(self, now: float) -> float | None:
        session = self.session
        if session is None or session._ending():
            return None
        tracker = self.tracker
        try:
            if tracker.expired(now):
                raise PeerSilent(session.peer, f"no sign of life for {tracker.timeout_s:g} s")
            if tracker.due(now):
                if self.before is not None:
                    self.before()
                    if session._ending():  # it called finish(): no heartbeat after that
                        return None
                rtt_every = self.rtt_every
                if self.sending:  # the last one still waits to be written
                    tracker.skip(now)
                elif rtt_every is not None and self.skipped + 1 < rtt_every() and tracker.heard_since_sent():
                    self.skipped += 1
                    tracker.skip(now)
                else:
                    self.skipped = 0
                    heartbeat = t.Heartbeat(tracker.on_sent(now))
                    if not session._send_nowait(heartbeat):
                        self.sending = True
                        session.start_soon(session._send_later, self, heartbeat)
        except Exception as exc:  # re-raised by serve() as it is
            session._fail(exc)
            return None
        return tracker.next_deadline()
