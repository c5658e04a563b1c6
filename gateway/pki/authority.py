"""The certificate authority: creating it and issuing every redirgate certificate.

Owns the directory layout, the certificate profiles (validity, extensions)
and the identity convention's write side (see
:mod:`redirgate.transport.identity`).  Never talks to the network.

Layout of a PKI directory::

    ca-cert.pem  ca-key.pem           the CA (ECDSA P-256, 10 years)
    crl.pem      revoked.json         revocation (see revocation.py)
    gateways/HOST/    server-cert.pem server-key.pem ca-cert.pem
    clients/NAME/     client-cert.pem client-key.pem ca-cert.pem
    hypervisors/NAME/ ca-cert.pem client-cert.pem client-key.pem
                      (the file names QEMU's tls-creds-x509 dir= expects)

Profiles: every key is ECDSA P-256, every signature ECDSA-SHA256, serials
random 159-bit (RFC 5280 4.1.2.2: at most 20 octets, positive).  Leaves
have basicConstraints CA:FALSE (critical), SKI/AKI, keyUsage
digitalSignature+keyEncipherment (critical; QEMU's GnuTLS credentials check
refuses a leaf whose critical keyUsage lacks keyEncipherment, even for EC
keys) and one extendedKeyUsage: serverAuth for gateways, clientAuth for
clients and hypervisors.  A leaf never outlives the CA; notBefore is set
five minutes back to tolerate clock skew between DMZ and thin clients.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from redirgate.gateway.pki.errors import KeyExists, PkiInvalid
from redirgate.gateway.pki.files import (
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from redirgate.transport import IdentityError, PeerKind, identity_uri, validate_name

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CA_VALID_DAYS",
    "LEAF_VALID_DAYS",
    "CertificateAuthority",
    "Issued",
    "check_dns_name",
    "client_dir",
    "gateway_dir",
    "hypervisor_dir",
    "init_ca",
    "issue_client",
    "issue_gateway",
    "issue_hypervisor",
    "leaf_paths",
]

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CA_VALID_DAYS = 3652  # ten years
LEAF_VALID_DAYS = 730  # two years; re-issue with --force
CLOCK_SKEW = dt.timedelta(minutes=5)
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


@dataclasses.dataclass(frozen=True)
class Issued:
    """What an issue call wrote."""

    cert: Path
    key: Path
    ca: Path
    serial: int
    not_valid_after: dt.datetime


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _check_name(directory: Path, name: str) -> str:
    try:
        return validate_name(name)
    except IdentityError as exc:
        raise PkiInvalid(directory, exc.reason) from exc


def check_dns_name(where: Path, dns: str) -> str:
    """`dns` if it is a valid DNS name, else PkiInvalid naming `where`."""
    if _DNS_NAME.fullmatch(dns) is None:
        raise PkiInvalid(where, f"invalid DNS name {dns!r}")
    return dns


def gateway_dir(directory: str | os.PathLike[str], host: str) -> Path:
    return Path(directory) / "gateways" / host


def client_dir(directory: str | os.PathLike[str], name: str) -> Path:
    return Path(directory) / "clients" / name


def hypervisor_dir(directory: str | os.PathLike[str], name: str) -> Path:
    return Path(directory) / "hypervisors" / name


def leaf_paths(directory: str | os.PathLike[str], kind: PeerKind, name: str) -> tuple[Path, Path]:
    """(cert, key) of a client or hypervisor leaf."""
    base = client_dir(directory, name) if kind is PeerKind.CLIENT else hypervisor_dir(directory, name)
    return base / "client-cert.pem", base / "client-key.pem"


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    for path in paths:
        if path.exists():
            raise KeyExists(path, "already exists (use --force to replace it)")


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    """A loaded CA: its directory, certificate and key."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        base = Path(directory)
        cert = load_certificate(base / CA_CERT)
        key = load_private_key(base / CA_KEY)
        if cert.public_key() != key.public_key():
            raise PkiInvalid(base / CA_KEY, f"does not match {CA_CERT}")
        return cls(base, cert, key)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    def sign_leaf(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        common_name: str,
        san: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        valid_days: int,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        start = _now(now) - CLOCK_SKEW
        end = min(start + CLOCK_SKEW + dt.timedelta(days=valid_days), self.cert.not_valid_after_utc)
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        )
        return builder.sign(self.key, hashes.SHA256())


