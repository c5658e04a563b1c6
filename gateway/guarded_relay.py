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

from redirgate.gateway.errors import ChannelError
from redirgate.proto.usbredir import RemoteProtocolError
from redirgate.proto.usbredir.walker import HostStreamGuard
from redirgate.transport import DEFAULT_BUFFER_BYTES, ReceiveIntoStream, RelayReactor, RelayStats, relay

__all__ = ["GuardViolation", "relay_usbredir"]


class GuardViolation(ChannelError):
    """The client sent a usbredir message QEMU would abort on."""


async def relay_usbredir(
    hypervisor: ReceiveIntoStream,
    device: ReceiveIntoStream,
    *,
    client: str,
    stats: RelayStats | None = None,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
    reactor: RelayReactor | None = None,
    guard: HostStreamGuard | None = None,
) -> RelayStats:
    """Relay hypervisor (a) <-> client data connection (b) with the guard on b -> a.

    Returns the counters when either side ends; raises GuardViolation (after
    closing both streams) when the client sent a malformed message.
    `guard`: one the caller keeps (a restart hands its position over), or
    one taken over from the process before the restart.
    """
    guard = HostStreamGuard() if guard is None else guard

    def observe_guest(chunk: memoryview) -> bool:
        """Until QEMU's hello has passed; True once the guard needs no more."""
        try:
            guard.observe_guest_bytes(chunk)
        except RemoteProtocolError as exc:
            raise GuardViolation("hypervisor", f"the hypervisor does not speak usbredir: {exc}") from exc
        return guard.guest_hello_seen

    try:
        return await relay(
            hypervisor,
            device,
            buffer_size=buffer_size,
            stats=stats,
            inspect_a_to_b=None if guard.guest_hello_seen else observe_guest,
            inspect_b_to_a=guard.feed,
            mover=reactor,
        )
    except RemoteProtocolError as exc:  # from guard.feed: the chunk was not sent
        raise GuardViolation(client, f"malformed usbredir message from the client: {exc}") from exc
