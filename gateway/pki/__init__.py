"""redirgate.gateway.pki: the CA, certificates and revocation, on `cryptography`.

Owns the PKI directory (layout in :mod:`.authority`), key files (mode 0600,
never overwritten without ``force``, :mod:`.files`) and revocation
(:mod:`.revocation`), and certificate requests so that the CA's key stays on
the admin machine (:mod:`.requests`).  The identity convention (``CN=NAME`` plus SAN URI
``urn:redirgate:client:NAME``) lives in
:mod:`redirgate.transport.identity` so the TLS check reads exactly
what this package writes.  Never touches the network.
"""

from redirgate.gateway.pki.authority import (
    CA_VALID_DAYS,
    LEAF_VALID_DAYS,
    CertificateAuthority,
    Issued,
    client_dir,
    gateway_dir,
    hypervisor_dir,
    init_ca,
    issue_client,
    issue_clients,
    issue_gateway,
    issue_hypervisor,
)
from redirgate.gateway.pki.errors import KeyExists, PkiError, PkiInvalid, PkiMissing
from redirgate.gateway.pki.listing import EXPIRY_WARNING_DAYS, Listed, certificate_expiry, list_certificates
from redirgate.gateway.pki.requests import Request, make_request, sign_request
from redirgate.gateway.pki.revocation import (
    CRL_VALID_DAYS,
    STALE_POLICIES,
    CertKind,
    RevocationList,
    Revoked,
    read_revoked,
    resign_crl,
    revoke,
)
from redirgate.transport import PeerKind, identity_from_certificate

__all__ = [
    "CA_VALID_DAYS",
    "CRL_VALID_DAYS",
    "EXPIRY_WARNING_DAYS",
    "LEAF_VALID_DAYS",
    "STALE_POLICIES",
    "CertKind",
    "CertificateAuthority",
    "Issued",
    "KeyExists",
    "Listed",
    "PeerKind",
    "PkiError",
    "PkiInvalid",
    "PkiMissing",
    "Request",
    "RevocationList",
    "Revoked",
    "certificate_expiry",
    "client_dir",
    "gateway_dir",
    "hypervisor_dir",
    "identity_from_certificate",
    "init_ca",
    "issue_client",
    "issue_clients",
    "issue_gateway",
    "issue_hypervisor",
    "list_certificates",
    "make_request",
    "read_revoked",
    "resign_crl",
    "revoke",
    "sign_request",
]