def init_ca(
    directory: str | os.PathLike[str],
    *,
    common_name: str = "redirgate CA",
    valid_days: int = CA_VALID_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """Create the CA key and self-signed certificate, an empty CRL and revoked list."""
    from redirgate.gateway.pki.revocation import write_crl  # revocation imports this module

    base = Path(directory)
    cert_path, key_path = base / CA_CERT, base / CA_KEY
    _refuse_existing([key_path, cert_path], force)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now(now) - CLOCK_SKEW
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CLOCK_SKEW + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(key_path, key, force=force)
    write_certificate(cert_path, cert, force=force)
    write_crl(CertificateAuthority(base, cert, key), [], reset=True, now=now)
    return Issued(cert_path, key_path, cert_path, cert.serial_number, cert.not_valid_after_utc)


def _issue(
    ca: CertificateAuthority,
    folder: Path,
    cert_name: str,
    key_name: str,
    *,
    common_name: str,
    san: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    valid_days: int,
    force: bool,
    now: dt.datetime | None,
) -> Issued:
    cert_path, key_path, ca_copy = folder / cert_name, folder / key_name, folder / CA_CERT
    _refuse_existing([key_path, cert_path], force)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.sign_leaf(key.public_key(), common_name=common_name, san=san, usage=usage, valid_days=valid_days, now=now)
    write_private_key(key_path, key, force=force)
    write_certificate(cert_path, cert, force=force)
    write_certificate(ca_copy, ca.cert, force=True)  # public; always the current CA
    return Issued(cert_path, key_path, ca_copy, cert.serial_number, cert.not_valid_after_utc)


def issue_gateway(
    directory: str | os.PathLike[str],
    host: str,
    *,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
    valid_days: int = LEAF_VALID_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """Server certificate for gateway HOST: CN=HOST, SAN DNS HOST + `dns_names` + `ips`."""
    base = Path(directory)
    for dns in (host, *dns_names):
        check_dns_name(base, dns)
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys((host, *dns_names))]
    for ip in ips:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiInvalid(base, f"invalid IP address {ip!r}") from None
    return _issue(
        CertificateAuthority.load(base),
        gateway_dir(base, host),
        "server-cert.pem",
        "server-key.pem",
        common_name=host,
        san=san,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        valid_days=valid_days,
        force=force,
        now=now,
    )


def _issue_identity(
    directory: str | os.PathLike[str],
    kind: PeerKind,
    name: str,
    *,
    valid_days: int,
    force: bool,
    now: dt.datetime | None,
) -> Issued:
    base = Path(directory)
    _check_name(base, name)
    cert_path, key_path = leaf_paths(base, kind, name)
    return _issue(
        CertificateAuthority.load(base),
        cert_path.parent,
        cert_path.name,
        key_path.name,
        common_name=name,
        san=[x509.UniformResourceIdentifier(identity_uri(kind, name))],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        valid_days=valid_days,
        force=force,
        now=now,
    )


def issue_client(
    directory: str | os.PathLike[str],
    name: str,
    *,
    valid_days: int = LEAF_VALID_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """Client certificate for thin client NAME (CN=NAME, URI urn:redirgate:client:NAME)."""
    return _issue_identity(directory, PeerKind.CLIENT, name, valid_days=valid_days, force=force, now=now)


def issue_clients(
    directory: str | os.PathLike[str], names: Sequence[str], *, valid_days: int = LEAF_VALID_DAYS, force: bool = False
) -> list[Issued]:
    """`issue_client` for many names with the CA loaded once (the scale benchmark's thousands)."""
    base = Path(directory)
    ca = CertificateAuthority.load(base)
    issued = []
    for name in names:
        _check_name(base, name)
        cert_path, key_path = leaf_paths(base, PeerKind.CLIENT, name)
        issued.append(
            _issue(
                ca,
                cert_path.parent,
                cert_path.name,
                key_path.name,
                common_name=name,
                san=[x509.UniformResourceIdentifier(identity_uri(PeerKind.CLIENT, name))],
                usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                valid_days=valid_days,
                force=force,
                now=None,
            )
        )
    return issued


def issue_hypervisor(
    directory: str | os.PathLike[str],
    name: str,
    *,
    valid_days: int = LEAF_VALID_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """QEMU client credentials for hypervisor NAME in hypervisors/NAME/ (QEMU's dir= layout)."""
    return _issue_identity(directory, PeerKind.HYPERVISOR, name, valid_days=valid_days, force=force, now=now)
