"""The client's side of resumable channels (issue 16): redial a broken data connection, and the acks.

`ChannelResumer` is what `TunnelClient` keeps for its resumable channels,
across control connections: each channel's `transport.ResumableStream`
(whose `reconnect` is `resume_connection` here), the acks due to the
gateway, and the task that sends them on whichever control connection is
up (every `ack_every` bytes, when a channel's stream asks, or after
`ACK_IDLE_S` without one while something is unacknowledged).

A data connection that breaks is redialled with jittered backoff until the
gateway answers: `ResumeAnswer(ok)` and the channel carries on (the
replay first), a refusal (the grace period passed, the gateway restarted)
ends the channel.  The device stays claimed meanwhile: the engine's
transfers keep running, their results wait in the replay buffer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import trio

from redirgate.proto import tunnel as t
from redirgate.transport import (
    PeerGone,
    PrefixedStream,
    ResumableStream,
    TlsRefused,
    ZeroCopyTLSStream,
)

__all__ = ["ACK_IDLE_S", "HINT_JITTER", "RESUME_GIVE_UP_S", "ChannelResumer"]

log = logging.getLogger(__name__)

#: Unacknowledged bytes below `ack_every` are acknowledged after this long.
ACK_IDLE_S = 0.5
#: Counts of channels relayed by a node that does not hold our control connection are
#: repeated this often (their acks pass between nodes, where one may be lost).
REPEAT_S = 2.0
#: A gateway to dial: (host, port, the name its certificate must carry).
Where = tuple[str, int, str]
#: A busy gateway's retry hint is honoured with up to this fraction added (never less than the hint).
HINT_JITTER = 0.1
#: How long a channel tries to resume before it gives up (the gateway's
#: grace period decides first; this bounds a gateway that is simply gone).
RESUME_GIVE_UP_S = 600.0
_RECEIVE_BYTES = 4096


class ChannelResumer:
    """The resumable channels of one `TunnelClient` (trio thread only)."""

    def __init__(
        self,
        dial: Callable[[Where | None], Awaitable[ZeroCopyTLSStream]],
        *,
        peer: str,
        connect_timeout_s: float,
        min_s: float,
        max_s: float,
    ) -> None:
        self._dial = dial
        self.peer = peer
        self.connect_timeout_s = connect_timeout_s
        self.min_s, self.max_s = min_s, max_s
        self.streams: dict[int, ResumableStream] = {}
        #: the gateway each channel's data connection goes to (it is resumed there, whichever
        #: node of a cluster holds the control connection by then)
        self.where: dict[int, Where | None] = {}
        self._due: dict[int, t.ChannelAck] = {}
        self._wanted = trio.Event()

    def wrap(
        self, channel_id: int, stream: trio.abc.Stream, credential: bytes, where: Where | None = None
    ) -> ResumableStream:
        """The channel's data stream, made resumable with the attach result's credential;
        `where`: the gateway it is attached to (None: the configured one)."""
        channel = t.ResumableChannel(channel_id)
        channel.credential = credential
        self.where[channel_id] = where

        async def reconnect(why: str) -> tuple[trio.abc.Stream, bytes]:
            return await self.resume_connection(channel, why, where)

        resumable = ResumableStream(
            stream, channel, reconnect, peer=f"{self.peer} channel {channel_id}", on_ack=self._ack_due
        )
        self.streams[channel_id] = resumable
        self._wanted.set()  # the ack task looks again: a channel to flush when idle
        return resumable

    def forget(self, channel_id: int) -> None:
        self.streams.pop(channel_id, None)
        self.where.pop(channel_id, None)
        self._due.pop(channel_id, None)

    # ------------------------------------------------------------ acks
    def _ack_due(self, ack: t.ChannelAck) -> None:
        self._due[ack.channel_id] = ack
        self._wanted.set()

    def acked(self, message: t.ChannelAck) -> None:
        """The gateway's ack (ResumeError, a protocol error, if it names bytes we never sent)."""
        stream = self.streams.get(message.channel_id)
        if stream is not None:
            stream.acked(message)

    def control_lost(self) -> None:
        """Acks sent on the control connection that broke may be lost: repeat them on the next."""
        for stream in self.streams.values():
            stream.channel.acks_lost()

    def repeat_acks(self) -> list[t.ChannelAck]:
        """Every surviving channel's count, for a new control connection (also
        how the gateway knows which of its channels this client still serves)."""
        acks = []
        for stream in self.streams.values():
            stream.channel.acks_lost()
            ack = stream.ack_now()
            if ack is not None:
                acks.append(ack)
        self._due.clear()
        return acks

    async def send_acks(self, send: Callable[[t.TunnelMessage], Awaitable[None]], control: Where | None = None) -> None:
        """The control session's ack task: due acks at once, the rest when idle.  `control`: the
        gateway of the control connection; channels attached to another node have their
        counts repeated every REPEAT_S (an ack between nodes may be lost; that node also
        takes them as a sign of life)."""
        repeat_at = trio.current_time() + REPEAT_S
        while True:
            # every ACK_IDLE_S while there are channels: bytes below `ack_every` wake nobody
            with trio.move_on_after(ACK_IDLE_S if self.streams else float("inf")):
                await self._wanted.wait()
            self._wanted = trio.Event()
            due, self._due = self._due, {}
            now = trio.current_time()
            repeat = now >= repeat_at
            if repeat:
                repeat_at = now + REPEAT_S
            for cid, stream in list(self.streams.items()):
                if repeat and self.where.get(cid) not in (None, control):
                    stream.channel.acks_lost()
                ack = stream.ack_now()
                if ack is not None:
                    due[ack.channel_id] = ack
            for ack in due.values():
                await send(ack)

    # ------------------------------------------------------------ redial
    async def resume_connection(
        self, channel: t.ResumableChannel, why: str, where: Where | None = None
    ) -> tuple[trio.abc.Stream, bytes]:
        """A new data connection for `channel` (to `where`, the gateway it was attached to)
        and the replay to send on it; BrokenResourceError once the gateway refuses or after
        RESUME_GIVE_UP_S."""
        cid = channel.channel_id
        peer = self.peer if where is None else f"{where[0]}:{where[1]}"
        log.warning("channel %d: data connection to %s lost (%s); resuming", cid, peer, why)
        started = trio.current_time()
        failures = 0
        while trio.current_time() - started < RESUME_GIVE_UP_S:
            hint: float | None = None
            try:
                with trio.fail_after(self.connect_timeout_s):
                    stream = await self._dial(where)
                    try:
                        return await self._resume_on(stream, channel, started)
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
            except t.ResumeError as exc:
                log.warning("channel %d: the gateway did not resume it: %s", cid, exc.reason)
                raise trio.BrokenResourceError(f"{self.peer}: channel {cid} not resumed: {exc.reason}") from exc
            except (TlsRefused, PeerGone, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                if _refused(exc):
                    # nothing listens there: the gateway process that relayed the channel is gone
                    # (a node of a cluster died, a gateway restarted), and the channel with it
                    log.warning("channel %d: %s refuses connections: its gateway is gone; ending it", cid, peer)
                    raise trio.BrokenResourceError(f"{peer}: channel {cid} not resumed: {reason}") from exc
                hint = getattr(exc, "retry_after_s", None)
            except (trio.TooSlowError, t.TunnelProtocolError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            failures = min(failures + 1, 16)
            window = min(self.max_s, self.min_s / 4 * 2**failures)
            delay = random.uniform(window / 2, window)
            if hint is not None:  # a busy gateway said when: that, not our guess
                delay = min(self.max_s, hint * random.uniform(1.0, 1.0 + HINT_JITTER))
            log.info("channel %d: resume attempt %d failed (%s); again in %.2f s", cid, failures, reason, delay)
            await trio.sleep(delay)
        raise trio.BrokenResourceError(f"{self.peer}: channel {cid} not resumed within {RESUME_GIVE_UP_S:g} s")

    async def _resume_on(
        self, stream: ZeroCopyTLSStream, channel: t.ResumableChannel, started: float
    ) -> tuple[trio.abc.Stream, bytes]:
        attach = t.AttachConnection("client")
        await stream.send_all(attach.send(channel.resume_request()))
        answer = attach.next_event()
        while answer is t.NEED_DATA:
            attach.receive_data(await stream.receive_some(_RECEIVE_BYTES))
            answer = attach.next_event()
        if not isinstance(answer, t.ResumeAnswer):
            raise trio.BrokenResourceError("the gateway closed the data connection before its resume answer")
        replay = channel.resume_answered(answer)  # ResumeError when refused
        trailing, _ = attach.trailing_data()
        log.info(
            "channel %d: resumed after %.2f s; %d byte(s) sent again",
            channel.channel_id,
            trio.current_time() - started,
            len(replay),
        )
        return (PrefixedStream(stream, trailing) if trailing else stream), replay


def _refused(exc: BaseException) -> bool:
    """A connection refused (nothing listens), however trio wrapped it (a cause, a group)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return True
        if isinstance(error, BaseExceptionGroup):
            todo += error.exceptions
        todo += [e for e in (error.__cause__, error.__context__) if e is not None]
    return False
