"""Errors of the transport package: every one names the peer and the reason.

Owns :class:`TransportError` and the TLS refusal vocabulary.  Foreign
exceptions (``ssl.SSLError``, ``OSError``) are translated into these (or into
trio's Closed/Broken errors for data-phase failures) at one boundary each:
:func:`redirgate.transport.tls.refusal_from_ssl_error` for handshakes,
the stream classes for data.
"""

from __future__ import annotations

import enum

__all__ = ["Refusal", "TlsRefused", "TransportError"]


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
    EXPIRED = "certificate expired"
    NOT_YET_VALID = "certificate not yet valid"
    NO_IDENTITY = "certificate carries no redirgate identity"
    NAME_MISMATCH = "certificate name does not match"
    HANDSHAKE_TIMEOUT = "handshake timed out"
    NOT_TLS = "not TLS (garbage)"
    PROTOCOL_VERSION = "TLS version or cipher not accepted"
    CLOSED = "connection closed during handshake"
    REFUSED_BY_PEER = "refused by the peer"
    FAILED = "TLS handshake failed"


class TlsRefused(TransportError):
    """A TLS handshake or the post-handshake check refused `peer`.

    `refusal` is the category, `detail` what OpenSSL or the check said;
    `reason` (and str()) read "<refusal> (<detail>)".
    """

    def __init__(self, peer: str, refusal: Refusal, detail: str = "") -> None:
        reason = f"{refusal.value} ({detail})" if detail else refusal.value
        super().__init__(peer, reason)
        self.refusal = refusal
        self.detail = detail
