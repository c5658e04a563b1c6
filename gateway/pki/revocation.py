"""Revocation: the revoked list, the CRL the CA signs, and the gateway's live view.

Owns ``revoked.json`` (the human-readable record: name, kind, serial, time)
and ``crl.pem`` (the same serials in a CRL signed by the CA, regenerated as
a whole on every revoke and renamed into place atomically), plus
:class:`RevocationList`, which the gateway consults after every handshake.

Any certificate of the CA can be revoked: clients, hypervisors and
gateways (whose clients then refuse them, see :mod:`redirgate.transport.crl`).

Reload behaviour: :meth:`RevocationList.is_revoked` stats crl.pem on every
call (one syscall) and reloads it when its (inode, mtime_ns, size) changed,
so a revoke takes effect on the next handshake without restarting anything.
A CRL that is missing, fails to load or whose signature does not verify
against the CA is refused: at construction that is a :class:`PkiError` (the
gateway does not start); on a later reload the previous list stays in force
and the failure is logged once per change of the file.  The CRL's
nextUpdate is honoured: see :class:`RevocationList` for the stale policy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from redirgate.gateway.pki.authority import CertificateAuthority, gateway_dir, leaf_paths
from redirgate.gateway.pki.errors import PkiError, PkiInvalid, PkiMissing
from redirgate.gateway.pki.files import PUBLIC_MODE, load_certificate, write_file
from redirgate.transport import CrlError, IdentityError, PeerKind, SignedCrl, read_crl, validate_name

__all__ = [
    "CRL_FILE",
    "CRL_VALID_DAYS",
    "REVOKED_FILE",
    "STALE_POLICIES",
    "CertKind",
    "RevocationList",
    "Revoked",
    "read_revoked",
    "resign_crl",
    "revoke",
    "write_crl",
]

log = logging.getLogger(__name__)

CRL_FILE = "crl.pem"
REVOKED_FILE = "revoked.json"
#: nextUpdate of the CRL: every revoke re-signs it, `pki crl` does so alone.
#: A gateway refuses new handshakes once it has passed (stale_crl = "refuse").
CRL_VALID_DAYS = 365


class CertKind(enum.StrEnum):
    """What a revoked certificate was issued for (its folder in the PKI directory)."""

    CLIENT = "client"
    HYPERVISOR = "hypervisor"
    GATEWAY = "gateway"


@dataclasses.dataclass(frozen=True)
class Revoked:
    name: str
    kind: CertKind
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
            Revoked(e["name"], CertKind(e["kind"]), int(e["serial"], 16), dt.datetime.fromisoformat(e["revoked_at"]))
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
    ca: CertificateAuthority,
    entries: Sequence[Revoked],
    *,
    reset: bool = False,
    now: dt.datetime | None = None,
    valid_days: int = CRL_VALID_DAYS,
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
        .next_update(when + dt.timedelta(days=valid_days))
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


def _cert_path(base: Path, kind: CertKind, name: str) -> Path:
    if kind is CertKind.GATEWAY:
        return gateway_dir(base, name) / "server-cert.pem"
    return leaf_paths(base, PeerKind(kind.value), name)[0]


def revoke(
    directory: str | os.PathLike[str],
    name: str,
    *,
    kind: CertKind | PeerKind = CertKind.CLIENT,
    now: dt.datetime | None = None,
    valid_days: int = CRL_VALID_DAYS,
) -> Revoked:
    """Revoke the current certificate of client, hypervisor or gateway NAME and rewrite the CRL.

    Idempotent: revoking an already revoked certificate rewrites the CRL and
    returns the existing entry.
    """
    base = Path(directory)
    kind = CertKind(kind.value)
    try:
        validate_name(name)
    except IdentityError as exc:
        raise PkiInvalid(base, exc.reason) from exc
    ca = CertificateAuthority.load(base)
    cert_path = _cert_path(base, kind, name)
    if not cert_path.exists():
        raise PkiMissing(cert_path, f"no {kind.value} named {name!r} was issued here")
    serial = load_certificate(cert_path).serial_number
    entries = read_revoked(base)
    existing = next((e for e in entries if e.serial == serial), None)
    if existing is None:
        existing = Revoked(name, kind, serial, (now or dt.datetime.now(dt.UTC)).replace(microsecond=0))
        entries.append(existing)
    write_crl(ca, entries, now=now, valid_days=valid_days)
    log.info("revoked %s %s (serial %x)", kind.value, name, serial)
    return existing


def resign_crl(
    directory: str | os.PathLike[str], *, now: dt.datetime | None = None, valid_days: int = CRL_VALID_DAYS
) -> Path:
    """Sign the same revocations again with a new number and nextUpdate (before the old one passes)."""
    base = Path(directory)
    return write_crl(CertificateAuthority.load(base), read_revoked(base), now=now, valid_days=valid_days)


#: What a gateway does with a CRL past its nextUpdate (`stale_crl` in [gateway]).
STALE_POLICIES = ("refuse", "warn")


class RevocationList:
    """The CA's CRL as the gateway sees it, reloaded when the file changes.

    Satisfies :class:`redirgate.transport.tls.RevocationChecker`.  A CRL past
    its nextUpdate is never used silently: with `stale` = "refuse" (the
    default) `unusable()` names the problem, so every new handshake is
    refused until a fresh CRL is installed; with "warn" handshakes go on,
    each is counted in `stale_accepted` and a warning is logged once per
    `log_interval_s`.  `current` is the CRL in force (what the gateway hands
    its clients).
    """

    def __init__(
        self,
        crl_path: str | os.PathLike[str],
        ca_cert: x509.Certificate | str | os.PathLike[str],
        *,
        stale: str = "refuse",
        log_interval_s: float = 60.0,
    ) -> None:
        if stale not in STALE_POLICIES:
            raise ValueError(f"stale must be one of {STALE_POLICIES}, not {stale!r}")
        self.path = Path(crl_path)
        self._ca = ca_cert if isinstance(ca_cert, x509.Certificate) else load_certificate(Path(ca_cert))
        ca_key = self._ca.public_key()
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise PkiInvalid(self.path, "the CA certificate does not hold an EC key")
        self.stale_policy = stale
        self.log_interval_s = log_interval_s
        self.stale_accepted = 0
        self._stale_logged_at: float | None = None
        self._stamp: tuple[int, int, int] | None = None
        self.reloads = 0
        self.current: SignedCrl = self._initial()

    @classmethod
    def for_directory(cls, directory: str | os.PathLike[str]) -> RevocationList:
        base = Path(directory)
        return cls(base / CRL_FILE, base / "ca-cert.pem")

    def _initial(self) -> SignedCrl:
        stamp = self._stat()
        try:
            crl = read_crl(self.path, self._ca)
        except CrlError as exc:
            if stamp is None:
                raise PkiMissing(self.path, 'CRL missing (crl = "" in [gateway] turns revocation off)') from None
            raise PkiInvalid(self.path, f"unreadable CRL: {exc.reason}") from None
        self._stamp = stamp
        self._loaded(crl)
        return crl

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _loaded(self, crl: SignedCrl) -> None:
        self.reloads += 1
        self._stale_logged_at = None
        log.info("loaded %s: CRL #%d, %d revoked certificate(s)", self.path, crl.number, len(crl.serials))

    def refresh(self) -> None:
        """Reload crl.pem if it changed since the last look.

        A new file that fails to load or is not signed by the CA is refused:
        the previous list stays in force and the failure is logged once per
        change of the file.  So is a CRL older (by CRL number) than the one
        in force.
        """
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp  # do not retry until the file changes again
        try:
            if stamp is None:
                raise CrlError(str(self.path), "CRL missing")
            crl = read_crl(self.path, self._ca)
        except CrlError as exc:
            log.error("keeping the previous revocation list: %s", exc)
            return
        if crl.number < self.current.number:
            log.error(
                "keeping the previous revocation list: %s is CRL #%d, older than #%d in force",
                self.path,
                crl.number,
                self.current.number,
            )
            return
        self.current = crl
        self._loaded(crl)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        self.refresh()
        return self.current.revokes(cert)

    def stale(self) -> bool:
        return self.current.stale()

    def unusable(self) -> str | None:
        """None while the CRL may be trusted for a new handshake (see the class docstring)."""
        self.refresh()
        crl = self.current
        if not crl.stale():
            return None
        assert crl.next_update is not None
        when = f"{crl.next_update:%Y-%m-%d %H:%M}Z"
        now = time.monotonic()
        due = self._stale_logged_at is None or now - self._stale_logged_at >= self.log_interval_s
        if self.stale_policy == "warn":
            self.stale_accepted += 1
            if due:
                self._stale_logged_at = now
                log.warning(
                    'CRL %s is stale (its nextUpdate %s has passed) and stale_crl = "warn": handshakes are '
                    "accepted against it (%d so far); a certificate revoked since is not known here. Re-sign it on "
                    "the CA machine (redirgate pki crl --dir PKI) and copy it here",
                    self.path,
                    when,
                    self.stale_accepted,
                )
            return None
        if due:
            self._stale_logged_at = now
            log.error(
                "CRL %s is stale (its nextUpdate %s has passed): every new handshake is refused until a fresh one "
                "is installed. Re-sign it on the CA machine (redirgate pki crl --dir PKI) and copy it here, "
                'or set stale_crl = "warn" in [gateway]',
                self.path,
                when,
            )
        return f"{self.path} is past its nextUpdate {when}"
