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
"""

from __future__ import annotations

import dataclasses

import trio

from redirgate.gateway.transport.stream import ReceiveIntoStream

__all__ = ["DEFAULT_BUFFER_BYTES", "RelayStats", "pump", "relay"]

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


async def pump(
    src: ReceiveIntoStream,
    dst: ReceiveIntoStream,
    *,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
    stats: RelayStats | None = None,
    forward: bool = True,
) -> int:
    """Copy src to dst until src reaches EOF; return the byte count.

    Counts into ``stats.a_to_b`` (``forward``) or ``stats.b_to_a``.
    Errors of either stream propagate (trio's Broken/ClosedResourceError).
    """
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    total = 0
    receive_into = src.receive_into
    send_all = dst.send_all
    while True:
        n = await receive_into(buf)
        if n == 0:
            return total
        await send_all(view[:n])
        total += n
        if stats is not None:
            if forward:
                stats.a_to_b += n
            else:
                stats.b_to_a += n


async def relay(
    a: ReceiveIntoStream,
    b: ReceiveIntoStream,
    *,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
    stats: RelayStats | None = None,
) -> RelayStats:
    """Relay a<->b until either ends, then close both; return the counters."""
    result = stats if stats is not None else RelayStats()

    async def direction(src: ReceiveIntoStream, dst: ReceiveIntoStream, forward: bool, cancel: trio.CancelScope) -> None:
        side = "a" if forward else "b"
        try:
            await pump(src, dst, buffer_size=buffer_size, stats=result, forward=forward)
            reason = "end of stream"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if not result.ended_by:
            result.ended_by, result.reason = side, reason
        cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(direction, a, b, True, nursery.cancel_scope)
            nursery.start_soon(direction, b, a, False, nursery.cancel_scope)
    finally:
        for stream in (a, b):
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_BUDGET_S):
                await stream.aclose()  # closes even if the budget runs out
    return result
