"""What a PKI directory holds and when it expires: `redirgate pki list` and the gateway's expiry watch.

`list_certificates(dir)` reads every certificate the layout of
:mod:`.authority` puts there (the CA, gateways, clients, hypervisors) with
its serial, expiry date and whether it was revoked.
`certificate_expiry(paths)` gives the expiry time of certificate files a
running gateway uses (unreadable ones are left out: `gateway check` names
them).  `EXPIRY_WARNING_DAYS` is when a certificate starts being logged and
counted as expiring.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from redirgate.gateway.pki.authority import CA_CERT
from redirgate.gateway.pki.revocation import read_revoked

__all__ = ["EXPIRY_WARNING_DAYS", "Listed", "certificate_expiry", "list_certificates"]

EXPIRY_WARNING_DAYS = 30

#: folder under the PKI directory -> (kind, certificate file name)
_LAYOUT = {
    "gateways": ("gateway", "server-cert.pem"),
    "clients": ("client", "client-cert.pem"),
    "hypervisors": ("hypervisor", "client-cert.pem"),
}


@dataclasses.dataclass(frozen=True)
class Listed:
    kind: str
    name: str
    serial: int
    not_after: dt.datetime
    revoked: bool
    path: Path

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400


def _load(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def list_certificates(directory: str | os.PathLike[str]) -> list[Listed]:
    base = Path(directory)
    revoked = {(r.kind.value, r.serial) for r in read_revoked(base)}
    found: list[Listed] = []
    ca = _load(base / CA_CERT)
    if ca is not None:
        found.append(
            Listed("ca", ca.subject.rfc4514_string(), ca.serial_number, ca.not_valid_after_utc, False, base / CA_CERT)
        )
    for folder, (kind, file_name) in _LAYOUT.items():
        for path in sorted((base / folder).glob(f"*/{file_name}")):
            cert = _load(path)
            if cert is None:
                continue
            found.append(
                Listed(
                    kind,
                    path.parent.name,
                    cert.serial_number,
                    cert.not_valid_after_utc,
                    (kind, cert.serial_number) in revoked,
                    path,
                )
            )
    return found


def certificate_expiry(paths: Iterable[Path]) -> dict[Path, float]:
    """Expiry (Unix time) of each readable certificate file."""
    expiry: dict[Path, float] = {}
    for path in paths:
        cert = _load(path)
        if cert is not None:
            expiry[path] = cert.not_valid_after_utc.timestamp()
    return expiry
