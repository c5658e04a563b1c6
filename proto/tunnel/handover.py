"""What a gateway hands its successor at a restart without an unplug (issue 16 step 3): pure data.

`redirgate gateway restart` (or SIGUSR2) starts a new gateway process that
takes over the old one's listening sockets and every live resumable
channel: the hypervisor's socket (QEMU never sees it close) and the state
that lets the client resume the channel against the new process.  The
descriptors travel beside this document (SCM_RIGHTS); the document names
them by their index in that list.  This module is the document: its
dataclasses and their msgpack form, checked on the way in (the successor
trusts its predecessor no more than it must: a bad document is one
`HandoverError`, and the old process goes on serving).

A channel's state (`HandedChannel`):

- who: route, channel id, the client's identity (the certificate's, as the
  old process verified it), the device and the hypervisor's address;
- resume: the credential secret and generation (`ResumeCredentials`), the
  grace period, and `ResumableChannel.export()` - the bytes sent to the
  client and not acknowledged (the replay), the counts both ways;
- bytes the old process read from the hypervisor and never gave to the
  client side (`to_client`): they go first in the new process;
- a USB channel's usbredir guard position (`HostStreamGuard.export()`);
- counters for status (bytes each way, resumes, since when).

What the client had sent that the old process had not delivered to the
hypervisor was never counted as received: the client sends it again when
it resumes.  The old process stops every channel at a point where nothing
is in flight towards the hypervisor, so nothing is delivered twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from redirgate.proto.tunnel import validate as v
from redirgate.proto.tunnel.errors import LocalProtocolError, TunnelProtocolError
from redirgate.proto.tunnel.resume import ResumableChannel

__all__ = ["HANDOVER_VERSION", "HandedChannel", "HandedListener", "HandoverError", "HandoverState"]

#: Bumped when the document changes incompatibly: a successor refuses another version.
HANDOVER_VERSION: Final = 1
_MAX_DOCUMENT_BYTES: Final = 1 << 34
_OWNER = "handover"


class HandoverError(TunnelProtocolError):
    """The predecessor's document cannot be taken over (the reason says why)."""


@dataclass(frozen=True)
class HandedListener:
    """A listening socket: "tunnel", "route:NAME", "metrics" or "admin", and its descriptor's index."""

    name: str
    fd: int


@dataclass
class HandedChannel:
    """One live resumable channel (see the module docstring)."""

    route: str
    channel_id: int
    client: str
    device: str
    hypervisor: str
    protocol: str
    #: the hypervisor socket's index among the passed descriptors
    fd: int
    grace_s: float
    secret: bytes
    generation: int
    resume: dict[str, Any]
    to_client: bytes = b""
    guard: dict[str, Any] | None = None
    bytes_to_device: int = 0
    bytes_to_hypervisor: int = 0
    started_at: float = 0.0
    resumes: int = 0

    def channel(self) -> ResumableChannel:
        """The sans-IO resume state, rebuilt (HandoverError if it does not hold together)."""
        try:
            channel = ResumableChannel.restored(self.resume)
        except LocalProtocolError as exc:
            raise HandoverError(f"channel {self.channel_id} of {self.client}: {exc}") from exc
        if channel.channel_id != self.channel_id:
            raise HandoverError(f"channel {self.channel_id}'s resume state names channel {channel.channel_id}")
        return channel


@dataclass
class HandoverState:
    """Everything but the descriptors themselves."""

    pid: int
    listeners: list[HandedListener] = field(default_factory=list)
    channels: list[HandedChannel] = field(default_factory=list)
    #: the next channel id per client identity (ids never repeat for a client)
    next_ids: dict[str, int] = field(default_factory=dict)
    version: int = HANDOVER_VERSION

    def descriptors(self) -> int:
        """How many descriptors the document names (indexes run 0..n-1)."""
        return len(self.listeners) + len(self.channels)

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "version": self.version,
                "pid": self.pid,
                "listeners": [[listener.name, listener.fd] for listener in self.listeners],
                "channels": [_channel_map(channel) for channel in self.channels],
                "next_ids": self.next_ids,
            },
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes, descriptors: int) -> HandoverState:
        """The document, checked; `descriptors`: how many came with it.  HandoverError if it is not one."""
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=_MAX_DOCUMENT_BYTES)
        except Exception as exc:
            raise HandoverError(f"the handover document is not msgpack: {type(exc).__name__}: {exc}") from exc
        try:
            return _decode(raw, descriptors)
        except LocalProtocolError as exc:
            raise HandoverError(f"the handover document is malformed: {exc}") from exc


