"""The relay for USB channels: the plain pump plus the usbredir guard.

QEMU 7.2 aborts the whole VM when its usbredir parser meets a malformed
message from the host side, and the host side is a thin client we do not
control.  So the client -> hypervisor direction of every USB channel goes
through `HostStreamGuard.feed` before a chunk is sent on: it walks message
headers only (no payload copies), and a chunk holding a bad header is never
forwarded - the channel ends with `GuardViolation` instead.  The
hypervisor -> client direction is shown to the guard until QEMU's hello
has passed (the guard needs both hellos to know the layout in force).

Same buffers, backpressure and shutdown choreography as
`transport.relay.relay` (one preallocated buffer per direction, close both
streams when either direction ends).
"""

from __future__ import annotations

import trio

from redirgate.gateway.errors import ChannelError
from redirgate.gateway.transport import DEFAULT_BUFFER_BYTES, RelayStats, ReceiveIntoStream, pump
from redirgate.proto.usbredir import RemoteProtocolError
from redirgate.proto.usbredir.walker import HostStreamGuard

__all__ = ["GuardViolation", "relay_usbredir"]

_CLOSE_BUDGET_S = 2.0


class GuardViolation(ChannelError):
    """The client sent a usbredir message QEMU would abort on."""


async def relay_usbredir(
    hypervisor: ReceiveIntoStream,
    device: ReceiveIntoStream,
    *,
    client: str,
    stats: RelayStats | None = None,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
) -> RelayStats:
    """Relay hypervisor (a) <-> client data connection (b) with the guard on b -> a.

    Returns the counters when either side ends; raises GuardViolation (after
    closing both streams) when the client sent a malformed message.
    """
    result = stats if stats is not None else RelayStats()
    guard = HostStreamGuard()
    violation: list[GuardViolation] = []

    def observe_guest(chunk: memoryview) -> None:
        if not guard.ready:
            try:
                guard.observe_guest_bytes(chunk)
            except RemoteProtocolError as exc:
                raise GuardViolation("hypervisor", f"the hypervisor does not speak usbredir: {exc}") from exc

    def check_host(chunk: memoryview) -> None:
        try:
            guard.feed(chunk)
        except RemoteProtocolError as exc:
            raise GuardViolation(client, f"malformed usbredir message from the client: {exc}") from exc

    async def direction(forward: bool, cancel: trio.CancelScope) -> None:
        src, dst = (hypervisor, device) if forward else (device, hypervisor)
        inspect = observe_guest if forward else check_host
        side = "a" if forward else "b"
        try:
            await pump(src, dst, buffer_size=buffer_size, stats=result, forward=forward, inspect=inspect)
            reason = "end of stream"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except GuardViolation as exc:
            violation.append(exc)
            side, reason = ("a" if forward else "b"), exc.reason
        if not result.ended_by:
            result.ended_by, result.reason = side, reason
        cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(direction, True, nursery.cancel_scope)
            nursery.start_soon(direction, False, nursery.cancel_scope)
    finally:
        for stream in (hypervisor, device):
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_BUDGET_S):
                await stream.aclose()
    if violation:
        raise violation[0]
    return result
