"""The two results of a connection's `next_event()` that are not messages.

Every sans-IO connection here (usbredir, tunnel, telnet) returns a message,
`NEED_DATA` (no complete message is buffered yet) or `CLOSED` (the peer
closed the stream at a message boundary). They are members of one enum so
that a type checker narrows `event is NEED_DATA` and `event is CLOSED`:
after both tests, `event` is a message.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["CLOSED", "NEED_DATA", "Sentinel"]


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


#: `next_event()`: no complete message is buffered yet.
NEED_DATA: Final = Sentinel.NEED_DATA
#: `next_event()`: the peer closed the stream at a message boundary.
CLOSED: Final = Sentinel.CLOSED