def _channel_map(channel: HandedChannel) -> dict[str, Any]:
    return {name: getattr(channel, name) for name in HandedChannel.__dataclass_fields__}


def _decode(raw: Any, descriptors: int) -> HandoverState:
    document = v.mapping(_OWNER, "document", raw, 16)
    version = document.get("version")
    if version != HANDOVER_VERSION:
        raise HandoverError(f"the predecessor speaks handover version {version!r}, this one {HANDOVER_VERSION}")
    fds: set[int] = set()

    def fd(value: Any) -> int:
        index = v.uint(_OWNER, "fd", value, max(descriptors - 1, 0))
        if index in fds or index >= descriptors:
            raise HandoverError(f"descriptor {index} is named twice or was not passed ({descriptors} came)")
        fds.add(index)
        return index

    listeners = []
    for item in v.sequence(_OWNER, "listeners", document.get("listeners"), 100_000):
        pair = v.sequence(_OWNER, "listener", item, 2)
        listeners.append(HandedListener(v.text(_OWNER, "listener name", pair[0], 1024, empty=False), fd(pair[1])))
    channels = []
    for item in v.sequence(_OWNER, "channels", document.get("channels"), 1_000_000):
        c = v.mapping(_OWNER, "channel", item, 64)
        guard = c.get("guard")
        channels.append(
            HandedChannel(
                route=v.text(_OWNER, "route", c.get("route"), 1024, empty=False),
                channel_id=v.uint(_OWNER, "channel_id", c.get("channel_id"), v.U32, low=1),
                client=v.text(_OWNER, "client", c.get("client"), 1024, empty=False),
                device=v.text(_OWNER, "device", c.get("device"), 1024),
                hypervisor=v.text(_OWNER, "hypervisor", c.get("hypervisor"), 1024),
                protocol=v.text(_OWNER, "protocol", c.get("protocol"), 64, empty=False),
                fd=fd(c.get("fd")),
                grace_s=v.number(_OWNER, "grace_s", c.get("grace_s"), 0.0, 1e9),
                secret=v.blob(_OWNER, "secret", c.get("secret"), 16, 1024),
                generation=v.uint(_OWNER, "generation", c.get("generation"), v.U64),
                resume=dict(v.mapping(_OWNER, "resume", c.get("resume"), 16)),
                to_client=v.blob(_OWNER, "to_client", c.get("to_client"), 0, _MAX_DOCUMENT_BYTES),
                guard=None if guard is None else dict(v.mapping(_OWNER, "guard", guard, 32)),
                bytes_to_device=v.uint(_OWNER, "bytes_to_device", c.get("bytes_to_device"), v.U64),
                bytes_to_hypervisor=v.uint(_OWNER, "bytes_to_hypervisor", c.get("bytes_to_hypervisor"), v.U64),
                started_at=v.number(_OWNER, "started_at", c.get("started_at"), 0.0, 1e12),
                resumes=v.uint(_OWNER, "resumes", c.get("resumes"), v.U64),
            )
        )
    next_ids = {
        v.text(_OWNER, "identity", k, 1024, empty=False): v.uint(_OWNER, "next id", n, v.U32 + 1, low=1)
        for k, n in v.mapping(_OWNER, "next_ids", document.get("next_ids"), 10_000_000).items()
    }
    if len(fds) != descriptors:
        raise HandoverError(f"{descriptors} descriptor(s) came, the document names {len(fds)}")
    return HandoverState(
        pid=v.uint(_OWNER, "pid", document.get("pid"), v.U32, low=1),
        listeners=listeners,
        channels=channels,
        next_ids=next_ids,
    )
