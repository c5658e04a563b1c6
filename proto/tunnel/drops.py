"""The client's stream drop counts, told to the gateway on the control connection.

A client drops stream packets the way usbredirhost does, and only there:
isochronous OUT packets from the VM that the device cannot take in time
(``iso_out``), and stream packets from the device (iso IN, interrupt and
bulk receiving) not sent because the VM reads too slowly (``to_guest``).
`StreamDrops` carries one channel's counts since the channel started; the
client sends it when they changed (at most once per interval, and once more
as the channel ends), so `gateway status` and the gateway's metrics show
drops per channel, route and client, not only the client's own metrics.

Both hellos name `STREAM_DROPS_CAPABILITY` before it may be sent (a peer
without it never sees one, and a gateway hears nothing from an older
client: its counts stay at zero).  The counts are totals, never deltas: a
lost or repeated report changes nothing, and within one control connection
a channel's counts never decrease (`state.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from redirgate.proto.tunnel import validate as v
from redirgate.proto.tunnel.base import Role, TunnelMessage

__all__ = ["STREAM_DROPS_CAPABILITY", "StreamDrops"]

#: Named in both hellos before `StreamDrops` may be sent.
STREAM_DROPS_CAPABILITY: Final = "stream_drops"


@dataclass(frozen=True, slots=True)
class StreamDrops(TunnelMessage):
    """Client -> gateway: packets channel `channel_id` has dropped since it started."""

    KIND: ClassVar[str] = "stream_drops"
    SENDERS: ClassVar[frozenset[Role]] = frozenset({Role.CLIENT})

    channel_id: int
    #: isochronous OUT packets from the VM the device could not take in time
    iso_out: int = 0
    #: stream packets from the device (iso IN, interrupt, bulk receiving) the VM read too slowly for
    to_guest: int = 0

    def __post_init__(self) -> None:
        owner = "StreamDrops"
        v.uint(owner, "channel_id", self.channel_id, v.U32, low=1)
        v.uint(owner, "iso_out", self.iso_out, v.U64)
        v.uint(owner, "to_guest", self.to_guest, v.U64)

    @property
    def counts(self) -> tuple[int, int]:
        return (self.iso_out, self.to_guest)
