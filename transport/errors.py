"""Errors of the transport package: every one names the peer and the reason.

Owns :class:`TransportError`, the TLS refusal vocabulary and the one
data-phase translator.  Foreign exceptions (``ssl.SSLError``, ``OSError``)
are translated at one boundary each:
:func:`redirgate.transport.tls.refusal_from_ssl_error` for handshakes,
:func:`stream_error` (into trio's Closed/Broken errors) for data, used by
both stream classes.
"""

from __future__ import annotations

import enum
import errno
import ssl

import trio

__all__ = ["Refusal", "TlsRefused", "TransportError", "stream_error"]

#: errnos of a socket whose descriptor was closed under the caller
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


class TransportError(Exception):
    """Base of transport errors; `peer` is "host:port" (or a label), `reason` text."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


class Refusal(enum.StrEnum):
    """Why a TLS peer was refused.  The values are the log wording."""

    NO_CLIENT_CERT = "no client certificate"
    UNKNOWN_CA = "certificate not signed by our CA"
    REVOKED = "certificate revoked"
    CRL_STALE = "our CRL is stale"
    EXPIRED = "certificate expired"
    NOT_YET_VALID = "certificate not yet valid"
    NO_IDENTITY = "certificate carries no redirgate identity"
    NAME_MISMATCH = "certificate name does not match"
    HANDSHAKE_TIMEOUT = "handshake timed out"
    NOT_TLS = "not TLS (garbage)"
    PROTOCOL_VERSION = "TLS version or cipher not accepted"
    CLOSED = "connection closed during handshake"
    BUSY = "the gateway is busy"
    REFUSED_BY_PEER = "refused by the peer"
    FAILED = "TLS handshake failed"


class TlsRefused(TransportError):
    """A TLS handshake or the post-handshake check refused `peer`.

    `refusal` is the category, `detail` what OpenSSL or the check said;
    `reason` (and str()) read "<refusal> (<detail>)".  `retry_after_s`:
    the gateway's hint when it refused early because it was busy
    (`Refusal.BUSY`, see `redirgate.proto.tunnel.busy`), else None; `ticket`:
    the place in its queue it handed out with the hint (None: none).
    """

    def __init__(
        self,
        peer: str,
        refusal: Refusal,
        detail: str = "",
        *,
        retry_after_s: float | None = None,
        ticket: bytes | None = None,
    ) -> None:
        reason = f"{refusal.value} ({detail})" if detail else refusal.value
        super().__init__(peer, reason)
        self.refusal = refusal
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.ticket = ticket


def stream_error(exc: OSError, peer: str) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """What a data-phase ``OSError`` / ``ssl.SSLError`` means to a trio stream's user.

    A descriptor closed under the call (EBADF, ENOTSOCK) is ClosedResourceError;
    anything else, a reset or a TLS failure or a peer that dropped TCP
    without close_notify, is BrokenResourceError.  Raise it ``from exc``.
    """
    if not isinstance(exc, ssl.SSLError) and exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError(f"{peer}: stream was closed")
    return trio.BrokenResourceError(f"{peer}: {exc}")
