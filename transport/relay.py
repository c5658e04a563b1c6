"""The relay pump: move bytes between two streams with one buffer per direction.

Owns :func:`pump` (one direction) and :func:`relay` (both, with close
propagation) and their byte counters.  Never parses what it moves and never
holds gateway state.

Hot loop: ``n = await src.receive_into(buf)`` then
``await dst.send_all(view[:n])`` on a buffer allocated once per direction
for the life of the channel, so steady state allocates only the slice
object.  Backpressure is structural: the pump does not read again until
the previous chunk is written, so at most ``buffer_size`` bytes per
direction are in flight inside the gateway.

Shutdown choreography of :func:`relay`: both directions run in one nursery.
When either ends, because its source reached EOF or because either stream
broke or was closed, that task records why and cancels the nursery; then
both streams are closed (``aclose``: TLS sends close_notify, best effort),
so the far side of each sees the channel end.  TLS has no half-close, so an
EOF in one direction ends the whole channel.  Errors that mean "the other
side went away" (trio Broken/Closed) end the relay normally; anything else
propagates.

A :class:`SocketMover` (the gateway's relay reactor thread fills it in) can
move the bytes instead of the two trio tasks, on sockets both streams lend
it (interfaces.SocketLender); the relay still owns the streams' closing.
The client never passes one: its relays are the plain trio pumps.

A resumable channel's stream (transport.resumable) lends its socket with
the channel's state; when the mover stops because that socket broke (not
a clean end), the relay writes what the mover had read from it and not yet
delivered to the other side, lets the stream resume on a new connection
(`ResumableStream.recover`), and lends again: the other stream (QEMU's
socket) never sees the break.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Protocol

import trio

from redirgate.transport.interfaces import (
    Handover,
    Inspector,
    NonBlockingStream,
    ReceiveIntoStream,
    SocketLender,
    nonblocking,
)
from redirgate.transport.prefixed import PrefixedStream
from redirgate.transport.resumable import ResumableStream

__all__ = ["DEFAULT_BUFFER_BYTES", "RelayStats", "SocketMover", "pump", "relay"]

#: Per direction.  256 KiB covers several TLS records (16 KiB, RFC 8446
#: 5.1) and a loopback socket's typical read, without letting one channel
#: hold much memory.
DEFAULT_BUFFER_BYTES = 256 * 1024
#: Upper bound on each stream's graceful close once the relay is over.
_CLOSE_BUDGET_S = 2.0


@dataclasses.dataclass
class RelayStats:
    """Live counters of a relay (readable while it runs)."""

    a_to_b: int = 0
    b_to_a: int = 0
    ended_by: str = ""  # "a", "b" (EOF or error on that side's read or write) or ""
    reason: str = ""
    #: a mover's end: `ended_by`'s socket failed (an error, not a clean end of stream)
    broken: bool = False
    #: a mover's end: bytes it had read from b (a) and not yet written to a (b)
    unsent_to_a: bytes = b""
    unsent_to_b: bytes = b""


class SocketMover(Protocol):
    """Moves a channel's bytes on lent sockets instead of the relay's trio pumps."""

    async def move(
        self,
        a: Handover,
        b: Handover,
        stats: RelayStats,
        buffer_size: int,
        inspect_a_to_b: Inspector | None,
        inspect_b_to_a: Inspector | None,
    ) -> None:
        """Relay a<->b until either ends, counting into `stats` and setting its
        `ended_by`/`reason` if still empty; re-raise what an inspector raised.
        Never closes the sockets (the relay closes the streams afterwards);
        on cancellation, returns them before it raises."""
        ...


#: Chunks moved without waiting before the pump yields anyway, so one busy
#: channel cannot starve the others on the same loop (and cancellation is seen).
_YIELD_EVERY = 16


async def pump(
    src: ReceiveIntoStream,
    dst: ReceiveIntoStream,
    *,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
    stats: RelayStats | None = None,
    forward: bool = True,
    inspect: Inspector | None = None,
) -> int:
    """Copy src to dst until src reaches EOF; return the byte count.

    Counts into ``stats.a_to_b`` (``forward``) or ``stats.b_to_a``.
    ``inspect`` sees every chunk before it is sent (and may raise to stop
    the pump: that chunk is not sent) until it returns True (it has seen
    all it needs).  Errors of either stream propagate
    (trio's Broken/ClosedResourceError).
    """
    if nonblocking(src) and nonblocking(dst):
        return await _fast_pump(src, dst, buffer_size, stats, forward, inspect)
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    total = 0
    receive_into = src.receive_into
    send_all = dst.send_all
    while True:
        n = await receive_into(buf)
        if n == 0:
            return total
        chunk = view[:n]
        if inspect is not None and inspect(chunk):
            inspect = None
        await send_all(chunk)
        total += n
        if stats is not None:
            if forward:
                stats.a_to_b += n
            else:
                stats.b_to_a += n


async def _fast_pump(
    src: NonBlockingStream,
    dst: NonBlockingStream,
    buffer_size: int,
    stats: RelayStats | None,
    forward: bool,
    inspect: Inspector | None,
) -> int:
    """`pump` on non-blocking moves: a chunk that can go at once costs two
    system calls and no scheduler round trip; waiting happens only when a
    socket really has nothing to give or no room to take (or, after a short
    read, probably has nothing)."""
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    total = 0
    try_receive_into, wait_receivable = src.try_receive_into, src.wait_receivable
    try_send, wait_sendable = dst.try_send, dst.wait_sendable
    unyielded = 0
    drained = False
    await trio.lowlevel.checkpoint()
    while True:
        n = None if drained else try_receive_into(buf)
        if n is None:
            await wait_receivable()
            unyielded = 0
            drained = False
            continue
        if n == 0:
            return total
        # a short read (the source had no more, or a TLS record short of a
        # train of full ones) is followed by the wait, not by a read that
        # would only say "nothing yet"; if more came, the wait returns at once
        drained = n < buffer_size
        if inspect is not None and inspect(view[:n]):
            inspect = None
        sent = 0
        while sent < n:
            k = try_send(view[sent:n])
            if k is None:
                await wait_sendable()
                unyielded = 0
                continue
            sent += k
        total += n
        if stats is not None:
            if forward:
                stats.a_to_b += n
            else:
                stats.b_to_a += n
        unyielded += 1
        if unyielded >= _YIELD_EVERY:
            unyielded = 0
            await trio.lowlevel.checkpoint()


class _Inspected(Exception):
    """What an inspector raised, carried out of a pump task."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _carrying(inspect: Inspector | None) -> Inspector | None:
    if inspect is None:
        return None

    def run(chunk: memoryview) -> bool | None:
        try:
            return inspect(chunk)
        except Exception as exc:
            raise _Inspected(exc) from exc

    return run


async def relay(
    a: ReceiveIntoStream,
    b: ReceiveIntoStream,
    *,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
    stats: RelayStats | None = None,
    inspect_a_to_b: Inspector | None = None,
    inspect_b_to_a: Inspector | None = None,
    mover: SocketMover | None = None,
) -> RelayStats:
    """Relay a<->b until either ends, then close both; return the counters.

    An inspector sees each chunk of its direction before it is sent; what it
    raises ends the relay (that chunk is not sent) and is re-raised here
    after both streams are closed.  With a `mover`, and streams that both
    lend their sockets (interfaces.SocketLender), the mover moves the bytes;
    otherwise two trio tasks do.
    """
    result = stats if stats is not None else RelayStats()
    if mover is not None:
        lent = None
        try:
            while True:
                lent = _lend_both(a, b)
                if lent is None:
                    break  # the trio pumps take over (a resumed stream that cannot lend)
                if not await _move(mover, a, b, lent, result, buffer_size, inspect_a_to_b, inspect_b_to_a):
                    break
        except BaseException:
            await _close_both(a, b)
            raise
        if lent is not None:
            await _close_both(a, b)
            return result
    errors: list[Exception] = []

    async def direction(
        src: ReceiveIntoStream, dst: ReceiveIntoStream, forward: bool, cancel: trio.CancelScope
    ) -> None:
        side = "a" if forward else "b"
        inspect = _carrying(inspect_a_to_b if forward else inspect_b_to_a)
        try:
            await pump(src, dst, buffer_size=buffer_size, stats=result, forward=forward, inspect=inspect)
            reason = "end of stream"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except _Inspected as inspected:
            errors.append(inspected.error)
            reason = str(inspected.error)
        if not result.ended_by:
            result.ended_by, result.reason = side, reason
        cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(direction, a, b, True, nursery.cancel_scope)
            nursery.start_soon(direction, b, a, False, nursery.cancel_scope)
    finally:
        await _close_both(a, b)
    if errors:
        raise errors[0]
    return result


async def _move(
    mover: SocketMover,
    a: ReceiveIntoStream,
    b: ReceiveIntoStream,
    lent: tuple[Handover, Handover],
    result: RelayStats,
    buffer_size: int,
    inspect_a_to_b: Inspector | None,
    inspect_b_to_a: Inspector | None,
) -> bool:
    """One lend to the mover; True when a resumable side broke and resumed (lend again)."""
    resumable = {"a": resumable_under(a), "b": resumable_under(b)}
    side = "b" if resumable["b"] is not None else "a"
    stream = resumable[side]
    with contextlib.ExitStack() as stack:
        scope = stack.enter_context(stream.lent_scope()) if stream is not None else None
        await mover.move(*lent, result, buffer_size, inspect_a_to_b, inspect_b_to_a)
    for s in (a, b):
        drop_prefixes(s)
    if stream is None:
        return False
    if scope is not None and scope.cancelled_caught:
        why = stream.interrupted_why
    elif result.ended_by == side and result.broken:
        why = result.reason
    else:
        return False
    other = a if side == "b" else b
    unsent = result.unsent_to_a if side == "b" else result.unsent_to_b
    result.ended_by, result.reason, result.broken = "", "", False
    result.unsent_to_a = result.unsent_to_b = b""
    try:
        if unsent:
            await other.send_all(unsent)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        result.ended_by, result.reason = ("a" if side == "b" else "b"), f"{type(exc).__name__}: {exc}"
        return False
    try:
        await stream.recover(why)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        result.ended_by, result.reason = side, f"{type(exc).__name__}: {exc}"
        return False
    return True


def resumable_under(stream: object) -> ResumableStream | None:
    """The resumable stream under `stream`'s prefixes, or None (not resumable)."""
    while isinstance(stream, PrefixedStream):
        stream = stream.inner
    return stream if isinstance(stream, ResumableStream) else None


def drop_prefixes(stream: object) -> None:
    """After a lend: the prefixes went to the borrower (a reactor), none is lent again."""
    while True:
        if isinstance(stream, PrefixedStream):
            stream.drop_prefix()
            stream = stream.inner
        elif isinstance(stream, ResumableStream):
            stream = stream.inner
        else:
            return


def _lend_both(a: ReceiveIntoStream, b: ReceiveIntoStream) -> tuple[Handover, Handover] | None:
    """Both streams' sockets, or None where either cannot lend (nothing is taken then)."""
    lent_a = a.lend() if isinstance(a, SocketLender) else None
    lent_b = b.lend() if isinstance(b, SocketLender) else None
    return None if lent_a is None or lent_b is None else (lent_a, lent_b)


async def _close_both(a: ReceiveIntoStream, b: ReceiveIntoStream) -> None:
    for stream in (a, b):
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_BUDGET_S):
            await stream.aclose()  # closes even if the budget runs out
