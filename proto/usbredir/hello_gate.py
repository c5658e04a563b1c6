"""The first bytes of a USB route: a valid usbredir hello, or why not (sans-IO).

A hypervisor-facing USB route hands a device to a connection only after it
sent a complete, valid usbredir hello (QEMU sends its hello at once), so a
silent or foreign connection never holds a device.  `HelloGate` judges the
bytes as they arrive: feed each chunk with `receive_data` (``b""`` for EOF)
and read `verdict`: None while more bytes are needed, else a `HelloVerdict`
that either accepts (the bytes up to and including the hello, to be relayed
as they are) or refuses with the reason.  A connection that sent `limit`
bytes without completing its hello is refused.  It uses the codec's own parser (`UsbredirConnection` in the host role),
and no error escapes it: a malformed hello is a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from redirgate.proto.usbredir.connection import CLOSED, NEED_DATA, UsbredirConnection
from redirgate.proto.usbredir.constants import Role
from redirgate.proto.usbredir.errors import RemoteProtocolError
from redirgate.proto.usbredir.messages import Hello

__all__ = ["HELLO_GATE_LIMIT", "HelloGate", "HelloVerdict"]

#: Bytes a hypervisor may send before its hello must be complete.
HELLO_GATE_LIMIT = 4096


@dataclass(frozen=True)
class HelloVerdict:
    """`ok`: `received` holds every byte fed so far (the hello and whatever
    came behind it in the same chunk: all of it is relayed on); else
    `reason` says why the connection is refused."""

    ok: bool
    received: bytes = b""
    reason: str = ""


class HelloGate:
    """Judges the first bytes of one connection (see the module docstring)."""

    def __init__(self, limit: int = HELLO_GATE_LIMIT) -> None:
        self.limit = limit
        self.verdict: HelloVerdict | None = None
        self._parser = UsbredirConnection(Role.HOST)
        self._received = bytearray()

    def receive_data(self, data: bytes | bytearray | memoryview) -> HelloVerdict | None:
        """Take the next bytes from the peer (b"": it closed); the verdict once there is one."""
        if self.verdict is not None:
            return self.verdict
        self._received += data
        try:
            self._parser.receive_data(data)
            event = self._parser.next_event()
        except RemoteProtocolError as exc:
            return self._refuse(f"not usbredir: {exc}")
        if isinstance(event, Hello):
            self.verdict = HelloVerdict(True, bytes(self._received))
        elif event is CLOSED or not data:
            self._refuse("it closed before its usbredir hello")
        elif event is not NEED_DATA:
            self._refuse("no usbredir hello first")
        elif len(self._received) >= self.limit:
            self._refuse(f"no usbredir hello in its first {self.limit} bytes")
        return self.verdict

    def _refuse(self, reason: str) -> HelloVerdict:
        self.verdict = HelloVerdict(False, reason=reason)
        return self.verdict
