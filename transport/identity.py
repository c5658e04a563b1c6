"""The identity convention of redirgate certificates.

Owns how a certificate names its holder, so that the PKI that writes it and
the TLS check that reads it cannot disagree.  Convention: a leaf certificate
for NAME has subject ``CN=NAME`` *and* exactly one subjectAltName URI
``urn:redirgate:<kind>:NAME`` where kind is ``client`` (thin clients dialling
the tunnel) or ``hypervisor`` (QEMU presenting a certificate to a
hypervisor-facing port).  Only the URI is authoritative; the CN is for
humans and for tools that show only the subject.  A URI rather than a DNS
name because client names are not host names, and because a distinct kind
means a hypervisor certificate can never pass as a client on the tunnel port.

Names: 1-64 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or
digit (safe as a file name and inside a URN).
"""

from __future__ import annotations

import enum
import re

from cryptography import x509

from redirgate.transport.errors import TransportError

__all__ = [
    "IDENTITY_URI_PREFIX",
    "IdentityError",
    "PeerKind",
    "identity_from_certificate",
    "identity_uri",
    "validate_name",
]

IDENTITY_URI_PREFIX = "urn:redirgate:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PeerKind(enum.StrEnum):
    CLIENT = "client"
    HYPERVISOR = "hypervisor"


class IdentityError(TransportError):
    """A name or a certificate does not follow the identity convention."""


def validate_name(name: str) -> str:
    """Return `name` if it is a valid identity name, else raise IdentityError."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise IdentityError(repr(name), "invalid name: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return name


def identity_uri(kind: PeerKind, name: str) -> str:
    """The subjectAltName URI that carries `name` of `kind`."""
    return f"{IDENTITY_URI_PREFIX}{PeerKind(kind).value}:{validate_name(name)}"


def identity_from_certificate(
    cert: x509.Certificate, kind: PeerKind = PeerKind.CLIENT, *, peer: str = "certificate"
) -> str:
    """The NAME a certificate carries for `kind`; IdentityError if none or several."""
    prefix = f"{IDENTITY_URI_PREFIX}{PeerKind(kind).value}:"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(peer, f"no subjectAltName, so no {kind} identity") from None
    names = [
        uri[len(prefix) :] for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith(prefix)
    ]
    if len(names) != 1:
        raise IdentityError(peer, f"expected one {prefix}NAME URI, found {len(names)}")
    name = names[0]
    if _NAME.fullmatch(name) is None:
        raise IdentityError(peer, f"invalid identity name {name!r}")
    return name
