"""Revocation: the revoked list, the CRL the CA signs, and the gateway's live view.

Owns ``revoked.json`` (the human-readable record: name, kind, serial, time)
and ``crl.pem`` (the same serials in a CRL signed by the CA, regenerated as
a whole on every revoke and renamed into place atomically), plus
:class:`RevocationList`, which the gateway consults after every handshake.

Reload behaviour: :meth:`RevocationList.is_revoked` stats crl.pem on every
call (one syscall) and reloads it when its (inode, mtime_ns, size) changed,
so a revoke takes effect on the next handshake without restarting anything.
A CRL that fails to load or whose signature does not verify against the CA
is refused: at construction that is a :class:`PkiError`; on a later reload
the previous list stays in force and the failure is logged once per change
of the file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from redirgate.gateway.pki.authority import CertificateAuthority, leaf_paths
from redirgate.gateway.pki.errors import PkiError, PkiInvalid, PkiMissing
from redirgate.gateway.pki.files import PUBLIC_MODE, load_certificate, write_file
from redirgate.transport import IdentityError, PeerKind, validate_name

__all__ = [
    "CRL_FILE",
    "CRL_VALID_DAYS",
    "REVOKED_FILE",
    "RevocationList",
    "Revoked",
    "read_revoked",
    "revoke",
    "write_crl",
]

log = logging.getLogger(__name__)

CRL_FILE = "crl.pem"
REVOKED_FILE = "revoked.json"
#: nextUpdate of the CRL.  The gateway reads the file itself and does not
#: expire it; the field is for other tools (openssl crl -text, stunnel).
CRL_VALID_DAYS = 365


@dataclasses.dataclass(frozen=True)
class Revoked:
    name: str
    kind: PeerKind
    serial: int
    revoked_at: dt.datetime

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "serial": f"{self.serial:x}",
            "revoked_at": self.revoked_at.isoformat(),
        }


def read_revoked(directory: str | os.PathLike[str]) -> list[Revoked]:
    """The revoked list (empty if the file does not exist yet)."""
    path = Path(directory) / REVOKED_FILE
    try:
        raw = json.loads(path.read_text())
        return [
            Revoked(e["name"], PeerKind(e["kind"]), int(e["serial"], 16), dt.datetime.fromisoformat(e["revoked_at"]))
            for e in raw
        ]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PkiError(path, f"cannot read: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise PkiInvalid(path, f"not a revoked list: {exc}") from exc


def _crl_number(path: Path) -> int:
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        return 0


def write_crl(
    ca: CertificateAuthority, entries: Sequence[Revoked], *, reset: bool = False, now: dt.datetime | None = None
) -> Path:
    """Write revoked.json and a CRL of `entries` signed by `ca` (atomically replaced)."""
    when = now if now is not None else dt.datetime.now(dt.UTC)
    crl_path = ca.directory / CRL_FILE
    number = 1 if reset else _crl_number(crl_path) + 1
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(when)
        .next_update(when + dt.timedelta(days=CRL_VALID_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at).build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    listing = json.dumps([e.to_json() for e in entries], indent=2).encode() + b"\n"
    write_file(ca.directory / REVOKED_FILE, listing, mode=PUBLIC_MODE, force=True)
    write_file(crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE, force=True)
    return crl_path


def revoke(
    directory: str | os.PathLike[str],
    name: str,
    *,
    kind: PeerKind = PeerKind.CLIENT,
    now: dt.datetime | None = None,
) -> Revoked:
    """Revoke the current certificate of client (or hypervisor) NAME and rewrite the CRL.

    Idempotent: revoking an already revoked certificate rewrites the CRL and
    returns the existing entry.
    """
    base = Path(directory)
    try:
        validate_name(name)
    except IdentityError as exc:
        raise PkiInvalid(base, exc.reason) from exc
    ca = CertificateAuthority.load(base)
    cert_path, _ = leaf_paths(base, kind, name)
    if not cert_path.exists():
        raise PkiMissing(cert_path, f"no {kind.value} named {name!r} was issued here")
    serial = load_certificate(cert_path).serial_number
    entries = read_revoked(base)
    existing = next((e for e in entries if e.serial == serial), None)
    if existing is None:
        existing = Revoked(name, kind, serial, (now or dt.datetime.now(dt.UTC)).replace(microsecond=0))
        entries.append(existing)
    write_crl(ca, entries, now=now)
    log.info("revoked %s %s (serial %x)", kind.value, name, serial)
    return existing


class RevocationList:
    """The CA's CRL as the gateway sees it, reloaded when the file changes.

    Satisfies :class:`redirgate.transport.tls.RevocationChecker`.
    """

    def __init__(self, crl_path: str | os.PathLike[str], ca_cert: x509.Certificate | str | os.PathLike[str]) -> None:
        self.path = Path(crl_path)
        self._ca = ca_cert if isinstance(ca_cert, x509.Certificate) else load_certificate(Path(ca_cert))
        ca_key = self._ca.public_key()
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise PkiInvalid(self.path, "the CA certificate does not hold an EC key")
        self._ca_key = ca_key
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int, int] | None = None
        self.reloads = 0
        self._load(self._stat(), initial=True)

    @classmethod
    def for_directory(cls, directory: str | os.PathLike[str]) -> RevocationList:
        base = Path(directory)
        return cls(base / CRL_FILE, base / "ca-cert.pem")

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self, stamp: tuple[int, int, int] | None, *, initial: bool = False) -> None:
        try:
            if stamp is None:
                raise PkiMissing(self.path, "CRL missing")
            try:
                crl = x509.load_pem_x509_crl(self.path.read_bytes())
            except (OSError, ValueError) as exc:
                raise PkiInvalid(self.path, f"unreadable CRL: {exc}") from exc
            if crl.issuer != self._ca.subject or not crl.is_signature_valid(self._ca_key):
                raise PkiInvalid(self.path, "CRL not signed by our CA")
        except PkiError as exc:
            self._stamp = stamp  # do not retry until the file changes again
            if initial:
                raise
            log.error("keeping the previous revocation list: %s", exc)
            return
        self._serials = frozenset(r.serial_number for r in crl)
        self._stamp = stamp
        self.reloads += 1
        log.info("loaded %s: %d revoked certificate(s)", self.path, len(self._serials))

    def refresh(self) -> None:
        """Reload crl.pem if it changed since the last look."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._load(stamp)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        self.refresh()
        return cert.issuer == self._ca.subject and cert.serial_number in self._serials
