"""Certificate requests: keep the CA off the gateway (and off every other host).

The host that will hold a key makes it and a CSR (:func:`make_request`,
``redirgate pki request``); only the CSR travels to the admin machine,
which signs it with the CA (:func:`sign_request`, ``redirgate pki sign``)
and sends back the certificate, ``ca-cert.pem`` and ``crl.pem``.  The CA's
private key never leaves the admin machine and the host's private key never
leaves the host.

The CSR only proposes: the admin says which kind of certificate it is
(``--gateway``, ``--client``, ``--hypervisor``), the names are read from the
CSR and checked against that kind, and the certificate gets the CA's own
profile (validity, key usage, one extended key usage), never extensions
copied from the request.  Signed certificates go into the PKI directory's
usual layout (:mod:`.authority`), so ``pki list`` and ``pki revoke`` know
them.  Never touches the network.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from redirgate.gateway.pki.authority import (
    CA_CERT,
    LEAF_VALID_DAYS,
    CertificateAuthority,
    Issued,
    _refuse_existing,
    check_dns_name,
    gateway_dir,
    leaf_paths,
)
from redirgate.gateway.pki.errors import PkiError, PkiInvalid, PkiMissing
from redirgate.gateway.pki.files import PUBLIC_MODE, write_certificate, write_file, write_private_key
from redirgate.gateway.pki.revocation import CertKind
from redirgate.transport import IdentityError, PeerKind, identity_uri, validate_name

__all__ = ["Request", "make_request", "sign_request"]

_KEY_FILE = {
    CertKind.GATEWAY: "server-key.pem",
    CertKind.CLIENT: "client-key.pem",
    CertKind.HYPERVISOR: "client-key.pem",
}
_CERT_FILE = {
    CertKind.GATEWAY: "server-cert.pem",
    CertKind.CLIENT: "client-cert.pem",
    CertKind.HYPERVISOR: "client-cert.pem",
}
CSR_FILE = "request.csr"


@dataclasses.dataclass(frozen=True)
class Request:
    """What `make_request` wrote: the private key (mode 0600) and the CSR to send."""

    key: Path
    csr: Path


def _san(
    kind: CertKind, name: str, dns_names: Sequence[str], ips: Sequence[str], where: Path
) -> list[x509.GeneralName]:
    if kind is not CertKind.GATEWAY:
        if dns_names or ips:
            raise PkiInvalid(where, "DNS names and IP addresses are for gateway certificates only")
        try:
            return [x509.UniformResourceIdentifier(identity_uri(PeerKind(kind.value), name))]
        except IdentityError as exc:
            raise PkiInvalid(where, exc.reason) from exc
    names: list[x509.GeneralName] = [x509.DNSName(check_dns_name(where, d)) for d in dict.fromkeys((name, *dns_names))]
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiInvalid(where, f"invalid IP address {ip!r}") from None
    return names


def make_request(
    out_dir: str | os.PathLike[str],
    kind: CertKind,
    name: str,
    *,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
    force: bool = False,
) -> Request:
    """A new ECDSA P-256 key and a CSR for certificate `kind` NAME in `out_dir` (no CA needed)."""
    base = Path(out_dir)
    san = _san(kind, name, dns_names, ips, base)
    key_path, csr_path = base / _KEY_FILE[kind], base / CSR_FILE
    _refuse_existing([key_path, csr_path], force)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(key_path, key, force=force)
    write_file(csr_path, csr.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE, force=force)
    return Request(key_path, csr_path)


def _load_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except FileNotFoundError:
        raise PkiMissing(path, "no such certificate request") from None
    except OSError as exc:
        raise PkiError(path, f"cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise PkiInvalid(path, "not a PEM certificate request (CSR)") from None
    if not csr.is_signature_valid:
        raise PkiInvalid(path, "the request's signature does not verify (altered in transit?)")
    return csr


def _requested(csr: x509.CertificateSigningRequest, kind: CertKind, path: Path) -> tuple[str, list[x509.GeneralName]]:
    """The name the CSR asks for as `kind`, and the SANs the certificate will carry."""
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise PkiInvalid(path, "the request must carry exactly one common name (CN)")
    name = names[0].value
    try:
        requested = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        requested = []
    uris = [g for g in requested if isinstance(g, x509.UniformResourceIdentifier)]
    if kind is CertKind.GATEWAY:
        if uris:
            raise PkiInvalid(path, f"the request asks for an identity ({uris[0].value}), not a gateway certificate")
        dns = [g.value for g in requested if isinstance(g, x509.DNSName) and g.value != name]
        ips = [str(g.value) for g in requested if isinstance(g, x509.IPAddress)]
        return name, _san(kind, name, dns, ips, path)
    try:
        validate_name(name)
    except IdentityError as exc:
        raise PkiInvalid(path, exc.reason) from exc
    wanted = identity_uri(PeerKind(kind.value), name)
    if [u.value for u in uris] != [wanted] or len(requested) != 1:
        raise PkiInvalid(path, f"a {kind.value} request for {name!r} must carry exactly the SAN URI {wanted}")
    return name, _san(kind, name, (), (), path)


def sign_request(
    directory: str | os.PathLike[str],
    csr_path: str | os.PathLike[str],
    kind: CertKind,
    *,
    valid_days: int = LEAF_VALID_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """Sign the CSR as a `kind` certificate with the CA in `directory`, into its usual folder.

    The folder gets the certificate and ``ca-cert.pem``, never a key: the key
    stayed on the host that made the request.  `Issued.key` names where that
    key is on that host (its file name).
    """
    base, path = Path(directory), Path(csr_path)
    ca = CertificateAuthority.load(base)
    csr = _load_csr(path)
    name, san = _requested(csr, kind, path)
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise PkiInvalid(path, "the request's key is not ECDSA P-256 (make it with `redirgate pki request`)")
    if kind is CertKind.GATEWAY:
        folder = gateway_dir(base, name)
    else:
        folder = leaf_paths(base, PeerKind(kind.value), name)[0].parent
    cert_path = folder / _CERT_FILE[kind]
    _refuse_existing([cert_path], force)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind is CertKind.GATEWAY else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = ca.sign_leaf(public, common_name=name, san=san, usage=usage, valid_days=valid_days, now=now)
    write_certificate(cert_path, cert, force=force)
    write_certificate(folder / CA_CERT, ca.cert, force=True)
    return Issued(cert_path, Path(_KEY_FILE[kind]), folder / CA_CERT, cert.serial_number, cert.not_valid_after_utc)
