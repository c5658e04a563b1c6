"""Which kind of connection a client opened on the tunnel port, sans-IO.

Control and data connections share the gateway's one tunnel port and the
same framing; the client's first frame tells them apart: a `client_hello`
opens a control connection, an `attach` a data connection.
`OpeningClassifier` buffers raw bytes until that first frame is complete
(never more than the control limit) and says which it is; the caller then
feeds `buffered()` - every byte received so far, the first frame included -
to a fresh `TunnelConnection` or `AttachConnection`, which do the real
checks.  Nothing here touches a socket or logs.
"""

from __future__ import annotations

from enum import StrEnum

from redirgate.proto.tunnel.attach import Attach
from redirgate.proto.tunnel.base import KIND_KEY
from redirgate.proto.tunnel.connection import DEFAULT_MAX_MESSAGE_SIZE
from redirgate.proto.tunnel.errors import InvalidMessageError, TruncatedError
from redirgate.proto.tunnel.framing import Buffer, FrameDecoder, decode_body
from redirgate.proto.tunnel.messages import ClientHello, Error, ResumeChannel

__all__ = ["Opening", "OpeningClassifier"]


class Opening(StrEnum):
    CONTROL = "control"
    DATA = "data"


_KINDS = {
    ClientHello.KIND: Opening.CONTROL,
    Error.KIND: Opening.CONTROL,
    Attach.KIND: Opening.DATA,
    ResumeChannel.KIND: Opening.DATA,
}


class OpeningClassifier:
    """Feed the first bytes of a tunnel connection; `result()` names its kind."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._decoder = FrameDecoder(max_message_size)
        self._raw = bytearray()
        self._result: Opening | None = None

    def receive_data(self, data: Buffer) -> None:
        """Add received bytes (`b""` = EOF)."""
        if self._result is None:
            self._raw += data
        self._decoder.receive_data(data)

    def result(self) -> Opening | None:
        """CONTROL, DATA or None (need more bytes); RemoteProtocolError for
        a first frame that is neither (or a stream that ended first)."""
        if self._result is not None:
            return self._result
        body = self._decoder.next_frame()
        if body is None:
            if self._decoder.eof:
                raise TruncatedError("the connection closed before its first message")
            return None
        kind = decode_body(body).get(KIND_KEY)
        opening = _KINDS.get(kind) if isinstance(kind, str) else None
        if opening is None:
            shown = kind[:64] if isinstance(kind, str) else kind
            raise InvalidMessageError(
                f"first message {shown!r} is neither 'client_hello' nor 'attach' nor 'resume_channel'"
            )
        self._result = opening
        return opening

    def buffered(self) -> bytes:
        """Every byte received so far, to feed the real connection object."""
        return bytes(self._raw)
