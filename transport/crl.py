"""A CRL signed by our CA, checked once, and the newest one a client has seen.

Owns what "a CRL we may trust" means for both ends: :func:`parse_crl` reads
PEM or DER and accepts it only when our CA issued and signed it, whatever
carried it (a file, or the gateway's control connection: the signature is
the trust, not the channel).  :class:`SignedCrl` is the parsed result: the
revoked serials, the CRL number (RFC 5280 5.2.3, increasing with every
version the CA signs), ``thisUpdate``/``nextUpdate`` and the DER to send on.

:class:`NewestCrl` is the client's view of revocation: the CRL with the
highest number among those offered (its local ``crl`` file, re-read when it
changes, and every CRL the gateway sends), so an older CRL can never
replace a newer one: a gateway whose certificate was revoked cannot make a
client forget that by sending the CRL from before.

Pure file reading and computation: no sockets, no state shared between
threads.  Errors are :class:`CrlError` (the file or the sender, and why).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from redirgate.transport.errors import TransportError

__all__ = ["CrlError", "NewestCrl", "SignedCrl", "crl_number", "parse_crl", "read_crl"]


class CrlError(TransportError):
    """A CRL that cannot be used: unreadable, not a CRL, or not signed by our CA."""


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's number (0 when it has none: older than any numbered CRL)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


@dataclasses.dataclass(frozen=True)
class SignedCrl:
    """A CRL that our CA signed (see the module docstring)."""

    issuer: x509.Name
    number: int
    this_update: dt.datetime
    next_update: dt.datetime | None
    serials: frozenset[int]
    der: bytes = dataclasses.field(repr=False)

    def revokes(self, cert: x509.Certificate) -> bool:
        # the serial first: comparing names builds them as Python objects (the costlier half)
        return cert.serial_number in self.serials and cert.issuer == self.issuer

    def stale(self, now: dt.datetime | None = None) -> bool:
        """Past its nextUpdate: the CA promised a newer one by then."""
        when = now if now is not None else dt.datetime.now(dt.UTC)
        return self.next_update is not None and when > self.next_update


def parse_crl(data: bytes, ca: x509.Certificate, *, source: str) -> SignedCrl:
    """`data` (PEM or DER) as a `SignedCrl`, or CrlError naming `source`."""
    try:
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlError(source, f"not a CRL: {exc}") from None
    public = ca.public_key()
    if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise CrlError(source, "the CA certificate holds a key that cannot sign a CRL")
    try:
        signed = crl.issuer == ca.subject and crl.is_signature_valid(public)
    except (TypeError, ValueError):
        signed = False
    if not signed:
        raise CrlError(source, f"not signed by our CA ({ca.subject.rfc4514_string()})")
    try:
        serials = frozenset(r.serial_number for r in crl)
    except ValueError as exc:
        raise CrlError(source, f"a revoked entry does not parse: {exc}") from None
    return SignedCrl(
        issuer=crl.issuer,
        number=crl_number(crl),
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        serials=serials,
        der=crl.public_bytes(serialization.Encoding.DER),
    )


def read_crl(path: Path, ca: x509.Certificate) -> SignedCrl:
    """The CRL in file `path`, or CrlError naming the file and why."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CrlError(str(path), "CRL file does not exist") from None
    except OSError as exc:
        raise CrlError(str(path), f"cannot read the CRL: {exc.strerror or exc}") from None
    return parse_crl(data, ca, source=str(path))


class NewestCrl:
    """The newest CRL a client has seen (see the module docstring).

    `local` is the client's own ``crl`` file (optional): read at
    construction (a missing or foreign file is a CrlError then) and again
    whenever its (inode, mtime, size) changes; a later bad version is
    ignored and the newest good CRL stays.  Trio thread only.
    """

    def __init__(self, ca: x509.Certificate, local: Path | None = None) -> None:
        self.ca = ca
        self.local = local
        self.current: SignedCrl | None = None
        #: where `current` came from: the file or the gateway
        self.source = ""
        self._stamp: tuple[int, int, int] | None = None
        if local is not None:
            self._stamp = _stamp(local)
            self.offer(read_crl(local, ca), str(local))

    def offer(self, crl: SignedCrl, source: str) -> bool:
        """Keep `crl` if it is newer than the one held; True if it was."""
        if self.current is not None and crl.number <= self.current.number:
            return False
        self.current, self.source = crl, source
        return True

    def refresh(self) -> None:
        """Read the local file again if it changed."""
        if self.local is None:
            return
        stamp = _stamp(self.local)
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.offer(read_crl(self.local, self.ca), str(self.local))
        except CrlError:
            pass  # a half-copied or foreign file: the newest good CRL stays

    def revoking(self, cert: x509.Certificate) -> SignedCrl | None:
        """The CRL that revokes `cert`, if the newest one does."""
        self.refresh()
        crl = self.current
        return crl if crl is not None and crl.revokes(cert) else None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
