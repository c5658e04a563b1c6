"""TLS contexts, the post-handshake check, and the ssl.SSLError boundary.

Owns the TLS policy of both ports and the refusal vocabulary's mapping:

* the tunnel (:func:`server_context` / :func:`client_context`): TLS 1.3
  only, mutual authentication against our CA, no session tickets (nothing
  resumes; one less post-handshake message);
* the hypervisor-facing port (:func:`hypervisor_server_context`): TLS 1.2 or
  1.3 with ECDHE + AEAD suites only, because QEMU 7.2 speaks GnuTLS with its
  default priorities and presents the client certificate written by
  ``redirgate pki issue-hypervisor``.

OpenSSL checks the chain and validity during the handshake; revocation and
the identity convention are checked afterwards by :func:`verify_peer`,
which reads the CRL through a :class:`RevocationChecker` so that a new CRL
applies without rebuilding the context.  Every ``ssl.SSLError``/``OSError``
from a handshake becomes a :class:`TlsRefused` in
:func:`refusal_from_ssl_error` and nowhere else.

Never holds gateway state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import ssl
from typing import Protocol

from cryptography import x509

from redirgate.transport.errors import Refusal, TlsRefused
from redirgate.transport.identity import IdentityError, PeerKind, identity_from_certificate

__all__ = [
    "HYPERVISOR_CIPHERS",
    "ClientContext",
    "RevocationChecker",
    "client_context",
    "hypervisor_server_context",
    "refusal_from_ssl_error",
    "server_context",
    "verify_peer",
]

PathLike = str | os.PathLike[str]

#: TLS 1.2 suites for the hypervisor port (TLS 1.3 suites are all AEAD).
#: Our keys are ECDSA, so ECDHE-ECDSA is what actually negotiates.
HYPERVISOR_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

# X509_V_ERR_* codes (OpenSSL include/openssl/x509_vfy.h) seen by
# SSLCertVerificationError.verify_code.
_V_UNKNOWN_CA = {
    2,  # UNABLE_TO_GET_ISSUER_CERT
    7,  # CERT_SIGNATURE_FAILURE
    18,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # SELF_SIGNED_CERT_IN_CHAIN
    20,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
_V_EXPIRED = 10  # CERT_HAS_EXPIRED
_V_NOT_YET_VALID = 9  # CERT_NOT_YET_VALID
_V_REVOKED = 23  # CERT_REVOKED
_V_HOSTNAME_MISMATCH = 62  # HOSTNAME_MISMATCH
_V_IP_MISMATCH = 64  # IP_ADDRESS_MISMATCH

# ssl.SSLError.reason strings (OpenSSL's SSL_R_* names).
_NOT_TLS = {
    "WRONG_VERSION_NUMBER",
    "HTTP_REQUEST",
    "HTTPS_PROXY_REQUEST",
    "UNKNOWN_PROTOCOL",
    "PACKET_LENGTH_TOO_LONG",
    "RECORD_LENGTH_MISMATCH",
    "WRONG_SSL_VERSION",
    "RECORD_LAYER_FAILURE",
    "UNEXPECTED_MESSAGE",
    "BAD_PACKET_LENGTH",
    "LENGTH_MISMATCH",
}
_VERSION = {
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "VERSION_TOO_LOW",
}
_NO_CERT = {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}
_PEER_ALERT_UNKNOWN_CA = {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"}
_PEER_ALERT_EXPIRED = {"SSLV3_ALERT_CERTIFICATE_EXPIRED"}
_PEER_ALERT_REVOKED = {"SSLV3_ALERT_CERTIFICATE_REVOKED"}


class RevocationChecker(Protocol):
    """Anything that can say whether a certificate is revoked (e.g. pki.RevocationList).

    `unusable()` is None while the list may be trusted for a new handshake,
    else why not (a CRL past its nextUpdate under the refuse policy): every
    new peer is then refused as `Refusal.CRL_STALE`.
    """

    def is_revoked(self, cert: x509.Certificate) -> bool: ...

    def unusable(self) -> str | None: ...


@dataclasses.dataclass(frozen=True)
class ClientContext:
    """A client-side SSLContext with the name the server certificate must carry."""

    ssl_context: ssl.SSLContext
    server_name: str


def _base(purpose: ssl.Purpose, cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    ctx.load_verify_locations(cafile=os.fspath(ca))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def server_context(cert: PathLike, key: PathLike, ca: PathLike, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """The tunnel listener's context: TLS 1.3 only, client certificates from `ca`."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH, cert, key, ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    ctx.num_tickets = 0
    return ctx


def hypervisor_server_context(
    cert: PathLike, key: PathLike, ca: PathLike, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A hypervisor-facing listener's context: what QEMU 7.2 (GnuTLS) negotiates.

    TLS 1.2 or 1.3, ECDHE + AES-GCM/ChaCha20 only.  With
    ``require_client_cert`` QEMU must run with ``verify-peer=on`` credentials
    holding a certificate from ``pki issue-hypervisor``.
    """
    ctx = _base(ssl.Purpose.CLIENT_AUTH, cert, key, ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(HYPERVISOR_CIPHERS)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    ctx.num_tickets = 0
    return ctx


def client_context(cert: PathLike, key: PathLike, ca: PathLike, server_name: str) -> ClientContext:
    """The client's tunnel context: TLS 1.3, server certificate from `ca` naming `server_name`."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, cert, key, ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ClientContext(ctx, server_name)


def refusal_from_ssl_error(exc: OSError, peer: str) -> TlsRefused:
    """Translate a handshake failure (ssl.SSLError or OSError) into TlsRefused."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message or str(exc)
        if code in _V_UNKNOWN_CA:
            return TlsRefused(peer, Refusal.UNKNOWN_CA, detail)
        if code == _V_EXPIRED:
            return TlsRefused(peer, Refusal.EXPIRED, detail)
        if code == _V_NOT_YET_VALID:
            return TlsRefused(peer, Refusal.NOT_YET_VALID, detail)
        if code == _V_REVOKED:
            return TlsRefused(peer, Refusal.REVOKED, detail)
        if code in (_V_HOSTNAME_MISMATCH, _V_IP_MISMATCH):
            return TlsRefused(peer, Refusal.NAME_MISMATCH, detail)
        return TlsRefused(peer, Refusal.FAILED, f"certificate verify failed: {detail}")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return TlsRefused(peer, Refusal.CLOSED, str(exc))
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NO_CERT:
            return TlsRefused(peer, Refusal.NO_CLIENT_CERT, reason)
        if reason in _NOT_TLS:
            return TlsRefused(peer, Refusal.NOT_TLS, reason)
        if reason in _VERSION:
            return TlsRefused(peer, Refusal.PROTOCOL_VERSION, reason)
        if reason in _PEER_ALERT_UNKNOWN_CA:
            return TlsRefused(peer, Refusal.REFUSED_BY_PEER, f"{Refusal.UNKNOWN_CA.value}: {reason}")
        if reason in _PEER_ALERT_EXPIRED:
            return TlsRefused(peer, Refusal.REFUSED_BY_PEER, f"{Refusal.EXPIRED.value}: {reason}")
        if reason in _PEER_ALERT_REVOKED:
            return TlsRefused(peer, Refusal.REFUSED_BY_PEER, f"{Refusal.REVOKED.value}: {reason}")
        if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
            return TlsRefused(peer, Refusal.REFUSED_BY_PEER, reason)
        return TlsRefused(peer, Refusal.FAILED, reason or str(exc))
    return TlsRefused(peer, Refusal.CLOSED, exc.strerror or type(exc).__name__)


def verify_peer(
    der: bytes | None,
    *,
    peer: str,
    kind: PeerKind = PeerKind.CLIENT,
    revocation: RevocationChecker | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Check a handshaken peer certificate; return its identity NAME or raise TlsRefused.

    `der` is ``getpeercert(binary_form=True)``.  The chain was already
    verified by OpenSSL; this re-checks validity (so a context that was
    built without verification cannot let an expired certificate through),
    then revocation (a CRL that may not be trusted refuses everyone), then
    the identity convention for `kind`.
    """
    if not der:
        raise TlsRefused(peer, Refusal.NO_CLIENT_CERT)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise TlsRefused(peer, Refusal.FAILED, f"unparsable certificate: {exc}") from exc
    when = now if now is not None else dt.datetime.now(dt.UTC)
    if when > cert.not_valid_after_utc:
        raise TlsRefused(peer, Refusal.EXPIRED, f"not valid after {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")
    if when < cert.not_valid_before_utc:
        raise TlsRefused(
            peer, Refusal.NOT_YET_VALID, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}"
        )
    if revocation is not None:
        stale = revocation.unusable()
        if stale is not None:
            raise TlsRefused(peer, Refusal.CRL_STALE, stale)
        if revocation.is_revoked(cert):
            raise TlsRefused(peer, Refusal.REVOKED, f"serial {cert.serial_number:x}")
    try:
        return identity_from_certificate(cert, kind, peer=peer)
    except IdentityError as exc:
        raise TlsRefused(peer, Refusal.NO_IDENTITY, exc.reason) from exc
